"""WaveSpeed AI InstantCharacter, API v3 (default) and v2 — the whole protocol in one place.

    upload   POST {base}/api/{v}/media/upload/binary   multipart "file"  -> data.download_url
    submit   POST {base}/api/{v}/wavespeed-ai/instant-character         -> data.id
    poll     GET  {base}/api/{v}/predictions/{id}/result                -> data.status, outputs, ...
    auth     Authorization: Bearer <WAVESPEED_API_KEY>

Statuses: created → processing → completed | failed; cancelled, timeout and deleted are terminal
too. Every JSON body carries {"code", "message", "data"}; a body code other than 200 is an error
even on HTTP 200. WaveSpeed has no cancel endpoint: Cancel stops waiting, the job runs out.
Uploaded files are kept 7 days by WaveSpeed; the pack re-uses an upload for 6.
"""
from __future__ import annotations

import time

import aiohttp

from ..contract import BackendLimits, Flag, GenerationRequest, NumberRange, RunContext
from .base import (STAGE_DOWNLOADED, STAGE_FINISHED, STAGE_SUBMITTED, STAGE_UPLOADED, STAGES, CloudOutcome,
                   VersionedCloudBackend, encode_reference)
from .transport import CloudCall, ProviderError, Response
from .uploads import content_key

MODEL_PATH = "wavespeed-ai/instant-character"
UPLOAD_KEEP_S = 6 * 24 * 3600
TERMINAL_FAILURES = {"failed", "cancelled", "timeout", "deleted"}

_COMMON = dict(
    steps=NumberRange(1, 50, integer=True),
    guidance=NumberRange(0, 20),
    num_images=NumberRange(1, 4, integer=True),
    # WaveSpeed exposes no subject-scale parameter; the socket exists so nodes stay swappable.
    identity_strength=NumberRange(0, 2),
    extras={"enable_safety_checker": Flag()},
)
LIMITS = {
    # v3 page: 256–1536 per side, seed -1…2147483647
    "v3": BackendLimits(backend="WaveSpeed InstantCharacter (v3)",
                        width=NumberRange(256, 1536, integer=True), height=NumberRange(256, 1536, integer=True),
                        seed=NumberRange(-1, 2147483647, integer=True), **_COMMON),
    # v2 page: 512–1536 per side, seed -1…9999999999
    "v2": BackendLimits(backend="WaveSpeed InstantCharacter (v2)",
                        width=NumberRange(512, 1536, integer=True), height=NumberRange(512, 1536, integer=True),
                        seed=NumberRange(-1, 9999999999, integer=True), **_COMMON),
}
API_VERSIONS = tuple(LIMITS)
DEFAULTS = {"steps": 28, "guidance": 3.5, "num_images": 1, "enable_safety_checker": True}


