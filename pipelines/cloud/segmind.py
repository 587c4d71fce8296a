"""Segmind InstantID, `v1/instantid` (blocking, the documented default) and `v2/instantid` (queued)
— the whole protocol in one place.

    v1  POST {base}/v1/instantid  -> the image itself (image/jpeg, …), or JSON with base64 images
    v2  POST {base}/v2/instantid  -> request_id, status_url, response_url
        GET  {status_url}         -> QUEUED | PROCESSING | COMPLETED | FAILED (FAILED may be HTTP 422)
        GET  {response_url}       -> output (URL, base64 or a list of them), metrics
    auth  x-api-key: <SEGMIND_API_KEY>

Images go inline as base64 (face_image, pose_image): nothing is stored at Segmind before the job.
The remaining credits (X-remaining-credits header, or metrics.remaining_credits) go into the info
output. InstantID takes no output size: the result is brought to width×height by the pack's
common rule (scale to cover, centre crop). Segmind has no cancel endpoint and no idempotency.
"""
from __future__ import annotations

import base64
import time

from ..contract import BackendLimits, Choice, Flag, GenerationRequest, ImageInput, NumberRange, RunContext
from ..images import decode_image
from .base import (STAGE_DOWNLOADED, STAGE_FINISHED, STAGE_SUBMITTED, STAGE_UPLOADED, STAGES, CloudOutcome,
                   VersionedCloudBackend, encode_reference)
from .transport import CloudCall, ProviderError, Response

# The document lists 29 allowed styles and names these ten; any other name can be typed.
KNOWN_STYLES = ("(No style)", "Watercolor", "Film Noir", "Neon", "Jungle", "Mars", "Vibrant Color", "Snow",
                "Line art", "Art Nouveau")
FAILED_STATES = {"FAILED", "ERROR", "CANCELLED"}

