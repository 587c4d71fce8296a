"""The cases on which the pack's InstantID pipeline is compared with the reference implementation
(instantX-research/InstantID, the demo's `pipeline_stable_diffusion_xl_instantid_full.py`; outputs
recorded in tests/data/instantid_reference.json by scripts/record_instantid_reference.py).

The face is given as numbers (an embedding with ArcFace's scale, keypoints and box on a 96×64
canvas), so the comparison covers the generation itself; face analysis has its own parity tests.
The cases cover a style template with weighted negatives, the face region (enhance_face_region),
no guidance (no negative branch), a prompt longer than one 75-token chunk with BREAK, and strengths
above 1, and the LCM fast mode.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np

from instantcharacter_fidelity import as_array, rounded  # noqa: F401  (shared fixture format)

CANVAS = (96, 64)          # width, height: the keypoint image's size, hence the output size
KPS = np.array([[34.5, 22.25], [58.0, 21.5], [46.75, 33.0], [37.0, 44.5], [56.5, 43.75]], dtype=np.float32)
BBOX = np.array([23.6, 7.2, 69.9, 55.4], dtype=np.float32)
LONG_PROMPT = ", ".join(f"detail number {i}" for i in range(40)) + " BREAK (sharp focus:1.3), [blurry]"


# photo sizes the demo's resize rule is recorded on: portrait, landscape, square, extreme, phone, tiny
RESIZE_INPUTS = ((600, 800), (1500, 1000), (1024, 1024), (333, 2000), (4032, 3024), (97, 131))


def gradient_photo(width: int, height: int):
    """A deterministic RGB photo with detail at every scale (so resampling differences show)."""
    from PIL import Image

    y, x = np.mgrid[0:height, 0:width]
    red = (x * 255 // max(width - 1, 1)).astype(np.uint8)
    green = (y * 255 // max(height - 1, 1)).astype(np.uint8)
    blue = ((x * 7 + y * 13) % 256).astype(np.uint8)
    return Image.fromarray(np.stack([red, green, blue], axis=-1), "RGB")


def face_embedding() -> np.ndarray:
    """512 values with an ArcFace embedding's spread (norm ≈ 22)."""
    return np.random.default_rng(2024).standard_normal(512).astype(np.float32)


@dataclass(frozen=True)
class Case:
    prompt: str
    negative_prompt: str
    seed: int
    steps: int = 4
    guidance: float = 5.0
    identity_strength: float = 0.8
    adapter_strength: float = 0.8
    enhance_face_region: bool = False
    scheduler: str = "euler"


WATERCOLOR = ("watercolor painting, a man in a garden. vibrant, beautiful, painterly, detailed, textural, artistic",
              "(lowres, low quality, worst quality:1.2), (text:1.2), watermark, anime, photorealistic, 35mm film, "
              "deformed, glitch, low contrast, noisy (blurry:0.8)")

CASES = {
    "watercolor_style": Case(*WATERCOLOR, seed=42),
    "face_region": Case("a woman as an astronaut, (detailed helmet:1.2)", "lowres", seed=7, enhance_face_region=True,
                        identity_strength=1.2, adapter_strength=0.6, steps=3),
    "no_guidance": Case("portrait photo of a person", "", seed=123, guidance=1.0, steps=3),
    "long_prompt": Case(LONG_PROMPT, "ugly", seed=5, steps=2, guidance=3.0, adapter_strength=1.4,
                        enhance_face_region=True),
    # the demo's fast mode: LCM-LoRA on, LCM scheduler (it draws noise between steps), guidance 1.5
    "lcm_fast_mode": Case("a man in a suit, film photo", "cartoon", seed=31, steps=3, guidance=1.5,
                          scheduler="lcm"),
}


def packed(image, levels: int = 65535) -> dict:
    """An image in 0..1 stored as 16-bit steps (error ≤ 7.7e-6, well inside the 1e-4 tolerance), or
    a uint8 image (levels=255) as is — base64, so the fixture stays small."""
    array = np.asarray(image.detach().cpu().float().numpy() if hasattr(image, "detach") else image, np.float64)
    if levels == 255:
        data = array.astype(np.uint8).tobytes()
    else:
        data = np.round(np.clip(array, 0, 1) * levels).astype("<u2").tobytes()
    return {"shape": list(array.shape), "levels": levels, "base64": base64.b64encode(data).decode()}


def unpacked(record: dict) -> np.ndarray:
    data = base64.b64decode(record["base64"])
    if record["levels"] == 255:
        return np.frombuffer(data, np.uint8).reshape(record["shape"])
    return (np.frombuffer(data, "<u2").astype(np.float64) / record["levels"]).reshape(record["shape"]).astype(np.float32)
