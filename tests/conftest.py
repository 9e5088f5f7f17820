"""Shared fixtures: small generated face-like data that a network can learn in a few epochs."""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from feredge.edge.labels import FER2013_LABELS

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# OpenVINO on the AVX2 code path whatever the CPU, so a test's verdict does not depend on whether
# this machine has AVX-512, VNNI or AMX: oneDNN reads ONEDNN_MAX_CPU_ISA, OpenVINO's own kernels
# OV_CPU_MAX_ISA (honoured by builds that have it), both on first use. ONNX Runtime has no such
# switch: its int8 tests rely on the portable schemes (export/onnx.py), which no CPU saturates.
for _name in ("ONEDNN_MAX_CPU_ISA", "OV_CPU_MAX_ISA"):
    os.environ.setdefault(_name, "AVX2")
# TensorFlow on its own (Eigen) kernels, built into the wheel for one ISA: on oneDNN it chooses
# kernels by the CPU's flags and cache sizes, so on an AVX-512 EPYC two replicas of 8 drifted from
# one batch of 16 by 4 % in two epochs where they agree to 0.1 % on an AVX2 one, and on a CPU with
# AVX512-BF16 it picks bf16 kernels that the cap above forbids (mixed precision aborts).
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def synthetic_faces(n_per_class: int, seed: int, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images whose class is a bright disc at a class-specific place, on noise."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label in range(len(FER2013_LABELS)):
        angle = 2 * np.pi * label / len(FER2013_LABELS)
        cx, cy = size / 2 + size / 4 * np.cos(angle), size / 2 + size / 4 * np.sin(angle)
        for _ in range(n_per_class):
            img = rng.integers(30, 110, (size, size), dtype=np.uint8)
            cv2.circle(img, (int(cx + rng.integers(-2, 3)), int(cy + rng.integers(-2, 3))), size // 8, 230, -1)
            images.append(img)
            labels.append(label)
    return np.stack(images), np.array(labels)


def write_split(root, n_per_class: int, seed: int) -> None:
    images, labels = synthetic_faces(n_per_class, seed)
    for i, (img, label) in enumerate(zip(images, labels)):
        folder = root / FER2013_LABELS[label]
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"img{i:04d}.png"), img)


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory):
    """A FER-style split root: train/ (24 per class) and test/ (8 per class)."""
    root = tmp_path_factory.mktemp("synthetic")
    write_split(root / "train", 24, seed=1)
    write_split(root / "test", 8, seed=2)
    return root


@pytest.fixture(scope="session")
def bundle_cache(request, tmp_path_factory):
    """Where the shared test bundle is built: pytest's cache, kept between runs, or with the cache
    plugin off (`-p no:cacheprovider`, a read-only checkout) this run's temporary root, which the
    pytest-xdist workers share so that one of them builds it."""
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        return cache.mkdir("feredge-runtime")
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    (root / "feredge-runtime").mkdir(exist_ok=True)
    return root / "feredge-runtime"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Dataset caches go to a per-test folder, never to the user's ~/.cache."""
    monkeypatch.setenv("FEREDGE_CACHE", str(tmp_path_factory.mktemp("cache")))
