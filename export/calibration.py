"""Images for calibration, verification and fine-tuning, through the one shared preprocessing.

Calibration needs no labels and should take any folder of face crops a user has (one folder,
class folders, a FER split root, mixed sizes), so it walks the folder itself and decodes only
as many images as it needs. Verification and fine-tuning need labels, so they go through
`evaluation.datasets.load_dataset`, whose errors already name the file.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path

import cv2
import numpy as np

from feredge.edge.fileio import read_image
from feredge.edge.labels import canonical_label
from feredge.edge.preprocess import PreprocessSpec, preprocess
from feredge.evaluation.datasets import LabelledImages, load_dataset, stratified_split
from feredge.edge.paths import SAMPLE_DIR

log = logging.getLogger("feredge.export")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp")
VERIFY_FRACTION = 0.2  # of a class-folder set held out for verification when it also fine-tunes


@dataclasses.dataclass
class ImageSet:
    """Model inputs: preprocessed float32 NHWC images (or a temporal head's feature sequences); y:
    labels in the model's output order, -1 = not a model class."""

    x: np.ndarray
    y: np.ndarray | None
    source: str

    def __len__(self) -> int:
        return len(self.x)

    @property
    def labelled(self) -> np.ndarray:
        return np.zeros(len(self.x), bool) if self.y is None else self.y >= 0


@dataclasses.dataclass
class TrainingImages:
    """uint8 faces and labels (model order) for fine-tuning; preprocessed batch by batch."""

    images: np.ndarray
    y: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.y)


# --- calibration -------------------------------------------------------------------------------

def list_calibration_files(folder) -> tuple[Path, list[str]]:
    """(the folder actually used, its files). A FER split root contributes its train/ split."""
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise FileNotFoundError(f"{folder}: no such calibration folder")
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: calibration images must be a folder")
    for name in ("train", "training", "Training"):
        if (folder / name).is_dir():
            folder = folder / name
            break
    files = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files += [os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith(".")]
    if not files:
        raise ValueError(f"{folder}: empty calibration folder (no image files)")
    return folder, files


def load_calibration(folder, spec: PreprocessSpec, count: int, *, seed: int = 0,
                     progress: bool = False) -> ImageSet:
    """Up to `count` images, drawn at random (fixed seed) from the folder, preprocessed."""
    if count < 1:
        raise ValueError(f"--calib-count must be at least 1, not {count}")
    folder, files = list_calibration_files(folder)
    candidates = [f for f in files if f.lower().endswith(IMAGE_SUFFIXES)]
    if not candidates:
        raise ValueError(f"{folder}: no usable images among {len(files)} files (none has an image suffix "
                         f"such as {', '.join(IMAGE_SUFFIXES[:3])})")
    order = np.random.default_rng(seed).permutation(len(candidates))
    flag = cv2.IMREAD_COLOR if spec.channels == 3 else cv2.IMREAD_GRAYSCALE
    images, bad = [], 0
    bar = _bar(progress, min(count, len(candidates)), f"calibration images ({folder.name})")
    for i in order:
        img = read_image(candidates[i], flag)
        if img is None:
            bad += 1
            continue
        images.append(img)
        if bar is not None:
            bar.update(1)
        if len(images) >= count:
            break
    if bar is not None:
        bar.close()
    if not images:
        raise ValueError(f"{folder}: no usable images among {len(files)} files (none decodes as an image)")
    if bad:
        log.warning("%s: skipped %d unreadable image files", folder, bad)
    if len(images) < count:
        log.warning("%s: only %d calibration images (asked for %d)", folder, len(images), count)
    return ImageSet(preprocess(images, spec), None, str(folder))


def _bar(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="img", file=sys.stderr, leave=False)


# --- labelled data: verification and fine-tuning ------------------------------------------------

def is_split_source(data) -> bool:
    path = Path(data)
    return path.suffix.lower() == ".csv" or any((path / d).is_dir() for d in ("test", "val", "train"))


def _key(name: str) -> str:
    """Class names compare by their FER-2013 spelling when they have one (anger == angry)."""
    return canonical_label(name) or name.strip().lower()


def _load(data, split, spec: PreprocessSpec, progress: bool) -> LabelledImages:
    # A dataset's own class names are kept and matched to the model's by name (to_model_order),
    # so a model with other classes can still be verified on the classes both share.
    return load_dataset(data, split=split, color=spec.channels == 3, keep_native_classes=True,
                        progress=progress)


def to_model_order(data: LabelledImages, labels: tuple[str, ...]) -> np.ndarray:
    """Dataset labels -> model output indices by name; -1 where the model has no such class."""
    position = {_key(name): i for i, name in enumerate(labels)}
    lookup = np.array([position.get(_key(name), -1) for name in data.classes], np.int64)
    return lookup[data.labels] if len(data.labels) else np.zeros(0, np.int64)


def labelled_sets(data, spec: PreprocessSpec, labels: tuple[str, ...], *, need_training: bool,
                  seed: int = 0, progress: bool = False) -> tuple[ImageSet, TrainingImages | None]:
    """(verification set, fine-tuning set or None).

    No --data: verify on the shipped sample. A split source (FER root, CSV): fine-tune on its
    train split, verify on its test split (val if it has no test). A class-folder set: verify on
    all of it, or, when it must also fine-tune, on a stratified 20 % hold-out.
    """
    train = None
    if data is None:
        verify_raw, name = _load(SAMPLE_DIR, None, spec, progress), f"{SAMPLE_DIR} (shipped sample)"
    elif is_split_source(data):
        path = Path(data)
        split = "test" if path.suffix.lower() == ".csv" or (path / "test").is_dir() else "val"
        verify_raw, name = _load(data, split, spec, progress), f"{data} [{split}]"
        if need_training:
            train_raw = _load(data, "train", spec, progress)
            train = TrainingImages(train_raw.images, to_model_order(train_raw, labels), f"{data} [train]")
    else:
        full = _load(data, None, spec, progress)
        if need_training:
            train_idx, val_idx = stratified_split(full.labels, VERIFY_FRACTION, seed)
            t = full.subset(train_idx)
            train = TrainingImages(t.images, to_model_order(t, labels), f"{data} [{1 - VERIFY_FRACTION:.0%}]")
            verify_raw, name = full.subset(val_idx), f"{data} [stratified {VERIFY_FRACTION:.0%} hold-out]"
        else:
            verify_raw, name = full, str(data)
    y = to_model_order(verify_raw, labels)
    unknown = int((y < 0).sum())
    if unknown == len(y):
        log.warning("%s: none of its classes (%s) is a model class (%s): accuracy cannot be measured, "
                    "only agreement", name, ", ".join(verify_raw.classes), ", ".join(labels))
    elif unknown:
        log.info("%s: %d images of classes the model does not predict count for agreement only", name, unknown)
    if train is not None:
        keep = train.y >= 0
        train = TrainingImages(train.images[keep], train.y[keep], train.source)
        if len(train) == 0:
            raise ValueError(f"{data}: no training images of the model's classes ({', '.join(labels)})")
    x = np.concatenate([preprocess(verify_raw.images[i:i + 512], spec)
                        for i in range(0, len(verify_raw), 512)]) if len(verify_raw) else \
        np.zeros((0, *spec.input_shape), np.float32)
    return ImageSet(x, y, name), train
