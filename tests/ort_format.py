"""A format added by a test: ONNX Runtime's ORT format (.ort), the flatbuffer that ORT's minimal
and mobile builds load. This module is the whole exporter; tests/test_formats.py adds the one
table entry, and the existing ONNX Runtime backend runs the files."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def convert(model, path: Path, precision: str, *, calib: np.ndarray | None = None, scratch: Path,
            scheme: str | None = None) -> dict:
    import onnxruntime as ort

    from feredge.export import onnx as onnx_export

    source = Path(scratch) / "ort-source.onnx"
    onnx_export.convert(model, source, "fp32", scratch=scratch)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # portable across CPUs
    options.optimized_model_filepath = str(path)
    options.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    return {"converter": "tf2onnx, then onnxruntime's ORT-format writer", "optimization": "basic"}
