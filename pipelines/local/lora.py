"""LoRAs applied as adapters for the duration of one generation — forward hooks that add
strength × scale × up(down(x)) to a layer's output, never merged into the weights and subtracted
again (which drifts bf16 weights a little more after every run). Linear and convolution layers.

The file side is shared too: a LoRA file is a set of layers, each a down and an up matrix under one
base name with an optional alpha (scale = alpha / rank; 1 without alpha), in any of the usual
spellings (`lora_A`/`lora_B`, `lora.down`/`lora.up`, `lora_down`/`lora_up`). Each pipeline maps
base names onto its own modules; a key it cannot place is an error naming it.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F

from .weights import ModelFileError, read_state

SUFFIXES = ((".lora_A.weight", "down"), (".lora_B.weight", "up"), (".lora.down.weight", "down"),
            (".lora.up.weight", "up"), (".lora_down.weight", "down"), (".lora_up.weight", "up"), (".alpha", "alpha"))


@dataclass
class LoRALayer:
    down: torch.Tensor      # [rank, in] (or [rank, in, kh, kw] for a convolution)
    up: torch.Tensor        # [out, rank] (or [out, rank, 1, 1])
    scale: float


def read_layers(path: Path | str) -> dict[str, LoRALayer]:
    """Base name → layer, for every layer of a LoRA file."""
    path = Path(path)
    state = read_state(path, "LoRA")
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        for suffix, role in SUFFIXES:
            if key.endswith(suffix):
                groups.setdefault(key[: -len(suffix)], {})[role] = value
                break
        else:
            raise ModelFileError(f"LoRA {path.name}: unexpected tensor {key!r}")
    layers = {}
    for base, parts in groups.items():
        if "down" not in parts or "up" not in parts:
            raise ModelFileError(f"LoRA {path.name}: {base!r} lacks its {'up' if 'down' in parts else 'down'} matrix")
        down, up = parts["down"].float(), parts["up"].float()
        scale = float(parts["alpha"]) / down.shape[0] if "alpha" in parts else 1.0
        layers[base.removeprefix("base_model.model.")] = LoRALayer(down, up, scale)
    return layers


def find_layer(model: torch.nn.Module, path: str):
    for candidate in (path, f"text_model.{path}"):       # CLIP's layers sit under text_model in older transformers
        try:
            return model.get_submodule(candidate)
        except AttributeError:
            continue
    return None


def _fits(layer: LoRALayer, module: torch.nn.Module) -> bool:
    if isinstance(module, torch.nn.Linear):
        return layer.down.ndim == 2 and layer.down.shape[1] == module.in_features and \
            layer.up.shape[0] == module.out_features
    if isinstance(module, torch.nn.Conv2d):
        return layer.down.ndim == 4 and layer.down.shape[1] == module.in_channels and \
            tuple(layer.down.shape[2:]) == tuple(module.kernel_size) and layer.up.shape[0] == module.out_channels
    return False


def _describe(module: torch.nn.Module) -> str:
    if isinstance(module, torch.nn.Linear):
        return f"{module.in_features}→{module.out_features}"
    if isinstance(module, torch.nn.Conv2d):
        return f"a {module.in_channels}→{module.out_channels} convolution"
    return type(module).__name__


@contextlib.contextmanager
def layers_applied(name: str, targets: list[tuple[torch.nn.Module, Mapping[str, LoRALayer]]], strength: float):
    """Hooks on every (model, {module path: layer}) for as long as the block runs."""
    handles = []
    try:
        if strength != 0:
            for model, layers in targets:
                for path, layer in layers.items():
                    module = find_layer(model, path)
                    if module is None:
                        raise ModelFileError(f"LoRA {name}: this model has no layer {path!r}")
                    if not _fits(layer, module):
                        shape = "×".join(str(s) for s in layer.down.shape[1:]) + f"→{layer.up.shape[0]}"
                        raise ModelFileError(f"LoRA {name}: {path!r} is {shape}; the model's layer is "
                                             f"{_describe(module)}")
                    handles.append(module.register_forward_hook(_adder(layer, strength)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _adder(layer: LoRALayer, strength: float):
    placed: dict = {}

    def hook(module, args, output):
        x = args[0]
        key = (x.device, x.dtype)
        if key not in placed:               # the LoRA follows the layer to its device (offloading moves it)
            placed.clear()
            placed[key] = (layer.down.to(x.device, x.dtype), layer.up.to(x.device, x.dtype))
        down, up = placed[key]
        if isinstance(module, torch.nn.Conv2d):
            low = F.conv2d(x, down, stride=module.stride, padding=module.padding, dilation=module.dilation)
            delta = F.conv2d(low, up)
        else:
            delta = F.linear(F.linear(x, down), up)
        return output + (strength * layer.scale) * delta.to(output.dtype)

    return hook
