"""Segmind InstantID, `v1/instantid` (blocking, the documented default) and `v2/instantid` (queued)
— the whole protocol in one place.

    v1  POST {base}/v1/instantid  -> the image itself (image/jpeg, …), or JSON with base64 images
    v2  POST {base}/v2/instantid  -> request_id, status_url, response_url
        GET  {status_url}         -> QUEUED | PROCESSING | COMPLETED | FAILED
                                     (a FAILED job answers HTTP 422 with that status in its body;
                                      any other 422 is an error of the request itself)
        GET  {response_url}       -> output (URL, base64 or a list of them), metrics
    auth  x-api-key: <SEGMIND_API_KEY>

Segmind documents `face_image` and `pose_image` as "string (uri)"; the pack sends them as data:
URIs (RFC 2397), which are URIs and keep the images inside the request: nothing is stored at
Segmind before the job. The remaining credits (X-remaining-credits header, or
metrics.remaining_credits) go into the info output. InstantID takes no output size: the result is
brought to width×height by the pack's common rule. Segmind has no cancel endpoint and no
idempotency.
"""
from __future__ import annotations

import base64
import binascii
import re

from ..contract import BackendLimits, Choice, Flag, GenerationRequest, ImageInput, NumberRange
from .answers import AnswerError, as_object, number, text
from .pricing import Price
from .base import (DONE, QUEUED, RUNNING, JobResult, JobStatus, Submitted, VersionedCloudBackend, data_uri,
                   encode_reference)
from .transport import CloudCall, ProviderError, Response

# The document lists 29 allowed styles and names these ten; any other name can be typed.
KNOWN_STYLES = ("(No style)", "Watercolor", "Film Noir", "Neon", "Jungle", "Mars", "Vibrant Color", "Snow",
                "Line art", "Art Nouveau")
URI_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
STATES = {"QUEUED": QUEUED, "PROCESSING": RUNNING, "COMPLETED": DONE}
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
PRICE = Price(per_call=0.025, approximate=True, source="Segmind's model page: ~$0.025 per call")


class SegmindInstantID(VersionedCloudBackend):
    provider = "segmind"
    price = PRICE
    company = "Segmind"
    key_env = "SEGMIND_API_KEY"
    base_url_env = "SEGMIND_BASE_URL"
    default_base_url = "https://api.segmind.com"
    max_reference_side = 1536        # InstantID works at ~1024 px; smaller inline payloads
    limits_by_version = LIMITS

    def auth_headers(self, key: str) -> dict[str, str]:
        return {"x-api-key": key}

    def describe_error(self, response: Response) -> str:
        if response.headers.get("Content-Type", "").startswith("text/html"):
            return "the provider answered with an HTML page"       # e.g. 405: no JSON envelope
        return super().describe_error(response)

    def _payload(self, request: GenerationRequest, face_uri: str) -> dict:
        extras = {**DEFAULTS, **{k: v for k, v in request.extras.items() if v is not None}}
        payload = {
            "face_image": face_uri,
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
            payload["pose_image"] = data_uri(encode_reference(request.extras["pose_image"], self.max_reference_side))
        return payload

    async def submit(self, http: CloudCall, request: GenerationRequest, image_url: str) -> Submitted:
        payload = self._payload(request, image_url)
        base = self.settings.base_url
        if self.api_version == "v1":
            # one blocking call: the answer is the image (or base64 JSON), so it is read with the image cap
            response = await http.request("POST", f"{base}/v1/instantid", "generating", billable=True, json=payload,
                                          timeout_s=http.timeouts.job, max_bytes=self.settings.max_download_bytes)
            seed = response.headers.get("x-seed-value", "")
            details = self._details(response.headers.get("X-remaining-credits"))
            if number(response.headers.get("x-generation-time")) is not None:
                details["provider_generation_s"] = number(response.headers["x-generation-time"])
            finished = JobResult(outputs=self._outputs(response, None),
                                 seed=int(seed) if seed.lstrip("-").isdigit() else None,
                                 cost_usd=number(response.headers.get("x-cost")), details=details)
            return Submitted(response.headers.get("x-request-id"), finished=finished)
        body, _ = await http.json("POST", f"{base}/v2/instantid", "submitting the job", billable=True, json=payload)
        answer = as_object(body, "the submit answer")
        job_id = text(answer, "request_id")
        return Submitted(job_id, status_url=text(answer, "status_url", f"{base}/v2/requests/{job_id}/status"),
                         result_url=text(answer, "response_url", f"{base}/v2/requests/{job_id}"))

    async def check(self, http: CloudCall, job: Submitted) -> JobStatus:
        response = await http.request("GET", job.status_url, "checking the job", job_id=job.job_id, accept=(422,))
        try:
            status = as_object(response.json(), "the status answer")
        except ValueError:
            status = {}
        state = str(status.get("status", "")).upper()
        if state in FAILED_STATES:
            raise ProviderError(self.name, "the job failed", detail=str(status.get("error") or state),
                                job_id=job.job_id)
        if response.status == 422:      # a 422 without FAILED: the request itself was refused
            raise http.error("checking the job", response, job.job_id)
        if state not in STATES:
            raise AnswerError(f"unknown job status {status.get('status')!r}")
        return JobStatus(STATES[state])

    async def fetch_result(self, http: CloudCall, job: Submitted, status: JobStatus) -> JobResult:
        final = await http.request("GET", job.result_url, "fetching the result", job_id=job.job_id,
                                   max_bytes=self.settings.max_download_bytes)
        outputs = self._outputs(final, job.job_id)
        try:
            body = final.json()
        except ValueError:
            body = {}
        metrics = body.get("metrics") if isinstance(body, dict) and isinstance(body.get("metrics"), dict) else {}
        timings = {name.replace("_time", ""): number(metrics[name]) for name in ("inference_time", "queue_time")
                   if number(metrics.get(name)) is not None}
        return JobResult(outputs=outputs, timings=timings, cost_usd=number(metrics.get("cost")),
                         details=self._details(metrics.get("remaining_credits",
                                                           final.headers.get("X-remaining-credits"))))

    def _details(self, remaining_credits) -> dict:
        details = {"api_version": self.api_version}
        if number(remaining_credits) is not None:
            details["remaining_credits"] = number(remaining_credits)
        return details

    def _outputs(self, response: Response, job_id: str | None) -> list[str | bytes]:
        """Raw image bytes, or JSON whose image/images/output/outputs hold base64, data URIs or URLs."""
        if not response.headers.get("Content-Type", "").startswith("application/json"):
            return [response.body]                    # the image itself; decoding verifies it
        try:
            body = as_object(response.json(), "the result")
        except ValueError:
            raise AnswerError("the result is neither an image nor JSON") from None
        found = next((body[key] for key in ("image", "images", "output", "outputs") if body.get(key)), None)
        if not found:
            raise ProviderError(self.name, "the job finished without images", job_id=job_id)
        outputs: list[str | bytes] = []
        for item in found if isinstance(found, list) else [found]:
            if not isinstance(item, str) or not item:
                raise AnswerError("an image in the result is not text")
            if URI_SCHEME.match(item):       # an address (base64 has no ':'): the download checks its scheme
                outputs.append(item)
                continue
            try:
                outputs.append(base64.b64decode(item, validate=True))     # bare base64
            except (binascii.Error, ValueError):
                raise AnswerError("an image in the result is neither a URL nor base64") from None
        return outputs
