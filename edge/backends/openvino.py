"""OpenVINO IR (.xml + .bin) on a device (CPU, GPU, NPU, AUTO) with an inference-precision hint.

On CPUs with AMX/AVX512-BF16 OpenVINO silently runs fp32 IR in bf16; `precision` reports what
the compiled model actually runs, and `precision_hint="f32"` forces full precision.
"""
from __future__ import annotations

import numpy as np

from feredge.edge.backends.base import Backend, BackendError
from feredge.edge.backends.tflite import _first_line
from feredge.edge.device import align_isa_caps

HINTS = ("f32", "bf16", "f16")


class OpenVINOBackend(Backend):
    format = "openvino"

    def __init__(self, path, threads: int | None = None, device: str = "CPU", precision_hint: str | None = None):
        align_isa_caps()
        import openvino as ov

        self.runtime = f"openvino {ov.__version__.split('-')[0]}"
        if precision_hint not in (None, *HINTS):
            raise BackendError(f"{path}: precision hint must be one of {', '.join(HINTS)}, not {precision_hint!r}")
        core = ov.Core()
        if device.split(":")[0] not in ("AUTO", "MULTI", "HETERO") and device not in core.available_devices:
            raise BackendError(f"{path}: OpenVINO device {device!r} not available (available: "
                               f"{', '.join(core.available_devices)})")
        try:
            model = core.read_model(str(path))
        except Exception as exc:
            raise BackendError(f"{path}: cannot read OpenVINO IR ({_first_line(exc)})") from None
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise BackendError(f"{path}: expected one input and one output")
        shape = model.inputs[0].get_partial_shape()
        if shape.rank.is_dynamic or shape.rank.get_length() not in (3, 4) or any(d.is_dynamic for d in list(shape)[1:]):
            raise BackendError(f"{path}: expected a 3-D (N,T,F) or 4-D NHWC input with fixed non-batch dims; "
                               f"found {shape}")
        in_shape = [d.get_length() for d in list(shape)[1:]]
        config = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if precision_hint:
            config["INFERENCE_PRECISION_HINT"] = precision_hint
        self.path = path  # named by a failed compile, before Backend.__init__ runs
        self._core, self._model, self._config, self.device = core, model, config, device
        # Static shapes run markedly faster on the CPU plugin than dynamic ones, so batch 1 (one
        # face, the common case) gets its own static model; other batch sizes share a dynamic one.
        self._requests = {1: self._compile(1)}
        out_shape = model.outputs[0].get_partial_shape()
        super().__init__(path, in_shape, out_shape[out_shape.rank.get_length() - 1].get_length())
        self.precision = self._ran_precision(model)

    def _compile(self, batch: int | None):
        model = self._model.clone()
        dims = [d.get_length() for d in list(model.inputs[0].get_partial_shape())[1:]]
        model.reshape([batch if batch else -1, *dims])
        try:
            self._compiled = self._core.compile_model(model, self.device, self._config)
        except Exception as exc:
            raise BackendError(f"{self.path}: cannot compile for {self.device} ({_first_line(exc)})") from None
        return self._compiled.create_infer_request()

    def _ran_precision(self, model) -> str:
        try:
            hint = str(self._compiled.get_property("INFERENCE_PRECISION_HINT"))
        except Exception:  # AUTO and some plugins do not expose it
            hint = "unknown"
        hint = {"<Type: 'float32'>": "fp32", "<Type: 'bfloat16'>": "bf16", "<Type: 'float16'>": "fp16",
                "f32": "fp32", "f16": "fp16"}.get(hint, hint)
        if any(op.get_type_name() == "FakeQuantize" for op in model.get_ops()):
            return f"int8 (activations {hint})"
        return hint

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        import openvino as ov

        key = 1 if len(batch) == 1 else None
        if key not in self._requests:
            self._requests[key] = self._compile(key)
        request = self._requests[key]
        if not batch.flags.writeable:  # OpenVINO shares only writeable memory (a memory-mapped file is not)
            batch = batch.copy()
        request.set_input_tensor(ov.Tensor(batch, shared_memory=True))
        request.infer()
        return np.array(request.get_output_tensor().data, dtype=np.float32)


def open(path, threads: int | None = None, device: str = "CPU", precision_hint: str | None = None,
         **options) -> OpenVINOBackend:
    if options:
        raise BackendError(f"{path}: OpenVINO takes no options {sorted(options)}")
    return OpenVINOBackend(path, threads, device, precision_hint)
