"""Face analysis with the antelopev2 models, without insightface: the SCRFD detector
(`scrfd_10g_bnkps.onnx`: boxes and five keypoints) and the ArcFace recognizer (`glintr100.onnx`:
a 512-d embedding, unnormalised, as InstantID uses it), run through onnxruntime.

The decoding follows insightface's FaceAnalysis step for step (the tests compare both on the same
ONNX files): the image is letterboxed top-left into 640², normalised ((x − 127.5) / 128, BGR→RGB),
each stride's anchors decode distances into boxes and keypoints, scores ≥ 0.5 are kept and sorted
(stably), boxes go back to the image's scale and non-maximum suppression at IoU 0.4 (areas with +1)
removes overlaps. The recognizer sees the face aligned to the 112² ArcFace template by a similarity
transform (Umeyama's least squares), normalised ((x − 127.5) / 127.5, BGR→RGB).

OpenCV does the resampling and the keypoint drawing, exactly as the reference code does; it is
imported here, not installed by the pack's requirements, so the OpenCV build a ComfyUI install
already has (opencv-python or -headless) is left alone (install.py adds the headless one only when
none is there).
"""
from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .caching import image_key

log = logging.getLogger("character_identity")

DETECTOR_FILE = "scrfd_10g_bnkps.onnx"
RECOGNIZER_FILE = "glintr100.onnx"
DETECTION_SIZE = 640
DETECTION_THRESHOLD = 0.5
NMS_THRESHOLD = 0.4
MIN_FACE_SIDE = 32            # pixels; smaller faces carry too little identity to keep
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)
KEYPOINT_COLOURS = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255))
WHERE_TO_GET = ("the antelopev2 models (scrfd_10g_bnkps.onnx and glintr100.onnx) from the insightface model zoo "
                "(non-commercial research use only); put them in models/insightface/models/antelopev2/")


class FaceAnalysisError(ValueError):
    """No usable face, or face models that cannot be used. The text says what to do."""


def _cv2():
    try:
        import cv2
    except ImportError:
        raise FaceAnalysisError("face analysis needs OpenCV: run `python -m pip install opencv-python-headless` "
                                "with ComfyUI's Python (or run the pack's install.py)") from None
    return cv2


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise FaceAnalysisError("face analysis needs onnxruntime: run `python -m pip install onnxruntime` with "
                                "ComfyUI's Python (onnxruntime-gpu works too), or run the pack's install.py") from None
    return onnxruntime


@dataclass(frozen=True)
class Face:
    bbox: np.ndarray            # x1, y1, x2, y2 in image pixels (float32)
    kps: np.ndarray             # five keypoints [5, 2]: eyes, nose, mouth corners
    score: float
    embedding: np.ndarray | None = None     # 512-d ArcFace embedding, unnormalised

    @property
    def area(self) -> float:
        return float((self.bbox[2] - self.bbox[0]) * (self.bbox[3] - self.bbox[1]))


def find_antelopev2(folder: Path | str) -> Path:
    """The folder that holds the two files: `folder` itself, or the nested `antelopev2/antelopev2/`
    that unpacking the zip inside the folder leaves behind."""
    folder = Path(folder)
    for candidate in (folder, folder / "antelopev2", *sorted(folder.glob("*/"))):
        if (candidate / DETECTOR_FILE).is_file() and (candidate / RECOGNIZER_FILE).is_file():
            return candidate
    present = sorted(p.name for p in folder.rglob("*.onnx"))[:8] if folder.is_dir() else []
    found = f" (found: {', '.join(present)})" if present else ""
    raise FaceAnalysisError(f"{folder} lacks {DETECTOR_FILE} and {RECOGNIZER_FILE}{found}; get {WHERE_TO_GET}")


def image_to_bgr(image: Image.Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])


def _blob(bgr: np.ndarray, mean: float, std: float) -> np.ndarray:
    """[1, 3, H, W] float32, RGB order, (x − mean) / std — what cv2.dnn.blobFromImage gives."""
    rgb = bgr[:, :, ::-1].astype(np.float32)
    return np.ascontiguousarray(((rgb - mean) / std).transpose(2, 0, 1)[None], dtype=np.float32)


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 3x3 similarity transform (rotation, uniform scale, translation) taking `src` to `dst` in
    the least-squares sense (Umeyama, PAMI 1991), computed in the inputs' precision."""
    num, dim = src.shape
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_centred, dst_centred = src - src_mean, dst - dst_mean
    covariance = dst_centred.T @ src_centred / num
    signs = np.ones((dim,), dtype=np.float64)
    if np.linalg.det(covariance) < 0:
        signs[dim - 1] = -1
    transform = np.eye(dim + 1, dtype=np.float64)
    u, singular, v = np.linalg.svd(covariance)
    tolerance = singular.max() * max(covariance.shape) * np.finfo(float).eps
    rank = np.count_nonzero(singular > tolerance)
    if rank == 0:
        return np.nan * transform
    if rank == dim - 1 and np.linalg.det(u) * np.linalg.det(v) <= 0:
        last = signs[dim - 1]
        signs[dim - 1] = -1
        transform[:dim, :dim] = u @ np.diag(signs) @ v
        signs[dim - 1] = last
    elif rank == dim - 1:
        transform[:dim, :dim] = u @ v
    else:
        transform[:dim, :dim] = u @ np.diag(signs) @ v
    scale = 1.0 / src_centred.var(axis=0).sum() * (singular @ signs)
    transform[:dim, dim] = dst_mean - scale * (transform[:dim, :dim] @ src_mean.T)
    transform[:dim, :dim] *= scale
    return transform


