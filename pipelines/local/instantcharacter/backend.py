"""Local InstantCharacter behind the shared generation contract (the worker thread, the device's
turn, progress, previews and Cancel: ../backend.py). A LoRA file is read before waiting for the
device."""
from __future__ import annotations

import asyncio
from typing import Callable

from ...contract import BackendLimits, Choice, GenerationRequest, NumberRange, RunContext, Text
from ..backend import SEED_MAX, LocalBackend, PreparedRun
from .pipeline import DEFAULTS, InstantCharacterPipeline, StepInfo

LIMITS = BackendLimits(
    backend="InstantCharacter (local)",
    width=NumberRange(64, 2048, integer=True, multiple_of=16),
    height=NumberRange(64, 2048, integer=True, multiple_of=16),
    seed=NumberRange(0, SEED_MAX, integer=True),
    steps=NumberRange(1, 100, integer=True),
    guidance=NumberRange(0, 20),
    num_images=NumberRange(1, 4, integer=True),
    identity_strength=NumberRange(0, 2),            # the reference's subject_scale
    extras={"true_cfg_scale": NumberRange(1, 10),
            "lora": Choice((), open_ended=True),           # the path of a FLUX LoRA file
            "lora_strength": NumberRange(-2, 2),
            "lora_trigger": Text(200)},                    # prepended to the prompt as "<trigger>, <prompt>"
)


class LocalInstantCharacter(LocalBackend):
    LIMITS = LIMITS
    COUNTERS = "encoder_calls"
    pipeline: InstantCharacterPipeline

    async def prepare(self, request: GenerationRequest, context: RunContext,
                      on_step: Callable[[StepInfo], None]) -> PreparedRun:
        true_cfg = float(request.extras.get("true_cfg_scale") or DEFAULTS["true_cfg_scale"])
        lora_path = request.extras.get("lora")
        strength = request.extras.get("lora_strength")
        strength = 1.0 if strength is None else float(strength)
        trigger = (request.extras.get("lora_trigger") or "").strip()
        prompt = f"{trigger}, {request.prompt}" if trigger else request.prompt      # as the reference does
        # reading the LoRA file needs no device: done before waiting for it
        lora = await asyncio.to_thread(self.pipeline.load_lora, lora_path) if lora_path else None

        def generate():
            context.report_status(f"{self.name}: generating")
            return self.pipeline.generate(
                request.reference, prompt, request.negative_prompt, lora=lora, lora_strength=strength,
                width=request.width, height=request.height, seed=request.seed, steps=request.steps,
                guidance=request.guidance, num_images=request.num_images, subject_scale=request.identity_strength,
                true_cfg_scale=true_cfg, on_step=on_step)

        notes = {}
        if lora is not None:
            notes.update(lora=lora.name, lora_strength=strength, lora_trigger=trigger)
        if true_cfg <= 1 and request.negative_prompt.strip():
            notes["ignored_inputs"] = ["negative_prompt (it takes effect with true_cfg_scale above 1)"]
        return PreparedRun(generate, {"subject_scale": request.identity_strength, "true_cfg_scale": true_cfg}, notes)
