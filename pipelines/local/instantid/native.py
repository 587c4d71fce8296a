"""The InstantID face adapter for an SDXL model this pack does not run itself (ComfyUI's own, patched
through its cross-attention patch points): the same resampler and face-attention weights as the
all-in-one pipeline (adapter.py's modules, the official ip-adapter.bin), with the math fed from what
such a host hands an attn2 patch — the layer's query [B, L, C] and which batch elements are the
conditional ones.

The all-in-one pipeline appends the face tokens to the text tokens and lets each attn2 split them
off; a host that computes attn2's text keys and values itself leaves this module only the face part:
`attention(q, to_k_ip(tokens), to_v_ip(tokens))` × the adapter strength (× the face region), added to
the layer's text attention before its output projection. The unconditional elements get the tokens
of a zero embedding, as the pipeline's negative does.

Pure torch: ComfyUI's patch signatures and block names live in nodes/native_instantid.py.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..caching import LRU
from .adapter import AdapterFormatError, FaceAttnProcessor, FaceResampler, build_face_adapter, region_at
from .conditioning import FaceConditioning, face_mask

# the host's names for where an SDXL UNet's transformer blocks sit, in the order diffusers numbers
# their attention processors (the order of the ip-adapter.bin keys): down blocks, up blocks, then the
# middle block (diffusers registers mid_block after up_blocks)
DIFFUSERS_BLOCK_ORDER = ("input", "output", "middle")


@dataclass
class NativeFaceAdapter:
    """The resampler and the face-attention processors of one ip-adapter.bin, the processors in the
    file's order (the k-th serves the k-th attn2 of the UNet in diffusers' order)."""

    resampler: FaceResampler
    processors: list[FaceAttnProcessor]

    @property
    def tokens(self) -> int:
        return self.resampler.size.num_queries

    def modules(self) -> torch.nn.ModuleList:
        return torch.nn.ModuleList([self.resampler, torch.nn.ModuleList(self.processors)])


class _LayerNames:
    """What build_face_adapter reads of a diffusers UNet, for `layers` attn2 layers: processor names in
    the file's numbering (attn1, attn2 per transformer block) and the cross-attention width."""

    def __init__(self, layers: int, cross_attention_dim: int):
        self.attn_processors = {f"layers.{index}.{kind}.processor": None
                                for index in range(layers) for kind in ("attn1", "attn2")}
        self.config = SimpleNamespace(cross_attention_dim=cross_attention_dim)


def _attention_keys(state: Mapping[str, torch.Tensor]) -> dict[int, torch.Tensor]:
    """{file index: to_k_ip weight} from a nested (ip-adapter.bin) or flat (.safetensors) state."""
    nested = state.get("ip_adapter")
    items = nested.items() if isinstance(nested, Mapping) else ((k[len("ip_adapter."):], v) for k, v in state.items()
                                                                if k.startswith("ip_adapter."))
    return {int(m.group(1)): value for key, value in items if (m := re.fullmatch(r"(\d+)\.to_k_ip\.weight", key))}


def build_native_face_adapter(state: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None) -> NativeFaceAdapter:
    """The adapter from its weights alone (no diffusers UNet to number the layers by), through the
    all-in-one pipeline's strict loader: the file numbers every attention processor, attn1 included,
    so its attn2 weights sit at the odd indices 1, 3, 5, … (any other numbering fails naming the key)."""
    keys = _attention_keys(state)
    if not keys:
        raise AdapterFormatError("the InstantID adapter has no face-attention weights (ip_adapter.<n>.to_k_ip.weight)")
    width = next(iter(keys.values())).shape[1]
    built = build_face_adapter(state, _LayerNames(len(keys), width), dtype)
    processors = [processor for name, processor in built.processors.items() if name.endswith("attn2.processor")]
    return NativeFaceAdapter(built.resampler, processors)