class WaveSpeedInstantCharacter(VersionedCloudBackend):
    key_env = "WAVESPEED_API_KEY"
    base_url_env = "WAVESPEED_BASE_URL"
    default_base_url = "https://api.wavespeed.ai"
    limits_by_version = LIMITS

    def describe_error(self, response: Response) -> str:
        try:
            body = response.json()
        except ValueError:
            return response.body[:300].decode(errors="replace")
        data = body.get("data") if isinstance(body, dict) else None
        if isinstance(data, dict) and data.get("error"):
            return str(data["error"])
        return str(body.get("message") or body)[:300] if isinstance(body, dict) else str(body)[:300]

    def _url(self, path: str) -> str:
        return f"{self.settings.base_url}/api/{self.api_version}/{path}"

    def _data(self, body, response: Response, what: str, job_id: str | None = None) -> dict:
        """The `data` of a {"code", "message", "data"} envelope; a body code other than 200 is an error."""
        if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
            raise ProviderError(self.name, what, status=response.status, detail="unexpected response shape",
                                job_id=job_id)
        code = body.get("code", 200)
        if code != 200:
            raise ProviderError(self.name, what, status=code, detail=str(body.get("message") or "error"), job_id=job_id)
        return body["data"]

    async def _upload(self, http: CloudCall, headers: dict, request: GenerationRequest) -> tuple[str, bool]:
        data = encode_reference(request.reference, self.max_reference_side)
        key = content_key("wavespeed", self._url("media"), data)
        cached = self.settings.uploads.get(key)
        if cached:
            return cached, False
        def form() -> aiohttp.FormData:
            fields = aiohttp.FormData()
            fields.add_field("file", data, filename="reference.png", content_type="image/png")
            return fields

        body, response = await http.json("POST", self._url("media/upload/binary"), "uploading the reference",
                                         headers=headers, data=form, timeout_s=http.timeouts.transfer)
        url = self._data(body, response, "uploading the reference").get("download_url")
        if not url:
            raise ProviderError(self.name, "uploading the reference", detail="no download_url in the answer")
        self.settings.uploads.put(key, url, UPLOAD_KEEP_S)
        return url, True

    async def _call(self, http: CloudCall, key: str, request: GenerationRequest, context: RunContext) -> CloudOutcome:
        headers = {"Authorization": f"Bearer {key}"}
        timings: dict[str, float] = {}
        clock = time.monotonic()
        context.report_status(f"{self.name}: uploading the reference")
        image_url, uploaded = await self._upload(http, headers, request)
        timings["upload"] = time.monotonic() - clock
        context.report_progress(STAGE_UPLOADED, STAGES)

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
        clock = time.monotonic()
        context.report_status(f"{self.name}: submitting")
        body, response = await http.json("POST", self._url(MODEL_PATH), "submitting the job", billable=True,
                                         headers=headers, json=payload)
        job_id = self._data(body, response, "submitting the job").get("id")
        if not job_id:
            raise ProviderError(self.name, "submitting the job", detail="no job id in the answer")
        timings["submit"] = time.monotonic() - clock
        context.report_progress(STAGE_SUBMITTED, STAGES)

        data = await self._wait(http, headers, job_id, context)
        timings["wait"] = time.monotonic() - clock - timings["submit"]
        if isinstance(data.get("timings"), dict) and isinstance(data["timings"].get("inference"), (int, float)):
            timings["inference"] = data["timings"]["inference"] / 1000.0
        context.report_progress(STAGE_FINISHED, STAGES)

        outputs = data.get("outputs") or []
        if not outputs:
            raise ProviderError(self.name, "the job finished without images", job_id=job_id)
        clock = time.monotonic()
        images = await self.download_images(http, outputs, job_id, context)
        timings["download"] = time.monotonic() - clock
        context.report_progress(STAGE_DOWNLOADED, STAGES)
        flags = [bool(flag) for flag in data.get("has_nsfw_contents") or []]
        return CloudOutcome(
            images=images, job_id=job_id, seed=request.seed if request.seed >= 0 else None,
            safety_flags=flags, timings=timings,
            details={"provider": "wavespeed", "api_version": self.api_version, "uploaded_reference": uploaded,
                     "ignored_inputs": ["strength"]},
        )

    async def _wait(self, http: CloudCall, headers: dict, job_id: str, context: RunContext) -> dict:
        url = self._url(f"predictions/{job_id}/result")

        async def check(waited: float) -> dict | None:
            body, response = await http.json("GET", url, "checking the job", headers=headers, job_id=job_id)
            data = self._data(body, response, "checking the job", job_id)
            status = str(data.get("status", "")).lower()
            if status == "completed":
                return data
            if status in TERMINAL_FAILURES:
                raise ProviderError(self.name, f"the job {status}", detail=str(data.get("error") or "") or None,
                                    job_id=job_id)
            label = "queued" if status == "created" else status or "waiting"
            context.report_status(f"{self.name}: {label} · {waited:.1f} s")
            return None

        return await self.poll(http, job_id, check)
