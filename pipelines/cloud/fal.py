"""fal.ai `fal-ai/instant-character` through fal's queue API — the whole protocol in one place.

    token    POST {rest}/storage/auth/token?storage_type=fal-cdn-v3  {}  -> token, token_type, base_url
    upload   POST {base_url}/files/upload  raw bytes, Authorization: <token_type> <token>  -> access_url
             (if the CDN upload fails, the image goes inline as a data URI instead)
    submit   POST {queue}/fal-ai/instant-character   -> request_id, status_url, response_url, cancel_url
    status   GET  {status_url}?logs=1   -> IN_QUEUE (queue_position) | IN_PROGRESS (logs) | COMPLETED
    result   GET  {response_url}        -> images[].url, seed, has_nsfw_concepts, timings
    cancel   PUT  {cancel_url}          (sent when the user presses Cancel in ComfyUI)
    auth     Authorization: Key <FAL_KEY>   (FAL_KEY may be "key_id:key_secret")

A COMPLETED status that carries an `error` is a failure. Uploads are asked to expire after one
day (X-Fal-Object-Lifecycle-Preference); the pack re-uses an upload for 20 hours.
"""
from __future__ import annotations

import asyncio
import base64
import json
import time

from ..contract import BackendLimits, Choice, Flag, GenerationInterrupted, GenerationRequest, NumberRange, RunContext
from .base import (STAGE_DOWNLOADED, STAGE_FINISHED, STAGE_SUBMITTED, STAGE_UPLOADED, STAGES, CloudBackend,
                   CloudOutcome, encode_reference, image_mime)
from .transport import CloudCall, ProviderError, Response
from .uploads import content_key

MODEL_PATH = "fal-ai/instant-character"
UPLOAD_LIFETIME_S = 24 * 3600
UPLOAD_KEEP_S = 20 * 3600
PRICE_PER_MEGAPIXEL_USD = 0.1
# fal's image_size presets and the sizes they stand for.
IMAGE_SIZE_PRESETS = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
CUSTOM_SIZE = "custom"

LIMITS = BackendLimits(
    backend="fal InstantCharacter",
    # The document gives no range for a custom ImageSize; these bounds are the pack's.
    width=NumberRange(256, 2048, integer=True),
    height=NumberRange(256, 2048, integer=True),
    seed=NumberRange(-1, 2147483647, integer=True),
    steps=NumberRange(1, 50, integer=True),
    guidance=NumberRange(0, 20),
    num_images=NumberRange(1, 4, integer=True),
    identity_strength=NumberRange(0, 2),           # fal "scale"
    extras={
        "image_size": Choice((CUSTOM_SIZE, *IMAGE_SIZE_PRESETS)),
        "output_format": Choice(("jpeg", "png")),
        "sync_mode": Flag(),
        "enable_safety_checker": Flag(),
    },
)
DEFAULTS = {"steps": 28, "guidance": 3.5, "num_images": 1, "identity_strength": 1.0, "image_size": CUSTOM_SIZE,
            "output_format": "jpeg", "sync_mode": False, "enable_safety_checker": True}


