"""The one generation contract every backend (local or cloud) implements.

A `GenerationRequest` goes in, a `GenerationResult` comes out. Each backend declares its
`BackendLimits`; `GenerationBackend.generate` validates the request against them before any
network call or weight load, so a bad value costs neither credits nor minutes of loading.

Nothing here imports ComfyUI: the node layer adapts ComfyUI's IMAGE tensors, progress bar and
interrupt flag to these types.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol

from PIL import Image

# The widest seed range every provider accepts (WaveSpeed and fal take a signed 32-bit int).
SEED_MAX = 2**31 - 1


class RequestValidationError(ValueError):
    """A request value the chosen backend cannot take. Names the field, the value and what is allowed."""

    def __init__(self, backend: str, field_name: str, value: Any, allowed: str):
        self.backend = backend
        self.field_name = field_name
        self.value = value
        self.allowed = allowed
        shown = repr(value) if isinstance(value, str) else value
        super().__init__(f"{backend}: {field_name} = {shown} is not allowed; {allowed}.")


class GenerationInterrupted(Exception):
    """The user cancelled the run (ComfyUI's Cancel / interrupt). Not an error."""


# --------------------------------------------------------------------------------------------
# Field specifications: each knows how to check one value and how to describe what it allows.


def _format_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


@dataclass(frozen=True)
class NumberRange:
    """An inclusive numeric range, optionally restricted to multiples of `multiple_of`."""

    minimum: float
    maximum: float
    integer: bool = False
    multiple_of: int | None = None

    def describe(self) -> str:
        text = f"allowed range is {_format_number(self.minimum)}–{_format_number(self.maximum)}"
        if self.multiple_of:
            text += f" in multiples of {self.multiple_of}"
        return text

    def check(self, backend: str, name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RequestValidationError(backend, name, value, "expected a number; " + self.describe())
        if self.integer and not float(value).is_integer():
            raise RequestValidationError(backend, name, value, "expected a whole number; " + self.describe())
        if not math.isfinite(value) or not self.minimum <= value <= self.maximum:
            raise RequestValidationError(backend, name, value, self.describe())
        if self.multiple_of and int(value) % self.multiple_of:
            raise RequestValidationError(backend, name, value, self.describe())


@dataclass(frozen=True)
class Choice:
    """One of a fixed set of strings; with `open_ended`, any non-empty string is accepted too."""

    options: tuple[str, ...]
    open_ended: bool = False

    def describe(self) -> str:
        listed = ", ".join(repr(o) for o in self.options)
        return f"allowed values are {listed}" + (" or any other non-empty name" if self.open_ended else "")

    def check(self, backend: str, name: str, value: Any) -> None:
        if not isinstance(value, str):
            raise RequestValidationError(backend, name, value, "expected text; " + self.describe())
        if value in self.options or (self.open_ended and value.strip()):
            return
        raise RequestValidationError(backend, name, value, self.describe())


@dataclass(frozen=True)
class Flag:
    """A true/false switch."""

    def describe(self) -> str:
        return "expected true or false"

    def check(self, backend: str, name: str, value: Any) -> None:
        if not isinstance(value, bool):
            raise RequestValidationError(backend, name, value, self.describe())


@dataclass(frozen=True)
class Text:
    """Free text, possibly empty, up to `max_chars`."""

    max_chars: int = 1000

    def describe(self) -> str:
        return f"text of at most {self.max_chars} characters"

    def check(self, backend: str, name: str, value: Any) -> None:
        if not isinstance(value, str) or len(value) > self.max_chars:
            raise RequestValidationError(backend, name, value if isinstance(value, str) else type(value).__name__,
                                         self.describe())


@dataclass(frozen=True)
class ImageInput:
    """An optional extra image (a pose reference, for example)."""

    def describe(self) -> str:
        return "expected an image"

    def check(self, backend: str, name: str, value: Any) -> None:
        if not isinstance(value, Image.Image):
            raise RequestValidationError(backend, name, type(value).__name__, self.describe())


FieldSpec = NumberRange | Choice | Flag | Text | ImageInput


@dataclass(frozen=True)
class BackendLimits:
    """What one backend accepts. `backend` is the human name used in every error message."""

    backend: str
    width: NumberRange
    height: NumberRange
    steps: NumberRange
    guidance: NumberRange
    num_images: NumberRange
    identity_strength: NumberRange
    seed: NumberRange = NumberRange(0, SEED_MAX, integer=True)
    max_prompt_chars: int = 10_000
    min_reference_side: int = 16
    extras: Mapping[str, FieldSpec] = field(default_factory=dict)

    def validate(self, request: "GenerationRequest") -> None:
        """Raise RequestValidationError for the first value this backend cannot take."""
        name = self.backend
        reference = request.reference
        if not isinstance(reference, Image.Image):
            raise RequestValidationError(name, "reference image", type(reference).__name__,
                                         "connect a reference image")
        if min(reference.size) < self.min_reference_side:
            raise RequestValidationError(name, "reference image size", "{}x{}".format(*reference.size),
                                         f"each side must be at least {self.min_reference_side} pixels")
        if not isinstance(request.prompt, str) or not request.prompt.strip():
            raise RequestValidationError(name, "prompt", request.prompt, "the prompt must not be empty")
        for label, text in (("prompt", request.prompt), ("negative prompt", request.negative_prompt)):
            if not isinstance(text, str):
                raise RequestValidationError(name, label, text, "expected text")
            if len(text) > self.max_prompt_chars:
                raise RequestValidationError(name, f"{label} length", len(text),
                                             f"at most {self.max_prompt_chars} characters")
        self.width.check(name, "width", request.width)
        self.height.check(name, "height", request.height)
        self.seed.check(name, "seed", request.seed)
        self.steps.check(name, "steps", request.steps)
        self.guidance.check(name, "guidance", request.guidance)
        self.num_images.check(name, "number of images", request.num_images)
        self.identity_strength.check(name, "identity strength", request.identity_strength)
        for key, value in request.extras.items():
            spec = self.extras.get(key)
            if spec is None:
                known = ", ".join(sorted(self.extras)) or "none"
                raise RequestValidationError(name, key, value, f"unknown option; this backend takes: {known}")
            if value is not None:
                spec.check(name, key, value)


# --------------------------------------------------------------------------------------------
# Request and result


@dataclass(frozen=True)
class GenerationRequest:
    """One generation job, the same for every backend.

    `reference` is the character or face image (RGB). `identity_strength` is each backend's main
    identity knob (InstantCharacter subject scale, InstantID IdentityNet strength). `extras` holds
    backend-specific options, checked against the backend's `BackendLimits.extras`.
    """

    reference: Image.Image
    prompt: str
    negative_prompt: str = ""
    width: int = 1024
    height: int = 1024
    seed: int = 0
    steps: int = 28
    guidance: float = 3.5
    num_images: int = 1
    identity_strength: float = 1.0
    extras: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class GenerationResult:
    """Images (RGB PIL) plus what a user needs to reproduce or audit the run."""

    images: list[Image.Image]
    backend: str
    seed: int | None = None
    job_id: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    safety_flags: list[bool] = field(default_factory=list)
    cost_usd: float | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def info(self) -> dict[str, Any]:
        """JSON-serialisable metadata (no images)."""
        return {
            "backend": self.backend,
            "job_id": self.job_id,
            "seed": self.seed,
            "images": [list(image.size) for image in self.images],
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "safety_flags": list(self.safety_flags),
            "cost_usd": self.cost_usd,
            **self.details,
        }


# --------------------------------------------------------------------------------------------
# What a running backend may tell its host, and ask of it


class RunContext(Protocol):
    """The host side of a run: the node layer implements this over ComfyUI's UI and interrupt flag."""

    def report_status(self, text: str) -> None: ...

    def report_progress(self, done: float, total: float, preview: Any = None) -> None:
        """`preview`: optional latents of a local model's current denoised estimate, [B, C, h, w]
        (the host may turn them into a preview image)."""
        ...

    def interrupted(self) -> bool: ...


class DetachedRunContext:
    """A RunContext for use outside ComfyUI (scripts, tests): records messages, never interrupted."""

    def __init__(self) -> None:
        self.statuses: list[str] = []
        self.progress: list[tuple[float, float]] = []

    def report_status(self, text: str) -> None:
        self.statuses.append(text)

    def report_progress(self, done: float, total: float, preview: Any = None) -> None:
        self.progress.append((done, total))

    def interrupted(self) -> bool:
        return False


class GenerationBackend(ABC):
    """A local pipeline or a cloud provider behind the shared contract."""

    @property
    @abstractmethod
    def limits(self) -> BackendLimits: ...

    def validate(self, request: GenerationRequest) -> None:
        self.limits.validate(request)

    async def generate(self, request: GenerationRequest, context: RunContext) -> GenerationResult:
        """Validate, then run. Subclasses implement `_run` and may assume a valid request."""
        self.validate(request)
        return await self._run(request, context)

    @abstractmethod
    async def _run(self, request: GenerationRequest, context: RunContext) -> GenerationResult: ...


__all__ = [
    "SEED_MAX", "RequestValidationError", "GenerationInterrupted", "NumberRange", "Choice", "Flag", "Text", "ImageInput",
    "FieldSpec",
    "BackendLimits", "GenerationRequest", "GenerationResult", "RunContext", "DetachedRunContext",
    "GenerationBackend",
]
