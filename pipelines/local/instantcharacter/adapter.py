"""The InstantCharacter adapter: the subject projector and the subject-attention branch added to every
FLUX attention processor, with the official weight format (`instantcharacter_ip-adapter.bin`, keys
`image_proj` and `ip_adapter`, or a flat `.safetensors` with those prefixes).

Architecture sizes come from the weight file, the way ComfyUI detects models from state-dict shapes,
so the real 5.6 GB file loads at its real sizes and tests build tiny adapters. Loading is strict: a
missing, unexpected or misshaped tensor is an error naming the key.

What the reference computes, and this module reproduces:
- projector: two stacks of transformer blocks over the reference features (low-res deep tokens
  cross-attending to the shallow layers, and to the high-res tiles), each followed by an MLP; a
  timestep-conditioned perceiver resampler turns their concatenation into the subject tokens;
- attention: the raw image query (before the block's own norm and RoPE) attends, after a per-head
  RMS norm, to RMS-normed keys and plain values projected from the subject tokens; the result,
  times the subject scale, joins the image stream before the block's output projection.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..adapter_files import (ATTENTION, PROJECTOR, ResamplerSize, converted, count_blocks, load_strict, resampler_size,
                             split_adapter_state, tensor_shape)
from ..perceiver import PerceiverAttention, feed_forward

# The adapter's attention modules use 64-dimensional heads (the official file: 42 x 64 in the
# feature blocks, 20 x 64 in the resampler); head counts follow from the weight shapes.
FEATURE_HEAD_DIM = 64
RESAMPLER_HEAD_DIM = 64
SUBJECT_NORM_EPS = 1e-6
BLOCK_NORM_EPS = 1e-6
ADAPTER = "InstantCharacter adapter"       # how errors name it


# --------------------------------------------------------------------------------------------
# Building blocks


class RMSNorm(nn.Module):
    """x / (rms(x) + eps) * scale — eps added to the RMS, not inside the root, as the adapter was trained."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.dim = dim
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rms = x.norm(2, dim=-1, keepdim=True) * self.dim ** -0.5
        # .to: a host may leave small weights off the compute device (ComfyUI under low VRAM)
        return self.scale.to(x.device) * (x / (rms + self.eps))


