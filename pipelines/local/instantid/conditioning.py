"""What InstantID is given about a face, and how the demo prepares it from images.

From the reference photo: the ArcFace embedding of its largest face. From the pose photo (the
reference photo when there is none): the five keypoints, drawn into the IdentityNet's condition
image, and the face box (the region `enhance_face_region` confines the face to). Both photos are
first resized by the demo's rule (`resize_img`): scaled so the short side is 1024, then rescaled so
the long side is 1280 (which the second step always makes it: a square photo becomes 1280²), each
side floored to a multiple of 64 — two bilinear resamplings, as there — and the output takes the
pose photo's resized size.

A size chosen by the user instead places the keypoints and box on that canvas by "cover" scaling
(the pose photo scaled to fill it, centred, cropped), so faces are never stretched.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

MIN_SIDE, MAX_SIDE, SIDE_MULTIPLE = 1024, 1280, 64


def demo_resize(image: Image.Image) -> Image.Image:
    """The demo's resize_img with its defaults, step for step."""
    width, height = image.size
    ratio = MIN_SIDE / min(height, width)
    width, height = round(ratio * width), round(ratio * height)
    ratio = MAX_SIDE / max(height, width)
    first = image.resize([round(ratio * width), round(ratio * height)], Image.BILINEAR)
    size = [(round(ratio * width) // SIDE_MULTIPLE) * SIDE_MULTIPLE,
            (round(ratio * height) // SIDE_MULTIPLE) * SIDE_MULTIPLE]
    return first.resize(size, Image.BILINEAR)


@dataclass(frozen=True)
class FaceConditioning:
    """A face as InstantID uses it, on the output canvas (`size` = width, height in pixels).

    `embedding`: the 512-d ArcFace embedding of the identity (unnormalised, as antelopev2's
    recognizer gives it); `kps`: five keypoints [5, 2] (eyes, nose, mouth corners) where the face
    goes; `bbox`: x1, y1, x2, y2 of that face (needed by `enhance_face_region` only)."""

    embedding: np.ndarray
    kps: np.ndarray
    size: tuple[int, int]
    bbox: np.ndarray | None = None

    def __post_init__(self):
        embedding = np.asarray(self.embedding, dtype=np.float32).reshape(-1)
        kps = np.asarray(self.kps, dtype=np.float32)
        if embedding.shape != (512,):
            raise ValueError(f"the face embedding has {embedding.size} values; antelopev2's ArcFace gives 512")
        if kps.shape != (5, 2):
            raise ValueError(f"the face keypoints are {list(kps.shape)}; five (x, y) points are needed")
        if not np.all(np.isfinite(embedding)) or not np.all(np.isfinite(kps)):
            raise ValueError("the face embedding or keypoints contain NaN or infinity")
        object.__setattr__(self, "embedding", embedding)
        object.__setattr__(self, "kps", kps)
        object.__setattr__(self, "size", (int(self.size[0]), int(self.size[1])))
        if self.bbox is not None:
            object.__setattr__(self, "bbox", np.asarray(self.bbox, dtype=np.float32).reshape(4))

    def on_canvas(self, width: int, height: int) -> "FaceConditioning":
        """The same face placed on a width×height canvas by cover scaling, centred."""
        if (width, height) == self.size:
            return self
        scale = max(width / self.size[0], height / self.size[1])
        offset = np.array([(width - self.size[0] * scale) / 2, (height - self.size[1] * scale) / 2], np.float32)
        bbox = None if self.bbox is None else (self.bbox.reshape(2, 2) * scale + offset).reshape(4)
        return FaceConditioning(self.embedding, self.kps * scale + offset, (width, height), bbox)


def face_mask(bbox: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """[H, W] 1 inside the face box, 0 outside; the box corners truncated to whole pixels as the
    demo does, and clamped to the canvas (the demo's negative corners would select nothing)."""
    width, height = size
    x1, y1, x2, y2 = (int(v) for v in bbox)
    mask = torch.zeros(height, width)
    mask[max(y1, 0):max(y2, 0), max(x1, 0):max(x2, 0)] = 1.0
    return mask


def keypoint_image(face: FaceConditioning) -> Image.Image:
    """The IdentityNet's condition image: the keypoints drawn on black as the reference draws them."""
    from ..faces import draw_keypoints

    return draw_keypoints(face.size, face.kps)
