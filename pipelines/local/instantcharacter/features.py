"""What the image encoders see of the reference, exactly as the InstantCharacter reference computes it:

- the reference is *stretched* to a square (the longer side; the pack's Prepare node pads instead,
  before this step, as the reference's demo does);
- one 384² view, and four 384² tiles cut from a 768² resize (top-left, top-right, bottom-left,
  bottom-right);
- SigLIP: the last hidden state, and hidden states 7, 13 and 26 concatenated along the tokens;
- DINOv2: the same from hidden states 9, 19 and 29 and the last one, the CLS token dropped;
- SigLIP ‖ DINOv2 along the channels.
"""
from __future__ import annotations

import torch
from PIL import Image

from .adapter import ReferenceFeatures

SIGLIP_SHALLOW_LAYERS = (7, 13, 26)
DINOV2_SHALLOW_LAYERS = (9, 19, 29)
VIEW = 384
TILES = ((0, 0), (VIEW, 0), (0, VIEW), (VIEW, VIEW))


class EncoderError(ValueError):
    """An image encoder that cannot give the features the adapter was trained on."""


def views(reference: Image.Image) -> tuple[list[Image.Image], list[Image.Image]]:
    """→ ([the 384² view], [the four 384² tiles of the 768² resize])."""
    rgb = reference.convert("RGB")
    side = max(rgb.size)
    square = rgb.resize((side, side))                  # PIL's default filter, as the reference
    low = [square.resize((VIEW, VIEW))]
    high = square.resize((2 * VIEW, 2 * VIEW))
    return low, [high.crop((left, top, left + VIEW, top + VIEW)) for left, top in TILES]


def check_encoder_depth(name: str, layers: int, needed: tuple[int, ...]) -> None:
    if layers < max(needed):
        raise EncoderError(f"{name} has {layers} layers; InstantCharacter reads its hidden states "
                           f"{', '.join(map(str, needed))}, so it needs at least {max(needed)}")


@torch.inference_mode()
def encode(encoder, pixels: torch.Tensor, shallow_layers: tuple[int, ...], drop_cls: bool,
           device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """→ (last hidden state, chosen hidden states concatenated along the tokens)."""
    out = encoder(pixels.to(device=device, dtype=dtype), output_hidden_states=True)
    start = 1 if drop_cls else 0
    deep = out.last_hidden_state[:, start:]
    shallow = torch.cat([out.hidden_states[i][:, start:] for i in shallow_layers], dim=1)
    return deep, shallow


@torch.inference_mode()
def reference_features(reference: Image.Image, siglip, siglip_processor, dinov2, dinov2_processor,
                       device, dtype) -> ReferenceFeatures:
    low, tiles = views(reference)

    def pixels(processor, images):
        return processor(images=images, return_tensors="pt").pixel_values

    siglip_low = encode(siglip, pixels(siglip_processor, low), SIGLIP_SHALLOW_LAYERS, False, device, dtype)
    dinov2_low = encode(dinov2, pixels(dinov2_processor, low), DINOV2_SHALLOW_LAYERS, True, device, dtype)
    siglip_tiles, _ = encode(siglip, pixels(siglip_processor, tiles), SIGLIP_SHALLOW_LAYERS, False, device, dtype)
    dinov2_tiles, _ = encode(dinov2, pixels(dinov2_processor, tiles), DINOV2_SHALLOW_LAYERS, True, device, dtype)

    def tiles_as_one(x):              # [4, L, C] → [1, 4L, C], tiles in order
        return x.reshape(1, -1, x.shape[-1])

    return ReferenceFeatures(
        low_res_shallow=torch.cat([siglip_low[1], dinov2_low[1]], dim=2),
        low_res_deep=torch.cat([siglip_low[0], dinov2_low[0]], dim=2),
        high_res_deep=torch.cat([tiles_as_one(siglip_tiles), tiles_as_one(dinov2_tiles)], dim=2),
    )
