"""How well an image keeps a face: the cosine similarity of ArcFace embeddings (antelopev2's
recognizer) between the largest face of a reference and the largest face of each image — for
images from any backend, local or cloud. An image without a usable face scores None.

Scores from the same recognizer are comparable across backends and runs; higher is closer.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont


@dataclass(frozen=True)
class IdentityScore:
    score: float | None             # cosine similarity in -1..1; None: no usable face in the image
    reason: str = ""                # why there is no score

    def text(self) -> str:
        return f"{self.score:.3f}" if self.score is not None else f"none ({self.reason})"


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def identity_scores(analyzer, reference: Image.Image, images: list[Image.Image]) -> list[IdentityScore]:
    """The reference must show a face (its error says what to change); each image may not."""
    from .local.faces import FaceAnalysisError

    anchor = analyzer.largest_face(reference, "reference").embedding
    scores = []
    for image in images:
        try:
            face = analyzer.largest_face(image, "generated")
        except FaceAnalysisError as exc:
            reason = "no face found" if "no face" in str(exc) else "face too small"
            scores.append(IdentityScore(None, reason))
            continue
        scores.append(IdentityScore(cosine(anchor, face.embedding)))
    return scores


def annotate(image: Image.Image, text: str) -> Image.Image:
    """The image with `text` in a dark band at its top-left, sized to the image."""
    out = image.convert("RGB").copy()
    size = max(10, min(out.size) // 16)
    try:
        font = ImageFont.load_default(size)
    except TypeError:                      # Pillow before 10.1: a fixed-size bitmap font
        font = ImageFont.load_default()
    draw = ImageDraw.Draw(out)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    pad = max(2, size // 4)
    draw.rectangle((0, 0, right - left + 2 * pad, bottom - top + 2 * pad), fill=(0, 0, 0))
    draw.text((pad - left, pad - top), text, fill=(255, 255, 255), font=font)
    return out
