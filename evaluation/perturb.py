"""Camera-path perturbations of 48x48 face crops, to measure how stable a model's labels are.

A dataset face is a clean, centred, full-resolution crop; a live face is not: it is seen at a few
dozen pixels, JPEG/H.264-compressed, boxed a little loose or tight by the detector, off-centre, and
noisy. Each condition here imitates one of those on the crop, so a model can be scored by its
accuracy and by how often its label agrees with its label on the clean crop. numpy + OpenCV only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

# name -> (parameter meaning, function(crop, parameter, rng))
Perturb = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]


def _scale(im: np.ndarray, px: float, rng) -> np.ndarray:
    """The face seen at px pixels, then resized back as the pipeline does."""
    h, w = im.shape[:2]
    s = max(2, int(round(px)))
    small = cv2.resize(im, (s, s), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _jpeg(im: np.ndarray, quality: float, rng) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED).reshape(im.shape)


def _shift(im: np.ndarray, px: float, rng) -> np.ndarray:
    """The box off-centre by px pixels down and right; the edge is replicated."""
    d = int(round(px))
    pad = abs(d) + 1
    big = cv2.copyMakeBorder(im, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    h, w = im.shape[:2]
    return big[pad + d:pad + d + h, pad + d:pad + d + w].reshape(im.shape)


def _box(im: np.ndarray, factor: float, rng) -> np.ndarray:
    """A box factor times the face's side (above 1: looser, more background; below 1: tighter)."""
    h, w = im.shape[:2]
    side = max(2, int(round(h * factor)))
    pad = max(0, (side - h) // 2 + 1)
    big = cv2.copyMakeBorder(im, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    c = big.shape[0] // 2
    top = c - side // 2
    crop = big[top:top + side, top:top + side]
    return cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA).reshape(im.shape)


def _noise(im: np.ndarray, sd: float, rng) -> np.ndarray:
    """Gaussian sensor noise with standard deviation sd grey levels."""
    noisy = im.astype(np.float32) + rng.normal(0.0, sd, im.shape).astype(np.float32)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def _gamma(im: np.ndarray, gamma: float, rng) -> np.ndarray:
    """Exposure: gamma above 1 darkens, below 1 brightens."""
    lut = np.clip(255.0 * (np.arange(256) / 255.0) ** gamma + 0.5, 0, 255).astype(np.uint8)
    return cv2.LUT(im, lut).reshape(im.shape)


KINDS: dict[str, tuple[str, Perturb]] = {
    "scale": ("face side in pixels", _scale),
    "jpeg": ("JPEG quality 1-100", _jpeg),
    "shift": ("box offset in pixels", _shift),
    "box": ("box side / face side", _box),
    "noise": ("noise std in grey levels", _noise),
    "gamma": ("exposure gamma", _gamma),
}

# Values that leave a crop unchanged, where a curve can start from the clean figures.
NEUTRAL = {"shift": 0.0, "box": 1.0, "noise": 0.0, "gamma": 1.0}

# The default set of `feredge eval --perturb`. For scale: a 640x480 camera with a 60-degree lens
# sees a 15 cm face at about 80 px from 1 m, 40 px from 2 m and 24 px from 3.5 m.
DEFAULT_CONDITIONS = "scale:24,scale:32,jpeg:40,shift:3,box:1.15,box:0.87,noise:8,gamma:1.6,gamma:0.6"


@dataclass(frozen=True)
class Condition:
    kind: str
    value: float

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.value:g}"

    def apply(self, images: np.ndarray, seed: int = 0) -> np.ndarray:
        """The perturbed copy of a stack of uint8 crops (N, H, W) or (N, H, W, C); seeded so that
        two models see the same noise."""
        fn = KINDS[self.kind][1]
        rng = np.random.default_rng(seed)
        return np.stack([fn(im, self.value, rng) for im in images]) if len(images) else images.copy()


def parse_conditions(text: str) -> list[Condition]:
    """'noise:8,jpeg:40' -> conditions; 'default' is DEFAULT_CONDITIONS. Raises ValueError naming
    the bad item."""
    text = text.strip()
    if text in ("", "default", "all"):
        text = DEFAULT_CONDITIONS
    out = []
    for item in text.split(","):
        kind, sep, value = item.strip().partition(":")
        if kind not in KINDS:
            raise ValueError(f"perturbation {item.strip()!r}: unknown kind {kind!r} "
                             f"(known: {', '.join(f'{k} ({v[0]})' for k, v in KINDS.items())})")
        try:
            number = float(value) if sep else float("nan")
        except ValueError:
            number = float("nan")
        if not np.isfinite(number):
            raise ValueError(f"perturbation {item.strip()!r}: expected {kind}:NUMBER ({KINDS[kind][0]})")
        _check_range(item.strip(), kind, number)
        out.append(Condition(kind, number))
    return out


def _check_range(item: str, kind: str, value: float) -> None:
    bad = {"scale": value < 2, "jpeg": not 1 <= value <= 100, "shift": abs(value) > 24,
           "box": not 0.3 <= value <= 3, "noise": value < 0, "gamma": value <= 0}[kind]
    if bad:
        raise ValueError(f"perturbation {item!r}: {value:g} is out of range for {KINDS[kind][0]}")
