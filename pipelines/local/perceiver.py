"""The perceiver attention both adapters' resamplers are built from (IP-Adapter-Plus style): a set
of learned latents attends to [features, latents]. InstantCharacter's resampler also modulates the
latents from the timestep (AdaLN shift and scale); InstantID's does not."""
from __future__ import annotations

import math

import torch
from torch import nn


class PerceiverAttention(nn.Module):
    """Keys norm1, norm2, to_q, to_kv, to_out — the layout both official adapter files use."""

    def __init__(self, dim: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, heads * head_dim, bias=False)
        self.to_kv = nn.Linear(dim, 2 * heads * head_dim, bias=False)
        self.to_out = nn.Linear(heads * head_dim, dim, bias=False)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, features, latents, shift=None, scale=None):
        features = self.norm1(features)
        latents = self.norm2(latents)
        if shift is not None:
            latents = latents * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)
        batch, length, _ = latents.shape
        query = self._split_heads(self.to_q(latents))
        key, value = (self._split_heads(part) for part in self.to_kv(torch.cat((features, latents), dim=-2)).chunk(2, -1))
        # both sides scaled by d^-1/4 and the softmax in float32: stable in half precision
        root = 1 / math.sqrt(math.sqrt(self.head_dim))
        weights = torch.softmax(((query * root) @ (key * root).transpose(-2, -1)).float(), dim=-1).to(query.dtype)
        out = (weights @ value).permute(0, 2, 1, 3).reshape(batch, length, -1)
        return self.to_out(out)


def feed_forward(dim: int, inner: int) -> nn.Sequential:
    """LayerNorm → Linear → GELU → Linear, bias-free (keys 0, 1, 3)."""
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, inner, bias=False), nn.GELU(), nn.Linear(inner, dim, bias=False))
