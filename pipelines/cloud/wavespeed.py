"""WaveSpeed AI InstantCharacter, API v3 (default) and v2 — the whole protocol in one place.

    upload   POST {base}/api/{v}/media/uploads  {"filename", "size", "content_type"}
                  -> data.upload {"method": "PUT", "url", "headers"}, data.download_url
             PUT  <upload.url> the bytes, with exactly upload.headers (no API key: another host)
             (the ticket flow of WaveSpeed's current SDK; when the ticket endpoint is missing,
              404/405, the older POST {base}/api/{v}/media/upload/binary multipart "file")
    submit   POST {base}/api/{v}/wavespeed-ai/instant-character         -> data.id
    poll     GET  {base}/api/{v}/predictions/{id}/result                -> data.status, outputs, ...
    auth     Authorization: Bearer <WAVESPEED_API_KEY>

Statuses: created → processing → completed | failed; cancelled, timeout and deleted are terminal
too. Every JSON body carries {"code", "message", "data"}; a body code other than 200 is an error
even on HTTP 200 (reported as the provider's code, not as an HTTP status). WaveSpeed has no cancel
endpoint: Cancel stops waiting, the job runs out. Uploaded files are kept 7 days by WaveSpeed; the
pack re-uses an upload for 6.

Sizes: WaveSpeed's current v3 page says 256–1536 per side, its v3 overview (and the v2 page) say
512–1536. The pack takes the stricter 512–1536 for both, so a size it allows is never refused
after the reference was uploaded.
"""
from __future__ import annotations

import aiohttp

from ..contract import BackendLimits, Flag, GenerationRequest, NumberRange
from .answers import AnswerError, as_object, flags, number, string_list, text
from .pricing import Price
from .base import (DONE, QUEUED, RUNNING, EncodedReference, JobResult, JobStatus, Submitted, Uploaded,
                   VersionedCloudBackend)
from .transport import CloudCall, ProviderError, Response, hint_for

MODEL_PATH = "wavespeed-ai/instant-character"
UPLOAD_KEEP_S = 6 * 24 * 3600
STATES = {"created": QUEUED, "processing": RUNNING, "completed": DONE}
TERMINAL_FAILURES = {"failed", "cancelled", "timeout", "deleted"}

_COMMON = dict(
    width=NumberRange(512, 1536, integer=True),
    height=NumberRange(512, 1536, integer=True),
    steps=NumberRange(1, 50, integer=True),
    guidance=NumberRange(0, 20),
    num_images=NumberRange(1, 4, integer=True),
    # WaveSpeed exposes no subject-scale parameter; the socket exists so nodes stay swappable.
    identity_strength=NumberRange(0, 2),
    extras={"enable_safety_checker": Flag()},
)
LIMITS = {
    "v3": BackendLimits(backend="WaveSpeed InstantCharacter (v3)", seed=NumberRange(-1, 2147483647, integer=True),
                        **_COMMON),
    "v2": BackendLimits(backend="WaveSpeed InstantCharacter (v2)", seed=NumberRange(-1, 9999999999, integer=True),
                        **_COMMON),
}
API_VERSIONS = tuple(LIMITS)
DEFAULTS = {"steps": 28, "guidance": 3.5, "num_images": 1, "enable_safety_checker": True}
PRICE = Price(source="WaveSpeed's API document gives no price for this model; see wavespeed.ai")


