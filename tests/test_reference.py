"""Reference preparation (the logic behind the Prepare Character Reference node)."""
from __future__ import annotations

import pytest
import torch

from pipelines import ImageShapeError, prepare_reference

RED = torch.tensor([1.0, 0.0, 0.0])
GREEN = (0, 255, 0)


def solid(batch: int, height: int, width: int, rgb=RED, channels: int = 3) -> torch.Tensor:
    image = torch.zeros(batch, height, width, channels)
    image[..., :3] = rgb
    if channels == 4:
        image[..., 3] = 1.0
    return image


def test_pad_centres_a_landscape_image_on_the_background():
    out = prepare_reference(solid(1, 20, 40), background=GREEN, fit="pad", size=0)
    assert out.shape == (1, 40, 40, 3) and out.dtype == torch.float32
    assert torch.equal(out[0, :10], torch.tensor([0.0, 1.0, 0.0]).expand(10, 40, 3))   # padding above
    assert torch.equal(out[0, 30:], torch.tensor([0.0, 1.0, 0.0]).expand(10, 40, 3))   # padding below
    assert torch.equal(out[0, 10:30], RED.expand(20, 40, 3))                            # the image


def test_pad_centres_a_portrait_image_horizontally():
    out = prepare_reference(solid(1, 30, 10), background=(255, 255, 255), fit="pad", size=0)
    assert out.shape == (1, 30, 30, 3)
    assert torch.equal(out[0, :, :10], torch.ones(30, 10, 3))
    assert torch.equal(out[0, :, 10:20], RED.expand(30, 10, 3))


def test_center_crop_keeps_the_middle_square():
    image = torch.zeros(1, 10, 30, 3)
    image[:, :, 10:20] = 1.0                     # white band in the middle third
    out = prepare_reference(image, fit="center_crop", size=0)
    assert out.shape == (1, 10, 10, 3) and torch.equal(out, torch.ones(1, 10, 10, 3))


def test_resize_reaches_the_requested_side_and_stays_in_range():
    image = torch.rand(2, 37, 53, 3)
    out = prepare_reference(image, fit="pad", size=64)
    assert out.shape == (2, 64, 64, 3)
    assert out.min() >= 0 and out.max() <= 1
    small = prepare_reference(image, fit="center_crop", size=16)
    assert small.shape == (2, 16, 16, 3)


def test_a_square_image_of_the_right_size_is_unchanged():
    image = torch.rand(1, 32, 32, 3)
    assert torch.equal(prepare_reference(image, size=32), image)


def test_rgba_alpha_is_flattened_onto_the_background():
    image = solid(1, 4, 4, channels=4)
    image[0, :2, :, 3] = 0.0                     # top half transparent
    out = prepare_reference(image, background=GREEN, size=0)
    assert torch.equal(out[0, :2], torch.tensor([0.0, 1.0, 0.0]).expand(2, 4, 3))
    assert torch.equal(out[0, 2:], RED.expand(2, 4, 3))


def test_grayscale_becomes_rgb():
    out = prepare_reference(torch.full((1, 4, 4, 1), 0.25), size=0)
    assert out.shape == (1, 4, 4, 3) and torch.allclose(out, torch.full((1, 4, 4, 3), 0.25))


def test_mask_marks_background_and_broadcasts_over_the_batch():
    images = solid(3, 4, 4)
    mask = torch.zeros(1, 4, 4)
    mask[0, :, :2] = 1.0                         # left half is background (LoadImage convention)
    out = prepare_reference(images, background=GREEN, size=0, mask=mask)
    assert torch.equal(out[:, :, :2], torch.tensor([0.0, 1.0, 0.0]).expand(3, 4, 2, 3))
    assert torch.equal(out[:, :, 2:], RED.expand(3, 4, 2, 3))
    two_d = prepare_reference(images, background=GREEN, size=0, mask=mask[0])
    assert torch.equal(two_d, out)


def test_batch_items_are_processed_independently():
    images = torch.stack([torch.full((6, 12, 3), value) for value in (0.1, 0.5, 0.9)])
    out = prepare_reference(images, background=(0, 0, 0), size=0)
    for index, value in enumerate((0.1, 0.5, 0.9)):
        assert torch.allclose(out[index, 3:9], torch.full((6, 12, 3), value))
        assert torch.equal(out[index, :3], torch.zeros(3, 12, 3))


def test_mismatched_masks_raise_clear_errors():
    with pytest.raises(ImageShapeError, match="mask is 5x4 but the image is 4x4"):
        prepare_reference(solid(1, 4, 4), mask=torch.ones(1, 4, 5))
    real_but_small = torch.zeros(1, 64, 64)
    real_but_small[0, 10, 10] = 1.0                 # one masked pixel: a real mask, wrongly sized
    with pytest.raises(ImageShapeError, match="mask is 64x64 but the image is 96x80"):
        prepare_reference(solid(1, 80, 96), mask=real_but_small)


def test_loadimage_placeholder_mask_means_no_mask():
    """LoadImage gives an all-zero 64x64 MASK for any image without alpha (every JPEG): no mask."""
    images = solid(1, 80, 96)
    placeholder = torch.zeros(1, 64, 64)
    assert torch.equal(prepare_reference(images, size=0, mask=placeholder), prepare_reference(images, size=0))
    with pytest.raises(ImageShapeError, match="mask batch of 2 does not match image batch of 3"):
        prepare_reference(solid(3, 4, 4), mask=torch.zeros(2, 4, 4))


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="fit mode 'stretch'"):
        prepare_reference(solid(1, 4, 4), fit="stretch")
    with pytest.raises(ValueError, match="size -8"):
        prepare_reference(solid(1, 4, 4), size=-8)
    with pytest.raises(ImageShapeError, match=r"shape \(1, 4, 4, 2\)"):
        prepare_reference(torch.zeros(1, 4, 4, 2))


def test_a_white_background_stays_exactly_white_after_resizing():
    out = prepare_reference(solid(1, 10, 30), background=(255, 255, 255), size=64)
    assert torch.equal(out[0, :8], torch.ones(8, 64, 3))   # ComfyUI's savers would truncate 0.9999 to 254
