"""What a local pipeline tells its caller after each denoising step (progress bar, preview, Cancel)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class StepInfo:
    step: int                # 1-based
    total: int
    denoised: torch.Tensor   # this step's estimate of the final latents [B, C, h, w] (previews)
