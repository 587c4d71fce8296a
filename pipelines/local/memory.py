"""Memory modes of the local pipelines, from most to least VRAM:

- resident: every component on the compute device;
- model_offload: components live on the CPU and move to the device for their phase (text encoding,
  reference encoding, denoising, decoding) — the pack's own, no accelerate needed;
- group_offload: as model_offload, plus the largest models stream their blocks to the device one
  group at a time (diffusers group offloading; CUDA streams on a GPU);
- sequential_offload: leaf by leaf (slowest; the last resort).

On a CPU-only machine every mode computes on the CPU and gives the same result.

A `DeviceHost` is whoever else uses the device: inside ComfyUI its model management (the nodes give
one), so that ComfyUI makes room before a phase moves weights in, and can take a resident pipeline's
weights off the device, phase by phase ("Unload models", or another model needing the room) — they
come back when their phase next runs. The host also keeps the device's queue (device_queue.py): one
local generation at a time on a device. Without a host (a script) the pipeline has the device to itself.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterable, Protocol, Sequence

import torch

from .device_queue import DeviceQueue

MEMORY_MODES = ("resident", "model_offload", "group_offload", "sequential_offload")
# what to try next when a mode runs out of memory
NEXT_MODE = {"resident": "model_offload", "model_offload": "group_offload", "group_offload": "sequential_offload"}


class DeviceHost(Protocol):
    def make_room(self, nbytes: int, device: torch.device) -> None:
        """Before a phase moves `nbytes` of weights in: free that much on `device` (others' models
        unloaded) plus the working memory the phase computes in — the host's own inference margin,
        as it keeps for its own models."""

    def keep_resident(self, modules: Sequence[torch.nn.Module], device: torch.device) -> None:
        """Make sure a phase's `modules` are on `device` (the host may have taken them off): one
        model to the host, which keeps it there while the room lasts and may unload it (the text
        encoders, say) to make room for another phase's."""

    def device_queue(self, device: torch.device) -> DeviceQueue:
        """The turns on `device`, one queue for every local pipeline of the process."""


def device_queue_of(placement: "Placement") -> DeviceQueue | None:
    """The queue of the host a pipeline shares its device with; None without one (or with a host
    that keeps no queue)."""
    ask = getattr(placement.host, "device_queue", None)
    return None if ask is None else ask(placement.device)


@dataclass
class Placement:
    """Puts a phase's components on the compute device: with offloading, moves them there for the
    phase and back; resident, leaves them there (asking the host, where there is one, to put them
    back if it took them off)."""

    device: torch.device
    offload: bool
    host: DeviceHost | None = None

    @contextlib.contextmanager
    def on_device(self, *modules):
        if not self.offload or self.device.type == "cpu":
            if self.host is not None:
                self.host.keep_resident([m for m in modules if m is not None], self.device)
            yield
            return
        moved = [m for m in modules if m is not None and not _streams_itself(m)]
        if self.host is not None:
            self.host.make_room(sum(module_bytes(m) for m in moved), self.device)
        for module in moved:
            module.to(self.device)
        try:
            yield
        finally:
            for module in moved:
                module.to("cpu")


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's weights and buffers, as stored (fp8 and GGUF count as what they hold)."""
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def _streams_itself(module: torch.nn.Module) -> bool:
    """Group-offloaded modules move their own blocks; moving them whole would defeat it."""
    return getattr(module, "_character_identity_streams", False)


def apply_memory_mode(mode: str, device: torch.device, components: Iterable[torch.nn.Module],
                      streamed: Iterable[torch.nn.Module], host: DeviceHost | None = None) -> Placement:
    """`components`: every model of the pipeline; `streamed`: the large ones that group offloading
    streams block by block. Resident with a `host`: the weights stay where they were loaded (the CPU)
    until their phase first asks the host for them, so the host accounts for every byte it places."""
    if mode not in MEMORY_MODES:
        raise ValueError(f"memory mode {mode!r} is not one of {', '.join(MEMORY_MODES)}")
    if mode == "resident" or device.type == "cpu":
        if host is None:
            for module in components:
                module.to(device)
        return Placement(device, offload=False, host=host)
    if mode in ("group_offload", "sequential_offload"):
        from diffusers.hooks import apply_group_offloading

        for module in streamed:
            options = dict(offload_type="leaf_level") if mode == "sequential_offload" else \
                dict(offload_type="block_level", num_blocks_per_group=1)
            apply_group_offloading(module, onload_device=device, offload_device=torch.device("cpu"),
                                   use_stream=device.type == "cuda", **options)
            module._character_identity_streams = True
    return Placement(device, offload=True, host=host)


def out_of_memory(backend: str, mode: str) -> MemoryError:
    """What to tell a user whose run did not fit: the next memory mode, or smaller work."""
    hint = (f"; try the memory mode '{NEXT_MODE[mode]}' in the loader" if mode in NEXT_MODE
            else "; lower the size or the number of images")
    return MemoryError(f"{backend}: out of GPU memory in memory mode '{mode}'{hint}")