class FeatureMLP(nn.Module):
    """Linear → tanh-GELU → Linear (the projector's `proj*` heads; keys fc1, fc2)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class ResamplerLayer(nn.ModuleList):
    """[attention, feed-forward, AdaLN modulation] — a ModuleList so the keys are `0.*`, `1.*`, `2.*`."""

    def __init__(self, dim: int, heads: int, ff_inner: int):
        super().__init__([
            PerceiverAttention(dim, heads, RESAMPLER_HEAD_DIM),
            feed_forward(dim, ff_inner),
            nn.Sequential(nn.SiLU(), nn.Linear(dim, 4 * dim)),
        ])

    def forward(self, features, latents, time_embedding):
        attention, feed_forward, modulation = self
        shift_attn, scale_attn, shift_ff, scale_ff = modulation(time_embedding).chunk(4, dim=1)
        latents = attention(features, latents, shift_attn, scale_attn) + latents
        norm, *rest = feed_forward
        out = norm(latents) * (1 + scale_ff.unsqueeze(1)) + shift_ff.unsqueeze(1)
        for layer in rest:
            out = layer(out)
        return out + latents


class TimeResampler(nn.Module):
    """Perceiver resampler whose latents and inputs are conditioned on the diffusion timestep."""

    def __init__(self, size: ResamplerSize):
        super().__init__()
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps

        self.latents = nn.Parameter(torch.zeros(1, size.num_queries, size.dim))
        self.proj_in = nn.Linear(size.embedding_dim, size.dim)
        self.proj_out = nn.Linear(size.dim, size.output_dim)
        self.norm_out = nn.LayerNorm(size.output_dim)
        self.layers = nn.ModuleList([ResamplerLayer(size.dim, size.heads, size.ff_inner) for _ in range(size.depth)])
        self.time_proj = Timesteps(size.timestep_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(size.timestep_dim, size.dim, act_fn="silu")

    def forward(self, features: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        timestep = timestep.reshape(-1).to(features.device).expand(features.shape[0])
        time_embedding = self.time_embedding(self.time_proj(timestep).to(features.dtype))
        latents = self.latents.to(features.device).repeat(features.shape[0], 1, 1)
        features = self.proj_in(features) + time_embedding[:, None]
        for layer in self.layers:
            latents = layer(features, latents, time_embedding)
        return self.norm_out(self.proj_out(latents))


@dataclass(frozen=True)
class ProjectorSize:
    feature_dim: int             # SigLIP width + DINOv2 width
    cross_attention_dim: int
    feature_heads: int
    feature_layers: int
    feature_ff_inner: int
    mlp_hidden: int
    resampler: ResamplerSize


class SubjectProjector(nn.Module):
    """Reference features → subject tokens [B, num_queries, output_dim] for one diffusion timestep."""

    def __init__(self, size: ProjectorSize):
        super().__init__()
        from diffusers.models.attention import BasicTransformerBlock

        def blocks() -> nn.ModuleList:
            return nn.ModuleList([
                BasicTransformerBlock(size.feature_dim, size.feature_heads, FEATURE_HEAD_DIM, dropout=0.0,
                                      cross_attention_dim=size.cross_attention_dim, activation_fn="geglu",
                                      attention_bias=False, norm_type="layer_norm", norm_elementwise_affine=True,
                                      norm_eps=BLOCK_NORM_EPS, ff_inner_dim=size.feature_ff_inner)
                for _ in range(size.feature_layers)])

        self.size = size
        self.cross_layer_blocks = blocks()
        self.cross_scale_blocks = blocks()
        self.proj = FeatureMLP(size.feature_dim, size.mlp_hidden)
        self.proj_cross_layer = FeatureMLP(size.feature_dim, size.mlp_hidden)
        self.proj_cross_scale = FeatureMLP(size.feature_dim, size.mlp_hidden)
        self.resampler = TimeResampler(size.resampler)

    def forward(self, features: "ReferenceFeatures", timestep: torch.Tensor) -> torch.Tensor:
        cross_layer = features.low_res_deep
        for block in self.cross_layer_blocks:
            cross_layer = block(cross_layer, encoder_hidden_states=features.low_res_shallow)
        cross_scale = features.low_res_deep
        for block in self.cross_scale_blocks:
            cross_scale = block(cross_scale, encoder_hidden_states=features.high_res_deep)
        hidden = self.proj(features.low_res_deep) + self.proj_cross_scale(cross_scale)
        hidden = torch.cat([hidden, self.proj_cross_layer(cross_layer)], dim=1)
        return self.resampler(hidden, timestep)


@dataclass(frozen=True)
class ReferenceFeatures:
    """What the image encoders see of the reference (SigLIP ‖ DINOv2 along the channels)."""

    low_res_shallow: torch.Tensor      # [1, 3 x 729, C]: three intermediate layers of the 384² view
    low_res_deep: torch.Tensor         # [1, 729, C]: last layer of the 384² view
    high_res_deep: torch.Tensor        # [1, 4 x 729, C]: last layer of the four 384² tiles

    def to(self, device, dtype) -> "ReferenceFeatures":
        return ReferenceFeatures(*(t.to(device=device, dtype=dtype) for t in
                                   (self.low_res_shallow, self.low_res_deep, self.high_res_deep)))


# --------------------------------------------------------------------------------------------
# Subject attention inside FLUX


@dataclass(frozen=True)
class SubjectTokens:
    """Passed to every attention processor through the transformer's joint_attention_kwargs."""

    tokens: torch.Tensor           # [1, N, D] for the current step
    scale: float
    text_length: int               # single-stream blocks see [text, image]; the branch uses the image part


