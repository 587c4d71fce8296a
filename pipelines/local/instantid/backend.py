"""Local InstantID behind the shared generation contract (the worker thread, the device's turn,
progress, previews and Cancel: ../backend.py), with the Segmind InstantID node's option names
(style, adapter_strength, enhance_face_region, pose_image), so a workflow swaps backends; and one of
its own, `face`: a face already made (face_input.py: by the InstantID Face nodes, from photos or
precomputed), used instead of analysing the reference.

Face analysis runs in a worker thread before the heavy work, and does not wait for the device's
turn (onnxruntime's small sessions, no weights of the pipeline's moved), so a photo without a
usable face is refused at once, before any denoising step.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Callable

from ...contract import (BackendLimits, Choice, Flag, GenerationInterrupted, GenerationRequest, ImageInput,
                         NumberRange, RequestValidationError, RunContext)
from ..backend import SEED_MAX, LocalBackend, PreparedRun
from .conditioning import FaceConditioning
from .pipeline import DEFAULTS, InstantIDPipeline, StepInfo
from .styles import NO_STYLE, STYLES, apply_style

SIZE_STEP = 8


@dataclass(frozen=True)
class FaceInput:
    """An optional face made beforehand (a FaceConditioning)."""

    def describe(self) -> str:
        return "expected a face from an InstantID Face node"

    def check(self, backend: str, name: str, value: Any) -> None:
        if not isinstance(value, FaceConditioning):
            raise RequestValidationError(backend, name, type(value).__name__, self.describe())


LIMITS = BackendLimits(
    backend="InstantID (local)",
    # 0 = the size the demo's rule gives the pose (or reference) photo
    width=NumberRange(0, 2048, integer=True, multiple_of=SIZE_STEP),
    height=NumberRange(0, 2048, integer=True, multiple_of=SIZE_STEP),
    seed=NumberRange(0, SEED_MAX, integer=True),
    steps=NumberRange(1, 100, integer=True),
    guidance=NumberRange(0, 20),                     # ≤ 1: no classifier-free guidance
    num_images=NumberRange(1, 4, integer=True),
    identity_strength=NumberRange(0, 1.5),           # the IdentityNet's conditioning scale
    extras={"style": Choice(tuple(STYLES)),
            "adapter_strength": NumberRange(0, 1.5),
            "enhance_face_region": Flag(),
            "pose_image": ImageInput(),
            "fast_mode": Flag(),                      # the LCM-LoRA and LCM scheduler
            "face": FaceInput()},                     # instead of analysing the reference
)


def output_size(width: int, height: int, canvas: tuple[int, int]) -> tuple[int, int]:
    """0 takes the canvas side; one side 0 follows the canvas's aspect ratio (a multiple of 8)."""
    if width and height:
        return width, height
    if not width and not height:
        return canvas
    if width:
        return width, max(SIZE_STEP, round(width * canvas[1] / canvas[0] / SIZE_STEP) * SIZE_STEP)
    return max(SIZE_STEP, round(height * canvas[0] / canvas[1] / SIZE_STEP) * SIZE_STEP), height


class LocalInstantID(LocalBackend):
    LIMITS = LIMITS
    COUNTERS = "model_calls"
    pipeline: InstantIDPipeline

    def validate(self, request: GenerationRequest) -> None:
        super().validate(request)
        if request.extras.get("fast_mode") and self.pipeline.lcm is None:
            raise ValueError(f"{self.name}: fast_mode needs the LCM-LoRA for SDXL; choose it in the loader "
                             "(lcm_lora), or turn fast_mode off")
        given = request.extras.get("face") is not None
        if given and request.extras.get("pose_image") is not None:
            raise ValueError(f"{self.name}: connect either face or pose_image, not both: the face already carries "
                             "where it goes (give the pose photo to the InstantID Face node's pose input)")
        if not given and self.pipeline.faces is None:
            raise ValueError(f"{self.name}: this pipeline was loaded without face models")
        region = request.extras.get("enhance_face_region")
        if given and request.extras["face"].bbox is None and (DEFAULTS["enhance_face_region"] if region is None
                                                                else region):
            raise ValueError(f"{self.name}: enhance_face_region needs the face's box and this face has none; give "
                             "the box (bbox) to InstantID Face (precomputed), or turn enhance_face_region off")

    async def prepare(self, request: GenerationRequest, context: RunContext,
                      on_step: Callable[[StepInfo], None]) -> PreparedRun:
        extras = {**DEFAULTS, "style": NO_STYLE, "fast_mode": False,
                  **{k: v for k, v in request.extras.items() if v is not None}}
        pose = request.extras.get("pose_image")
        prompt, negative = apply_style(extras["style"], request.prompt, request.negative_prompt)

        face = request.extras.get("face")
        if face is None:
            context.report_status(f"{self.name}: analysing the face")
            face = await asyncio.to_thread(self.pipeline.face_from_images, request.reference, pose)
        width, height = output_size(request.width, request.height, face.size)
        if context.interrupted():
            raise GenerationInterrupted(f"{self.name}: cancelled before generating")

        def generate():
            context.report_status(f"{self.name}: generating {width}x{height}")
            return self.pipeline.generate(
                face, prompt, negative, width=width, height=height, seed=request.seed,
                steps=request.steps, guidance=request.guidance, num_images=request.num_images,
                identity_strength=request.identity_strength, adapter_strength=float(extras["adapter_strength"]),
                enhance_face_region=bool(extras["enhance_face_region"]),
                scheduler="lcm" if extras["fast_mode"] else "euler", on_step=on_step)

        details = {"style": extras["style"], "identity_strength": request.identity_strength,
                   "adapter_strength": extras["adapter_strength"],
                   "enhance_face_region": bool(extras["enhance_face_region"]), "fast_mode": bool(extras["fast_mode"]),
                   "pose_image": pose is not None,
                   "face_box": None if face.bbox is None else [round(float(v), 1) for v in face.bbox],
                   "size": [width, height]}
        if request.extras.get("face") is not None:
            details["face"] = "input (the reference was not analysed)"
        notes = {}
        if request.guidance <= 1 and request.negative_prompt.strip():
            notes["ignored_inputs"] = ["negative_prompt (it takes effect with guidance above 1)"]
        return PreparedRun(generate, details, notes)
