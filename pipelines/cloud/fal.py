"""fal.ai `fal-ai/instant-character` through fal's queue API — the whole protocol in one place.

    token    POST {rest}/storage/auth/token?storage_type=fal-cdn-v3  {}  -> token, token_type, base_url
    upload   POST {base_url}/files/upload  raw bytes, Authorization: <token_type> <token>  -> access_url
             (if the CDN upload fails, the image goes inline as a data URI instead)
    submit   POST {queue}/fal-ai/instant-character   -> request_id, status_url, response_url, cancel_url
    status   GET  {status_url}/stream?logs=1   server-sent events, one status object per `data:` line,
             closed after COMPLETED, a keep-alive comment every 15 s; when the stream is not offered
             or breaks: GET {status_url}?logs=1 on the polling schedule
             -> IN_QUEUE (queue_position) | IN_PROGRESS (logs) | COMPLETED
             (HTTP 202 while queued or running, 200 when completed: every 2xx is an answer)
    result   GET  {response_url}        -> images[].url, seed, has_nsfw_concepts, timings
    cancel   PUT  {cancel_url}          (sent on every failed exit after a submit: Cancel, timeout, error)
    auth     Authorization: Key <FAL_KEY>   (FAL_KEY may be "key_id:key_secret")

A COMPLETED status that carries an `error` is a failure. Uploads are asked to expire after one
day (X-Fal-Object-Lifecycle-Preference); the pack re-uses an upload for 20 hours. The key goes
only to the configured queue and REST hosts; the CDN gets the short-lived upload token.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
from typing import AsyncIterator

import aiohttp

from ..contract import BackendLimits, Choice, Flag, GenerationRequest, NumberRange
from .answers import AnswerError, as_object, flags, integer, number, text
from .pricing import Price
from .base import DONE, QUEUED, RUNNING, CloudBackend, EncodedReference, JobResult, JobStatus, Submitted, Uploaded, data_uri
from .transport import RETRYABLE_STATUS, CloudCall, ProviderError, Response

MODEL_PATH = "fal-ai/instant-character"
UPLOAD_LIFETIME_S = 24 * 3600
UPLOAD_KEEP_S = 20 * 3600
PRICE = Price(per_megapixel=0.1, source="fal's model page: $0.1 per megapixel")
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
STATES = {"IN_QUEUE": QUEUED, "IN_PROGRESS": RUNNING, "COMPLETED": DONE}
# fal sends a keep-alive comment every 15 s on the status stream; twice that in silence means it broke
STREAM_IDLE_S = 30.0
# the stream is not offered, or failed for a passing reason: follow the job by polling instead
STREAM_FALLBACK_STATUS = RETRYABLE_STATUS | {404, 405, 501}


class FalInstantCharacter(CloudBackend):
    name = "fal InstantCharacter"
    provider = "fal"
    price = PRICE
    company = "fal.ai"
    key_env = "FAL_KEY"
    base_url_env = "FAL_QUEUE_URL"
    default_base_url = "https://queue.fal.run"
    extra_url_envs = {"rest": ("FAL_REST_URL", "https://rest.fal.ai")}
    stores_uploads = True

    @property
    def limits(self) -> BackendLimits:
        return LIMITS

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Key {key}"}

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

    def upload_cache_scope(self) -> str:
        return self.url("rest")

    async def upload(self, http: CloudCall, reference: EncodedReference) -> Uploaded:
        """The CDN URL, or a data URI when the CDN upload is not possible (the job still runs)."""
        try:
            body, _ = await http.json("POST", f"{self.url('rest')}/storage/auth/token?storage_type=fal-cdn-v3",
                                      "getting an upload token", json={})
            token = as_object(body, "the upload token answer")
            cdn = text(token, "base_url").rstrip("/")
            uploaded, _ = await http.json(
                "POST", f"{cdn}/files/upload", "uploading the reference", authenticated=False,
                headers={"Authorization": f"{text(token, 'token_type', 'Bearer')} {text(token, 'token')}",
                         "Content-Type": reference.mime, "X-Fal-File-Name": f"reference.{reference.extension}",
                         "X-Fal-Object-Lifecycle-Preference": json.dumps(
                             {"expiration_duration_seconds": UPLOAD_LIFETIME_S})},
                data=reference.data, timeout_s=http.timeouts.transfer)
            return Uploaded(text(as_object(uploaded, "the upload answer"), "access_url"), UPLOAD_KEEP_S)
        except ProviderError as exc:
            if exc.status in (401, 403):
                raise                                   # a bad key fails the submit too: say so now
            return Uploaded(data_uri(reference), None, "inline (CDN upload failed)")
        except AnswerError:
            return Uploaded(data_uri(reference), None, "inline (CDN answer unusable)")

    def reference_rejected(self, error: ProviderError) -> bool:
        # fal validation errors name the field: "image_url: could not load the image"
        return error.status in (400, 404, 410, 422) and "image_url" in (error.detail or "")

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

    async def submit(self, http: CloudCall, request: GenerationRequest, image_url: str) -> Submitted:
        queue_url = f"{self.settings.base_url}/{MODEL_PATH}"
        body, _ = await http.json("POST", queue_url, "submitting the job", billable=True,
                                  json=self._payload(request, image_url))
        answer = as_object(body, "the submit answer")
        job_id = text(answer, "request_id")
        requests_url = f"{queue_url}/requests/{job_id}"
        return Submitted(job_id, status_url=text(answer, "status_url", f"{requests_url}/status"),
                         result_url=text(answer, "response_url", requests_url),
                         cancel_url=text(answer, "cancel_url", f"{requests_url}/cancel"))

    async def watch(self, http: CloudCall, job: Submitted) -> AsyncIterator[JobStatus]:
        """fal's status stream (server-sent events), so a finished job is seen at once; polling
        when the stream is not offered (404/405), breaks or stays silent past fal's keep-alives."""
        last: JobStatus | None = None
        stream = http.events(self._with_logs(f"{job.status_url}/stream"), "watching the job", job.job_id,
                             idle_s=STREAM_IDLE_S)
        try:
            async with contextlib.aclosing(stream):
                async for data in stream:
                    if data is None:                          # keep-alive: nothing new, budgets still apply
                        if last is not None:
                            yield last
                        continue
                    try:
                        body = json.loads(data)
                    except ValueError:
                        raise AnswerError("a status event is not JSON") from None
                    last = self._status(body, job)
                    yield last
                    if last.phase == DONE:
                        return
        except ProviderError as exc:
            if exc.status not in STREAM_FALLBACK_STATUS:    # e.g. 401: polling would fail the same way
                raise
        except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError):
            pass
        async for status in super().watch(http, job):
            yield status

    @staticmethod
    def _with_logs(url: str) -> str:
        return f"{url}{'&' if '?' in url else '?'}logs=1"

    async def check(self, http: CloudCall, job: Submitted) -> JobStatus:
        body, _ = await http.json("GET", self._with_logs(job.status_url), "checking the job", job_id=job.job_id)
        return self._status(body, job)

    def _status(self, body, job: Submitted) -> JobStatus:
        status = as_object(body, "the status answer")
        state = STATES.get(status.get("status"))
        if state is None:
            raise AnswerError(f"unknown job status {status.get('status')!r}")
        # fal returns every log line so far at each check; the new ones are kept
        lines = [str(line["message"]) for line in status.get("logs") or []
                 if isinstance(line, dict) and line.get("message")]
        job.logs.extend(lines[len(job.logs):])
        if state == DONE and status.get("error"):
            kind = f" ({status['error_type']})" if status.get("error_type") else ""
            raise ProviderError(self.name, "the job failed", detail=f"{status['error']}{kind}", job_id=job.job_id)
        if state == QUEUED:
            position = integer(status, "queue_position")
            return JobStatus(QUEUED, f"(position {position})" if position is not None else "")
        return JobStatus(state, job.logs[-1] if job.logs else "")

    async def fetch_result(self, http: CloudCall, job: Submitted, status: JobStatus) -> JobResult:
        body, _ = await http.json("GET", job.result_url, "fetching the result", job_id=job.job_id)
        result = as_object(body, "the result")
        entries = result.get("images")
        if not isinstance(entries, list) or not entries:
            raise ProviderError(self.name, "the job finished without images", job_id=job.job_id)
        images = [as_object(entry, "an image entry") for entry in entries]
        urls = [text(image, "url") for image in images]
        # billed per megapixel of what fal generated (the sizes it reports)
        megapixels = [(integer(image, "width") or 0) * (integer(image, "height") or 0) / 1e6 for image in images]
        timings = {}
        if isinstance(result.get("timings"), dict) and number(result["timings"].get("inference")) is not None:
            timings["inference"] = number(result["timings"]["inference"])
        return JobResult(
            outputs=urls, seed=integer(result, "seed"), safety_flags=flags(result.get("has_nsfw_concepts")),
            timings=timings, cost_usd=round(sum(megapixels) * PRICE.per_megapixel, 4) if all(megapixels) else None,
            details={"cost_basis": "fal's published $0.1 per megapixel", "provider_logs": job.logs[-20:]},
        )

    async def cancel(self, http: CloudCall, job: Submitted) -> str | None:
        status = await http.best_effort("PUT", job.cancel_url)
        return f"HTTP {status}" if status is not None else "no answer"
