"""What every cloud backend shares: settings, key lookup before any upload, the reference encoding,
and turning a provider's answer into a GenerationResult (one size rule, one info format)."""
from __future__ import annotations

import io
import time
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, ClassVar, Mapping, TypeVar

from PIL import Image

from ..contract import BackendLimits, GenerationBackend, GenerationRequest, GenerationResult, RunContext
from ..images import decode_image, downscale_to_fit, encode_image, fit_to_size, flatten_to_rgb
from .keys import KeySource
from .transport import CloudCall, ProviderError, Response, Timeouts, poll_delay
from .uploads import UploadCache

T = TypeVar("T")

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

    async def poll(self, http: CloudCall, job_id: str, check: Callable[[float], Awaitable[T | None]]) -> T:
        """Run `check(seconds waited)` on the polling schedule until it returns something; give up
        after the job timeout with the job id, so the user can find the job."""
        started = time.monotonic()
        while True:
            elapsed = time.monotonic() - started
            if elapsed > http.timeouts.job:
                raise ProviderError(self.name, f"no result after {int(elapsed)} s", job_id=job_id,
                                    hint="The job may still finish; look it up in the provider's dashboard")
            await http.sleep(poll_delay(elapsed))
            result = await check(time.monotonic() - started)
            if result is not None:
                return result

    async def download_images(self, http: CloudCall, urls: list[str], job_id: str | None,
                              context: RunContext) -> list[Image.Image]:
        """Fetch and verify every result image (URLs or data: URIs), reporting progress."""
        images = []
        for index, url in enumerate(urls, 1):
            context.report_status(f"{self.name}: downloading image {index}/{len(urls)}")
            images.append(await http.download(url, f"downloading image {index}", self.settings.max_download_bytes,
                                              job_id, decode=decode_image))
        return images

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


class VersionedCloudBackend(CloudBackend):
    """A provider with several API versions; each version has its own limits (and name)."""

    limits_by_version: ClassVar[Mapping[str, BackendLimits]]

    def __init__(self, settings: CloudSettings, api_version: str | None = None):
        versions = tuple(self.limits_by_version)
        api_version = api_version or versions[0]
        if api_version not in versions:
            raise ValueError(f"API version {api_version!r} is not one of {versions}")
        super().__init__(settings)
        self.api_version = api_version
        self.name = self.limits_by_version[api_version].backend

    @property
    def limits(self) -> BackendLimits:
        return self.limits_by_version[self.api_version]
