"""Training-only augmentation on uint8 face crops, before the shared preprocessing.

It works on raw uint8 images so that equalisation and normalisation run after it, exactly as
on the device; brightness/contrast jitter models the under-exposed frames of seed 002's
low-light setting. numpy + OpenCV only, a few milliseconds per batch of 64 on one core.
"""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np


@dataclasses.dataclass(frozen=True)
class AugmentSpec:
    flip: bool = True  # horizontal flip: expressions are (nearly) left-right symmetric
    rotation: float = 10.0  # max degrees either way
    zoom: float = 0.1  # max relative scale change either way
    shift: float = 0.1  # max shift as a fraction of width/height
    brightness: float = 0.0  # max additive change as a fraction of 255
    contrast: float = 0.0  # max relative contrast change either way
    erase: float = 0.0  # probability of random erasing (one rectangle of 2-20 % of the area)
    noise: float = 0.0  # max std of additive Gaussian sensor noise in grey levels (drawn per image)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "AugmentSpec":
        return cls(**data)

    @property
    def is_identity(self) -> bool:
        return not (self.flip or self.rotation or self.zoom or self.shift or self.brightness
                    or self.contrast or self.erase or self.noise)


PRESETS: dict[str, AugmentSpec] = {
    "none": AugmentSpec(flip=False, rotation=0, zoom=0, shift=0),
    "standard": AugmentSpec(),
    "strong": AugmentSpec(rotation=15, zoom=0.15, shift=0.12, brightness=0.1, contrast=0.2, erase=0.5),
    "lowlight": AugmentSpec(brightness=0.35, contrast=0.5),
    # strong + sensor noise: both edge models lost 10-12 PublicTest points to Gaussian noise of std 8
    "camera": AugmentSpec(rotation=15, zoom=0.15, shift=0.12, brightness=0.1, contrast=0.2, erase=0.5, noise=12),
}


def augment_image(image: np.ndarray, spec: AugmentSpec, rng: np.random.Generator) -> np.ndarray:
    h, w = image.shape[:2]
    out = image
    if spec.flip and rng.random() < 0.5:
        out = out[:, ::-1]
    if spec.rotation or spec.zoom or spec.shift:
        angle = rng.uniform(-spec.rotation, spec.rotation)
        scale = 1.0 + rng.uniform(-spec.zoom, spec.zoom)
        matrix = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), angle, scale)
        matrix[0, 2] += rng.uniform(-spec.shift, spec.shift) * w
        matrix[1, 2] += rng.uniform(-spec.shift, spec.shift) * h
        # Reflected borders keep the pixel statistics of a face crop; black wedges would not.
        out = cv2.warpAffine(np.ascontiguousarray(out), matrix, (w, h), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REFLECT_101)
    if spec.brightness or spec.contrast:
        alpha = 1.0 + rng.uniform(-spec.contrast, spec.contrast)
        beta = rng.uniform(-spec.brightness, spec.brightness) * 255.0
        mean = float(out.mean())
        out = np.clip((out.astype(np.float32) - mean) * alpha + mean + beta, 0, 255).astype(np.uint8)
    if spec.erase and rng.random() < spec.erase:
        out = np.array(out, copy=True)
        area = rng.uniform(0.02, 0.2) * h * w
        aspect = np.exp(rng.uniform(np.log(0.3), np.log(3.3)))
        eh = int(min(h, round(np.sqrt(area * aspect))))
        ew = int(min(w, round(np.sqrt(area / aspect))))
        y, x = rng.integers(0, h - eh + 1), rng.integers(0, w - ew + 1)
        out[y:y + eh, x:x + ew] = rng.integers(0, 256, size=out[y:y + eh, x:x + ew].shape, dtype=np.uint8)
    if spec.noise:
        sd = rng.uniform(0, spec.noise)
        out = np.clip(np.rint(out + rng.normal(0, sd, out.shape)), 0, 255).astype(np.uint8)  # rint: no -0.5 bias
    return np.ascontiguousarray(out)


def augment_batch(images: np.ndarray, spec: AugmentSpec, rng: np.random.Generator) -> np.ndarray:
    """A new uint8 batch of the same shape; the input is never modified."""
    if spec.is_identity:
        return images
    return np.stack([augment_image(img, spec, rng) for img in images])
