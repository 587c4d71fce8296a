"""Memory modes of the local pipelines, from most to least VRAM:

- resident: every component on the compute device;
- model_offload: components live on the CPU and move to the device for their phase (text encoding,
  reference encoding, denoising, decoding) — the pack's own, no accelerate needed;
- group_offload: as model_offload, plus the largest models stream their blocks to the device one
  group at a time (diffusers group offloading; CUDA streams on a GPU);
- sequential_offload: leaf by leaf (slowest; the last resort).

On a CPU-only machine every mode computes on the CPU and gives the same result.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterable

import torch

MEMORY_MODES = ("resident", "model_offload", "group_offload", "sequential_offload")
# what to try next when a mode runs out of memory
NEXT_MODE = {"resident": "model_offload", "model_offload": "group_offload", "group_offload": "sequential_offload"}


@dataclass
class Placement:
    """Moves components to the compute device for a phase and back, when offloading."""

    device: torch.device
    offload: bool

    @contextlib.contextmanager
    def on_device(self, *modules):
        if not self.offload or self.device.type == "cpu":
            yield
            return
        moved = [m for m in modules if m is not None and not _streams_itself(m)]
        for module in moved:
            module.to(self.device)
        try:
            yield
        finally:
            for module in moved:
                module.to("cpu")


def _streams_itself(module: torch.nn.Module) -> bool:
    """Group-offloaded modules move their own blocks; moving them whole would defeat it."""
    return getattr(module, "_character_identity_streams", False)


def apply_memory_mode(mode: str, device: torch.device, components: Iterable[torch.nn.Module],
                      streamed: Iterable[torch.nn.Module]) -> Placement:
    """`components`: every model of the pipeline; `streamed`: the large ones that group offloading
    streams block by block."""
    if mode not in MEMORY_MODES:
        raise ValueError(f"memory mode {mode!r} is not one of {', '.join(MEMORY_MODES)}")
    if mode == "resident" or device.type == "cpu":
        for module in components:
            module.to(device)
        return Placement(device, offload=False)
    if mode in ("group_offload", "sequential_offload"):
        from diffusers.hooks import apply_group_offloading

        for module in streamed:
            options = dict(offload_type="leaf_level") if mode == "sequential_offload" else \
                dict(offload_type="block_level", num_blocks_per_group=1)
            apply_group_offloading(module, onload_device=device, offload_device=torch.device("cpu"),
                                   use_stream=device.type == "cuda", **options)
            module._character_identity_streams = True
    return Placement(device, offload=True)


def out_of_memory(backend: str, mode: str) -> MemoryError:
    """What to tell a user whose run did not fit: the next memory mode, or smaller work."""
    hint = (f"; try the memory mode '{NEXT_MODE[mode]}' in the loader" if mode in NEXT_MODE
            else "; lower the size or the number of images")
    return MemoryError(f"{backend}: out of GPU memory in memory mode '{mode}'{hint}")
