"""The InstantID face adapter: a perceiver resampler turning the 512-d ArcFace embedding into face
tokens, and a face branch in every SDXL cross-attention (attn2) — with the official weight format
(`ip-adapter.bin`, keys `image_proj` and `ip_adapter`, or a flat `.safetensors` with those prefixes).

Sizes come from the weight file; loading is strict and names the key at fault. The adapter scale
and the face-region mask travel with each call (never in a module global), so two pipelines can
run at the same time without seeing each other's mask.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..adapter_files import (ATTENTION, PROJECTOR, AdapterFormatError, ResamplerSize, converted, load_strict,
                             resampler_size, split_adapter_state, tensor_shape)
from ..perceiver import PerceiverAttention, feed_forward

HEAD_DIM = 64
ADAPTER = "InstantID face adapter"         # how errors name it


class FaceResampler(nn.Module):
    """Embedding [B, 1, 512] → face tokens [B, num_queries, output_dim]."""

    def __init__(self, size: ResamplerSize):
        super().__init__()
        self.size = size
        self.latents = nn.Parameter(torch.zeros(1, size.num_queries, size.dim))
        self.proj_in = nn.Linear(size.embedding_dim, size.dim)
        self.proj_out = nn.Linear(size.dim, size.output_dim)
        self.norm_out = nn.LayerNorm(size.output_dim)
        self.layers = nn.ModuleList([nn.ModuleList([PerceiverAttention(size.dim, size.heads, HEAD_DIM),
                                                    feed_forward(size.dim, size.ff_inner)])
                                     for _ in range(size.depth)])

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        latents = self.latents.repeat(embedding.shape[0], 1, 1)
        features = self.proj_in(embedding)
        for attention, feed in self.layers:
            latents = attention(features, latents) + latents
            latents = feed(latents) + latents
        return self.norm_out(self.proj_out(latents))


@dataclass(frozen=True)
class FaceContext:
    """What the face branch needs for one call: how many of the encoder tokens are face tokens,
    the adapter scale, and the optional face-region mask [H, W] in 0..1."""

    tokens: int
    scale: float
    region: torch.Tensor | None = None


class FaceAttnProcessor(nn.Module):
    """SDXL attention (as diffusers computes it) whose last `tokens` encoder tokens are face tokens,
    attended separately through to_k_ip / to_v_ip and added times the adapter scale."""

    def __init__(self, hidden_size: int, cross_attention_dim: int):
        super().__init__()
        self.to_k_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        self.to_v_ip = nn.Linear(cross_attention_dim, hidden_size, bias=False)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 face: FaceContext | None = None):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        image_shape = None
        if hidden_states.ndim == 4:
            image_shape = hidden_states.shape
            batch, channels, height, width = image_shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        batch = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape[0]
        length = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape[1]
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, length, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        face_tokens = None
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        else:
            if face is not None:
                split = encoder_hidden_states.shape[1] - face.tokens
                # contiguous: a linear layer on a strided slice takes a slow batched path in torch
                # (on the CPU it copies the transposed weight at every call)
                encoder_hidden_states, face_tokens = (encoder_hidden_states[:, :split].contiguous(),
                                                      encoder_hidden_states[:, split:].contiguous())
            if attn.norm_cross:
                encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads

        def heads(x):
            return x.view(batch, -1, attn.heads, head_dim).transpose(1, 2)

        query = heads(query)
        out = F.scaled_dot_product_attention(query, heads(key), heads(value), attn_mask=attention_mask)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)

        if face_tokens is not None:
            face_out = F.scaled_dot_product_attention(query, heads(self.to_k_ip(face_tokens)),
                                                      heads(self.to_v_ip(face_tokens)))
            face_out = face_out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
            if face.region is not None:
                face_out = face_out * region_at(face.region, query.shape[-2])
            out = out + face.scale * face_out

        out = attn.to_out[1](attn.to_out[0](out))
        if image_shape is not None:
            out = out.transpose(-1, -2).reshape(image_shape)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class SelfAttnProcessor:
    """diffusers' SDPA attention for the self-attention layers, taking (and ignoring) the face
    context the UNet hands every processor — otherwise diffusers warns about it at every layer."""

    def __init__(self):
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.inner = AttnProcessor2_0()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 face: FaceContext | None = None):
        return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


def region_at(region: torch.Tensor, length: int) -> torch.Tensor:
    """The face-region mask at a layer with `length` image tokens, [1, length, 1]: nearest-neighbour
    downscaled by the layer's ratio, as the reference computes it."""
    height, width = region.shape[:2]
    ratio = (height * width / length) ** 0.5
    return F.interpolate(region[None, None], scale_factor=1 / ratio, mode="nearest").reshape([1, -1, 1])


# --------------------------------------------------------------------------------------------
# The weight file


@dataclass
class FaceAdapter:
    resampler: FaceResampler
    processors: dict[str, nn.Module]          # UNet processor name → processor (attn2: the face branch)

    @property
    def tokens(self) -> int:
        return self.resampler.size.num_queries


def build_face_adapter(state: Mapping[str, torch.Tensor], unet, dtype: torch.dtype | None = None) -> FaceAdapter:
    """The resampler and one processor per UNet attention, sized from the weights and loaded strictly.
    The file numbers processors in the UNet's order, attn1 included (those hold no weights)."""
    projector_state, attention_state = split_adapter_state(state, ADAPTER)
    projector_state, attention_state = converted(projector_state, dtype), converted(attention_state, dtype)
    with torch.device("meta"):
        resampler = FaceResampler(resampler_size(projector_state, PROJECTOR, HEAD_DIM))
    load_strict(resampler, projector_state, PROJECTOR)
    processors: dict[str, nn.Module] = {}
    layers = nn.ModuleList()
    for index, name in enumerate(unet.attn_processors):
        if name.endswith("attn1.processor"):
            processor = SelfAttnProcessor()
            layers.append(nn.Identity())             # a placeholder: attn1 holds no adapter weights
        else:
            key = f"{index}.to_k_ip.weight"
            hidden, cross = tensor_shape(attention_state, key, ATTENTION)
            with torch.device("meta"):
                processor = FaceAttnProcessor(hidden, cross)
            layers.append(processor)
        processors[name] = processor
    load_strict(layers, attention_state, ATTENTION)
    if resampler.size.output_dim != unet.config.cross_attention_dim:
        raise AdapterFormatError(f"the face tokens are {resampler.size.output_dim} wide; this UNet's cross-attention "
                                 f"takes {unet.config.cross_attention_dim} (is it an SDXL model?)")
    for module in (resampler, layers):
        module.eval().requires_grad_(False)
    return FaceAdapter(resampler, processors)


def install_face_adapter(unet, adapter: FaceAdapter) -> None:
    """Put the adapter's processors into the UNet (once; they then move with it between devices)."""
    current = unet.attn_processors
    if set(current) != set(adapter.processors):
        raise AdapterFormatError("the face adapter was built for another UNet")
    if any(current[name] is not processor for name, processor in adapter.processors.items()):
        unet.set_attn_processor(dict(adapter.processors))
