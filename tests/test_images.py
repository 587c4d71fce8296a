"""IMAGE tensor ⇄ PIL ⇄ PNG/JPEG conversions."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from pipelines import (
    ImageDecodeError,
    ImageShapeError,
    decode_image,
    encode_image,
    flatten_to_rgb,
    image_batch_to_pil,
    parse_color,
    pil_to_image_batch,
)


def gradient_batch(batch: int, height: int, width: int, channels: int) -> torch.Tensor:
    """Distinct, exactly representable values (k/255) per pixel, channel and batch item."""
    values = torch.arange(batch * height * width * channels).reshape(batch, height, width, channels) % 256
    return values.to(torch.float32) / 255.0


@pytest.mark.parametrize(("channels", "mode"), [(1, "L"), (3, "RGB"), (4, "RGBA")])
def test_batch_to_pil_keeps_every_pixel(channels, mode):
    batch = gradient_batch(2, 5, 7, channels)
    images = image_batch_to_pil(batch)
    assert [image.mode for image in images] == [mode, mode]
    assert all(image.size == (7, 5) for image in images)
    for index, image in enumerate(images):
        expected = (batch[index] * 255).round().to(torch.uint8).numpy()
        got = np.asarray(image)
        assert np.array_equal(got, expected[..., 0] if channels == 1 else expected)


def test_a_single_hwc_image_is_a_batch_of_one_and_values_are_clamped():
    image = torch.full((4, 6, 3), 1.7)
    image[0, 0] = torch.tensor([-0.5, 0.5, 1.0])
    [pil] = image_batch_to_pil(image)
    assert pil.size == (6, 4)
    assert pil.getpixel((0, 0)) == (0, 128, 255) and pil.getpixel((5, 3)) == (255, 255, 255)


@pytest.mark.parametrize("shape", [(1, 8, 8, 2), (8, 8), (1, 1, 8, 8, 3), (0, 8, 8, 3), (1, 0, 8, 3)])
def test_unsupported_shapes_raise_a_clear_error(shape):
    with pytest.raises(ImageShapeError, match=r"shape \(" + ", ".join(map(str, shape))):
        image_batch_to_pil(torch.zeros(shape))


def test_round_trip_tensor_pil_tensor_is_exact_for_rgb():
    batch = gradient_batch(3, 9, 4, 3)
    assert torch.equal(pil_to_image_batch(image_batch_to_pil(batch)), batch)


def test_rgba_is_composited_over_the_background_not_dropped():
    rgba = Image.new("RGBA", (2, 1))
    rgba.putpixel((0, 0), (255, 0, 0, 255))   # opaque red
    rgba.putpixel((1, 0), (255, 0, 0, 0))     # fully transparent
    batch = pil_to_image_batch([rgba], background=(0, 0, 255))
    assert batch.shape == (1, 1, 2, 3)
    assert batch[0, 0, 0].tolist() == [1.0, 0.0, 0.0]
    assert batch[0, 0, 1].tolist() == [0.0, 0.0, 1.0]


def test_half_transparent_pixels_blend_with_the_background():
    rgba = Image.new("RGBA", (1, 1), (0, 0, 0, 128))
    assert flatten_to_rgb(rgba, (255, 255, 255)).getpixel((0, 0)) == (127, 127, 127)


def test_grayscale_and_16_bit_images_become_rgb():
    gray = Image.new("L", (3, 3), 200)
    assert flatten_to_rgb(gray).getpixel((1, 1)) == (200, 200, 200)
    deep = Image.fromarray(np.full((2, 2), 65535, dtype=np.uint16))
    assert flatten_to_rgb(deep).getpixel((0, 0)) == (255, 255, 255)
    half = Image.fromarray(np.full((2, 2), 32768, dtype=np.uint16))
    assert flatten_to_rgb(half).getpixel((0, 0)) == (127, 127, 127)


def test_palette_images_with_transparency_are_composited():
    palette = Image.new("P", (1, 1), 0)
    palette.putpalette([10, 20, 30] * 256)
    palette.info["transparency"] = 0
    assert flatten_to_rgb(palette, (1, 2, 3)).getpixel((0, 0)) == (1, 2, 3)


def test_batching_images_of_different_sizes_names_the_sizes():
    with pytest.raises(ImageShapeError, match="8x8, 9x8"):
        pil_to_image_batch([Image.new("RGB", (8, 8)), Image.new("RGB", (9, 8))])
    with pytest.raises(ImageShapeError, match="no images"):
        pil_to_image_batch([])


def test_png_round_trip_is_lossless_and_keeps_alpha():
    rgba = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 4), dtype=np.uint8), "RGBA")
    data = encode_image(rgba, "png")
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as back:
        assert back.mode == "RGBA" and np.array_equal(np.asarray(back), np.asarray(rgba))


def test_jpeg_encoding_flattens_alpha_on_white_and_decodes_close():
    rgba = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    data = encode_image(rgba, "JPEG")
    assert data[:2] == b"\xff\xd8"
    decoded = decode_image(data)
    assert decoded.mode == "RGB" and min(decoded.getpixel((8, 8))) >= 250


def test_unknown_formats_are_refused():
    with pytest.raises(ValueError, match="unsupported image format 'GIF'"):
        encode_image(Image.new("RGB", (2, 2)), "gif")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_truncated_images_are_refused_even_when_pil_is_told_to_tolerate_them(fmt, monkeypatch):
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, fmt)
    data = buffer.getvalue()
    assert decode_image(data).size == (64, 64)
    for tolerate in (False, True):
        monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", tolerate)
        with pytest.raises(ImageDecodeError):
            decode_image(data[: len(data) * 2 // 3])


def test_garbage_empty_and_oversized_data_are_refused():
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image(b"")
    with pytest.raises(ImageDecodeError, match="not a valid image"):
        decode_image(b"<html>502 Bad Gateway</html>")
    big = encode_image(Image.new("RGB", (300, 300)))
    with pytest.raises(ImageDecodeError, match="300x300, larger than the 10000-pixel limit"):
        decode_image(big, max_pixels=10_000)


def test_decoded_images_are_always_rgb():
    data = encode_image(Image.new("LA", (4, 4), (0, 0)), "PNG")
    assert decode_image(data).mode == "RGB"


@pytest.mark.parametrize(("text", "rgb"), [("#FFFFFF", (255, 255, 255)), ("#0f0", (0, 255, 0)),
                                           (" white ", (255, 255, 255)), ("RebeccaPurple", (102, 51, 153))])
def test_colours_parse(text, rgb):
    assert parse_color(text) == rgb


@pytest.mark.parametrize("text", ["rgb(1,2,3)", "#11223344", "#1234", "hsl(0, 100%, 50%)", "transparent",
                                  "currentColor", "Canvas", "", "whitе"])
def test_only_hex_and_css_names_are_colours(text):
    """The browser swatch accepts exactly these forms, so the server must not accept more."""
    with pytest.raises(ValueError):
        parse_color(text)


def test_a_bad_colour_names_itself_and_the_accepted_forms():
    with pytest.raises(ValueError, match=r"'#12345G' is not a colour; use #RRGGBB"):
        parse_color("#12345G")
