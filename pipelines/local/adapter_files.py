"""What both adapter files (InstantCharacter's `instantcharacter_ip-adapter.bin`, InstantID's
`ip-adapter.bin`) have in common: the IP-Adapter layout — a projector under `image_proj` and the
attention branches under `ip_adapter`, nested in a .bin or flat with those prefixes in a
.safetensors —, a perceiver resampler whose sizes are read from its weights, and strict loading
that names the key at fault.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

PROJECTOR, ATTENTION = "image_proj", "ip_adapter"


class AdapterFormatError(ValueError):
    """An adapter file whose keys or shapes are not the adapter's. The text names the key."""


def split_adapter_state(state: Mapping[str, torch.Tensor], adapter: str) -> tuple[dict, dict]:
    """The official .bin ({"image_proj": {...}, "ip_adapter": {...}}) or a flat conversion with
    `image_proj.` / `ip_adapter.` prefixes → (projector state, attention state). `adapter` names the
    adapter in errors ("InstantCharacter adapter")."""
    if isinstance(state.get(PROJECTOR), Mapping) and isinstance(state.get(ATTENTION), Mapping):
        return dict(state[PROJECTOR]), dict(state[ATTENTION])
    projector, attention, other = {}, {}, []
    for key, value in state.items():
        if key.startswith(f"{PROJECTOR}."):
            projector[key[len(PROJECTOR) + 1:]] = value
        elif key.startswith(f"{ATTENTION}."):
            attention[key[len(ATTENTION) + 1:]] = value
        else:
            other.append(key)
    if not projector or not attention:
        raise AdapterFormatError(
            f"this is not an {adapter}: expected the keys '{PROJECTOR}' and '{ATTENTION}' "
            f"(found {', '.join(sorted(state)[:5]) or 'nothing'}{'…' if len(state) > 5 else ''})")
    if other:
        raise AdapterFormatError(f"unexpected key {other[0]!r} (an {adapter} has only "
                                 f"'{PROJECTOR}.*' and '{ATTENTION}.*')")
    return projector, attention


def tensor_shape(state: Mapping[str, torch.Tensor], key: str, where: str) -> tuple[int, ...]:
    """The shape of `state[key]`; a missing key is an error naming `where.key`."""
    if key not in state:
        raise AdapterFormatError(f"missing key {where}.{key}")
    return tuple(state[key].shape)


def count_blocks(state: Mapping[str, torch.Tensor], prefix: str, where: str) -> int:
    """How many numbered blocks `prefix0.*`, `prefix1.*`, … the state holds; a gap is an error naming
    the first missing block."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(match.group(1)) for key in state if (match := pattern.match(key))}
    if indices and indices != set(range(max(indices) + 1)):
        missing = sorted(set(range(max(indices) + 1)) - indices)[0]
        raise AdapterFormatError(f"missing block {where}.{prefix}{missing}.*")
    return len(indices)


def converted(state: Mapping[str, torch.Tensor], dtype: torch.dtype | None) -> dict:
    """The state with its tensors in `dtype` (None: as stored)."""
    return dict(state) if dtype is None else {key: value.to(dtype) for key, value in state.items()}


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """Every parameter present with its exact shape, nothing else; the error names the key."""
    expected = module.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise AdapterFormatError(f"missing key {where}.{key}")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise AdapterFormatError(f"key {where}.{key} has shape {tuple(state[key].shape)}; "
                                     f"expected {tuple(tensor.shape)}")
    for key in state:
        if key not in expected:
            raise AdapterFormatError(f"unexpected key {where}.{key}")
    module.load_state_dict(state, strict=True, assign=True)


@dataclass(frozen=True)
class ResamplerSize:
    """A perceiver resampler's sizes (both adapters' projectors end in one)."""

    dim: int
    depth: int
    heads: int
    num_queries: int
    embedding_dim: int
    output_dim: int
    ff_inner: int
    timestep_dim: int | None = None      # the timestep embedding's input width; None: not timestep-conditioned


def resampler_size(state: Mapping[str, torch.Tensor], where: str, head_dim: int, prefix: str = "",
                   timestep: bool = False) -> ResamplerSize:
    """The sizes of the resampler whose keys in `state` start with `prefix`, read from its weights.
    `timestep`: it has a timestep embedding (InstantCharacter's), whose width is read too."""
    latents = tensor_shape(state, f"{prefix}latents", where)
    return ResamplerSize(
        dim=latents[2], depth=count_blocks(state, f"{prefix}layers.", where),
        heads=tensor_shape(state, f"{prefix}layers.0.0.to_q.weight", where)[0] // head_dim,
        num_queries=latents[1], embedding_dim=tensor_shape(state, f"{prefix}proj_in.weight", where)[1],
        output_dim=tensor_shape(state, f"{prefix}proj_out.weight", where)[0],
        ff_inner=tensor_shape(state, f"{prefix}layers.0.1.1.weight", where)[0],
        timestep_dim=(tensor_shape(state, f"{prefix}time_embedding.linear_1.weight", where)[1] if timestep else None))
