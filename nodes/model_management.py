"""The local pipelines' device host (pipelines/local/memory.DeviceHost) over ComfyUI's model
management: ComfyUI makes room before the pack's weights move to the GPU, counts a resident
pipeline's parts among its loaded models, and may unload them — "Unload models" in the queue menu,
POST /free, or another model needing the room; a part's next phase brings its weights back.
Room is asked with ComfyUI's own inference margin on top of the weights, and every local pipeline
of the process takes turns on the device through one queue per device."""
from __future__ import annotations

import logging
import threading
from typing import Sequence

import torch

import comfy.model_management as mm
import comfy.model_patcher

from ..pipelines.local.device_queue import DeviceQueue

log = logging.getLogger("character_identity")
# ComfyUI 0.3.75's floor of working memory kept free below any load: 0.8 GiB + its reserve
# (--reserve-vram); used only where a ComfyUI lacks minimum_inference_memory()
FALLBACK_INFERENCE_MEMORY = int(0.8 * 1024**3)


def inference_margin() -> int:
    """The working memory ComfyUI keeps free for computing, beyond the weights: what it adds when it
    loads its own models (minimum_inference_memory(), which counts --reserve-vram). Read at each
    call, as ComfyUI does; the fallbacks keep a ComfyUI without these functions working."""
    minimum = getattr(mm, "minimum_inference_memory", None)
    if callable(minimum):
        return int(minimum())
    reserved = getattr(mm, "extra_reserved_memory", None)
    return FALLBACK_INFERENCE_MEMORY + (int(reserved()) if callable(reserved) else 0)


class DeviceQueues:
    """The pack's one process-wide mutable object, on purpose: the device is process-wide, and so
    are the turns on it. Every prompt (each in a fresh event loop) and every worker thread must meet
    the same queue; a pipeline cannot own it (two loaders hold two pipelines). ComfyUI keeps its own
    loaded models in module state for the same reason."""

    def __init__(self):
        self._mutex = threading.Lock()
        self._queues: dict[str, DeviceQueue] = {}

    def for_device(self, device: torch.device) -> DeviceQueue:
        index = device.index
        if index is None and device.type == "cuda":
            index = torch.cuda.current_device()          # "cuda" and "cuda:0" are one device
        key = device.type if index is None else f"{device.type}:{index}"
        with self._mutex:
            if key not in self._queues:
                self._queues[key] = DeviceQueue(key)
            return self._queues[key]


DEVICE_QUEUES = DeviceQueues()


class PipelineWeights(torch.nn.Module):
    """The modules of one phase of a resident pipeline, as one model ComfyUI manages. ComfyUI's
    patcher keeps its bookkeeping in attributes of the module it manages (`device` among them), which
    diffusers models have read-only: hence this holder around them."""

    def __init__(self, modules: Sequence[torch.nn.Module]):
        super().__init__()
        self.components = torch.nn.ModuleList(modules)
        self.device = next((p.device for p in self.components.parameters()), torch.device("cpu"))


# ComfyUI logs "Requested to load <class name>": each pipeline shows under its own name
class InstantCharacterWeights(PipelineWeights):
    pass


class InstantIDWeights(PipelineWeights):
    pass


class ComfyModelManagement:
    """Held by one loaded pipeline (the loader's output). Each phase's modules (text encoders, image
    encoders, denoiser, VAE) are one model to ComfyUI, as its own CLIP, UNet and VAE are: it keeps
    them all loaded while they fit and unloads the least needed to make room. Their patchers live as
    long as the pipeline does; ComfyUI forgets them when the loader's output is dropped."""

    def __init__(self, holder: type[PipelineWeights]):
        self.holder = holder
        self.patchers: dict[tuple[int, ...], comfy.model_patcher.ModelPatcher] = {}
        self.unmanaged = False          # set when this ComfyUI's model management refused the weights

    def make_room(self, nbytes: int, device: torch.device) -> None:
        # the weights and the room to compute in, as load_models_gpu asks for ComfyUI's own models
        if device.type != "cpu":
            mm.free_memory(nbytes + inference_margin(), device)

    def device_queue(self, device: torch.device) -> DeviceQueue:
        return DEVICE_QUEUES.for_device(device)

    def keep_resident(self, modules: Sequence[torch.nn.Module], device: torch.device) -> None:
        if not self.unmanaged:
            try:
                key = tuple(id(module) for module in modules)
                if key not in self.patchers:
                    self.patchers[key] = comfy.model_patcher.ModelPatcher(
                        self.holder(modules), load_device=device, offload_device=mm.unet_offload_device())
                # whole: a part left on the CPU would be computed on with the rest on the GPU;
                # load_models_gpu frees the weights' room plus minimum_inference_memory() itself
                mm.load_models_gpu([self.patchers[key]], force_full_load=True)
                return
            except (TypeError, AttributeError) as exc:
                # a ComfyUI whose model management works differently (this is tested on 0.3.75): the
                # run goes on with the weights held by the pipeline, as outside ComfyUI
                self.unmanaged = True
                log.warning("Character Identity: ComfyUI's model management did not take the %s weights (%s: %s); "
                            "they stay on %s outside it, and 'Unload models' will not free them (the loader's "
                            "cache does)", self.holder.__name__, type(exc).__name__, exc, device)
        for module in modules:
            module.to(device)
