"""Conversions between image tensors ([B,H,W,C] float in 0..1, ComfyUI's IMAGE layout), PIL
images and encoded PNG/JPEG bytes.

Channel counts are handled explicitly: 1 channel is grayscale, 3 is RGB, 4 is RGBA. Alpha is
never dropped silently: flattening to RGB composites over a stated background colour.
"""
from __future__ import annotations

import io
import re
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageColor

RGB = tuple[int, int, int]
WHITE: RGB = (255, 255, 255)

_MODE_BY_CHANNELS = {1: "L", 3: "RGB", 4: "RGBA"}

# Decoding refuses anything larger; a provider never returns more than a few megapixels.
DEFAULT_MAX_DECODE_PIXELS = 64 * 1024 * 1024


class ImageShapeError(ValueError):
    """An image tensor this pack cannot interpret."""


class ImageDecodeError(ValueError):
    """Bytes that are not a complete, decodable image."""


_HEX_COLOUR = re.compile(r"#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})")


def parse_color(text: str) -> RGB:
    """'#RRGGBB', '#RGB' or a CSS colour name (the 148 of CSS Color 4, any case) → (r, g, b).
    Nothing else (no rgb(), hsl(), alpha or system colours), so the browser's swatch can accept
    exactly the same. Raises ValueError naming the input."""
    value = text.strip() if isinstance(text, str) else ""
    if _HEX_COLOUR.fullmatch(value) or value.lower() in ImageColor.colormap:
        return ImageColor.getrgb(value.lower())[:3]
    raise ValueError(
        f"background colour {text!r} is not a colour; use #RRGGBB (e.g. #FFFFFF), #RGB or a CSS name like 'white'"
    )


def as_image_batch(images: torch.Tensor) -> torch.Tensor:
    """Accept [B,H,W,C] or [H,W,C] with 1, 3 or 4 channels; anything else raises ImageShapeError."""
    if not isinstance(images, torch.Tensor):
        raise ImageShapeError(f"expected an image tensor, got {type(images).__name__}")
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[-1] not in _MODE_BY_CHANNELS:
        raise ImageShapeError(
            f"image tensor of shape {tuple(images.shape)} is not supported; expected "
            "[batch, height, width, channels] with 1 (gray), 3 (RGB) or 4 (RGBA) channels"
        )
    if images.shape[0] == 0 or images.shape[1] == 0 or images.shape[2] == 0:
        raise ImageShapeError(f"image tensor of shape {tuple(images.shape)} is empty")
    return images


def image_batch_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """[B,H,W,C] (or [H,W,C]) float tensor in 0..1 → one PIL image per batch item (L, RGB or RGBA)."""
    batch = as_image_batch(images)
    mode = _MODE_BY_CHANNELS[batch.shape[-1]]
    array = (batch.detach().to("cpu", torch.float32).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    if mode == "L":
        array = array[..., 0]
    return [Image.fromarray(item, mode) for item in array]


def flatten_to_rgb(image: Image.Image, background: RGB = WHITE) -> Image.Image:
    """Any PIL image → RGB. Transparency (RGBA, LA, palette with transparency) is composited over `background`."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bits instead of clipping everything above 255 to white
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        return Image.fromarray((array / peak * 255).clip(0, 255).astype(np.uint8), "L").convert("RGB")
    return image.convert("RGB")


def pil_to_image_batch(images: Sequence[Image.Image], background: RGB = WHITE) -> torch.Tensor:
    """PIL images of one size → [B,H,W,3] float32 tensor in 0..1 (alpha composited over `background`)."""
    if not images:
        raise ImageShapeError("no images to stack")
    sizes = {image.size for image in images}
    if len(sizes) != 1:
        listed = ", ".join(f"{w}x{h}" for w, h in sorted(sizes))
        raise ImageShapeError(f"images differ in size ({listed}); resize them to one size before batching")
    arrays = [np.asarray(flatten_to_rgb(image, background), dtype=np.uint8) for image in images]
    return torch.from_numpy(np.stack(arrays)).to(torch.float32).div_(255.0)


def encode_image(image: Image.Image, fmt: str = "PNG", quality: int = 95) -> bytes:
    """Encode as PNG (lossless, keeps alpha) or JPEG (flattened on white)."""
    fmt = fmt.upper()
    buffer = io.BytesIO()
    if fmt in ("JPEG", "JPG"):
        flatten_to_rgb(image).save(buffer, "JPEG", quality=quality, optimize=True)
    elif fmt == "PNG":
        keep = image if image.mode in ("RGB", "RGBA", "L", "LA") else flatten_to_rgb(image)
        keep.save(buffer, "PNG")
    else:
        raise ValueError(f"unsupported image format {fmt!r}; use PNG or JPEG")
    return buffer.getvalue()


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_DECODE_PIXELS) -> Image.Image:
    """Decode and fully verify image bytes → RGB PIL image. Truncated or bogus data raises ImageDecodeError."""
    if not data:
        raise ImageDecodeError("empty image data")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
            if width * height > max_pixels:
                raise ImageDecodeError(f"image is {width}x{height}, larger than the {max_pixels}-pixel limit")
            probe.verify()  # checks structure and checksums without decoding pixels
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decodes every pixel: a truncated file fails here...
            fmt = image.format
            decoded = flatten_to_rgb(image)
    except ImageDecodeError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"not a valid image ({len(data)} bytes): {exc}") from None
    # ...unless someone set ImageFile.LOAD_TRUNCATED_IMAGES (ComfyUI does, briefly, while loading
    # inputs), so check the container's own end marker as well.
    if not _container_complete(fmt, data):
        raise ImageDecodeError(f"{fmt} image data is truncated ({len(data)} bytes)")
    return decoded


def _container_complete(fmt: str | None, data: bytes) -> bool:
    if fmt == "JPEG":
        return data.rstrip(b"\x00\r\n\t ").endswith(b"\xff\xd9")
    if fmt == "PNG":
        return b"IEND" in data[-16:]
    if fmt == "WEBP":
        return len(data) >= 8 + int.from_bytes(data[4:8], "little")
    return True


def fit_to_size(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale to cover width×height, then cut the centre: the one rule for outputs whose size differs
    from what was asked (no stretching, no borders)."""
    if image.size == (width, height):
        return image
    scale = max(width / image.width, height / image.height)
    scaled_w, scaled_h = max(width, round(image.width * scale)), max(height, round(image.height * scale))
    scaled = image.resize((scaled_w, scaled_h), Image.Resampling.LANCZOS)
    left, top = (scaled_w - width) // 2, (scaled_h - height) // 2
    return scaled.crop((left, top, left + width, top + height))


def downscale_to_fit(image: Image.Image, max_side: int) -> Image.Image:
    """Shrink (never enlarge) so the longer side is at most max_side."""
    longer = max(image.size)
    if longer <= max_side:
        return image
    scale = max_side / longer
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)
