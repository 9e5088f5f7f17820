"""Inference backends: one artifact in, class probabilities out.

`predict(batch)` takes float32 NHWC faces that already went through `edge.preprocess` and
returns (N, classes) probabilities. Quantized input/output scaling is each backend's own
business. Each runtime is imported only when its backend is opened.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from feredge.edge.backends.base import Backend, BackendError

# format -> (module, the Python packages that can run it, in order of preference)
_BACKENDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "tflite": ("feredge.edge.backends.tflite", ("ai_edge_litert", "tflite_runtime")),
    "onnx": ("feredge.edge.backends.onnxrt", ("onnxruntime",)),
    "openvino": ("feredge.edge.backends.openvino", ("openvino",)),
}
_SUFFIX_FORMAT = {".tflite": "tflite", ".onnx": "onnx", ".xml": "openvino"}

__all__ = ["Backend", "BackendError", "FORMATS", "format_of", "installed_formats", "open_artifact"]

FORMATS = tuple(_BACKENDS)


def format_of(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIX_FORMAT:
        raise BackendError(f"{path}: unknown artifact type {suffix!r} (expected .tflite, .onnx or OpenVINO .xml)")
    return _SUFFIX_FORMAT[suffix]


def installed_formats() -> dict[str, str]:
    """Formats this device can run -> the Python package that would run it."""
    found = {}
    for fmt, (_, packages) in _BACKENDS.items():
        for package in packages:
            if importlib.util.find_spec(package) is not None:
                found[fmt] = package
                break
    return found


def open_artifact(path: str | Path, *, threads: int | None = None, **options) -> Backend:
    """Load one artifact file with the backend its format needs.

    options: onnx: providers=["CUDAExecutionProvider", ...] or "auto";
             openvino: device="CPU", precision_hint="f32" | "bf16" | "f16" | None.
    """
    path = Path(path)
    fmt = format_of(path)
    if not path.is_file():
        raise BackendError(f"{path}: no such artifact file")
    if fmt not in installed_formats():
        packages = " or ".join(_BACKENDS[fmt][1])
        raise BackendError(f"{path}: no runtime for {fmt} installed (pip install {packages.replace('_', '-')})")
    module = importlib.import_module(_BACKENDS[fmt][0])
    return module.open(path, threads=threads, **options)