def aligned_face(bgr: np.ndarray, kps: np.ndarray, size: int = 112) -> np.ndarray:
    """The face warped onto the ArcFace template, size×size, BGR."""
    cv2 = _cv2()
    matrix = umeyama(kps, ARCFACE_TEMPLATE * (size / 112.0))[0:2, :]
    return cv2.warpAffine(bgr, matrix, (size, size), borderValue=0.0)


def _anchor_centres(height: int, width: int, stride: int, anchors: int) -> np.ndarray:
    centres = (np.stack(np.mgrid[:height, :width][::-1], axis=-1).astype(np.float32) * stride).reshape(-1, 2)
    return np.stack([centres] * anchors, axis=1).reshape(-1, 2) if anchors > 1 else centres


def _nms(dets: np.ndarray, threshold: float) -> list[int]:
    x1, y1, x2, y2, scores = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3], dets[:, 4]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        first, rest = order[0], order[1:]
        keep.append(first)
        width = np.maximum(0.0, np.minimum(x2[first], x2[rest]) - np.maximum(x1[first], x1[rest]) + 1)
        height = np.maximum(0.0, np.minimum(y2[first], y2[rest]) - np.maximum(y1[first], y1[rest]) + 1)
        overlap = width * height / (areas[first] + areas[rest] - width * height)
        order = rest[overlap <= threshold]
    return keep


