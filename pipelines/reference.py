"""Reference-image preparation shared by every backend.

InstantCharacter works best on a square reference with the character on a plain (white)
background; InstantID crops the face itself but also prefers a square, uncluttered input.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .images import RGB, WHITE, as_image_batch, ImageShapeError

FIT_MODES = ("pad", "center_crop")


def _background_tensor(background: RGB, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(background, dtype=like.dtype, device=like.device) / 255.0


def _mask_batch(mask: torch.Tensor, batch: torch.Tensor) -> torch.Tensor | None:
    """Mask ([H,W], [B,H,W] or [1,H,W], 1 = background) → [B,H,W,1] matching `batch`, or None when
    the mask is LoadImage's placeholder for an image without alpha."""
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim != 3:
        raise ImageShapeError(f"mask of shape {tuple(mask.shape)} is not supported; expected [batch, height, width]")
    if mask.shape[1:] != batch.shape[1:3] and not bool(mask.any()):
        # LoadImage answers "no alpha" (every JPEG, most PNGs) with an all-zero 64x64 mask: that
        # means "nothing is background", which is exactly no mask. A real mask must match the image.
        return None
    if mask.shape[1:] != batch.shape[1:3]:
        raise ImageShapeError(
            f"mask is {mask.shape[2]}x{mask.shape[1]} but the image is {batch.shape[2]}x{batch.shape[1]}; "
            "they must be the same size"
        )
    if mask.shape[0] not in (1, batch.shape[0]):
        raise ImageShapeError(f"mask batch of {mask.shape[0]} does not match image batch of {batch.shape[0]}")
    return mask.to(batch.dtype).clamp(0, 1).expand(batch.shape[0], -1, -1).unsqueeze(-1)


def to_rgb_batch(images: torch.Tensor, background: RGB = WHITE, mask: torch.Tensor | None = None) -> torch.Tensor:
    """[B,H,W,1|3|4] → [B,H,W,3]. Alpha, and `mask` where given, are composited over `background`."""
    batch = as_image_batch(images).to(torch.float32).clamp(0, 1)
    bg = _background_tensor(background, batch)
    channels = batch.shape[-1]
    if channels == 1:
        rgb = batch.expand(-1, -1, -1, 3)
    elif channels == 4:
        alpha = batch[..., 3:4]
        rgb = batch[..., :3] * alpha + bg * (1 - alpha)
    else:
        rgb = batch
    replace = _mask_batch(mask, rgb) if mask is not None else None
    if replace is not None:
        rgb = rgb * (1 - replace) + bg * replace
    return rgb


def square_batch(rgb: torch.Tensor, fit: str, background: RGB = WHITE) -> torch.Tensor:
    """Make [B,H,W,3] square: 'pad' centres it on the background, 'center_crop' cuts the middle."""
    _, height, width, _ = rgb.shape
    if fit == "pad":
        side = max(height, width)
        canvas = _background_tensor(background, rgb).expand(rgb.shape[0], side, side, 3).clone()
        top, left = (side - height) // 2, (side - width) // 2
        canvas[:, top:top + height, left:left + width] = rgb
        return canvas
    if fit == "center_crop":
        side = min(height, width)
        top, left = (height - side) // 2, (width - side) // 2
        return rgb[:, top:top + side, left:left + side]
    raise ValueError(f"fit mode {fit!r} is not one of {FIT_MODES}")


def resize_batch(rgb: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Antialiased bicubic resize of [B,H,W,C]; a no-op when the size already matches."""
    if rgb.shape[1:3] == (height, width):
        return rgb
    channels_first = rgb.permute(0, 3, 1, 2)
    resized = F.interpolate(channels_first, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    # Snap to the 8-bit grid: interpolation leaves flat areas at 0.99999…, which ComfyUI's savers
    # truncate to 254, so a white background would come out off-white.
    return resized.permute(0, 2, 3, 1).clamp(0, 1).mul(255).round().div(255)


def prepare_reference(
    images: torch.Tensor,
    background: RGB = WHITE,
    fit: str = "pad",
    size: int = 1024,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Flatten to RGB over `background`, square by padding or centre-cropping, resize to `size`
    (0 keeps the squared size). Works on the whole batch at once; returns [B,size,size,3] float32."""
    if fit not in FIT_MODES:
        raise ValueError(f"fit mode {fit!r} is not one of {FIT_MODES}")
    if size < 0:
        raise ValueError(f"size {size} must be 0 (keep) or a positive number of pixels")
    square = square_batch(to_rgb_batch(images, background, mask), fit, background)
    if size:
        square = resize_batch(square, size, size)
    return square.contiguous()
