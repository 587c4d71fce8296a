"""fal.ai `fal-ai/instant-character` emulator: queue API, storage token + CDN upload, cancel — from
../shared/docs/providers/fal-instant-character.md and the protocol notes.

One server plays three hosts: {url}/queue (FAL_QUEUE_URL), {url}/rest (FAL_REST_URL) and {url}/cdn
(the base_url the storage token names). Status answers are 202 while a job is queued or running. Strict: `Authorization: Key <FAL_KEY>`, documented fields,
types and ranges; validation errors are FastAPI-style 422 lists. Scripted job outcomes:
faults.add("job", "failed" | "nsfw" | "completed_error").
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import random
import time

from aiohttp import web

from .common import Emulator, mime_mismatch, synth_image

MODEL = "fal-ai/instant-character"
PRESETS = {"square_hd": (1024, 1024), "square": (512, 512), "portrait_4_3": (768, 1024),
           "portrait_16_9": (576, 1024), "landscape_4_3": (1024, 768), "landscape_16_9": (1024, 576)}
FIELDS = {"prompt", "image_url", "image_size", "scale", "negative_prompt", "seed", "guidance_scale",
          "num_inference_steps", "num_images", "sync_mode", "enable_safety_checker", "output_format"}


def detail(field: str, message: str, kind: str = "value_error") -> dict:
    return {"detail": [{"loc": ["body", field], "msg": message, "type": kind}]}


class FalEmulator(Emulator):
    provider = "fal"
    PHASES = {"token": "token", "cdn_upload": "upload", "submit": "submit", "status": "poll", "result": "result",
              "cancel": "cancel", "status_stream": "stream"}

    def __init__(self, api_key: str, **kwargs):
        super().__init__(api_key, **kwargs)
        self.tokens: set[str] = set()
        self.cancelled: list[str] = []
        self.upload_headers: list[dict] = []
        self.answer_host: str | None = None
        self.stream_enabled = True
        self.keepalive_s = 15.0

    def reset(self) -> None:
        super().reset()
        self.cancelled.clear()
        self.upload_headers.clear()
        self.answer_host = None
        self.stream_enabled = True
        self.keepalive_s = 15.0

    @property
    def queue_url(self) -> str:
        return f"{self.url}/queue"

    @property
    def rest_url(self) -> str:
        return f"{self.url}/rest"

    def routes(self):
        return [
            web.post("/rest/storage/auth/token", self.token),
            web.post("/cdn/files/upload", self.cdn_upload),
            web.post(f"/queue/{MODEL}", self.submit),
            web.get(f"/queue/{MODEL}/requests/{{job_id}}/status", self.status),
            web.get(f"/queue/{MODEL}/requests/{{job_id}}/status/stream", self.status_stream),
            web.get(f"/queue/{MODEL}/requests/{{job_id}}", self.result),
            web.put(f"/queue/{MODEL}/requests/{{job_id}}/cancel", self.cancel),
        ]

    def authorised(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Key {self.api_key}"

    def unauthorised(self):
        return web.json_response({"detail": "Authentication error: invalid key"}, status=401)

    async def token(self, request: web.Request):
        self.count("token")
        if not self.authorised(request):
            return self.unauthorised()
        if (fault := await self.fault_response("token", request)) is not None:
            return fault
        if request.query.get("storage_type") != "fal-cdn-v3":
            return web.json_response({"detail": "unsupported storage_type"}, status=400)
        token = f"tok-{random.randrange(16**12):012x}"
        self.tokens.add(token)
        return web.json_response({"token": token, "token_type": "Bearer", "base_url": f"{self.url}/cdn",
                                  "expires_at": "2099-01-01T00:00:00Z"})

    async def cdn_upload(self, request: web.Request):
        self.count("upload_attempt")
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or token not in self.tokens:
            return web.json_response({"detail": "invalid upload token"}, status=401)
        if (fault := await self.fault_response("upload", request)) is not None:
            return fault
        if not request.content_type.startswith("image/"):
            return web.json_response({"detail": f"unsupported content type {request.content_type}"}, status=400)
        data = await request.read()
        if (problem := mime_mismatch(request.content_type, data)) is not None:
            return web.json_response({"detail": problem}, status=400)
        self.upload_headers.append({k: v for k, v in request.headers.items() if k.lower().startswith("x-fal")})
        self.count("upload")
        suffix = "." + request.content_type.split("/")[-1]
        return web.json_response({"access_url": self.store_file(data, request.content_type, suffix)})

    def reference_bytes(self, image_url: str) -> bytes | None:
        if image_url.startswith("data:"):
            header, _, payload = image_url.partition(",")
            try:
                return base64.b64decode(payload, validate=True) if header.endswith(";base64") else None
            except binascii.Error:
                return None
        return self.file_for_url(image_url)

    def validate(self, body) -> dict | None:
        if not isinstance(body, dict):
            return detail("body", "must be an object")
        unknown = set(body) - FIELDS
        if unknown:
            return detail(sorted(unknown)[0], "extra fields not permitted", "extra_forbidden")
        if not isinstance(body.get("prompt"), str) or not body["prompt"]:
            return detail("prompt", "field required", "missing")
        if not isinstance(body.get("image_url"), str) or self.reference_bytes(body["image_url"]) is None:
            return detail("image_url", "could not load the image")
        size = body.get("image_size", "square_hd")
        if isinstance(size, str):
            if size not in PRESETS:
                return detail("image_size", f"unexpected value {size!r}")
        elif not (isinstance(size, dict) and set(size) == {"width", "height"}
                  and all(isinstance(size[k], int) and not isinstance(size[k], bool) and size[k] > 0 for k in size)):
            return detail("image_size", "must be a preset name or {width, height} with positive integers")
        ranges = [("scale", (int, float), 0, 2), ("guidance_scale", (int, float), 0, 20),
                  ("num_inference_steps", int, 1, 50), ("num_images", int, 1, 4), ("seed", int, 0, 2**63)]
        for name, kind, minimum, maximum in ranges:
            if name in body:
                value = body[name]
                if isinstance(value, bool) or not isinstance(value, kind) or not minimum <= value <= maximum:
                    return detail(name, f"ensure this value is between {minimum} and {maximum}")
        for name in ("sync_mode", "enable_safety_checker"):
            if name in body and not isinstance(body[name], bool):
                return detail(name, "value could not be parsed to a boolean")
        if body.get("output_format", "jpeg") not in ("jpeg", "png"):
            return detail("output_format", "unexpected value; permitted: 'jpeg', 'png'")
        if "negative_prompt" in body and not isinstance(body["negative_prompt"], str):
            return detail("negative_prompt", "str type expected")
        return None

    async def submit(self, request: web.Request):
        self.count("submit_attempt")
        if not self.authorised(request):
            return self.unauthorised()
        if request.content_type != "application/json":
            return web.json_response({"detail": "Content-Type must be application/json"}, status=400)
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"detail": "invalid JSON"}, status=400)
        if (fault := await self.fault_response("submit", request)) is not None:
            return fault
        if (problem := self.validate(body)) is not None:
            self.rejections.append((422, json.dumps(problem)))
            return web.json_response(problem, status=422)
        job_id = f"{random.randrange(16**8):08x}-fal"
        self.new_job(job_id, body, seed=body.get("seed", random.randrange(2**31)), result=None)
        # answer_host: a provider pointing its status/result/cancel URLs at another host
        base = f"{self.queue_url}/{MODEL}/requests/{job_id}".replace("127.0.0.1", self.answer_host or "127.0.0.1")
        return web.json_response({"request_id": job_id, "gateway_request_id": job_id, "response_url": base,
                                  "status_url": f"{base}/status", "cancel_url": f"{base}/cancel",
                                  "queue_position": 0})

    async def status(self, request: web.Request):
        self.count("poll")
        if not self.authorised(request):
            return self.unauthorised()
        if (fault := await self.fault_response("poll", request)) is not None:
            return fault
        job = self.jobs.get(request.match_info["job_id"])
        if job is None:
            return web.json_response({"detail": "Request not found"}, status=404)
        body, status = self.status_body(job, request.query.get("logs") == "1")
        return web.json_response(body, status=status)

    async def status_stream(self, request: web.Request):
        """Server-sent events: a status object per change, a keep-alive comment every `keepalive_s`,
        closed after COMPLETED (as fal documents). `stream_enabled = False` answers 405."""
        self.count("stream")
        if not self.stream_enabled:
            return self.route_missing(405)
        if not self.authorised(request):
            return self.unauthorised()
        if (fault := await self.fault_response("stream", request)) is not None:
            return fault
        job = self.jobs.get(request.match_info["job_id"])
        if job is None:
            return web.json_response({"detail": "Request not found"}, status=404)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        with_logs = request.query.get("logs") == "1"
        sent, quiet_since = None, time.monotonic()
        generation = self._generation
        while generation == self._generation and not self._stopped.is_set():
            body, _ = self.status_body(job, with_logs)
            if body != sent:
                await response.write(f"data: {json.dumps(body)}\n\n".encode())
                sent, quiet_since = body, time.monotonic()
                if body["status"] == "COMPLETED":
                    break
            elif time.monotonic() - quiet_since >= self.keepalive_s:
                await response.write(b": ping\n\n")
                quiet_since = time.monotonic()
            await asyncio.sleep(0.02)
        await response.write_eof()
        return response

    def status_body(self, job: dict, with_logs: bool) -> tuple[dict, int]:
        """→ (status object, HTTP status): 202 Accepted while the job waits or runs, 200 once completed."""
        if job.get("cancelled"):
            return {"status": "COMPLETED", "error": "Request was cancelled", "error_type": "request_cancelled",
                    "logs": []}, 200
        state = self.job_state(job)
        if state == "queued":
            return {"status": "IN_QUEUE", "queue_position": 2, "response_url": ""}, 202
        logs = [{"message": "Loading InstantCharacter", "level": "INFO", "timestamp": "2026-11-21T12:00:00"}]
        if state == "running":
            return {"status": "IN_PROGRESS", "logs": logs if with_logs else None}, 202
        logs.append({"message": "Generated images", "level": "INFO", "timestamp": "2026-11-21T12:00:01"})
        answer = {"status": "COMPLETED", "logs": logs if with_logs else None, "metrics": {"inference_time": 1.0}}
        if job["outcome"] == "completed_error":
            answer.update(error=job["outcome_message"] or "Out of memory on runner", error_type="runner_disconnected")
        return answer, 200

    async def result(self, request: web.Request):
        self.count("result")
        if not self.authorised(request):
            return self.unauthorised()
        if (fault := await self.fault_response("result", request)) is not None:
            return fault
        job = self.jobs.get(request.match_info["job_id"])
        if job is None:
            return web.json_response({"detail": "Request not found"}, status=404)
        if self.job_state(job) != "done":
            return web.json_response({"detail": "Request is still in progress"}, status=400)
        if job["outcome"] == "failed":
            return web.json_response({"detail": "Internal server error during inference"}, status=500)
        if job["result"] is None:
            body = job["body"]
            size = body.get("image_size", "square_hd")
            width, height = PRESETS[size] if isinstance(size, str) else (size["width"], size["height"])
            fmt = body.get("output_format", "jpeg")
            reference = self.reference_bytes(body["image_url"])
            images = []
            for index in range(body.get("num_images", 1) + self.extra_outputs):
                data = synth_image(width, height, reference, body["prompt"], job["seed"], index,
                                   "PNG" if fmt == "png" else "JPEG")
                mime = f"image/{fmt}"
                url = (f"data:{mime};base64,{base64.b64encode(data).decode()}" if body.get("sync_mode")
                       else self.store_file(data, mime, f".{fmt}"))
                images.append({"url": url, "width": width, "height": height, "content_type": mime})
            job["result"] = {"images": images, "seed": job["seed"], "prompt": body["prompt"],
                             "has_nsfw_concepts": [job["outcome"] == "nsfw"] * len(images),
                             "timings": {"inference": self.processing_s}}
        return web.json_response(job["result"])

    async def cancel(self, request: web.Request):
        self.count("cancel")
        if not self.authorised(request):
            return self.unauthorised()
        if (fault := await self.fault_response("cancel", request)) is not None:
            return fault
        job_id = request.match_info["job_id"]
        job = self.jobs.get(job_id)
        if job is None:
            return web.json_response({"detail": "Request not found"}, status=404)
        self.cancelled.append(job_id)
        if self.job_state(job) == "done":
            return web.json_response({"status": "ALREADY_COMPLETED"}, status=400)
        job["cancelled"] = True
        return web.json_response({"status": "CANCELLATION_REQUESTED"}, status=202)