class SubjectAttnProcessor(nn.Module):
    """FLUX attention (as diffusers computes it) plus the subject branch. Keys: to_k_ip, to_v_ip,
    norm_ip_q.scale, norm_ip_k.scale."""

    def __init__(self, hidden_size: int, subject_dim: int, head_dim: int):
        super().__init__()
        self.norm_ip_q = RMSNorm(head_dim, SUBJECT_NORM_EPS)
        self.to_k_ip = nn.Linear(subject_dim, hidden_size)
        self.norm_ip_k = RMSNorm(head_dim, SUBJECT_NORM_EPS)
        self.to_v_ip = nn.Linear(subject_dim, hidden_size)

    def subject_attention(self, attn, image_query: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.attend(image_query.unflatten(-1, (attn.heads, -1)).transpose(1, 2), tokens)

    def attend(self, image_query: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The subject branch (unscaled) from the raw image query per head [B, H, L, D] and the subject
        tokens [1 or B, N, C] → [B, L, H*D]. The all-in-one pipeline and the native ComfyUI patch both
        call this."""
        batch, heads = image_query.shape[:2]

        def per_head(x):               # [B, L, H*D] → [B, H, L, D]
            return x.unflatten(-1, (heads, -1)).transpose(1, 2)

        query = self.norm_ip_q(image_query)
        key = self.norm_ip_k(per_head(self.to_k_ip(tokens))).expand(batch, -1, -1, -1)
        value = per_head(self.to_v_ip(tokens)).expand(batch, -1, -1, -1)
        out = F.scaled_dot_product_attention(query.to(value.dtype), key.to(value.dtype), value)
        return out.transpose(1, 2).flatten(2).to(image_query.dtype)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None,
                 subject: SubjectTokens | None = None):
        from diffusers.models.embeddings import apply_rotary_emb

        if attn.fused_projections:
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        joint = encoder_hidden_states is not None

        subject_out = None
        if subject is not None and subject.scale != 0:
            # the raw query of the image tokens, before the block's own norm and RoPE
            image_query = query if joint else query[:, subject.text_length:]
            subject_out = self.subject_attention(attn, image_query, subject.tokens) * subject.scale

        query = attn.norm_q(query.unflatten(-1, (-1, attn.head_dim)))
        key = attn.norm_k(key.unflatten(-1, (-1, attn.head_dim)))
        value = value.unflatten(-1, (-1, attn.head_dim))
        if joint:
            if attn.fused_projections:
                text_q, text_k, text_v = attn.to_added_qkv(encoder_hidden_states).chunk(3, dim=-1)
            else:
                text_q, text_k, text_v = (attn.add_q_proj(encoder_hidden_states), attn.add_k_proj(encoder_hidden_states),
                                          attn.add_v_proj(encoder_hidden_states))
            query = torch.cat([attn.norm_added_q(text_q.unflatten(-1, (-1, attn.head_dim))), query], dim=1)
            key = torch.cat([attn.norm_added_k(text_k.unflatten(-1, (-1, attn.head_dim))), key], dim=1)
            value = torch.cat([text_v.unflatten(-1, (-1, attn.head_dim)), value], dim=1)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        out = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                                             attn_mask=attention_mask)
        out = out.transpose(1, 2).flatten(2, 3).to(query.dtype)

        if joint:
            text_length = encoder_hidden_states.shape[1]
            text_out, image_out = out[:, :text_length], out[:, text_length:]
            if subject_out is not None:
                image_out = image_out + subject_out
            image_out = attn.to_out[1](attn.to_out[0](image_out.contiguous()))
            return image_out, attn.to_add_out(text_out.contiguous())
        if subject_out is not None:
            length = subject.text_length
            out = torch.cat([out[:, :length], out[:, length:] + subject_out], dim=1)
        return out


# --------------------------------------------------------------------------------------------
# The weight file


def projector_size(state: Mapping[str, torch.Tensor]) -> ProjectorSize:
    """The projector's sizes, read from its weights."""
    where = PROJECTOR
    mlp_hidden, feature_dim = tensor_shape(state, "proj.fc1.weight", where)
    to_q = tensor_shape(state, "cross_layer_blocks.0.attn1.to_q.weight", where)[0]
    return ProjectorSize(
        feature_dim=feature_dim,
        cross_attention_dim=tensor_shape(state, "cross_layer_blocks.0.attn2.to_k.weight", where)[1],
        feature_heads=to_q // FEATURE_HEAD_DIM,
        feature_layers=count_blocks(state, "cross_layer_blocks.", where),
        feature_ff_inner=tensor_shape(state, "cross_layer_blocks.0.ff.net.2.weight", where)[1],
        mlp_hidden=mlp_hidden,
        resampler=resampler_size(state, where, RESAMPLER_HEAD_DIM, prefix="resampler.", timestep=True),
    )


@dataclass(frozen=True)
class AttentionSize:
    processors: int
    hidden_size: int
    subject_dim: int
    head_dim: int


def attention_size(state: Mapping[str, torch.Tensor]) -> AttentionSize:
    where = ATTENTION
    hidden, subject_dim = tensor_shape(state, "0.to_k_ip.weight", where)
    return AttentionSize(processors=count_blocks(state, "", where), hidden_size=hidden, subject_dim=subject_dim,
                         head_dim=tensor_shape(state, "0.norm_ip_q.scale", where)[0])


@dataclass
class SubjectAdapter:
    projector: SubjectProjector
    processors: nn.ModuleList         # one per FLUX attention processor, in the transformer's order


def build_adapter(state: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None) -> SubjectAdapter:
    """Modules sized from the weights, loaded strictly. `dtype`: convert the weights (default: as stored)."""
    projector_state, attention_state = split_adapter_state(state, ADAPTER)
    size = attention_size(attention_state)
    with torch.device("meta"):
        projector = SubjectProjector(projector_size(projector_state))
        processors = nn.ModuleList([SubjectAttnProcessor(size.hidden_size, size.subject_dim, size.head_dim)
                                    for _ in range(size.processors)])
    load_strict(projector, converted(projector_state, dtype), PROJECTOR)
    load_strict(processors, converted(attention_state, dtype), ATTENTION)
    for module in (projector, processors):
        module.eval().requires_grad_(False)
    return SubjectAdapter(projector, processors)