def diffusers_layer_order(layers: Sequence[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    """The host's attn2 layers, (block name, block id, transformer index), in diffusers' processor
    order: the face adapter's k-th processor belongs to the k-th of these."""
    unknown = [layer for layer in layers if layer[0] not in DIFFUSERS_BLOCK_ORDER]
    if unknown:
        raise ValueError(f"unknown UNet block names {unknown[:3]} (expected {DIFFUSERS_BLOCK_ORDER})")
    return sorted(layers, key=lambda layer: (DIFFUSERS_BLOCK_ORDER.index(layer[0]), layer[1], layer[2]))


def face_attention(processor: FaceAttnProcessor, query: torch.Tensor, face_tokens: torch.Tensor,
                   heads: int) -> torch.Tensor:
    """query [B, L, C] (the layer's to_q output), face_tokens [B, T, D] → [B, L, C]: the face branch of
    FaceAttnProcessor, before the adapter strength and the region."""
    batch, _, width = query.shape
    head_dim = width // heads

    def split(x):
        return x.reshape(batch, -1, heads, head_dim).transpose(1, 2)

    keys, values = processor.to_k_ip(face_tokens), processor.to_v_ip(face_tokens)
    out = F.scaled_dot_product_attention(split(query), split(keys), split(values))
    return out.transpose(1, 2).reshape(batch, -1, width).to(query.dtype)


class FaceBranch:
    """One face, one adapter, one strength, active for sigmas in [sigma_end, sigma_start]: the face
    attention any attn2 layer adds, for a batch of chunks that are conditional (0) or unconditional (1).
    Face tokens are computed once per device and dtype; the face region once per image size."""

    def __init__(self, adapter: NativeFaceAdapter, face: FaceConditioning, strength: float,
                 layers: Sequence[tuple[str, int, int]], enhance_face_region: bool = False,
                 region: torch.Tensor | None = None, sigma_start: float = float("inf"),
                 sigma_end: float = float("-inf")):
        order = diffusers_layer_order(layers)
        if len(order) != len(adapter.processors):
            raise AdapterFormatError(f"the InstantID adapter has {len(adapter.processors)} face-attention layers; "
                                     f"this UNet has {len(order)} cross-attention layers (is it an SDXL model?)")
        self.adapter = adapter
        self.face = face
        self.strength = float(strength)
        self.layer_index = {layer: index for index, layer in enumerate(order)}
        self.enhance_face_region = enhance_face_region
        self.region = region                     # a user's mask [H, W] in 0..1, or None
        self.sigma_start, self.sigma_end = sigma_start, sigma_end
        self.token_cache = LRU(4)
        self.region_cache = LRU(4)

    @property
    def dtype(self) -> torch.dtype:
        return self.adapter.resampler.latents.dtype

    def active(self, sigma: float) -> bool:
        return self.strength != 0 and self.sigma_end <= sigma <= self.sigma_start

    def tokens(self, device: torch.device) -> torch.Tensor:
        """[2, T, D]: the tokens of the face (0, conditional) and of a zero embedding (1, unconditional)."""
        resampler = self.adapter.resampler

        def make():
            # computed where the resampler's latents are (a host may hold its weights anywhere), then moved
            face = torch.from_numpy(np.ascontiguousarray(self.face.embedding)).reshape(1, 1, -1)
            batch = torch.cat([face, torch.zeros_like(face)]).to(resampler.latents.device, self.dtype)
            with torch.no_grad():
                return resampler(batch).to(device)
        return self.token_cache.fetch((str(device), self.dtype), make)

    def region_mask(self, height: int, width: int, device: torch.device) -> torch.Tensor | None:
        """The face region [H, W] on an image of height×width pixels: the user's mask resized, else the
        face box placed as the face is on that canvas (as `enhance_face_region`), else None."""
        if self.region is None and not self.enhance_face_region:
            return None

        def make():
            if self.region is not None:
                mask = F.interpolate(self.region[None, None].float(), size=(height, width), mode="bilinear")[0, 0]
            else:
                placed = self.face.on_canvas(width, height)
                if placed.bbox is None:
                    raise ValueError("the face region needs the face's box; give a mask or a face with its bbox")
                mask = face_mask(placed.bbox, placed.size)
            return mask.to(device)
        return self.region_cache.fetch((height, width, str(device)), make)

    def __call__(self, layer: tuple[str, int, int], query: torch.Tensor, heads: int, cond_or_uncond: Sequence[int],
                 image_size: tuple[int, int] | None = None) -> torch.Tensor:
        """query [B, L, C] of a batch made of len(cond_or_uncond) equal chunks → the face attention to
        add to the layer's attention output [B, L, C] (strength and region applied).
        image_size: (height, width) in pixels, for the face region."""
        processor = self.adapter.processors[self.layer_index[layer]]
        tokens = self.tokens(query.device)
        chunks = len(cond_or_uncond)
        per_chunk = query.shape[0] // chunks
        picks = torch.tensor([kind for kind in cond_or_uncond for _ in range(per_chunk)], device=query.device)
        face_tokens = tokens.index_select(0, picks).to(query.dtype)
        with torch.no_grad():
            out = face_attention(processor, query, face_tokens, heads)
        if image_size is not None:
            region = self.region_mask(image_size[0], image_size[1], query.device)
            if region is not None:
                out = out * region_at(region.to(out.dtype), query.shape[-2])
        return out * self.strength


def residual_region(region: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """The face region at a ControlNet residual's resolution, bilinear as the pipeline scales it."""
    return F.interpolate(region[None, None].to(residual.dtype), size=tuple(residual.shape[-2:]), mode="bilinear")