LIMITS = {
    version: BackendLimits(
        backend=f"Segmind InstantID ({version})",
        # InstantID has no size parameter; these bound the size the result is fitted to.
        width=NumberRange(256, 2048, integer=True),
        height=NumberRange(256, 2048, integer=True),
        seed=NumberRange(-1, 999999999999999, integer=True),
        steps=NumberRange(4, 100, integer=True),
        guidance=NumberRange(1, 25),
        num_images=NumberRange(1, 4, integer=True),
        identity_strength=NumberRange(0, 1),
        extras={
            "style": Choice(KNOWN_STYLES, open_ended=True),
            "adapter_strength": NumberRange(0, 1),
            "enhance_face_region": Flag(),
            "pose_image": ImageInput(),
        },
    )
    for version in ("v1", "v2")
}
API_VERSIONS = tuple(LIMITS)
DEFAULTS = {"steps": 10, "guidance": 5.0, "num_images": 1, "identity_strength": 0.8, "adapter_strength": 0.8,
            "enhance_face_region": True, "style": "(No style)"}


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class SegmindInstantID(VersionedCloudBackend):
    key_env = "SEGMIND_API_KEY"
    base_url_env = "SEGMIND_BASE_URL"
    default_base_url = "https://api.segmind.com"
    max_reference_side = 1536        # InstantID works at ~1024 px; smaller inline payloads
    limits_by_version = LIMITS

    def describe_error(self, response: Response) -> str:
        if response.headers.get("Content-Type", "").startswith("text/html"):
            return "the provider answered with an HTML page"       # e.g. 405: no JSON envelope
        return super().describe_error(response)

    def _payload(self, request: GenerationRequest) -> dict:
        extras = {**DEFAULTS, **{k: v for k, v in request.extras.items() if v is not None}}
        payload = {
            "face_image": base64.b64encode(encode_reference(request.reference, self.max_reference_side)).decode(),
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt,
            "style": extras["style"],
            "samples": request.num_images,
            "num_inference_steps": request.steps,
            "guidance_scale": request.guidance,
            "seed": request.seed,
            "identity_strength": request.identity_strength,
            "adapter_strength": extras["adapter_strength"],
            "enhance_face_region": extras["enhance_face_region"],
            # raw image bytes is the documented default; several samples need the JSON form
            "base64": request.num_images > 1,
        }
        if request.extras.get("pose_image") is not None:
            payload["pose_image"] = base64.b64encode(
                encode_reference(request.extras["pose_image"], self.max_reference_side)).decode()
        return payload

    async def _call(self, http: CloudCall, key: str, request: GenerationRequest, context: RunContext) -> CloudOutcome:
        headers = {"x-api-key": key}
        payload = self._payload(request)
        context.report_progress(STAGE_UPLOADED, STAGES)          # inline images: nothing to upload
        if self.api_version == "v1":
            return await self._call_v1(http, headers, payload, request, context)
        return await self._call_v2(http, headers, payload, request, context)

    async def _call_v1(self, http, headers, payload, request, context) -> CloudOutcome:
        clock = time.monotonic()
        context.report_status(f"{self.name}: generating (one blocking call)")
        response = await http.request("POST", f"{self.settings.base_url}/v1/instantid", "generating",
                                      billable=True, headers=headers, json=payload, timeout_s=http.timeouts.job)
        job_id = response.headers.get("x-request-id")
        context.report_progress(STAGE_FINISHED, STAGES)
        timings = {"generate": time.monotonic() - clock}
        images = await self._images_from(http, response, job_id, context)
        context.report_progress(STAGE_DOWNLOADED, STAGES)
        seed = response.headers.get("x-seed-value")
        return CloudOutcome(
            images=images, job_id=job_id,
            seed=int(seed) if seed and seed.lstrip("-").isdigit() else (request.seed if request.seed >= 0 else None),
            timings=timings, cost_usd=_number(response.headers.get("x-cost")),
            details=self._details(response.headers.get("X-remaining-credits"), response.headers.get("x-generation-time")),
        )

    async def _call_v2(self, http, headers, payload, request, context) -> CloudOutcome:
        base = self.settings.base_url
        clock = time.monotonic()
        context.report_status(f"{self.name}: submitting")
        submitted, _ = await http.json("POST", f"{base}/v2/instantid", "submitting the job", billable=True,
                                              headers=headers, json=payload)
        job_id = submitted.get("request_id") if isinstance(submitted, dict) else None
        if not job_id:
            raise ProviderError(self.name, "submitting the job", detail="no request_id in the answer")
        status_url = submitted.get("status_url") or f"{base}/v2/requests/{job_id}/status"
        response_url = submitted.get("response_url") or f"{base}/v2/requests/{job_id}"
        timings = {"submit": time.monotonic() - clock}
        context.report_progress(STAGE_SUBMITTED, STAGES)

        started = time.monotonic()

        async def check(waited: float) -> bool | None:
            # a FAILED job answers with HTTP 422 and its status body
            status, _ = await http.json("GET", status_url, "checking the job", headers=headers, job_id=job_id,
                                        ok=(200, 422))
            state = str(status.get("status", "")).upper() if isinstance(status, dict) else ""
            if state == "COMPLETED":
                return True
            if state in FAILED_STATES:
                raise ProviderError(self.name, "the job failed", detail=str(status.get("error") or state),
                                    job_id=job_id)
            context.report_status(f"{self.name}: {'queued' if state == 'QUEUED' else 'running'} · {waited:.1f} s")
            return None

        await self.poll(http, job_id, check)
        timings["wait"] = time.monotonic() - started
        context.report_progress(STAGE_FINISHED, STAGES)

        final = await http.request("GET", response_url, "fetching the result", headers=headers, job_id=job_id)
        images = await self._images_from(http, final, job_id, context)
        context.report_progress(STAGE_DOWNLOADED, STAGES)
        metrics = {}
        try:
            body = final.json()
            metrics = body.get("metrics") or {} if isinstance(body, dict) else {}
        except ValueError:
            pass
        for name in ("inference_time", "queue_time"):
            if _number(metrics.get(name)) is not None:
                timings[name.replace("_time", "")] = _number(metrics[name])
        return CloudOutcome(
            images=images, job_id=job_id, seed=request.seed if request.seed >= 0 else None, timings=timings,
            cost_usd=_number(metrics.get("cost")),
            details=self._details(metrics.get("remaining_credits", final.headers.get("X-remaining-credits")), None),
        )

    def _details(self, remaining_credits, generation_time) -> dict:
        details = {"provider": "segmind", "api_version": self.api_version}
        if remaining_credits is not None:
            details["remaining_credits"] = _number(remaining_credits)
        if _number(generation_time) is not None:
            details["provider_generation_s"] = _number(generation_time)
        return details

    async def _images_from(self, http: CloudCall, response: Response, job_id: str | None,
                           context: RunContext) -> list:
        """Raw image bytes, or JSON whose image/images/output hold base64, data URIs or URLs."""
        content_type = response.headers.get("Content-Type", "")
        if content_type.startswith("image/") or not content_type.startswith("application/json"):
            try:
                return [decode_image(response.body)]
            except ValueError as exc:
                if content_type.startswith("image/"):
                    raise ProviderError(self.name, "reading the image", detail=str(exc), job_id=job_id) from None
        try:
            body = response.json()
        except ValueError:
            raise ProviderError(self.name, "reading the result", detail="neither an image nor JSON",
                                job_id=job_id) from None
        found = []
        for key in ("image", "images", "output", "outputs"):
            value = body.get(key) if isinstance(body, dict) else None
            if value:
                found = value if isinstance(value, list) else [value]
                break
        if not found:
            raise ProviderError(self.name, "the job finished without images", job_id=job_id)
        if not all(isinstance(item, str) for item in found):
            raise ProviderError(self.name, "an image in the result is not text", job_id=job_id)
        # URLs are downloaded; bare base64 becomes a data: URI, decoded by the same path
        urls = [item if item.startswith(("http://", "https://", "data:")) else f"data:image/jpeg;base64,{item}"
                for item in found]
        return await self.download_images(http, urls, job_id, context)
