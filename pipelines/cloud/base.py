"""What every cloud backend shares: settings, key lookup before any upload, the reference encoding,
and turning a provider's answer into a GenerationResult (one size rule, one info format)."""
from __future__ import annotations

import io
import time
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

from PIL import Image

from ..contract import GenerationBackend, GenerationRequest, GenerationResult, RunContext
from ..images import downscale_to_fit, encode_image, fit_to_size, flatten_to_rgb
from .keys import KeySource
from .transport import CloudCall, ProviderError, Response, Timeouts
from .uploads import UploadCache

# Progress bar stages of every cloud call.
STAGES = 4
STAGE_UPLOADED, STAGE_SUBMITTED, STAGE_FINISHED, STAGE_DOWNLOADED = 1, 2, 3, 4


@dataclass(frozen=True)
class CloudSettings:
    base_url: str
    keys: KeySource = field(default_factory=KeySource)
    uploads: UploadCache = field(default_factory=UploadCache)
    timeouts: Timeouts = field(default_factory=Timeouts)
    max_download_bytes: int = 64 * 1024 * 1024


@dataclass
class CloudOutcome:
    """What a provider call produced, before the shared finishing steps."""

    images: list[Image.Image]
    job_id: str | None = None
    seed: int | None = None
    safety_flags: list[bool] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    cost_usd: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


def encode_reference(image: Image.Image, max_side: int) -> bytes:
    """RGB, no larger than the provider takes, PNG (lossless); JPEG if the PNG would be huge."""
    prepared = downscale_to_fit(flatten_to_rgb(image), max_side)
    data = encode_image(prepared, "PNG")
    return data if len(data) <= 8 * 1024 * 1024 else encode_image(prepared, "JPEG", quality=95)


def image_mime(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as probe:
        return Image.MIME.get(probe.format, "application/octet-stream")


class CloudBackend(GenerationBackend):
    name: ClassVar[str]            # shown in every message, e.g. "fal InstantCharacter"
    key_env: ClassVar[str]
    base_url_env: ClassVar[str]
    default_base_url: ClassVar[str]
    max_reference_side: ClassVar[int] = 2048

    def __init__(self, settings: CloudSettings):
        self.settings = settings

    @classmethod
    def base_url_from(cls, environ: Mapping[str, str]) -> str:
        return (environ.get(cls.base_url_env) or cls.default_base_url).rstrip("/")

    def describe_error(self, response: Response) -> str:
        """The provider's own message from an error body (providers override for their envelope)."""
        try:
            body = response.json()
        except ValueError:
            return response.body[:300].decode(errors="replace")
        if isinstance(body, dict):
            for key in ("message", "error", "detail"):
                if body.get(key):
                    return str(body[key])
        return str(body)[:300]

    async def _run(self, request: GenerationRequest, context: RunContext) -> GenerationResult:
        key = self.settings.keys.require(self.key_env, self.name)   # before any upload or spend
        started = time.monotonic()
        async with CloudCall(self.name, self.key_env, [key], context, self.settings.timeouts,
                             self.describe_error) as http:
            outcome = await self._call(http, key, request, context)
        outcome.timings["total"] = time.monotonic() - started
        return self._finish(outcome, request)

    @abstractmethod
    async def _call(self, http: CloudCall, key: str, request: GenerationRequest,
                    context: RunContext) -> CloudOutcome: ...

    def output_size(self, request: GenerationRequest) -> tuple[int, int]:
        return request.width, request.height

    def _finish(self, outcome: CloudOutcome, request: GenerationRequest) -> GenerationResult:
        """Every output is brought to the requested size by one rule (scale to cover, centre crop),
        so a batch always stacks and swapping providers never changes the size downstream."""
        if not outcome.images:
            raise ProviderError(self.name, "the job finished without images", job_id=outcome.job_id)
        width, height = self.output_size(request)
        provider_sizes = [list(image.size) for image in outcome.images]
        images = [fit_to_size(image, width, height) for image in outcome.images]
        details = dict(outcome.details)
        if any(size != [width, height] for size in provider_sizes):
            details["provider_sizes"] = provider_sizes
        if len(images) < request.num_images:
            details["missing_images"] = request.num_images - len(images)
        return GenerationResult(
            images=images, backend=self.name, seed=outcome.seed, job_id=outcome.job_id,
            timings=outcome.timings, safety_flags=outcome.safety_flags, cost_usd=outcome.cost_usd,
            details=details,
        )
