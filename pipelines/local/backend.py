"""What both local backends (InstantCharacter, InstantID) share behind the generation contract.

The heavy work runs in a worker thread, so the host's event loop stays free (cloud nodes in the
same ComfyUI prompt keep polling and downloading while the GPU works), and holds the device's turn
(device_queue.py): another local generation waits, saying for whom. Progress and a preview
estimate are reported after every step, and Cancel is checked there: it lands within one step.
Each backend says how a request becomes that work (`prepare`) and what its result reports.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch

from ..contract import (BackendLimits, GenerationBackend, GenerationInterrupted, GenerationRequest, GenerationResult,
                        RunContext)
from .device_queue import run_on_device
from .memory import device_queue_of, out_of_memory
from .progress import StepInfo

SEED_MAX = 0xFFFFFFFFFFFFFFFF          # torch generators take any 64-bit seed (as ComfyUI's KSampler)


@dataclass
class PreparedRun:
    """One request made ready off the device: the work that holds the device's turn (→ images), and
    what the result reports about it besides the memory mode, dtype, device and model-call counts —
    `details` before the counts, `notes` after them (LoRA, ignored inputs)."""

    generate: Callable[[], Any]
    details: dict[str, Any]
    notes: dict[str, Any] = field(default_factory=dict)


class LocalBackend(GenerationBackend):
    """A loaded local pipeline (with `generate(..., on_step=)`, `counters`, `device`, `dtype`,
    `placement`) behind the contract. Subclasses set LIMITS and COUNTERS (the details key of the
    pipeline's model-call counts) and implement `prepare`."""

    LIMITS: ClassVar[BackendLimits]
    COUNTERS: ClassVar[str]

    def __init__(self, pipeline, memory_mode: str = "resident"):
        self.pipeline = pipeline
        self.memory_mode = memory_mode

    @property
    def name(self) -> str:
        return self.LIMITS.backend

    @property
    def limits(self) -> BackendLimits:
        return self.LIMITS

    async def prepare(self, request: GenerationRequest, context: RunContext,
                      on_step: Callable[[StepInfo], None]) -> PreparedRun:
        """What needs no device (reading a LoRA file, analysing a face) done here; the returned work
        runs holding the device's turn and passes `on_step` to the pipeline."""
        raise NotImplementedError

    async def _run(self, request: GenerationRequest, context: RunContext) -> GenerationResult:
        started = time.monotonic()
        stop = threading.Event()             # set when the caller is gone (its prompt failed elsewhere)

        def on_step(step: StepInfo) -> None:
            context.report_progress(step.step, step.total, step.denoised)
            if context.interrupted() or stop.is_set():
                raise GenerationInterrupted(f"{self.name}: cancelled at step {step.step}/{step.total}")

        counters: dict[str, int] = {}

        def generate_counted():
            # counted within the device's turn: while this run waits for it, another generation on the
            # same pipeline may run, and its model calls are not this run's
            before = dict(vars(self.pipeline.counters))
            try:
                return prepared.generate()
            finally:
                counters.update({key: value - before[key] for key, value in vars(self.pipeline.counters).items()})

        try:
            prepared = await self.prepare(request, context, on_step)
            images, device_timings = await run_on_device(device_queue_of(self.pipeline.placement), self.pipeline.device,
                                                         self.name, context, generate_counted, stop)
        except torch.OutOfMemoryError:
            raise out_of_memory(self.name, self.memory_mode) from None
        details = {"memory_mode": self.memory_mode, "dtype": str(self.pipeline.dtype).removeprefix("torch."),
                   "device": str(self.pipeline.device), **prepared.details, self.COUNTERS: counters, **prepared.notes}
        return GenerationResult(images=images, backend=self.name, seed=request.seed,
                                timings={"total": time.monotonic() - started, **device_timings}, details=details)
