"""WaveSpeed AI InstantCharacter emulator (API v3 and v2), written from the provider documents in
../shared/docs/providers/wavespeed-instant-character-*.txt|md and the upload API notes.

Strict: Bearer auth, JSON content type, known field names only, documented types and ranges.
Where the documents disagree the strictest reading wins: 512–1536 per side for v3 too (the v3
overview says 512, the current v3 page 256). Uploads: the ticket flow of WaveSpeed's current SDK
(`media/uploads` + a PUT to a storage URL with exactly the ticket's headers and no API key) and
the older `media/upload/binary`; `tickets_enabled = False` makes the ticket endpoint answer 404 as a
path the server does not offer (aiohttp's text or nginx's page, see `unknown_routes`).
Scripted job outcomes: faults.add("job", "failed") or faults.add("job", "nsfw").
"""
from __future__ import annotations

import random

from aiohttp import web

import secrets

from .common import Emulator, mime_mismatch, synth_image

SIDE = {"v3": (512, 1536), "v2": (512, 1536)}
SEED_MAX = {"v3": 2147483647, "v2": 9999999999}
FIELDS = {"prompt", "image", "size", "seed", "negative_prompt", "guidance_scale", "num_inference_steps", "num_images",
          "enable_safety_checker"}


def envelope(data, code=200, message="success"):
    return {"code": code, "message": message, "data": data}


