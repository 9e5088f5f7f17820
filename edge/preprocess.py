"""The one preprocessing path shared by training, calibration, verification, runtime and benchmarks.

A `PreprocessSpec` is saved next to every trained model and copied into every bundle, so what a
model saw in training is exactly what it sees on the device. Only numpy and OpenCV are used.
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

EQUALIZE_MODES = ("none", "global", "clahe")
NORMALIZE_MODES = ("unit", "symmetric", "zscore")


@dataclasses.dataclass(frozen=True)
class PreprocessSpec:
    """How a face crop becomes a model input tensor (one NHWC float32 row)."""

    height: int = 48
    width: int = 48
    channels: int = 1  # 1: grayscale; 3: RGB order
    equalize: str = "none"  # none | global | clahe (applied to luminance)
    clahe_clip: float = 2.0
    clahe_tile: int = 8
    normalize: str = "unit"  # unit: x/255, symmetric: x/127.5-1, zscore: (x/255-mean)/std
    mean: float | None = None  # zscore statistics, on the 0..1 scale, fitted on training data
    std: float | None = None
    margin: float = 0.0  # extra border around a detected face box, as a fraction of its size
    flip_average: bool = False  # average the outputs of the face and its mirror (edge.tta): 2x inference
    align: bool = False  # with a detector's eye landmarks: eye line level, scale from the eye distance

    def __post_init__(self):
        problems = []
        if self.height < 8 or self.width < 8:
            problems.append(f"input size {self.height}x{self.width} is below 8x8")
        if self.channels not in (1, 3):
            problems.append(f"channels must be 1 or 3, not {self.channels}")
        if self.equalize not in EQUALIZE_MODES:
            problems.append(f"equalize must be one of {EQUALIZE_MODES}, not {self.equalize!r}")
        if self.normalize not in NORMALIZE_MODES:
            problems.append(f"normalize must be one of {NORMALIZE_MODES}, not {self.normalize!r}")
        if self.normalize == "zscore" and (self.mean is None or not self.std or self.std <= 0):
            problems.append("zscore normalisation needs a mean and a positive std (fit_zscore)")
        if self.margin < 0:
            problems.append(f"margin must be >= 0, not {self.margin}")
        if not isinstance(self.flip_average, bool):
            problems.append(f"flip_average must be true or false, not {self.flip_average!r}")
        if not isinstance(self.align, bool):
            problems.append(f"align must be true or false, not {self.align!r}")
        if problems:
            raise ValueError("invalid preprocessing spec: " + "; ".join(problems))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "PreprocessSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown preprocessing spec field(s): {', '.join(unknown)}")
        return cls(**data)

    def replace(self, **changes) -> "PreprocessSpec":
        return dataclasses.replace(self, **changes)

    def save(self, path: str | Path) -> None:
        from feredge.edge.fileio import write_text_atomic

        write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "PreprocessSpec":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: preprocessing spec not found") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: {exc}") from None


def to_gray(image: np.ndarray) -> np.ndarray:
    """uint8 grayscale view of a 2-D, HxWx1, BGR or BGRA image (a no-op for grayscale)."""
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    raise ValueError(f"expected a 2-D grayscale or HxWx3/4 image, got shape {image.shape}")


def _to_rgb(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    raise ValueError(f"expected a 2-D grayscale or HxWx3/4 image, got shape {image.shape}")


_clahe_cache: dict[tuple[float, int], "cv2.CLAHE"] = {}


def _equalize(gray: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    if spec.equalize == "global":
        return cv2.equalizeHist(gray)
    if spec.equalize == "clahe":
        key = (spec.clahe_clip, spec.clahe_tile)
        if key not in _clahe_cache:  # creating a CLAHE object costs more than applying it
            _clahe_cache[key] = cv2.createCLAHE(clipLimit=spec.clahe_clip, tileGridSize=(spec.clahe_tile,) * 2)
        return _clahe_cache[key].apply(gray)
    return gray


def prepare_uint8(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Colour conversion, resize and equalisation: everything before normalisation (uint8 out)."""
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    size = (spec.width, spec.height)
    if spec.channels == 1:
        img = to_gray(image)
    else:
        img = _to_rgb(image)
    if img.shape[:2] != (spec.height, spec.width):
        shrinking = img.shape[0] > spec.height or img.shape[1] > spec.width
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    if spec.equalize != "none":
        if spec.channels == 1:
            img = _equalize(img, spec)
        else:  # equalise luminance only, so colours keep their balance
            ycc = cv2.cvtColor(img, cv2.COLOR_RGB2YCrCb)
            ycc[:, :, 0] = _equalize(np.ascontiguousarray(ycc[:, :, 0]), spec)
            img = cv2.cvtColor(ycc, cv2.COLOR_YCrCb2RGB)
    return img


