"""ONNX Runtime, with execution providers chosen by flag or automatically (TensorRT, CUDA, CPU).

On a Jetson, onnxruntime-gpu's TensorRT provider builds an engine from the graph on first load
(tens of seconds to minutes); `provider_config` caches it in `trt_cache/` beside the model, so
the next start reuses it, and lets TensorRT pick fp16 kernels. A QDQ int8 artifact carries its
own scales, so TensorRT builds int8 from them with no calibration table.
"""
from __future__ import annotations

import builtins
from pathlib import Path

import numpy as np

from feredge.edge.backends.base import Backend, BackendError
from feredge.edge.backends.tflite import _first_line

# Best first: what a Jetson's onnxruntime-gpu offers, then the CPU everybody has.
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def choose_providers(requested, available) -> list[str]:
    if requested in (None, "auto"):
        chosen = [p for p in PREFERRED_PROVIDERS if p in available]
        return chosen or list(available)
    requested = [requested] if isinstance(requested, str) else list(requested)
    missing = [p for p in requested if p not in available]
    if missing:
        raise BackendError(f"execution provider(s) {', '.join(missing)} not available here "
                           f"(available: {', '.join(available)})")
    return requested


def provider_config(chosen: list[str], path, quantized: bool) -> list:
    """The providers argument of InferenceSession: TensorRT with its engine cache and precision
    flags, the others as they are."""
    out = []
    for name in chosen:
        if name == "TensorrtExecutionProvider":
            cache = Path(path).resolve().parent / "trt_cache"
            out.append((name, {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache),
                               "trt_timing_cache_enable": "True", "trt_fp16_enable": "True",
                               "trt_int8_enable": "True" if quantized else "False"}))
        else:
            out.append(name)
    return out


class OnnxBackend(Backend):
    format = "onnx"

    def __init__(self, path, threads: int | None = None, providers="auto"):
        import onnxruntime as ort

        self.runtime = f"onnxruntime {ort.__version__}"
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        # Idle worker threads spin by default, taking the CPU from face detection between
        # inferences (measured: detection 27 -> 36 ms per frame at 2 threads on 2 cores).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        chosen = choose_providers(providers, ort.get_available_providers())
        quantized = _has_quantized_ops(path)
        if "TensorrtExecutionProvider" in chosen:
            (Path(path).resolve().parent / "trt_cache").mkdir(exist_ok=True)
        try:
            self._session = ort.InferenceSession(str(path), options,
                                                 providers=provider_config(chosen, path, quantized))
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise BackendError(f"{path}: cannot load ONNX model ({_first_line(exc)})") from None
        self.providers = self._session.get_providers()
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise BackendError(f"{path}: expected one input and one output, found {len(inputs)} and {len(outputs)}")
        shape = inputs[0].shape
        if len(shape) not in (3, 4) or not all(isinstance(d, int) for d in shape[1:]):
            raise BackendError(f"{path}: expected a 3-D (N,T,F) or 4-D NHWC input with fixed non-batch dims; "
                               f"found {shape}")
        self._input = inputs[0].name
        self._fixed_batch = shape[0] if isinstance(shape[0], int) else None
        super().__init__(path, shape[1:], outputs[0].shape[-1])
        # A QDQ-quantized graph still takes and returns float; its weights tell the precision.
        self.precision = "int8" if quantized else "fp32"

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        if self._fixed_batch == 1 and len(batch) > 1:
            return np.concatenate([self._predict(batch[i:i + 1]) for i in range(len(batch))])
        return np.asarray(self._session.run(None, {self._input: batch})[0], dtype=np.float32)


def _has_quantized_ops(path) -> bool:
    """Whether the graph holds quantized operators. Op types are plain strings in the protobuf,
    so a byte search answers without importing (or installing) the onnx package."""
    with builtins.open(path, "rb") as fh:
        data = fh.read()
    return any(op in data for op in (b"QuantizeLinear", b"QLinearConv", b"ConvInteger", b"MatMulInteger"))


def open(path, threads: int | None = None, providers="auto", **options) -> OnnxBackend:
    if options:
        raise BackendError(f"{path}: ONNX Runtime takes no options {sorted(options)}")
    return OnnxBackend(path, threads, providers)
