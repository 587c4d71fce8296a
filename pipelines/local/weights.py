"""Reading weight files for the local pipelines: any of .safetensors, .bin/.pt (weights only) and
.gguf; ComfyUI's fp8 "scaled" files; architecture sizes read from tensor shapes; strict loading
that names the tensor at fault. Every problem is a `ModelFileError` naming the file."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import torch

# ComfyUI's fp8 "scaled" files: weight = stored fp8 weight × its scale; these keys are not weights.
# The older layout stores `<layer>.scale_weight` (and a `scaled_fp8` marker); ComfyUI's newer mixed
# precision files store `<layer>.weight_scale` (and `<layer>.input_scale` for fp8 matmuls).
SCALE_SUFFIXES = (".scale_weight", ".weight_scale")
SCALE_MARKERS = ("scaled_fp8", ".scale_input", ".input_scale")


class ModelFileError(ValueError):
    """A model file or folder that is missing, unreadable or not what it should be."""


# ---- reading weights ------------------------------------------------------------------------

def read_state(path: Path | str, what: str, prefix: str | None = None) -> dict[str, torch.Tensor]:
    """All tensors of a .safetensors, .bin/.pt/.pth (weights only) or .gguf file, on the CPU. With
    `prefix` (a .safetensors checkpoint's part), only the tensors under it are read, prefix removed."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{what}: {path} does not exist")
    try:
        if path.suffix in (".safetensors", ".sft"):
            from safetensors import safe_open

            with safe_open(str(path), "pt", device="cpu") as handle:
                names = [key for key in handle.keys() if prefix is None or key.startswith(prefix)]
                return {key[len(prefix or ""):]: handle.get_tensor(key) for key in names}
        if path.suffix == ".gguf":
            from diffusers.models.model_loading_utils import load_gguf_checkpoint

            return load_gguf_checkpoint(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except ModelFileError:
        raise
    except Exception as exc:     # a truncated download, a foreign format: say which file
        raise ModelFileError(f"{what}: cannot read {path.name} ({type(exc).__name__}: {str(exc)[:200]}); "
                             "the file may be incomplete — download it again") from None
    if not isinstance(state, Mapping):
        raise ModelFileError(f"{what}: {path.name} does not hold a state dict")
    return dict(state)


def unscale_fp8(state: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """ComfyUI's fp8 'scaled' files store weight/scale in fp8 and the scale beside it: multiply back.
    Plain fp8 weights are simply converted. Everything ends in `dtype`."""
    out = {}
    for key, tensor in state.items():
        if key.endswith(SCALE_SUFFIXES) or any(marker in key for marker in SCALE_MARKERS):
            continue
        layer = key[: -len(".weight")] if key.endswith(".weight") else None
        scale = next((state[layer + suffix] for suffix in SCALE_SUFFIXES if layer and layer + suffix in state), None)
        value = tensor.to(torch.float32)
        if scale is not None:
            value = value * scale.to(torch.float32)
        out[key] = value.to(dtype)
    return out


def strip_prefix(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    for prefix in prefixes:
        if any(key.startswith(prefix) for key in state):
            return {key[len(prefix):] if key.startswith(prefix) else key: value for key, value in state.items()}
    return state


def shape_of(tensor: torch.Tensor) -> tuple[int, ...]:
    """A weight's logical shape; a GGUF-quantized tensor's storage shape counts bytes instead."""
    return tuple(getattr(tensor, "quant_shape", tensor.shape))


def is_quantized(tensor: torch.Tensor) -> bool:
    return hasattr(tensor, "quant_type")


def count(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    return len({int(m.group(1)) for key in state if (m := re.match(pattern, key))})


def need(state: Mapping[str, torch.Tensor], key: str, what: str, path: Path) -> torch.Tensor:
    if key not in state:
        raise ModelFileError(f"{what}: {Path(path).name} has no tensor {key!r}; it is not a {what} file")
    return state[key]


def load_into(model: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str, path: Path,
              ignore: tuple[str, ...] = ()) -> torch.nn.Module:
    """Strict load: every weight present with its shape; unknown keys (except `ignore`d) are errors."""
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise ModelFileError(f"{what}: {Path(path).name} lacks {key!r}")
        if shape_of(state[key]) != shape_of(tensor):
            raise ModelFileError(f"{what}: {Path(path).name}: {key!r} has shape {shape_of(state[key])}, "
                                 f"expected {shape_of(tensor)}")
    extra = [key for key in state if key not in expected and not key.startswith(ignore)]
    if extra:
        raise ModelFileError(f"{what}: {Path(path).name} has an unexpected tensor {extra[0]!r}")
    parameters = dict(model.named_parameters(remove_duplicate=False))
    for key in expected:
        owner_name, _, name = key.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        value = state[key]
        if key in parameters:         # assigned as is: a GGUF tensor keeps its quantized storage
            owner._parameters[name] = value if isinstance(value, torch.nn.Parameter) else \
                torch.nn.Parameter(value, requires_grad=False)
        else:
            owner._buffers[name] = value
    return model.eval().requires_grad_(False)


def materialise_buffers(model):
    """Buffers not stored in files (position ids) are rebuilt on the CPU after a meta-device build."""
    for module in model.modules():
        for name, buffer in list(module.named_buffers(recurse=False)):
            if buffer.is_meta:
                if name == "position_ids":
                    module.register_buffer(name, torch.arange(buffer.shape[-1]).expand(buffer.shape), persistent=False)
                else:
                    raise ModelFileError(f"internal: buffer {name} of {type(module).__name__} was not loaded")
    return model
