"""The InstantCharacter subject branch for a FLUX model this pack does not run itself (ComfyUI's own,
patched through its public patch points): the same adapter modules and the same math as the
all-in-one pipeline, fed from what such a host hands a patch — the flow sigma of the call, and the
image query of a block either raw (before the block's q-norm and RoPE) or after the block's q-norm.

Pure torch: the host-specific glue (ComfyUI's patch signatures, block layouts) lives in nodes/.
"""
from __future__ import annotations

import torch

from ..caching import LRU
from .adapter import ReferenceFeatures, SubjectAdapter

# subject tokens kept per (timestep, device, dtype): about two schedules of 28 steps
TOKEN_CACHE_SIZE = 64


def projector_timestep(sigmas: torch.Tensor) -> torch.Tensor:
    """The reference runs the projector on the scheduler timestep, sigma × 1000 (its transformer gets
    that / 1000); hosts like ComfyUI feed the model the sigma itself. In float32 (the scheduler's)."""
    return sigmas.float() * 1000


def processor_index(block_type: str, block_index: int, double_blocks: int) -> int:
    """The adapter's processors follow diffusers' attn_processors order: the double-stream blocks,
    then the single-stream blocks."""
    if block_type == "double":
        return block_index
    if block_type == "single":
        return double_blocks + block_index
    raise ValueError(f"unknown FLUX block type {block_type!r} (expected 'double' or 'single')")


def raw_query_from_normed(normed_query: torch.Tensor, norm_scale: torch.Tensor) -> torch.Tensor:
    """The image query as the subject branch needs it, from the query after the block's q-norm
    (RMS norm × scale, per head): dividing by the scale gives the raw query divided by its RMS.
    The branch RMS-normalises its query first, so this gives the branch's query up to the norms'
    epsilons (a relative 1e-6 / rms(raw query), far below any model precision)."""
    return normed_query / norm_scale


class SubjectBranch:
    """One reference, one adapter, one weight, active for sigmas in [sigma_end, sigma_start]: the
    subject branch's output for any processor, for a batch whose elements may carry different sigmas
    (element b uses sigmas[b % len(sigmas)], as when a host batches cond and uncond over one sigma
    vector). Subject tokens are cached per timestep on this object."""

    def __init__(self, adapter: SubjectAdapter, features: ReferenceFeatures, weight: float, double_blocks: int,
                 sigma_start: float = float("inf"), sigma_end: float = float("-inf")):
        self.adapter = adapter
        self.features = features
        self.weight = float(weight)
        self.double_blocks = double_blocks
        self.sigma_start = sigma_start
        self.sigma_end = sigma_end
        self.token_cache = LRU(TOKEN_CACHE_SIZE)
        self.feature_cache = LRU(2)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.adapter.projector.parameters()).dtype

    def scales(self, sigmas: torch.Tensor, batch: int) -> list[float]:
        """The subject scale of each call element: the weight inside the sigma window, else 0."""
        values = sigmas.reshape(-1).tolist()
        return [self.weight if self.sigma_end <= values[b % len(values)] <= self.sigma_start else 0.0
                for b in range(batch)]

    def _features(self, device: torch.device) -> ReferenceFeatures:
        return self.feature_cache.fetch((str(device), self.dtype), lambda: self.features.to(device, self.dtype))

    def tokens(self, timestep: float, device: torch.device) -> torch.Tensor:
        """[1, N, C] for one timestep (the projector runs once per distinct timestep)."""
        def make():
            with torch.no_grad():
                step = torch.tensor([timestep], dtype=torch.float32).to(device=device, dtype=self.dtype)
                return self.adapter.projector(self._features(device), step)
        return self.token_cache.fetch((timestep, str(device), self.dtype), make)

    def __call__(self, block_type: str, block_index: int, raw_query: torch.Tensor, sigmas: torch.Tensor,
                 scales: list[float]) -> torch.Tensor:
        """raw_query: [B, H, L, D], the block's image query before its q-norm and RoPE; sigmas: the
        call's sigma vector; scales: per element (from `scales`). → [B, L, H*D], to be added to the
        image part of the block's attention output before its output projection."""
        processor = self.adapter.processors[processor_index(block_type, block_index, self.double_blocks)]
        batch = raw_query.shape[0]
        timesteps = projector_timestep(sigmas.reshape(-1)).tolist()
        per_element = [timesteps[b % len(timesteps)] for b in range(batch)]
        if len(set(per_element)) == 1:
            tokens = self.tokens(per_element[0], raw_query.device)
        else:
            tokens = torch.cat([self.tokens(t, raw_query.device) for t in per_element])
        with torch.no_grad():
            out = processor.attend(raw_query, tokens)
        if len(set(scales)) == 1:
            return out * scales[0]
        return out * torch.tensor(scales, dtype=out.dtype, device=out.device)[:, None, None]
