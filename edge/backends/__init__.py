"""Inference backends: one artifact in, class probabilities out.

`predict(batch)` takes float32 NHWC faces that already went through `edge.preprocess` (or, for
seed004's temporal head, (N, T, F) feature sequences) and returns (N, classes) probabilities. Quantized input/output scaling is each backend's own
business. Each runtime is imported only when its backend is opened.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from feredge.edge import formats
from feredge.edge.backends.base import Backend, BackendError

__all__ = ["Backend", "BackendError", "format_of", "installed_formats", "open_artifact"]


def format_of(path: str | Path) -> str:
    fmt = formats.of_path(path)
    if fmt is None:
        known = ", ".join(f"{f.suffix} ({f.name})" for f in map(formats.get, formats.names()))
        raise BackendError(f"{path}: unknown artifact type {Path(path).suffix.lower()!r} (expected {known})")
    return fmt.name


def installed_formats() -> dict[str, str]:
    """Formats this device can run -> the Python package that would run it."""
    found = {}
    for name in formats.names():
        for package in formats.get(name).runtimes:
            if importlib.util.find_spec(package) is not None:
                found[name] = package
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
        packages = " or ".join(formats.get(fmt).runtimes)
        raise BackendError(f"{path}: no runtime for {fmt} installed (pip install {packages.replace('_', '-')})")
    module = importlib.import_module(formats.get(fmt).backend)
    return module.open(path, threads=threads, **options)
