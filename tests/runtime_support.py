"""Shared helpers for the runtime tests (tests/test_runtime_*.py): a test bundle and test videos.

The bundle is made once per test session from the shipped model (`models/pretrained`) by
`export.export_model` (tflite, onnx, openvino at fp32 and int8), so the runtime is tested on a real
trained network and real faces. TensorFlow is imported by the exporter in the test process, never
by the runtime under test.

The bundle is cached under pytest's cache directory, keyed by the model's sha256, this file and the
exporter's sources, so re-running the tests locally does not re-convert; CI (a fresh clone) builds it once.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = REPO / "models" / "pretrained"
SAMPLE_DIR = REPO / "models" / "sample"

_bundle_path: Path | None = None


def feredge(*args, cwd=None, timeout=300, env=None):
    """`python -m feredge.edge.cli ARGS` in a subprocess, as a user runs it."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "feredge.edge.cli", *map(str, args)], cwd=cwd or REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def sample_faces(per_class: int = 50):
    """(uint8 images, label names, relative file names) from the shipped sample, sorted by file."""
    import cv2

    images, labels, names = [], [], []
    for folder in sorted(p for p in SAMPLE_DIR.iterdir() if p.is_dir()):
        for path in sorted(folder.glob("*.jpg"))[:per_class]:
            images.append(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE))
            labels.append(folder.name)
            names.append(f"{folder.name}/{path.name}")
    return np.stack(images), labels, names


def build_test_bundle(cache_dir: Path) -> Path:
    """A bundle of the shipped model with tflite/onnx/openvino x fp32/int8 (built once per session)."""
    global _bundle_path
    if _bundle_path is not None and (_bundle_path / "manifest.json").is_file():
        return _bundle_path
    digest = hashlib.sha256((MODEL_DIR / "model.keras").read_bytes() + Path(__file__).read_bytes())
    for source in sorted((REPO / "export").glob("*.py")):  # a changed exporter makes a new bundle
        digest.update(source.read_bytes())
    key = digest.hexdigest()[:16]
    out = Path(cache_dir) / f"bundle-{key}"
    # pytest-xdist workers share the cache: the first one builds, the others wait for it
    with open(Path(cache_dir) / f"bundle-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "manifest.json").is_file():
            if out.exists():
                shutil.rmtree(out)
            started = time.perf_counter()
            _build_bundle(out)
            print(f"[runtime tests] built the test bundle in {time.perf_counter() - started:.1f} s: {out}")
    _bundle_path = out
    return out


def _build_bundle(out: Path) -> None:
    """allow_drop: the bundle is built whatever its verification says, so that one artifact that
    misses a rule on some CPU fails the tests about it, not every test that needs a bundle."""
    from feredge.export import export_model

    export_model(MODEL_DIR, out, formats=("tflite", "onnx", "openvino"), precisions=("fp32", "int8"),
                 allow_drop=True, progress=False)


_videos: dict[int, tuple[Path, dict]] = {}


def build_test_video(folder: Path, faces: int) -> tuple[Path, dict]:
    """A 640x480 test video (3 s at 10 fps) with 1 or 3 moving sample faces, and its ground truth.

    The 3-face video shows a new face every 0.5 s, ~20 distinct faces, so that label statistics
    over it (reference agreement) depend on the pipeline, not on which few faces were drawn. The
    1-face video holds each face 2 s (two faces), for the detector tests that follow one face.
    """
    from feredge.edge.testvideo import make_test_video

    if faces not in _videos or not _videos[faces][0].is_file():
        path = Path(folder) / f"faces{faces}.mp4"
        truth = make_test_video(path, faces, seconds=3.0, fps=10.0, seed=10 + faces,
                                hold_s=0.5 if faces > 1 else 2.0)
        _videos[faces] = (path, truth)
    return _videos[faces]
