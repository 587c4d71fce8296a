"""Local InstantCharacter behind the shared generation contract.

The heavy work runs in a worker thread, so the host's event loop stays free (cloud nodes in the
same ComfyUI prompt keep polling and downloading while the GPU works), and holds the device's turn
(device_queue.py): another local generation waits, saying for whom. Progress and a preview
estimate are reported after every step, and Cancel is checked there: it lands within one step.
"""
from __future__ import annotations

import asyncio
import threading
import time

import torch

from ...contract import (BackendLimits, Choice, GenerationBackend, GenerationInterrupted, GenerationRequest,
                         GenerationResult, NumberRange, RunContext, Text)
from ..device_queue import run_on_device
from ..memory import device_queue_of, out_of_memory
from .pipeline import DEFAULTS, InstantCharacterPipeline, StepInfo

SEED_MAX = 0xFFFFFFFFFFFFFFFF          # torch generators take any 64-bit seed (as ComfyUI's KSampler)

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


class LocalInstantCharacter(GenerationBackend):
    name = LIMITS.backend

    def __init__(self, pipeline: InstantCharacterPipeline, memory_mode: str = "resident"):
        self.pipeline = pipeline
        self.memory_mode = memory_mode

    @property
    def limits(self) -> BackendLimits:
        return LIMITS

    async def _run(self, request: GenerationRequest, context: RunContext) -> GenerationResult:
        started = time.monotonic()
        true_cfg = float(request.extras.get("true_cfg_scale") or DEFAULTS["true_cfg_scale"])
        stop = threading.Event()             # set when the caller is gone (its prompt failed elsewhere)

        def on_step(step: StepInfo) -> None:
            context.report_progress(step.step, step.total, step.denoised)
            if context.interrupted() or stop.is_set():
                raise GenerationInterrupted(f"{self.name}: cancelled at step {step.step}/{step.total}")

        lora_path = request.extras.get("lora")
        strength = request.extras.get("lora_strength")
        strength = 1.0 if strength is None else float(strength)
        trigger = (request.extras.get("lora_trigger") or "").strip()
        prompt = f"{trigger}, {request.prompt}" if trigger else request.prompt      # as the reference does
        counters_before = dict(vars(self.pipeline.counters))

        def generate():
            context.report_status(f"{self.name}: generating")
            return self.pipeline.generate(
                request.reference, prompt, request.negative_prompt, lora=lora, lora_strength=strength,
                width=request.width, height=request.height, seed=request.seed, steps=request.steps,
                guidance=request.guidance, num_images=request.num_images, subject_scale=request.identity_strength,
                true_cfg_scale=true_cfg, on_step=on_step)

        try:
            # reading the LoRA file needs no device: done before waiting for it
            lora = await asyncio.to_thread(self.pipeline.load_lora, lora_path) if lora_path else None
            images, device_timings = await run_on_device(device_queue_of(self.pipeline.placement), self.pipeline.device,
                                                         self.name, context, generate, stop)
        except torch.OutOfMemoryError:
            raise out_of_memory(self.name, self.memory_mode) from None
        counters = {key: value - counters_before[key] for key, value in vars(self.pipeline.counters).items()}
        details = {"memory_mode": self.memory_mode, "dtype": str(self.pipeline.dtype).removeprefix("torch."),
                   "device": str(self.pipeline.device), "subject_scale": request.identity_strength,
                   "true_cfg_scale": true_cfg, "encoder_calls": counters}
        if lora is not None:
            details.update(lora=lora.name, lora_strength=strength, lora_trigger=trigger)
        if true_cfg <= 1 and request.negative_prompt.strip():
            details["ignored_inputs"] = ["negative_prompt (it takes effect with true_cfg_scale above 1)"]
        return GenerationResult(images=images, backend=self.name, seed=request.seed,
                                timings={"total": time.monotonic() - started, **device_timings}, details=details)
