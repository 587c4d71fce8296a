"""The face InstantID is given, made in one place for every caller (the all-in-one pipeline, the
InstantID Face nodes): from photos, as the demo prepares them, or from numbers the user already has.

From photos: both resized by the demo's rule; the identity (ArcFace embedding) from the reference's
largest face; keypoints, box and canvas from the pose photo's last face (as the demo takes it) or
else from the reference.

Precomputed: a 512-value ArcFace embedding (antelopev2's glintr100, what insightface's
`Face.embedding` holds: unnormalised) read from a .npy or .safetensors file, five keypoints and an
optional box as text, and the size of the image the keypoints were measured on. Every problem is
reported naming the input it comes from.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
from PIL import Image

from ..faces import FaceAnalysisError
from .conditioning import FaceConditioning, demo_resize

EMBEDDING_SIZE = 512
EMBEDDING_EXTENSIONS = (".npy", ".safetensors")
EMBEDDING_KEY = "embedding"        # the tensor a .safetensors file with several is read from
NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
SEPARATORS = re.compile(r"[\s,;\[\]()]*")


class FaceInputError(ValueError):
    """A precomputed face's input that cannot be used; the text starts with the input's name."""


def face_from_images(analyzer, reference: Image.Image, pose: Image.Image | None = None) -> FaceConditioning:
    """The demo's face preparation with `analyzer` (pipelines.local.faces.FaceAnalyzer, which caches
    the faces per image content)."""
    resized = demo_resize(reference.convert("RGB"))
    identity = analyzer.largest_face(resized, "reference", shown_size=reference.size)
    placed, canvas = identity, resized
    if pose is not None:
        canvas = demo_resize(pose.convert("RGB"))
        found = analyzer.analyze(canvas)
        if not found:
            raise FaceAnalysisError(f"no face found in the pose image ({pose.width}x{pose.height}); use a photo "
                                    "with a clearly visible face")
        placed = found[-1]
    return FaceConditioning(identity.embedding, placed.kps, canvas.size, placed.bbox)


# ---- precomputed ---------------------------------------------------------------------------------

def parse_numbers(text: str, count: int, name: str, what: str) -> np.ndarray:
    """`count` finite numbers from text such as "[[x, y], …]" (JSON, as Analyze Face's info prints
    them) or "x y x y …" (commas, semicolons, brackets and whitespace separate)."""
    if not isinstance(text, str):
        raise FaceInputError(f"{name}: expected text with {count} numbers ({what})")
    numbers = NUMBER.findall(text)
    leftover = SEPARATORS.sub("", NUMBER.sub(" ", text))
    if leftover:
        raise FaceInputError(f"{name}: {leftover[:20]!r} is not a number; give {count} numbers ({what})")
    if len(numbers) != count:
        raise FaceInputError(f"{name}: {len(numbers)} numbers given; {count} are needed ({what})")
    values = np.array([float(n) for n in numbers], dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise FaceInputError(f"{name}: the numbers must be finite")
    return values


KEYPOINTS_WHAT = "five x, y points in pixels: left eye, right eye, nose, left and right mouth corner"
BOX_WHAT = "x1, y1, x2, y2 in pixels"


def parse_keypoints(text: str, name: str = "keypoints") -> np.ndarray:
    return parse_numbers(text, 10, name, KEYPOINTS_WHAT).reshape(5, 2).astype(np.float32)


def parse_box(text: str | None, name: str = "bbox") -> np.ndarray | None:
    """None for empty text (a face without its box), else the box with x2 > x1 and y2 > y1."""
    if text is None or not text.strip():
        return None
    box = parse_numbers(text, 4, name, BOX_WHAT).astype(np.float32)
    if box[2] <= box[0] or box[3] <= box[1]:
        raise FaceInputError(f"{name}: the box {[float(v) for v in box]} is empty; x2 must be above x1 and y2 above "
                             "y1 (x1, y1, x2, y2)")
    return box


def _embedding_shape_problem(shape: tuple[int, ...], name: str, path: Path) -> str | None:
    if math.prod(shape) == EMBEDDING_SIZE and len([side for side in shape if side != 1]) <= 1:
        return None
    return (f"{name}: {path.name} holds an array of shape {list(shape)}; an ArcFace embedding of "
            f"{EMBEDDING_SIZE} values is needed (shape [{EMBEDDING_SIZE}] or [1, {EMBEDDING_SIZE}], as "
            "antelopev2's recognizer gives it)")


def _safetensors_key(keys: list[str], name: str, path: Path) -> str:
    if len(keys) == 1:
        return keys[0]
    if EMBEDDING_KEY in keys:
        return EMBEDDING_KEY
    raise FaceInputError(f"{name}: {path.name} holds {len(keys)} tensors ({', '.join(sorted(keys)[:4])}); save one "
                         f"tensor, or name the embedding {EMBEDDING_KEY!r}")


def embedding_file_problem(path: Path | str, name: str = "embedding") -> str | None:
    """What is wrong with an embedding file, read from its header only (a queue-time check), or None."""
    path = Path(path)
    if path.suffix.lower() not in EMBEDDING_EXTENSIONS:
        return f"{name}: {path.name} is not a .npy or .safetensors file"
    try:
        if path.suffix.lower() == ".npy":
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            shape, kind = tuple(array.shape), array.dtype.kind
        else:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                tensor = handle.get_slice(_safetensors_key(list(handle.keys()), name, path))
                shape, kind = tuple(tensor.get_shape()), "f" if tensor.get_dtype().startswith(("F", "BF")) else "i"
    except FaceInputError as exc:
        return str(exc)
    except Exception as exc:           # numpy and safetensors say "unreadable" in many ways
        return f"{name}: cannot read {path.name} ({str(exc).splitlines()[0][:160]})"
    if kind != "f":
        return f"{name}: {path.name} holds integers; an ArcFace embedding is floating point"
    return _embedding_shape_problem(shape, name, path)


def read_embedding(path: Path | str, name: str = "embedding") -> np.ndarray:
    """The embedding [512] float32 from a .npy (np.save of insightface's Face.embedding; no pickles)
    or a .safetensors file (one tensor, or the one named 'embedding')."""
    path = Path(path)
    if problem := embedding_file_problem(path, name):
        raise FaceInputError(problem)
    if path.suffix.lower() == ".npy":
        array = np.load(path, allow_pickle=False)
    else:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:       # "pt": numpy has no bfloat16
            array = handle.get_tensor(_safetensors_key(list(handle.keys()), name, path)).float().numpy()
    embedding = np.asarray(array, dtype=np.float32).reshape(-1)
    if not np.all(np.isfinite(embedding)):
        raise FaceInputError(f"{name}: {path.name} holds NaN or infinite values")
    if not np.any(embedding):
        raise FaceInputError(f"{name}: {path.name} is all zeros; that is the no-face embedding, not an identity")
    return embedding


def precomputed_face(embedding: np.ndarray, keypoints: np.ndarray, size: tuple[int, int],
                     bbox: np.ndarray | None = None) -> FaceConditioning:
    """The face object from its parts; `size` (width, height) is the image the keypoints and box
    were measured on (the output canvas when the generator's width and height are 0)."""
    width, height = (int(side) for side in size)
    if width < 1 or height < 1:
        raise FaceInputError(f"width, height: the image size {width}x{height} must be positive")
    embedding = np.asarray(embedding, dtype=np.float32)
    if embedding.size != EMBEDDING_SIZE:
        raise FaceInputError(f"embedding: {embedding.size} values; an ArcFace embedding has {EMBEDDING_SIZE}")
    keypoints = np.asarray(keypoints, dtype=np.float32)
    if keypoints.shape != (5, 2):
        raise FaceInputError(f"keypoints: shape {list(keypoints.shape)}; {KEYPOINTS_WHAT} are needed")
    return FaceConditioning(embedding.reshape(-1), keypoints, (width, height), bbox)
