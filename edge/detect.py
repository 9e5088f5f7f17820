"""Face detectors: `detect(gray) -> [Detection]` with boxes (x, y, w, h) in the given image's pixels.

- HaarDetector: the frontal-face Haar cascade that ships with OpenCV 4 (the seeds' choice), run on
  a downscaled grayscale frame with a minimum face size, boxes mapped back to full size.
- YuNetDetector: OpenCV's cv2.FaceDetectorYN, given its ONNX model file (OpenCV ships the class, not
  the model: face_detection_yunet_2023mar.onnx from the OpenCV Zoo).
- WholeFrameDetector: the whole image is one face (folders of pre-cropped faces like models/sample).
- EveryN: runs a detector on every n-th call and carries its boxes in between.
- PrecroppedOr: small images (pre-cropped faces) are whole faces, anything bigger goes to a detector.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import cv2
import numpy as np

HAAR_CASCADE = "haarcascade_frontalface_default.xml"
AUTO_WIDTH = 320  # scale="auto": detect on an image about this wide


@dataclasses.dataclass(frozen=True)
class Detection:
    box: tuple[int, int, int, int]  # x, y, w, h
    score: float | None = None  # Haar: neighbours supporting the box; YuNet: confidence 0..1


class Detector:
    name = "detector"

    def detect(self, gray: np.ndarray) -> list[Detection]:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget any state carried between frames (EveryN)."""


def _downscale(image: np.ndarray, scale: float) -> np.ndarray:
    if scale >= 1.0:
        return image
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _resolve_scale(scale: float | str, width: int) -> float:
    if scale == "auto":
        return min(1.0, AUTO_WIDTH / width)
    return float(scale)


def _map_back(x, y, w, h, scale: float, shape) -> tuple[int, int, int, int]:
    inv = 1.0 / scale
    x0, y0 = max(0, int(round(x * inv))), max(0, int(round(y * inv)))
    x1, y1 = min(shape[1], int(round((x + w) * inv))), min(shape[0], int(round((y + h) * inv)))
    return x0, y0, max(0, x1 - x0), max(0, y1 - y0)


class HaarDetector(Detector):
    """OpenCV 4's Haar cascade on a downscaled frame.

    scale: the detection image's size relative to the frame (0.5: a quarter of the pixels, about 4x
    faster), or "auto" for about 320 px wide; min_face: the smallest face to find, in frame pixels
    (never below the cascade's 24 px window at the detection scale).
    """

    name = "haar"

    def __init__(self, scale: float | str = "auto", min_face: int = 60, scale_factor: float = 1.1,
                 min_neighbors: int = 5, cascade: str | Path | None = None):
        if scale != "auto" and not 0 < float(scale) <= 1:
            raise ValueError(f"detection scale must be in (0, 1] or 'auto', not {scale}")
        if scale_factor <= 1.0:
            raise ValueError(f"scale_factor must be above 1, not {scale_factor}")
        path = Path(cascade) if cascade else _haar_file()
        self.classifier = cv2.CascadeClassifier(str(path))
        if self.classifier.empty():
            raise ValueError(f"{path}: not a readable Haar cascade")
        self.scale, self.min_face = scale, int(min_face)
        self.scale_factor, self.min_neighbors = float(scale_factor), int(min_neighbors)

    def detect(self, gray: np.ndarray) -> list[Detection]:
        scale = _resolve_scale(self.scale, gray.shape[1])
        small = _downscale(gray, scale)
        side = max(24, int(math.ceil(self.min_face * scale)))
        if small.shape[0] < side or small.shape[1] < side:
            return []
        boxes, neighbours = self.classifier.detectMultiScale2(
            small, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(side, side))
        return [Detection(_map_back(*box, scale, gray.shape), float(n))
                for box, n in zip(np.asarray(boxes).reshape(-1, 4), np.asarray(neighbours).reshape(-1))]


def _haar_file() -> Path:
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if not folder or not (Path(folder) / HAAR_CASCADE).is_file():
        raise ValueError(f"this OpenCV {cv2.__version__} ships no {HAAR_CASCADE} (OpenCV 5 wheels dropped the "
                         "cascades: install opencv-python-headless<5), or use --detector yunet:MODEL.onnx")
    if not hasattr(cv2, "CascadeClassifier"):
        raise ValueError(f"this OpenCV {cv2.__version__} has no CascadeClassifier (install opencv-python-headless<5)")
    return Path(folder) / HAAR_CASCADE