class WaveSpeedInstantCharacter(VersionedCloudBackend):
    provider = "wavespeed"
    price = PRICE
    company = "WaveSpeed AI"
    key_env = "WAVESPEED_API_KEY"
    base_url_env = "WAVESPEED_BASE_URL"
    default_base_url = "https://api.wavespeed.ai"
    limits_by_version = LIMITS
    stores_uploads = True
    default_max_jobs = 3          # WaveSpeed's lowest (default) tier runs 3 tasks at once

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def describe_error(self, response: Response) -> str:
        try:
            body = response.json()
        except ValueError:
            return response.body[:300].decode(errors="replace")
        if not isinstance(body, dict):
            return str(body)[:300]
        data = body.get("data")
        if isinstance(data, dict) and data.get("error"):
            return str(data["error"])
        return str(body.get("message") or body)[:300]

    def _url(self, path: str) -> str:
        return f"{self.settings.base_url}/api/{self.api_version}/{path}"

    def upload_cache_scope(self) -> str:
        return self._url("media")

    def _data(self, body, what: str, job_id: str | None = None) -> dict:
        """The `data` of a {"code", "message", "data"} envelope. A body code other than 200 is the
        provider's error, with its message, whatever `data` holds (often null)."""
        envelope = as_object(body, "the answer")
        code = envelope.get("code", 200)
        if code not in (200, "200"):
            data = envelope.get("data")
            message = envelope.get("message") or (data.get("error") if isinstance(data, dict) else None)
            numeric = int(code) if str(code).isdigit() else None
            raise ProviderError(self.name, what, provider_code=code, detail=str(message or "error"), job_id=job_id,
                                hint=hint_for(numeric, self.key_env) if numeric else None)
        return as_object(envelope.get("data"), "the answer's data")

    async def upload(self, http: CloudCall, reference: EncodedReference) -> Uploaded:
        filename = f"reference.{reference.extension}"
        ticket_body, ticket_response = await http.json(
            "POST", self._url("media/uploads"), "asking for an upload ticket", accept=(404, 405),
            json={"filename": filename, "size": len(reference.data), "content_type": reference.mime})
        if ticket_response.status in (404, 405):          # an API without tickets: the older binary upload
            return await self._upload_binary(http, reference, filename)
        data = self._data(ticket_body, "asking for an upload ticket")
        ticket = as_object(data.get("upload"), "the upload ticket")
        method = text(ticket, "method", "PUT").upper()
        if method not in ("PUT", "POST"):
            raise AnswerError(f"upload method {method!r} is not PUT or POST")
        headers = ticket.get("headers") or {}
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            raise AnswerError("the upload ticket's headers are not a map of text")
        # a pre-signed URL on a storage host: exactly the ticket's headers, never the key
        await http.request(method, text(ticket, "url"), "uploading the reference", authenticated=False,
                           headers=headers, data=reference.data, timeout_s=http.timeouts.transfer)
        return Uploaded(text(data, "download_url"), UPLOAD_KEEP_S)

    async def _upload_binary(self, http: CloudCall, reference: EncodedReference, filename: str) -> Uploaded:
        def form() -> aiohttp.FormData:
            fields = aiohttp.FormData()
            fields.add_field("file", reference.data, filename=filename, content_type=reference.mime)
            return fields

        body, _ = await http.json("POST", self._url("media/upload/binary"), "uploading the reference", data=form,
                                  timeout_s=http.timeouts.transfer)
        return Uploaded(text(self._data(body, "uploading the reference"), "download_url"), UPLOAD_KEEP_S)

    def reference_rejected(self, error: ProviderError) -> bool:
        return error.status in (400, 404, 410, 422) and "image" in (error.detail or "").lower()

    async def submit(self, http: CloudCall, request: GenerationRequest, image_url: str) -> Submitted:
        payload = {
            "prompt": request.prompt,
            "image": image_url,
            "size": f"{request.width}*{request.height}",
            "seed": request.seed,
            "negative_prompt": request.negative_prompt,
            "guidance_scale": request.guidance,
            "num_inference_steps": request.steps,
            "num_images": request.num_images,
            "enable_safety_checker": request.extras.get("enable_safety_checker", DEFAULTS["enable_safety_checker"]),
        }
        body, _ = await http.json("POST", self._url(MODEL_PATH), "submitting the job", billable=True, json=payload)
        job_id = text(self._data(body, "submitting the job"), "id")
        # the documented result address on the configured host (the answer's urls.get is not needed)
        return Submitted(job_id, status_url=self._url(f"predictions/{job_id}/result"))

    async def check(self, http: CloudCall, job: Submitted) -> JobStatus:
        body, _ = await http.json("GET", job.status_url, "checking the job", job_id=job.job_id)
        data = self._data(body, "checking the job", job.job_id)
        status = str(data.get("status", "")).lower()
        if status in TERMINAL_FAILURES:
            raise ProviderError(self.name, f"the job {status}", detail=str(data.get("error") or "") or None,
                                job_id=job.job_id)
        if status not in STATES:
            raise AnswerError(f"unknown job status {data.get('status')!r}")
        return JobStatus(STATES[status], data=data)

    async def fetch_result(self, http: CloudCall, job: Submitted, status: JobStatus) -> JobResult:
        data = status.data
        timings = {}
        if isinstance(data.get("timings"), dict) and number(data["timings"].get("inference")) is not None:
            timings["inference"] = number(data["timings"]["inference"]) / 1000.0
        if not data.get("outputs"):
            raise ProviderError(self.name, "the job finished without images", job_id=job.job_id)
        return JobResult(
            outputs=string_list(data.get("outputs"), "the job's outputs"),
            safety_flags=flags(data.get("has_nsfw_contents")), timings=timings,
            details={"api_version": self.api_version, "ignored_inputs": ["strength"]},
        )
