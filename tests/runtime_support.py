"""Shared helpers for the runtime tests (tests/test_runtime_*.py): a test bundle and test videos.

The bundle is made once per test session from the shipped model (`models/pretrained`), so the
runtime is tested on a real trained network and real faces. When `export.export_model` exists it
makes the bundle; until then (and as a fallback) a minimal in-test converter does: TFLite fp32 and
full int8, ONNX fp32 (tf2onnx) and int8 (onnxruntime QDQ), OpenVINO IR converted from those ONNX
files. TensorFlow is imported here, in the test process, never by the runtime under test.

The bundle is cached under pytest's cache directory, keyed by the model's sha256 and this file's
source, so re-running the tests locally does not re-convert; CI (a fresh clone) builds it once.
"""
from __future__ import annotations

import hashlib
import json
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
    """`python -m edge.cli ARGS` in a subprocess, as a user runs it."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "edge.cli", *map(str, args)], cwd=cwd or REPO, env=full_env,
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
    key = hashlib.sha256((MODEL_DIR / "model.keras").read_bytes() + Path(__file__).read_bytes()).hexdigest()[:16]
    out = Path(cache_dir) / f"bundle-{key}"
    if not (out / "manifest.json").is_file():
        if out.exists():
            shutil.rmtree(out)
        started = time.perf_counter()
        _build_bundle(out)
        print(f"[runtime tests] built the test bundle in {time.perf_counter() - started:.1f} s: {out}")
    _bundle_path = out
    return out


def _build_bundle(out: Path) -> None:
    try:
        from export import export_model  # noqa: F401  (the real exporter, once it has landed)
    except ImportError:
        export_model = None
    if export_model is not None:
        export_model(MODEL_DIR, out, formats=("tflite", "onnx", "openvino"), precisions=("fp32", "int8"))
        return
    _build_bundle_minimal(out)


def _build_bundle_minimal(out: Path) -> None:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    from models.tf_env import keras, tf

    from edge.preprocess import PreprocessSpec, preprocess
    from models.run_dir import load_labels

    spec = PreprocessSpec.load(MODEL_DIR / "preprocess.json")
    labels = load_labels(MODEL_DIR / "labels.json")
    model = keras.models.load_model(MODEL_DIR / "model.keras", compile=False)
    faces, _, _ = sample_faces(per_class=20)
    calib = preprocess(faces, spec)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "openvino").mkdir(parents=True)

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    (tmp / "model.fp32.tflite").write_bytes(converter.convert())
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([calib[i:i + 1]] for i in range(len(calib)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    (tmp / "model.int8.tflite").write_bytes(converter.convert())

    import tf2onnx

    signature = [tf.TensorSpec([None, *spec.input_shape], tf.float32, name="input")]
    tf2onnx.convert.from_keras(model, input_signature=signature, opset=17, output_path=str(tmp / "model.fp32.onnx"))
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._rows = iter(calib[i:i + 1] for i in range(len(calib)))

        def get_next(self):
            row = next(self._rows, None)
            return None if row is None else {"input": row}

    quantize_static(str(tmp / "model.fp32.onnx"), str(tmp / "model.int8.onnx"), Reader(),
                    quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8)

    import openvino as ov

    for precision in ("fp32", "int8"):
        ov_model = ov.convert_model(str(tmp / f"model.{precision}.onnx"))
        ov.save_model(ov_model, str(tmp / "openvino" / f"model.{precision}.xml"), compress_to_fp16=False)

    artifacts = []
    for fmt, precision, files in [
        ("tflite", "fp32", ["model.fp32.tflite"]), ("tflite", "int8", ["model.int8.tflite"]),
        ("onnx", "fp32", ["model.fp32.onnx"]), ("onnx", "int8", ["model.int8.onnx"]),
        ("openvino", "fp32", ["openvino/model.fp32.xml", "openvino/model.fp32.bin"]),
        ("openvino", "int8", ["openvino/model.int8.xml", "openvino/model.int8.bin"]),
    ]:
        from edge.bundle import sha256_file

        artifacts.append({
            "id": f"{fmt}-{precision}", "format": fmt, "precision": precision, "files": files,
            "bytes": sum((tmp / f).stat().st_size for f in files),
            "sha256": {f: sha256_file(tmp / f) for f in files}, "pruning": None, "verification": None,
        })
    manifest = {
        "schema": 1, "model": {"name": "pretrained", "source": "models/pretrained/model.keras"},
        "labels": list(labels), "input": {"height": spec.height, "width": spec.width, "channels": spec.channels,
                                          "layout": "NHWC"},
        "preprocess": spec.to_dict(), "toolchain": {"tensorflow": tf.__version__, "openvino": ov.__version__},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "artifacts": artifacts,
        "note": "made by tests/runtime_support.py (minimal converter for the runtime tests)",
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out)


_videos: dict[int, tuple[Path, dict]] = {}


def build_test_video(folder: Path, faces: int) -> tuple[Path, dict]:
    """A 640x480 test video (3 s at 10 fps) with 1 or 3 moving sample faces, and its ground truth."""
    from edge.testvideo import make_test_video

    if faces not in _videos or not _videos[faces][0].is_file():
        path = Path(folder) / f"faces{faces}.mp4"
        truth = make_test_video(path, faces, seconds=3.0, fps=10.0, seed=10 + faces)
        _videos[faces] = (path, truth)
    return _videos[faces]