class YuNetDetector(Detector):
    """cv2.FaceDetectorYN (YuNet) with its ONNX model file; runs on a downscaled 3-channel frame."""

    name = "yunet"

    def __init__(self, model_path: str | Path, score_threshold: float = 0.6, nms_threshold: float = 0.3,
                 top_k: int = 50, scale: float | str = "auto", min_face: int = 0):
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such YuNet model file (face_detection_yunet_2023mar.onnx from the "
                                    "OpenCV Zoo)")
        if not hasattr(cv2, "FaceDetectorYN"):
            raise ValueError(f"this OpenCV {cv2.__version__} has no cv2.FaceDetectorYN (YuNet needs OpenCV >= 4.5.4)")
        try:
            self.model = cv2.FaceDetectorYN.create(str(path), "", (320, 240), float(score_threshold),
                                                   float(nms_threshold), int(top_k))
        except cv2.error as exc:
            raise ValueError(f"{path}: OpenCV cannot load this YuNet model ({str(exc).strip().splitlines()[-1]})") \
                from None
        self.path, self.scale, self.min_face = path, scale, int(min_face)
        self._size: tuple[int, int] | None = None

    def detect(self, gray: np.ndarray) -> list[Detection]:
        scale = _resolve_scale(self.scale, gray.shape[1])
        small = _downscale(gray, scale)
        image = cv2.cvtColor(small, cv2.COLOR_GRAY2BGR) if small.ndim == 2 else small
        size = (image.shape[1], image.shape[0])
        if size != self._size:
            self.model.setInputSize(size)
            self._size = size
        _, faces = self.model.detect(image)
        found = []
        for row in (faces if faces is not None else []):
            x, y, w, h = (float(v) for v in row[:4])
            box = _map_back(x, y, w, h, scale, gray.shape)
            if box[2] > 0 and box[3] > 0 and min(box[2], box[3]) >= self.min_face:
                found.append(Detection(box, float(row[-1])))
        return found


class WholeFrameDetector(Detector):
    """The whole image is one face: for folders of pre-cropped faces (models/sample, FER, CK+48)."""

    name = "none"

    def detect(self, gray: np.ndarray) -> list[Detection]:
        return [Detection((0, 0, int(gray.shape[1]), int(gray.shape[0])), None)]


class PrecroppedOr(Detector):
    """Images no larger than `max_side` are pre-cropped faces (whole frame); larger ones go to `detector`."""

    def __init__(self, detector: Detector, max_side: int = 128):
        self.detector, self.max_side = detector, int(max_side)
        self.name = f"auto ({detector.name}; images up to {max_side} px are whole faces)"

    def detect(self, gray: np.ndarray) -> list[Detection]:
        if max(gray.shape[:2]) <= self.max_side:
            return WholeFrameDetector().detect(gray)
        return self.detector.detect(gray)

    def reset(self) -> None:
        self.detector.reset()


class EveryN(Detector):
    """Runs `detector` on every n-th frame and returns the last boxes in between (n=1: every frame)."""

    def __init__(self, detector: Detector, n: int):
        if int(n) < 1:
            raise ValueError(f"detect every N frames needs N >= 1, not {n}")
        self.detector, self.n = detector, int(n)
        self.name = detector.name if self.n == 1 else f"{detector.name} every {self.n} frames"
        self._count = 0
        self._last: list[Detection] = []
        self.ran = False  # whether the last call ran the detector (timings tell detection from carrying)

    def detect(self, gray: np.ndarray) -> list[Detection]:
        self.ran = self._count % self.n == 0
        if self.ran:
            self._last = self.detector.detect(gray)
        self._count += 1
        return list(self._last)

    def reset(self) -> None:
        self._count = 0
        self._last = []
        self.detector.reset()


def parse_detector(text: str, *, scale: float | str = "auto", min_face: int = 60, every: int = 1,
                   precropped_max: int | None = None) -> Detector:
    """haar | yunet:MODEL.onnx | none (whole frame), wrapped in EveryN when every > 1.

    precropped_max: with haar or yunet, images up to this size are treated as whole faces.
    """
    text = (text or "haar").strip()
    if text == "haar":
        detector: Detector = HaarDetector(scale=scale, min_face=min_face)
    elif text.startswith("yunet:"):
        detector = YuNetDetector(text[len("yunet:"):], scale=scale, min_face=min_face)
    elif text == "yunet":
        raise ValueError("yunet needs its model file: --detector yunet:PATH/face_detection_yunet_2023mar.onnx")
    elif text in ("none", "whole", "whole-frame"):
        return WholeFrameDetector()
    else:
        raise ValueError(f"unknown detector {text!r} (expected haar, yunet:MODEL.onnx or none)")
    if precropped_max:
        detector = PrecroppedOr(detector, precropped_max)
    return EveryN(detector, every) if every > 1 else detector


def iou(a, b) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    union = aw * ah + bw * bh - inter
    return float(inter / union) if union > 0 else 0.0