class FaceAnalyzer:
    """The detector and recognizer sessions, and the faces found per image content (cached)."""

    def __init__(self, folder: Path | str, device: str = "cpu", cache_size: int = 32):
        self.folder = find_antelopev2(folder)
        ort = _onnxruntime()
        providers, self.provider = ["CPUExecutionProvider"], "CPU"
        if device != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        try:
            self.detector = self._session(ort, DETECTOR_FILE, providers)
            self.recognizer = self._session(ort, RECOGNIZER_FILE, providers)
            if providers[0] == "CUDAExecutionProvider":
                if "CUDAExecutionProvider" not in self.detector.get_providers():
                    raise RuntimeError("the CUDA provider did not load")
                self.provider = "CUDA"
        except Exception as exc:     # a broken CUDA setup must not stop face analysis: the CPU works
            if providers[0] != "CUDAExecutionProvider":
                raise
            log.warning("[Character Identity] onnxruntime's CUDA provider failed (%s); face analysis runs on the "
                        "CPU", str(exc).splitlines()[0][:200])
            self.detector = self._session(ort, DETECTOR_FILE, ["CPUExecutionProvider"])
            self.recognizer = self._session(ort, RECOGNIZER_FILE, ["CPUExecutionProvider"])
        self._check_signatures()
        self._cache: OrderedDict[str, list[Face]] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def _session(self, ort, name: str, providers):
        path = self.folder / name
        try:
            return ort.InferenceSession(str(path), providers=providers)
        except Exception as exc:
            if "CUDA" in providers[0]:
                raise
            raise FaceAnalysisError(f"cannot load {path} ({str(exc).splitlines()[0][:200]}); the file may be "
                                    f"incomplete — get {WHERE_TO_GET}") from None

    def _check_signatures(self) -> None:
        outputs = self.detector.get_outputs()
        if len(outputs) != 9:
            raise FaceAnalysisError(f"{self.folder / DETECTOR_FILE} has {len(outputs)} outputs; the SCRFD detector "
                                    "with keypoints has 9")
        self.batched = len(outputs[0].shape) == 3
        shape = self.recognizer.get_inputs()[0].shape
        if len(shape) != 4 or shape[2] != shape[3] or not isinstance(shape[2], int):
            raise FaceAnalysisError(f"{self.folder / RECOGNIZER_FILE} takes {shape}; ArcFace takes square images")
        self.recognizer_size = shape[2]

    # ---- detection ------------------------------------------------------------------------

    def detect(self, image: Image.Image) -> list[Face]:
        """Faces in the order the detector ranks them (score), without embeddings."""
        bgr = image_to_bgr(image)
        cv2 = _cv2()
        size = DETECTION_SIZE
        height, width = bgr.shape[:2]
        if height / width > 1:
            new_height, new_width = size, int(size / (height / width))
        else:
            new_width, new_height = size, int(size * (height / width))
        scale = float(new_height) / height
        canvas = np.zeros((size, size, 3), dtype=np.uint8)
        canvas[:new_height, :new_width] = cv2.resize(bgr, (new_width, new_height))
        blob = _blob(canvas, 127.5, 128.0)
        outputs = self.detector.run([o.name for o in self.detector.get_outputs()],
                                    {self.detector.get_inputs()[0].name: blob})
        scores_all, boxes_all, kps_all = [], [], []
        for index, stride in enumerate((8, 16, 32)):
            def output(group):
                value = outputs[index + 3 * group]
                return value[0] if self.batched else value
            scores, boxes, points = output(0), output(1) * stride, output(2) * stride
            centres = _anchor_centres(size // stride, size // stride, stride, 2)
            keep = np.where(scores >= DETECTION_THRESHOLD)[0]
            decoded_boxes = np.stack([centres[:, 0] - boxes[:, 0], centres[:, 1] - boxes[:, 1],
                                      centres[:, 0] + boxes[:, 2], centres[:, 1] + boxes[:, 3]], axis=-1)
            decoded_kps = np.stack([centres[:, i % 2] + points[:, i] for i in range(points.shape[1])], axis=-1)
            scores_all.append(scores[keep])
            boxes_all.append(decoded_boxes[keep])
            kps_all.append(decoded_kps.reshape(decoded_kps.shape[0], -1, 2)[keep])
        scores = np.vstack(scores_all)
        if scores.size == 0:
            return []
        order = np.argsort(-scores.ravel(), kind="stable")
        dets = np.hstack((np.vstack(boxes_all) / scale, scores)).astype(np.float32, copy=False)[order]
        kps = (np.vstack(kps_all) / scale)[order]
        keep = _nms(dets, NMS_THRESHOLD)
        return [Face(bbox=dets[i, :4], kps=kps[i], score=float(dets[i, 4])) for i in keep]

    # ---- recognition ------------------------------------------------------------------------

    def embed(self, image: Image.Image | np.ndarray, face: Face) -> np.ndarray:
        """The face's embedding; `image` as a PIL image or already as a BGR array."""
        bgr = image if isinstance(image, np.ndarray) else image_to_bgr(image)
        crop = aligned_face(bgr, face.kps, self.recognizer_size)
        inputs = {self.recognizer.get_inputs()[0].name: _blob(crop, 127.5, 127.5)}
        return self.recognizer.run(None, inputs)[0].flatten()

    def analyze(self, image: Image.Image) -> list[Face]:
        """Every face with its embedding, cached per image content."""
        rgb = image.convert("RGB")
        key = image_key(rgb)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        bgr = image_to_bgr(rgb)                       # once, not per face
        faces = [Face(f.bbox, f.kps, f.score, self.embed(bgr, f)) for f in self.detect(rgb)]
        with self._lock:
            self._cache[key] = faces
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return faces

    def largest_face(self, image: Image.Image, what: str = "reference",
                     shown_size: tuple[int, int] | None = None) -> Face:
        """The face InstantID uses for a reference: the largest; errors say what to change (naming the
        photo by `shown_size`, the size the user knows, when `image` is a resized copy)."""
        faces = self.analyze(image)
        if not faces:
            width, height = shown_size or image.size
            raise FaceAnalysisError(f"no face found in the {what} image ({width}x{height}); use a photo "
                                    "where the face is clearly visible and faces the camera")
        face = sorted(faces, key=lambda f: f.area)[-1]      # the last of equals, as the demo's sort
        side = min(face.bbox[2] - face.bbox[0], face.bbox[3] - face.bbox[1])
        if side < MIN_FACE_SIDE:
            raise FaceAnalysisError(f"the face in the {what} image is only {side:.0f} px wide; at least "
                                    f"{MIN_FACE_SIDE} px is needed — use a larger or closer photo")
        return face


def draw_keypoints(size: tuple[int, int], kps: np.ndarray) -> Image.Image:
    """The IdentityNet condition image, drawn as the InstantID reference draws it: on black, the two
    eyes and mouth corners joined to the nose by ellipses (coloured by their first point), the canvas
    dimmed to 60 %, then a filled circle of radius 10 per keypoint."""
    cv2 = _cv2()
    width, height = size
    kps = np.asarray(kps)
    canvas = np.zeros([height, width, 3])
    for start, end in ((0, 2), (1, 2), (3, 2), (4, 2)):
        x, y = kps[[start, end], 0], kps[[start, end], 1]
        length = ((x[0] - x[1]) ** 2 + (y[0] - y[1]) ** 2) ** 0.5
        angle = math.degrees(math.atan2(y[0] - y[1], x[0] - x[1]))
        polygon = cv2.ellipse2Poly((int(np.mean(x)), int(np.mean(y))), (int(length / 2), 4), int(angle), 0, 360, 1)
        canvas = cv2.fillConvexPoly(canvas.copy(), polygon, KEYPOINT_COLOURS[start])
    canvas = (canvas * 0.6).astype(np.uint8)
    for index, (x, y) in enumerate(kps):
        canvas = cv2.circle(canvas.copy(), (int(x), int(y)), 10, KEYPOINT_COLOURS[index], -1)
    return Image.fromarray(canvas.astype(np.uint8))
