"""The cases on which the pack's InstantCharacter pipeline is compared with the reference
implementation (their outputs recorded in tests/data/instantcharacter_reference.json by
scripts/record_instantcharacter_reference.py), and the reference image they use.

The reference image is not square and has detail everywhere (so a different stretch, tile order
or crop would change the features); the cases cover a non-square output, the subject branch at
the reference's demo scale and above 1, and true CFG with a negative prompt.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Case:
    prompt: str
    seed: int
    width: int = 64
    height: int = 48
    steps: int = 4
    guidance: float = 3.5
    subject_scale: float = 0.9
    true_cfg_scale: float = 1.0
    negative_prompt: str = ""


CASES = {
    "demo_scale": Case("a girl is playing a guitar in the street", seed=123456),
    "strong_subject_square": Case("a knight in a misty forest, oil painting", seed=7, width=48, height=48,
                                  subject_scale=1.4, guidance=5.0, steps=3),
    "true_cfg": Case("a cat astronaut on the moon", seed=99, true_cfg_scale=2.5,
                     negative_prompt="blurry, low quality", steps=3),
}


def reference_image() -> Image.Image:
    """96×72: a colour gradient with a pattern, different in every tile."""
    y, x = np.mgrid[0:72, 0:96]
    red = (x * 255 / 95).astype(np.uint8)
    green = (y * 255 / 71).astype(np.uint8)
    blue = (((x // 8 + y // 8) % 2) * 200 + (x * y) % 55).astype(np.uint8)
    return Image.fromarray(np.stack([red, green, blue], axis=-1), "RGB")


def rounded(tensor) -> dict:
    array = tensor.detach().to("cpu").float().numpy()
    return {"shape": list(array.shape), "values": [float(f"{v:.7g}") for v in array.reshape(-1)]}


def as_array(recorded: dict) -> np.ndarray:
    return np.asarray(recorded["values"], dtype=np.float32).reshape(recorded["shape"])
