"""Segmind InstantID emulator, v1 (blocking) and v2 (queued), from
../shared/docs/providers/segmind-instantid.txt and the protocol notes.

Strict: `x-api-key`, `Content-Type: application/json` (else 406), documented fields, types and
ranges; errors are {"error": "..."}. face_image and pose_image must be URIs, as documented
("string (uri)"): an image URL or a data: URI; bare base64 is refused (the strictest reading). v1 answers with the image itself unless base64 is true.
Scripted outcomes: faults.add("job", "failed"); faults.add("submit", "json_body") makes v1 answer
with base64 JSON even when raw bytes were asked for. Styles: the ten the document names, plus any
in `extra_styles` (the document's other 19 are not listed anywhere).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import io
import random
import time

from aiohttp import web
from PIL import Image

from .common import Emulator, mime_mismatch, synth_image

NAMED_STYLES = {"(No style)", "Watercolor", "Film Noir", "Neon", "Jungle", "Mars", "Vibrant Color", "Snow",
                "Line art", "Art Nouveau"}
FIELDS = {"face_image", "prompt", "pose_image", "negative_prompt", "style", "samples", "num_inference_steps",
          "guidance_scale", "seed", "identity_strength", "adapter_strength", "enhance_face_region", "base64"}
PRICE = 0.025


def instantid_size(width: int, height: int) -> tuple[int, int]:
    """The reference resize rule: short side 1024, long side at most 1280, multiples of 64."""
    scale = 1024 / min(width, height)
    w, h = width * scale, height * scale
    longer = max(w, h)
    if longer > 1280:
        w, h = w * 1280 / longer, h * 1280 / longer
    return max(64, int(w) // 64 * 64), max(64, int(h) // 64 * 64)


class SegmindEmulator(Emulator):
    provider = "segmind"
    PHASES = {"v1": "submit", "v2_submit": "submit", "v2_status": "poll", "v2_result": "result"}

    def __init__(self, api_key: str, credits: float = 100.0, **kwargs):
        super().__init__(api_key, **kwargs)
        self.credits = credits
        self.extra_styles: set[str] = set()

    def reset(self) -> None:
        super().reset()
        self.extra_styles.clear()

    def routes(self):
        return [
            web.post("/v1/instantid", self.v1),
            web.post("/v2/instantid", self.v2_submit),
            web.get("/v2/requests/{job_id}/status", self.v2_status),
            web.get("/v2/requests/{job_id}", self.v2_result),
        ]

    def error(self, status: int, message: str):
        self.rejections.append((status, message))
        return web.json_response({"error": message}, status=status)

    async def parse(self, request: web.Request):
        """→ (body, None) or (None, error response)."""
        if request.headers.get("x-api-key") != self.api_key:
            return None, self.error(401, "Unauthorized: missing or invalid API key")
        if request.content_type != "application/json":
            return None, self.error(406, "Invalid content type")
        try:
            body = await request.json()
        except ValueError:
            return None, self.error(400, "Invalid JSON body")
        return body, None

    def image(self, value) -> bytes | None:
        """The bytes of an image given as a URI, as the document types it ("string (uri)"): an
        http(s) URL of a file this server holds, or a data: URI. Bare base64 is not a URI."""
        if not isinstance(value, str):
            return None
        if value.startswith("http"):
            return self.file_for_url(value)
        header, _, payload = value.partition(",")
        if not (header.startswith("data:image/") and header.endswith(";base64")):
            return None
        try:
            data = base64.b64decode(payload, validate=True)
            Image.open(io.BytesIO(data)).verify()
        except (binascii.Error, OSError, SyntaxError, ValueError):
            return None
        return data if mime_mismatch(header[5:-7], data) is None else None

    def validate(self, body) -> str | None:
        if not isinstance(body, dict):
            return "body must be a JSON object"
        unknown = set(body) - FIELDS
        if unknown:
            return f"Unknown parameter(s): {', '.join(sorted(unknown))}"
        if not isinstance(body.get("prompt"), str) or not body["prompt"]:
            return "prompt is required"
        if self.image(body.get("face_image")) is None:
            return "face_image must be a URI (an image URL or a data: URI)"
        if "pose_image" in body and self.image(body["pose_image"]) is None:
            return "pose_image must be a URI (an image URL or a data: URI)"
        if "style" in body and body["style"] not in NAMED_STYLES | self.extra_styles:
            return f"style {body['style']!r} is not one of the 29 allowed values"
        ranges = [("samples", int, 1, 4), ("num_inference_steps", int, 4, 100), ("guidance_scale", (int, float), 1, 25),
                  ("seed", int, -1, 999999999999999), ("identity_strength", (int, float), 0, 1),
                  ("adapter_strength", (int, float), 0, 1)]
        for name, kind, minimum, maximum in ranges:
            if name in body:
                value = body[name]
                if isinstance(value, bool) or not isinstance(value, kind) or not minimum <= value <= maximum:
                    return f"{name} must be between {minimum} and {maximum}"
        for name in ("enhance_face_region", "base64"):
            if name in body and not isinstance(body[name], bool):
                return f"{name} must be a boolean"
        if "negative_prompt" in body and not isinstance(body["negative_prompt"], str):
            return "negative_prompt must be a string"
        return None

    def render(self, body: dict, seed: int) -> list[bytes]:
        face = self.image(body["face_image"])
        sizer = self.image(body["pose_image"]) if body.get("pose_image") else face
        with Image.open(io.BytesIO(sizer)) as probe:
            width, height = instantid_size(*probe.size)
        return [synth_image(width, height, face, body["prompt"], seed, index, "JPEG")
                for index in range(body.get("samples", 1) + self.extra_outputs)]

    def charge(self, samples: int) -> dict:
        self.credits = round(self.credits - PRICE * samples, 4)
        return {"X-remaining-credits": str(self.credits), "x-cost": str(PRICE * samples)}

    async def v1(self, request: web.Request):
        self.count("submit_attempt")
        body, problem = await self.parse(request)
        if problem is not None:
            return problem
        fault = self.faults.take("submit")
        force_json = fault is not None and fault.kind == "json_body"
        if fault is not None and not force_json:
            return await self.apply_fault("submit", fault, request)
        if (message := self.validate(body)) is not None:
            return self.error(400, message)
        job = self.new_job(self.new_id("sg"), body)
        await asyncio.sleep(self.processing_s)        # blocking: the answer comes when the image is done
        job["done_seen"] = time.monotonic()
        if job["outcome"] == "failed":
            return self.error(500, job["outcome_message"] or "Inference failed: face not detected")
        seed = body.get("seed", -1)
        seed = seed if seed != -1 else random.randrange(2**31)
        images = self.render(body, seed)
        headers = {**self.charge(len(images)), "x-request-id": self.new_id("sg"), "x-seed-value": str(seed),
                   "x-generation-time": str(self.processing_s)}
        if body.get("base64") or force_json or len(images) > 1:
            encoded = [base64.b64encode(data).decode() for data in images]
            payload = {"image": encoded[0]} if len(encoded) == 1 else {"images": encoded}
            return web.json_response(payload, headers=headers)
        return web.Response(body=images[0], content_type="image/jpeg", headers=headers)

    async def v2_submit(self, request: web.Request):
        self.count("submit_attempt")
        body, problem = await self.parse(request)
        if problem is not None:
            return problem
        if (fault := await self.fault_response("submit", request)) is not None:
            return fault
        if (message := self.validate(body)) is not None:
            return self.error(400, message)
        job_id = self.new_id("sgq")
        seed = body.get("seed", -1)
        self.new_job(job_id, body, seed=seed if seed != -1 else random.randrange(2**31), output=None)
        return web.json_response({"request_id": job_id, "status": "QUEUED",
                                  "status_url": f"{self.url}/v2/requests/{job_id}/status",
                                  "response_url": f"{self.url}/v2/requests/{job_id}"})

    def _job(self, request: web.Request):
        if request.headers.get("x-api-key") != self.api_key:
            return None, self.error(401, "Unauthorized: missing or invalid API key")
        job = self.jobs.get(request.match_info["job_id"])
        if job is None:
            return None, self.error(404, f"Request {request.match_info['job_id']} not found")
        return job, None

    async def v2_status(self, request: web.Request):
        self.count("poll")
        job, problem = self._job(request)
        if problem is not None:
            return problem
        if (fault := await self.fault_response("poll", request)) is not None:
            return fault
        state = self.job_state(job)
        if state != "done":
            return web.json_response({"status": "QUEUED" if state == "queued" else "PROCESSING"})
        if job["outcome"] == "failed":
            return web.json_response({"status": "FAILED",
                                      "error": job["outcome_message"] or "Inference failed: face not detected"},
                                     status=422)
        return web.json_response({"status": "COMPLETED"})

    async def v2_result(self, request: web.Request):
        self.count("result")
        job, problem = self._job(request)
        if problem is not None:
            return problem
        if (fault := await self.fault_response("result", request)) is not None:
            return fault
        if self.job_state(job) != "done" or job["outcome"] == "failed":
            return self.error(400, "Request has no result")
        if job["output"] is None:
            images = self.render(job["body"], job["seed"])
            job["charge"] = self.charge(len(images))
            urls = [self.store_file(data, "image/jpeg", ".jpg") for data in images]
            job["output"] = urls[0] if len(urls) == 1 else urls
        return web.json_response({
            "status": "COMPLETED", "output": job["output"],
            "metrics": {"inference_time": self.processing_s, "queue_time": self.queue_s,
                        "total_time": self.processing_s + self.queue_s,
                        "cost": float(job["charge"]["x-cost"]), "remaining_credits": self.credits},
        })