class WaveSpeedEmulator(Emulator):
    provider = "wavespeed"

    PHASES = {"upload": "upload", "ticket": "ticket", "storage_put": "upload", "submit": "submit", "result": "poll"}

    def __init__(self, api_key: str, **kwargs):
        super().__init__(api_key, **kwargs)
        self.tickets_enabled = True
        self.tickets: dict[str, dict] = {}

    def reset(self) -> None:
        super().reset()
        self.tickets_enabled = True

    def routes(self):
        return [
            web.post("/api/{version}/media/uploads", self.ticket),
            web.put("/storage/{token}", self.storage_put),
            web.post("/api/{version}/media/upload/binary", self.upload),
            web.post("/api/{version}/wavespeed-ai/instant-character", self.submit),
            web.get("/api/{version}/predictions/{job_id}/result", self.result),
            web.get("/api/{version}/predictions/{job_id}", self.result),
        ]

    def authorised(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.api_key}"

    def unauthorised(self):
        return web.json_response({"code": 401, "message": "Unauthorized: invalid API key"}, status=401)

    def bad(self, message: str):
        self.rejections.append((400, message))
        return web.json_response({"code": 400, "message": message}, status=400)

    async def upload(self, request: web.Request):
        self.count("upload_attempt")
        if request.match_info["version"] not in SIDE:
            return self.route_missing(404)
        if not self.authorised(request):
            return self.unauthorised()
        if (fault := await self.fault_response("upload", request)) is not None:
            return fault
        if not request.content_type.startswith("multipart/form-data"):
            return self.bad("upload must be multipart/form-data")
        form = await request.post()
        upload = form.get("file")
        if upload is None or not hasattr(upload, "file"):
            return self.bad("missing multipart field 'file'")
        if not (upload.content_type or "").startswith("image/"):
            return self.bad(f"unsupported content type {upload.content_type}")
        data = upload.file.read()
        if len(data) > 20 * 1024 * 1024:
            return self.bad("images are limited to 20 MB")
        if (problem := mime_mismatch(upload.content_type, data)) is not None:
            return self.bad(problem)
        url = self.store_file(data, upload.content_type, "." + upload.content_type.split("/")[-1])
        self.count("upload")
        return web.json_response(envelope({"type": "image", "download_url": url, "filename": upload.filename,
                                           "size": len(data)}))

    async def ticket(self, request: web.Request):
        self.count("ticket")
        if not self.tickets_enabled or request.match_info["version"] not in SIDE:
            return self.route_missing(404)            # an API without the ticket endpoint
        if not self.authorised(request):
            return self.unauthorised()
        if (fault := await self.fault_response("ticket", request)) is not None:
            return fault
        try:
            body = await request.json()
        except ValueError:
            return self.bad("invalid JSON")
        if not isinstance(body, dict) or set(body) != {"filename", "size", "content_type"}:
            return self.bad("expected exactly filename, size and content_type")
        if not (isinstance(body["size"], int) and 0 < body["size"] <= 20 * 1024 * 1024):
            return self.bad("size must be 1 byte to 20 MB")
        if not str(body["content_type"]).startswith("image/"):
            return self.bad(f"unsupported content type {body['content_type']}")
        token = secrets.token_hex(8)
        name = self.new_id("f") + "." + body["content_type"].split("/")[-1]
        headers = {"Content-Type": body["content_type"], "x-amz-meta-upload-ticket": token}
        self.tickets[token] = {"size": body["size"], "headers": headers, "name": name}
        return web.json_response(envelope({
            "upload": {"method": "PUT", "url": f"{self.url}/storage/{token}", "headers": headers},
            "download_url": f"{self.url}/files/{name}"}))

    async def storage_put(self, request: web.Request):
        """The storage host: a pre-signed URL takes exactly the ticket's headers, and never a key."""
        self.count("upload_attempt")
        ticket = self.tickets.get(request.match_info["token"])
        if ticket is None:
            return web.Response(status=403, text="<Error>SignatureDoesNotMatch</Error>", content_type="text/xml")
        if "Authorization" in request.headers:
            return web.Response(status=400, text="<Error>Only one auth mechanism allowed</Error>",
                                content_type="text/xml")
        for name, value in ticket["headers"].items():
            if request.headers.get(name) != value:
                return web.Response(status=403, text=f"<Error>header {name} not signed</Error>",
                                    content_type="text/xml")
        if (fault := await self.fault_response("upload", request)) is not None:
            return fault
        data = await request.read()
        if len(data) != ticket["size"]:
            return web.Response(status=400, text="<Error>size does not match the ticket</Error>",
                                content_type="text/xml")
        if mime_mismatch(ticket["headers"]["Content-Type"], data) is not None:
            return web.Response(status=400, text="<Error>content does not match its type</Error>",
                                content_type="text/xml")
        del self.tickets[request.match_info["token"]]
        self.files[ticket["name"]] = (data, ticket["headers"]["Content-Type"])
        self.count("upload")
        return web.Response(status=200, headers={"ETag": '"1"'})

    def validate(self, version: str, body) -> str | None:
        if not isinstance(body, dict):
            return "body must be a JSON object"
        unknown = set(body) - FIELDS
        if unknown:
            return f"unknown parameter(s): {', '.join(sorted(unknown))}"
        if not isinstance(body.get("prompt"), str) or not body["prompt"].strip():
            return "prompt is required"
        if not isinstance(body.get("image"), str) or self.file_for_url(body["image"]) is None:
            return "image must be the URL of an uploaded image"
        size = body.get("size", "1024*1024")
        low, high = SIDE[version]
        try:
            width, height = (int(part) for part in size.split("*"))
        except (AttributeError, ValueError):
            return f"size must look like 1024*1024, got {size!r}"
        if not (low <= width <= high and low <= height <= high):
            return f"size {size} out of range {low} ~ {high} per dimension"
        checks = [("seed", int, -1, SEED_MAX[version]), ("guidance_scale", (int, float), 0, 20),
                  ("num_inference_steps", int, 1, 50), ("num_images", int, 1, 4)]
        for name, kind, minimum, maximum in checks:
            if name in body:
                value = body[name]
                if isinstance(value, bool) or not isinstance(value, kind) or not minimum <= value <= maximum:
                    return f"{name} must be {minimum} ~ {maximum}, got {value!r}"
        if "negative_prompt" in body and not isinstance(body["negative_prompt"], str):
            return "negative_prompt must be a string"
        if "enable_safety_checker" in body and not isinstance(body["enable_safety_checker"], bool):
            return "enable_safety_checker must be a boolean"
        return None

    async def submit(self, request: web.Request):
        self.count("submit_attempt")
        version = request.match_info["version"]
        if version not in SIDE:
            return self.route_missing(404)
        if not self.authorised(request):
            return self.unauthorised()
        if request.content_type != "application/json":
            return self.bad("Content-Type must be application/json")
        try:
            body = await request.json()
        except ValueError:
            return self.bad("invalid JSON")
        if (fault := await self.fault_response("submit", request)) is not None:
            return fault
        if (problem := self.validate(version, body)) is not None:
            return self.bad(problem)
        job_id = self.new_id("ws")
        seed = body.get("seed", -1)
        self.new_job(job_id, body, version=version, seed=seed if seed != -1 else random.randrange(2**31), outputs=None)
        return web.json_response(envelope(self.prediction(job_id, "created")))

    def prediction(self, job_id: str, status: str, outputs=(), nsfw=(), error: str = "") -> dict:
        job = self.jobs[job_id]
        return {"id": job_id, "model": "wavespeed-ai/instant-character", "status": status, "outputs": list(outputs),
                "urls": {"get": f"{self.url}/api/{job['version']}/predictions/{job_id}/result"},
                "has_nsfw_contents": list(nsfw), "created_at": "2026-11-21T12:00:00.000Z", "error": error,
                "timings": {"inference": int(self.processing_s * 1000) if status == "completed" else 0}}

    async def result(self, request: web.Request):
        self.count("poll")
        if not self.authorised(request):
            return self.unauthorised()
        if (fault := await self.fault_response("poll", request)) is not None:
            return fault
        job_id = request.match_info["job_id"]
        job = self.jobs.get(job_id)
        if job is None or job["version"] != request.match_info["version"]:
            return web.json_response({"code": 404, "message": f"prediction {job_id} not found"}, status=404)
        state = self.job_state(job)
        if state != "done":
            return web.json_response(envelope(self.prediction(job_id, "created" if state == "queued" else "processing")))
        if job["outcome"] == "failed":
            error = job["outcome_message"] or "inference failed: CUDA OOM"
            return web.json_response(envelope(self.prediction(job_id, "failed", error=error)))
        if job["outputs"] is None:
            body = job["body"]
            width, height = (int(v) for v in body.get("size", "1024*1024").split("*"))
            reference = self.file_for_url(body["image"])
            job["outputs"] = [
                self.store_file(synth_image(width, height, reference, body["prompt"], job["seed"], index),
                                "image/png", ".png")
                for index in range(body.get("num_images", 1) + self.extra_outputs)]
        nsfw = [job["outcome"] == "nsfw"] * len(job["outputs"])
        return web.json_response(envelope(self.prediction(job_id, "completed", job["outputs"], nsfw)))
