"""What every cloud backend shares: settings, key lookup before any upload, the reference upload
(with its cache), the upload → submit → wait → download sequence with its timings and budgets,
the provider's cancel on every failed exit after a submit, key redaction of everything that
leaves a call, and turning a provider's answer into a GenerationResult (one size rule, one info
format).

A provider file implements only its protocol: `auth_headers`, `upload`, `submit`, `check`,
`fetch_result` and, where the provider has one, `cancel`.
"""
from __future__ import annotations

import base64
import contextlib
import time
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, ClassVar, Mapping

from PIL import Image

from ..contract import BackendLimits, GenerationBackend, GenerationRequest, GenerationResult, RunContext
from ..images import decode_image, downscale_to_fit, encode_image, fit_to_size, flatten_to_rgb
from .answers import AnswerError
from .keys import KeySource
from .pricing import Price
from .slots import JobSlots
from .transport import CloudCall, ProviderError, Redactor, Response, Timeouts, poll_delay
from .uploads import UploadCache, content_key

# Progress bar stages of every cloud call.
STAGES = 4
STAGE_UPLOADED, STAGE_SUBMITTED, STAGE_FINISHED, STAGE_DOWNLOADED = 1, 2, 3, 4

QUEUED, RUNNING, DONE = "queued", "running", "done"


@dataclass(frozen=True)
class CloudSettings:
    base_url: str
    keys: KeySource = field(default_factory=KeySource)
    uploads: UploadCache = field(default_factory=UploadCache)
    timeouts: Timeouts = field(default_factory=Timeouts)
    max_download_bytes: int = 64 * 1024 * 1024
    # further configured addresses of the provider by role (fal: "rest"); the key goes to these too
    extra_urls: Mapping[str, str] = field(default_factory=dict)
    # how many jobs of this provider may run at once (None: no limit)
    slots: JobSlots | None = None


@dataclass(frozen=True)
class EncodedReference:
    data: bytes
    mime: str

    @property
    def extension(self) -> str:
        return "jpg" if self.mime == "image/jpeg" else self.mime.split("/")[-1]


@dataclass(frozen=True)
class Uploaded:
    """What a provider's upload gave: a URL the job can read, and how long it may be re-used
    (None: not cacheable, e.g. an inline data URI)."""

    url: str
    keep_s: float | None
    how: str = "uploaded"


@dataclass
class JobResult:
    """A finished job: its images (URLs, data: URIs or raw bytes) and what the provider said about it."""

    outputs: list[str | bytes]
    seed: int | None = None
    safety_flags: list[bool] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    cost_usd: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Submitted:
    """An accepted job. Blocking providers answer with the result at once (`finished`)."""

    job_id: str | None
    status_url: str | None = None
    result_url: str | None = None
    cancel_url: str | None = None
    finished: JobResult | None = None
    logs: list[str] = field(default_factory=list)     # the provider's log lines so far


@dataclass
class JobStatus:
    """One status check: queued, running or done, a note for the user (queue position, the
    provider's latest log line) and whatever the provider needs to fetch the result."""

    phase: str
    note: str = ""
    data: Any = None


def encode_reference(image: Image.Image, max_side: int) -> EncodedReference:
    """RGB, no larger than the provider takes, PNG (lossless); JPEG if the PNG would be huge."""
    prepared = downscale_to_fit(flatten_to_rgb(image), max_side)
    data = encode_image(prepared, "PNG")
    if len(data) > 8 * 1024 * 1024:
        return EncodedReference(encode_image(prepared, "JPEG", quality=95), "image/jpeg")
    return EncodedReference(data, "image/png")


def data_uri(reference: EncodedReference) -> str:
    return f"data:{reference.mime};base64,{base64.b64encode(reference.data).decode()}"


class RedactingContext:
    """The run context seen by provider code: every status text passes the redactor first."""

    def __init__(self, context: RunContext, redact: Redactor):
        self._context, self._redact = context, redact

    def report_status(self, text: str) -> None:
        self._context.report_status(self._redact(text))

    def report_progress(self, done: float, total: float, preview: Any = None) -> None:
        self._context.report_progress(done, total, preview)

    def interrupted(self) -> bool:
        return self._context.interrupted()


def redact_json(value: Any, redact: Redactor) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [redact_json(item, redact) for item in value]
    if isinstance(value, dict):
        return {key: redact_json(item, redact) for key, item in value.items()}
    return value