class FalInstantCharacter(CloudBackend):
    name = "fal InstantCharacter"
    key_env = "FAL_KEY"
    base_url_env = "FAL_QUEUE_URL"
    default_base_url = "https://queue.fal.run"
    rest_url_env = "FAL_REST_URL"
    default_rest_url = "https://rest.fal.ai"

    def __init__(self, settings, rest_url: str = default_rest_url):
        super().__init__(settings)
        self.rest_url = rest_url.rstrip("/")

    @property
    def limits(self) -> BackendLimits:
        return LIMITS

    def describe_error(self, response: Response) -> str:
        try:
            body = response.json()
        except ValueError:
            return response.body[:300].decode(errors="replace")
        detail = body.get("detail") if isinstance(body, dict) else body
        if isinstance(detail, list):        # FastAPI validation: [{"loc": [...], "msg": ...}, ...]
            return "; ".join(
                f"{'.'.join(str(p) for p in item.get('loc', [])[1:]) or 'input'}: {item.get('msg')}"
                if isinstance(item, dict) else str(item) for item in detail)
        return str(detail or body)[:300]

    def output_size(self, request: GenerationRequest) -> tuple[int, int]:
        preset = request.extras.get("image_size", CUSTOM_SIZE)
        return IMAGE_SIZE_PRESETS.get(preset, (request.width, request.height))

    async def _upload(self, http: CloudCall, key: str, request: GenerationRequest) -> tuple[str, str]:
        """→ (image_url, how): the CDN URL, or a data URI when the CDN upload is not possible."""
        data = encode_reference(request.reference, self.max_reference_side)
        mime = image_mime(data)
        cache_key = content_key("fal", self.rest_url, data)
        cached = self.settings.uploads.get(cache_key)
        if cached:
            return cached, "cached"
        try:
            token, _ = await http.json(
                "POST", f"{self.rest_url}/storage/auth/token?storage_type=fal-cdn-v3", "getting an upload token",
                headers={"Authorization": f"Key {key}"}, json={})
            uploaded, _ = await http.json(
                "POST", f"{token['base_url'].rstrip('/')}/files/upload", "uploading the reference",
                headers={"Authorization": f"{token.get('token_type', 'Bearer')} {token['token']}",
                         "Content-Type": mime, "X-Fal-File-Name": "reference." + mime.split("/")[-1],
                         "X-Fal-Object-Lifecycle-Preference": json.dumps(
                             {"expiration_duration_seconds": UPLOAD_LIFETIME_S})},
                data=data, timeout_s=http.timeouts.transfer)
            url = uploaded["access_url"]
        except ProviderError as exc:
            if exc.status in (401, 403):
                raise                                   # a bad key fails the submit too: say so now
            return f"data:{mime};base64,{base64.b64encode(data).decode()}", "inline (CDN upload failed)"
        except (KeyError, TypeError):
            return f"data:{mime};base64,{base64.b64encode(data).decode()}", "inline (CDN answer unusable)"
        self.settings.uploads.put(cache_key, url, UPLOAD_KEEP_S)
        return url, "uploaded"

    def _payload(self, request: GenerationRequest, image_url: str) -> dict:
        extras = {**DEFAULTS, **{k: v for k, v in request.extras.items() if v is not None}}
        preset = extras["image_size"]
        payload = {
            "prompt": request.prompt,
            "image_url": image_url,
            "image_size": preset if preset != CUSTOM_SIZE else {"width": request.width, "height": request.height},
            "scale": request.identity_strength,
            "negative_prompt": request.negative_prompt,
            "guidance_scale": request.guidance,
            "num_inference_steps": request.steps,
            "num_images": request.num_images,
            "enable_safety_checker": extras["enable_safety_checker"],
            "output_format": extras["output_format"],
            "sync_mode": extras["sync_mode"],
        }
        if request.seed >= 0:                      # no seed: fal picks one and reports it
            payload["seed"] = request.seed
        return payload

    async def _call(self, http: CloudCall, key: str, request: GenerationRequest, context: RunContext) -> CloudOutcome:
        headers = {"Authorization": f"Key {key}"}
        timings: dict[str, float] = {}
        clock = time.monotonic()
        context.report_status(f"{self.name}: uploading the reference")
        image_url, upload = await self._upload(http, key, request)
        timings["upload"] = time.monotonic() - clock
        context.report_progress(STAGE_UPLOADED, STAGES)

        clock = time.monotonic()
        context.report_status(f"{self.name}: submitting")
        queue_url = f"{self.settings.base_url}/{MODEL_PATH}"
        submitted, _ = await http.json("POST", queue_url, "submitting the job", billable=True, headers=headers,
                                       json=self._payload(request, image_url))
        job_id = submitted.get("request_id") if isinstance(submitted, dict) else None
        if not job_id:
            raise ProviderError(self.name, "submitting the job", detail="no request_id in the answer")
        requests_url = f"{queue_url}/requests/{job_id}"
        status_url = submitted.get("status_url") or f"{requests_url}/status"
        response_url = submitted.get("response_url") or requests_url
        cancel_url = submitted.get("cancel_url") or f"{requests_url}/cancel"
        timings["submit"] = time.monotonic() - clock
        context.report_progress(STAGE_SUBMITTED, STAGES)

        logs: list[str] = []
        try:
            queue_s = await self._wait(http, headers, status_url, job_id, context, logs)
            result, _ = await http.json("GET", response_url, "fetching the result", headers=headers, job_id=job_id)
        except BaseException as exc:
            # Cancel in ComfyUI (or the task being torn down) also cancels the job at fal
            if isinstance(exc, (GenerationInterrupted, asyncio.CancelledError)) or context.interrupted():
                status = await http.best_effort("PUT", cancel_url, headers=headers)
                context.report_status(f"{self.name}: cancelled (provider answered {status or 'nothing'})")
            raise
        timings["queue"] = queue_s
        timings["wait"] = time.monotonic() - clock - timings["submit"]
        if isinstance(result, dict) and isinstance(result.get("timings"), dict):
            inference = result["timings"].get("inference")
            if isinstance(inference, (int, float)):
                timings["inference"] = float(inference)
        context.report_progress(STAGE_FINISHED, STAGES)

        entries = result.get("images") if isinstance(result, dict) else None
        if not entries:
            raise ProviderError(self.name, "the job finished without images", job_id=job_id)
        urls = [entry.get("url") if isinstance(entry, dict) else None for entry in entries]
        if not all(urls):
            raise ProviderError(self.name, "an image in the result has no url", job_id=job_id)
        clock = time.monotonic()
        images = await self.download_images(http, urls, job_id, context)
        timings["download"] = time.monotonic() - clock
        context.report_progress(STAGE_DOWNLOADED, STAGES)
        width, height = self.output_size(request)
        seed = result.get("seed")
        return CloudOutcome(
            images=images, job_id=job_id, seed=seed if isinstance(seed, int) else None,
            safety_flags=[bool(flag) for flag in result.get("has_nsfw_concepts") or []], timings=timings,
            cost_usd=round(width * height / 1e6 * PRICE_PER_MEGAPIXEL_USD * len(images), 4),
            details={"provider": "fal", "reference_upload": upload, "cost_basis": "fal's published $0.1 per megapixel",
                     "provider_logs": logs[-20:]},
        )

    async def _wait(self, http: CloudCall, headers: dict, status_url: str, job_id: str, context: RunContext,
                    logs: list[str]) -> float:
        """Poll until COMPLETED; returns the seconds spent in the queue. New log lines go to the node."""
        url = f"{status_url}{'&' if '?' in status_url else '?'}logs=1"
        queued = [0.0]

        async def check(waited: float) -> float | None:
            status, _ = await http.json("GET", url, "checking the job", headers=headers, job_id=job_id)
            if not isinstance(status, dict):
                raise ProviderError(self.name, "checking the job", detail="unexpected status shape", job_id=job_id)
            # fal returns every log line so far; keep the new ones
            lines = [str(line["message"]) for line in status.get("logs") or []
                     if isinstance(line, dict) and line.get("message")]
            logs.extend(lines[len(logs):])
            state = status.get("status")
            if state == "COMPLETED":
                if status.get("error"):
                    kind = f" ({status['error_type']})" if status.get("error_type") else ""
                    raise ProviderError(self.name, "the job failed", detail=f"{status['error']}{kind}", job_id=job_id)
                return queued[0]
            if state == "IN_QUEUE":
                queued[0] = waited
                position = status.get("queue_position")
                where = f" (position {position})" if position is not None else ""
                context.report_status(f"{self.name}: in queue{where} · {waited:.1f} s")
            else:
                latest = f" · {logs[-1]}" if logs else ""
                context.report_status(f"{self.name}: running · {waited:.1f} s{latest}")
            return None

        return await self.poll(http, job_id, check)