def normalize(batch_uint8: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 (N,H,W[,C]) -> float32 NHWC in the spec's value range."""
    x = batch_uint8.astype(np.float32)
    if x.ndim == 3:
        x = x[..., None]
    if spec.normalize == "unit":
        x *= 1.0 / 255.0
    elif spec.normalize == "symmetric":
        x *= 1.0 / 127.5
        x -= 1.0
    else:
        x *= 1.0 / 255.0
        x -= spec.mean
        x *= 1.0 / spec.std
    return x


def preprocess(images: np.ndarray | Sequence[np.ndarray], spec: PreprocessSpec) -> np.ndarray:
    """Face crops -> float32 (N,H,W,C).

    `images` is a list of uint8 images (any size, gray/BGR/BGRA), an (N,H,W) or (N,H,W,C) uint8
    array, or one 2-D grayscale image. Pass a single colour image as `[image]`.
    """
    if isinstance(images, np.ndarray) and images.ndim == 2:
        images = images[None]
    prepared = [prepare_uint8(np.asarray(img), spec) for img in images]
    if not prepared:
        return np.zeros((0, *spec.input_shape), np.float32)
    return normalize(np.stack(prepared), spec)


def fit_zscore(images_uint8: np.ndarray | Sequence[np.ndarray], spec: PreprocessSpec) -> PreprocessSpec:
    """The spec with zscore mean/std measured on (training) images after equalisation."""
    total = total_sq = 0.0
    count = 0
    for img in images_uint8:
        x = prepare_uint8(np.asarray(img), spec).astype(np.float64) / 255.0
        total += float(x.sum())
        total_sq += float((x * x).sum())
        count += x.size
    if count == 0:
        raise ValueError("fit_zscore needs at least one image")
    mean = total / count
    std = math.sqrt(max(total_sq / count - mean * mean, 1e-12))
    return spec.replace(normalize="zscore", mean=round(mean, 6), std=round(std, 6))


def crop_face(frame: np.ndarray, box: Sequence[int], margin: float = 0.0) -> np.ndarray:
    """The face box (x, y, w, h) grown by `margin` of its size on each side, clipped to the frame."""
    x, y, w, h = (int(v) for v in box)
    dx, dy = int(round(w * margin)), int(round(h * margin))
    x0, y0 = max(0, x - dx), max(0, y - dy)
    x1, y1 = min(frame.shape[1], x + w + dx), min(frame.shape[0], y + h + dy)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"face box {tuple(box)} lies outside the {frame.shape[1]}x{frame.shape[0]} frame")
    return frame[y0:y1, x0:x1]


def aligned_crop(frame: np.ndarray, eyes, eye_ref: Sequence[float], margin: float = 0.0) -> np.ndarray:
    """A square face crop turned so the eye line is level and scaled by the eye distance.

    eyes: ((x, y) of the subject's right eye, (x, y) of the left eye) in frame pixels; eye_ref:
    (eye midpoint x, y, eye distance) as fractions of the crop's side, where the detector's eyes
    sit in the FER-2013 crop on average, so an upright face gives about the box crop.
    """
    (rx, ry), (lx, ly) = eyes
    mid_x, mid_y, distance = eye_ref
    between = float(np.hypot(lx - rx, ly - ry))
    if between < 2 or lx <= rx:
        raise ValueError(f"eye landmarks {tuple(eyes)} do not make a face (the right eye must be left of the left eye)")
    side = between / distance
    out = max(8, int(round(side * (1 + 2 * margin))))
    centre = ((rx + lx) / 2, (ry + ly) / 2)
    turn = cv2.getRotationMatrix2D(centre, float(np.degrees(np.arctan2(ly - ry, lx - rx))), 1.0)
    turn[0, 2] += (mid_x + margin) * side - centre[0]
    turn[1, 2] += (mid_y + margin) * side - centre[1]
    return cv2.warpAffine(frame, turn, (out, out), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