class CloudBackend(GenerationBackend):
    name: ClassVar[str]            # shown in every message, e.g. "fal InstantCharacter"
    provider: ClassVar[str]        # short id used in the registry and the info output
    key_env: ClassVar[str]
    price: ClassVar[Price]            # what a job costs, as the provider publishes it
    company: ClassVar[str]            # who runs the service, for the key-status panel
    base_url_env: ClassVar[str]
    default_base_url: ClassVar[str]
    # further addresses by role: role -> (environment variable, default)
    extra_url_envs: ClassVar[Mapping[str, tuple[str, str]]] = {}
    max_reference_side: ClassVar[int] = 2048
    # jobs at once unless CHARACTER_IDENTITY_MAX_JOBS_<PROVIDER> says otherwise (0: no limit)
    default_max_jobs: ClassVar[int] = 4
    # whether `upload` stores the reference at the provider (then uploads are cached and re-used)
    stores_uploads: ClassVar[bool] = False
    timeout_envs: ClassVar[Mapping[str, str]] = {"job": "CHARACTER_IDENTITY_JOB_TIMEOUT",
                                                  "queue": "CHARACTER_IDENTITY_QUEUE_TIMEOUT"}

    def __init__(self, settings: CloudSettings, api_version: str | None = None):
        if api_version is not None:
            raise ValueError(f"{self.name} has no API versions (got {api_version!r})")
        self.settings = settings

    @classmethod
    def base_url_from(cls, environ: Mapping[str, str]) -> str:
        return (environ.get(cls.base_url_env) or cls.default_base_url).rstrip("/")

    @classmethod
    def extra_urls_from(cls, environ: Mapping[str, str]) -> dict[str, str]:
        return {role: (environ.get(env) or default).rstrip("/") for role, (env, default) in cls.extra_url_envs.items()}

    def url(self, role: str) -> str:
        if role == "base":
            return self.settings.base_url
        return self.settings.extra_urls.get(role) or self.extra_url_envs[role][1]

    # ---- the provider's protocol ----------------------------------------------------------

    @abstractmethod
    def auth_headers(self, key: str) -> dict[str, str]: ...

    async def upload(self, http: CloudCall, reference: EncodedReference) -> Uploaded:
        """Make the reference readable by the job. Default: inline as a data: URI (nothing stored)."""
        return Uploaded(data_uri(reference), keep_s=None, how="inline")

    def upload_cache_scope(self) -> str:
        """Uploads are re-used per provider address (an emulator's files are not the real CDN's)."""
        return self.settings.base_url

    def reference_rejected(self, error: ProviderError) -> bool:
        """Whether a refused submit says the reference URL is gone or unusable."""
        return False

    @abstractmethod
    async def submit(self, http: CloudCall, request: GenerationRequest, image_url: str) -> Submitted: ...

    async def check(self, http: CloudCall, job: Submitted) -> JobStatus:
        raise NotImplementedError(f"{self.name} answers at once; it has no status to check")

    async def fetch_result(self, http: CloudCall, job: Submitted, status: JobStatus) -> JobResult:
        raise NotImplementedError(f"{self.name} answers at once; it has no result to fetch")

    async def cancel(self, http: CloudCall, job: Submitted) -> str | None:
        """Ask the provider to stop the job; returns what it answered. Default: no cancel endpoint."""
        return None

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

    def output_size(self, request: GenerationRequest) -> tuple[int, int]:
        return request.width, request.height

    # ---- the shared sequence ----------------------------------------------------------------

    async def _run(self, request: GenerationRequest, context: RunContext) -> GenerationResult:
        key = self.settings.keys.require(self.key_env, self.name)   # before any upload or spend
        redact = Redactor([key])
        context = RedactingContext(context, redact)
        started = time.monotonic()
        try:
            async with CloudCall(self.name, self.key_env, context, auth_headers=self.auth_headers(key),
                                 trusted_urls=[self.settings.base_url, *self._extra_urls()], secrets=[key],
                                 timeouts=self.settings.timeouts, describe_error=self.describe_error) as http:
                result = await self._call(http, request, context)
        except ProviderError as exc:
            raise exc.redact(redact)
        result.timings["total"] = time.monotonic() - started
        result.details = redact_json(result.details, redact)
        return result

    def _extra_urls(self) -> list[str]:
        return [self.url(role) for role in self.extra_url_envs]

    async def _call(self, http: CloudCall, request: GenerationRequest, context: RunContext) -> GenerationResult:
        timings: dict[str, float] = {}
        reference = encode_reference(request.reference, self.max_reference_side)
        clock = time.monotonic()
        image_url, how, cache_key = await self._reference_url(http, reference, context)
        timings["upload"] = time.monotonic() - clock
        context.report_progress(STAGE_UPLOADED, STAGES)

        async with self._slot(http, context):
            clock = time.monotonic()
            job, how = await self._submit(http, request, reference, (image_url, how, cache_key), context)
            timings["submit"] = time.monotonic() - clock
            context.report_progress(STAGE_SUBMITTED, STAGES)

            clock = time.monotonic()
            finished = job.finished is not None
            try:
                if not finished:
                    status = await self._wait(http, job, context, timings)
                    finished = True
                    result = await self._parsed(self.fetch_result(http, job, status), "fetching the result", job)
                else:
                    result = job.finished
            except BaseException:
                # a job left behind keeps running and may be billed: stop it where the provider can
                if not finished and job.job_id:
                    answer = await self.cancel(http, job)
                    if answer is not None:
                        context.report_status(f"{self.name}: asked the provider to cancel job {job.job_id} ({answer})")
                raise
            timings["wait"] = time.monotonic() - clock
        context.report_progress(STAGE_FINISHED, STAGES)

        self._keep_requested(result, request.num_images)
        clock = time.monotonic()
        images = await self._download(http, result.outputs, job.job_id, context)
        timings["download"] = time.monotonic() - clock
        context.report_progress(STAGE_DOWNLOADED, STAGES)
        timings.update(result.timings)
        return self._finish(request, images, job, result, timings, how)

    @staticmethod
    def _keep_requested(result: JobResult, wanted: int) -> None:
        """Never fetch more images than were asked for: extra outputs are dropped unread (a provider
        answer could list any number of URLs) and counted in the info output."""
        extra = len(result.outputs) - wanted
        if extra > 0:
            result.outputs = result.outputs[:wanted]
            result.safety_flags = result.safety_flags[:wanted]
            result.details["ignored_outputs"] = extra

    def _slot(self, http: CloudCall, context: RunContext):
        """One of the provider's job slots, held from submit until the job is over."""
        if self.settings.slots is None:
            return contextlib.nullcontext()

        def waiting(seconds: float) -> None:
            context.report_status(f"{self.name}: waiting for a free job slot ({self.settings.slots.limit} "
                                  f"{self.provider} jobs already running) · {seconds:.1f} s")

        return self.settings.slots.hold(self.provider, http.sleep, waiting)

    async def _parsed(self, awaitable, what: str, job: Submitted | None = None):
        """Await a protocol step; a malformed provider answer becomes one clear ProviderError."""
        try:
            return await awaitable
        except AnswerError as exc:
            raise ProviderError(self.name, what, detail=f"unexpected answer: {exc}",
                                job_id=job.job_id if job else None) from None

    async def _reference_url(self, http: CloudCall, reference: EncodedReference, context: RunContext,
                             use_cache: bool = True) -> tuple[str, str, str]:
        """→ (URL the job reads, how it got there, cache key). An upload is re-used while fresh."""
        cache_key = content_key(self.provider, self.upload_cache_scope(), reference.data)
        cached = self.settings.uploads.get(cache_key) if use_cache and self.stores_uploads else None
        if cached:
            return cached, "cached", cache_key
        if self.stores_uploads:
            context.report_status(f"{self.name}: uploading the reference")
        uploaded = await self._parsed(self.upload(http, reference), "uploading the reference")
        if uploaded.keep_s and self.stores_uploads:
            self.settings.uploads.put(cache_key, uploaded.url, uploaded.keep_s)
        return uploaded.url, uploaded.how, cache_key

    async def _submit(self, http: CloudCall, request: GenerationRequest, reference: EncodedReference,
                      uploaded: tuple[str, str, str], context: RunContext) -> tuple[Submitted, str]:
        image_url, how, cache_key = uploaded
        try:
            context.report_status(f"{self.name}: submitting")
            job = await self._parsed(self.submit(http, request, image_url), "submitting the job")
        except ProviderError as exc:
            # A refused submit cost nothing; if the provider lost a cached upload, upload once more.
            if how != "cached" or not self.reference_rejected(exc):
                raise
            self.settings.uploads.evict(cache_key)
            context.report_status(f"{self.name}: the provider no longer has the cached reference; uploading it again")
            image_url, how, _ = await self._reference_url(http, reference, context, use_cache=False)
            job = await self._parsed(self.submit(http, request, image_url), "submitting the job")
        return job, how

    async def watch(self, http: CloudCall, job: Submitted) -> AsyncIterator[JobStatus]:
        """The job's statuses until it is done. Default: `check` on the polling schedule (soon at
        first, backing off with the time waited). A provider with a status stream overrides this."""
        started = time.monotonic()
        while True:
            await http.sleep(poll_delay(time.monotonic() - started))
            yield await self.check(http, job)

    async def _wait(self, http: CloudCall, job: Submitted, context: RunContext,
                    timings: dict[str, float]) -> JobStatus:
        """Follow the job until it is done. Queue time and processing time have separate budgets
        (queued time is not billed, and a busy provider is no reason to give up); the status text
        says which budget is running."""
        timeouts = http.timeouts
        started = time.monotonic()
        running_since: float | None = None
        try:
            async with contextlib.aclosing(self.watch(http, job)) as statuses:
                async for status in statuses:
                    now = time.monotonic()
                    if status.phase == DONE:
                        timings["queue"] = (running_since or now) - started
                        return status
                    if status.phase == QUEUED and running_since is None:
                        label, spent, budget, setting = ("in queue", now - started, timeouts.queue,
                                                         self.timeout_envs["queue"])
                    else:
                        running_since = running_since or now
                        label, spent, budget, setting = ("running", now - running_since, timeouts.job,
                                                         self.timeout_envs["job"])
                    if spent > budget:
                        raise ProviderError(self.name, f"still {label} after {int(spent)} s", job_id=job.job_id, hint=(
                            f"The {label} limit is {int(budget)} s ({setting}); the job was cancelled where the "
                            "provider allows it, otherwise look it up in the provider's dashboard"))
                    note = f" {status.note}" if status.note and label == "in queue" else ""
                    tail = f" · {status.note}" if status.note and label == "running" else ""
                    context.report_status(f"{self.name}: {label}{note} · {spent:.1f} s of {int(budget)} s{tail}")
        except AnswerError as exc:
            raise ProviderError(self.name, "checking the job", detail=f"unexpected answer: {exc}",
                                job_id=job.job_id) from None
        raise ProviderError(self.name, "checking the job", detail="the status updates ended before the job was done",
                            job_id=job.job_id)

    async def _download(self, http: CloudCall, outputs: list[str | bytes], job_id: str | None,
                        context: RunContext) -> list[Image.Image]:
        """Fetch and verify every result image (URLs, data: URIs or bytes), reporting progress."""
        images = []
        for index, output in enumerate(outputs, 1):
            what = f"reading image {index}"
            if isinstance(output, bytes):
                try:
                    images.append(decode_image(output))
                except ValueError as exc:
                    raise ProviderError(self.name, what, detail=str(exc), job_id=job_id) from None
                continue
            context.report_status(f"{self.name}: downloading image {index}/{len(outputs)}")
            images.append(await http.download(output, f"downloading image {index}", self.settings.max_download_bytes,
                                              job_id, decode=decode_image))
        return images

    def _finish(self, request: GenerationRequest, images: list[Image.Image], job: Submitted, result: JobResult,
                timings: dict[str, float], how: str) -> GenerationResult:
        """Every output is brought to the requested size by one rule (scale to cover, centre crop),
        so a batch always stacks and swapping providers never changes the size downstream."""
        if not images:
            raise ProviderError(self.name, "the job finished without images", job_id=job.job_id)
        width, height = self.output_size(request)
        provider_sizes = [list(image.size) for image in images]
        details = {"provider": self.provider, "reference_upload": how, **result.details}
        if any(size != [width, height] for size in provider_sizes):
            details["provider_sizes"] = provider_sizes
        if len(images) < request.num_images:
            details["missing_images"] = request.num_images - len(images)
        # a provider that does not report the seed used the one asked for (unless it was -1: random)
        seed = result.seed if result.seed is not None else (request.seed if request.seed >= 0 else None)
        return GenerationResult(
            images=[fit_to_size(image, width, height) for image in images], backend=self.name, seed=seed,
            job_id=job.job_id, timings=timings, safety_flags=result.safety_flags, cost_usd=result.cost_usd,
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
        self.settings = settings
        self.api_version = api_version
        self.name = self.limits_by_version[api_version].backend

    @property
    def limits(self) -> BackendLimits:
        return self.limits_by_version[self.api_version]
