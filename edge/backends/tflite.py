"""TFLite through LiteRT (`ai_edge_litert`), falling back to `tflite_runtime` (which needs numpy 1.x)."""
from __future__ import annotations

import numpy as np

from feredge.edge.backends.base import Backend, BackendError, dequantize, quantize
from feredge.edge.native_log import banners_filtered


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
        import ai_edge_litert
        return Interpreter, f"ai-edge-litert {getattr(ai_edge_litert, '__version__', '?')}"
    except ImportError:
        from tflite_runtime.interpreter import Interpreter
        import tflite_runtime
        return Interpreter, f"tflite-runtime {getattr(tflite_runtime, '__version__', '?')}"


class TFLiteBackend(Backend):
    format = "tflite"

    def __init__(self, path, threads: int | None = None):
        Interpreter, self.runtime = _interpreter_class()
        try:
            # XNNPACK is the default delegate for float and int8 models in both interpreters;
            # creating it prints a banner on fd 2 that every run would otherwise show.
            with banners_filtered():
                self._interp = Interpreter(model_path=str(path), num_threads=threads)
                self._interp.allocate_tensors()
        except SystemError as exc:  # tflite-runtime 2.14 built for numpy 1 under numpy 2
            raise BackendError(f"{path}: {self.runtime} cannot run with numpy {np.__version__} "
                               f"({_first_line(exc)}); install ai-edge-litert, or numpy<2 for tflite-runtime") from None
        except (ValueError, RuntimeError) as exc:
            raise BackendError(f"{path}: cannot load TFLite model ({_first_line(exc)})") from None
        inp = self._interp.get_input_details()
        out = self._interp.get_output_details()
        if len(inp) != 1 or len(out) != 1:
            raise BackendError(f"{path}: expected one input and one output, found {len(inp)} and {len(out)}")
        self._in, self._out = inp[0], out[0]
        shape = self._in["shape"]
        if len(shape) not in (3, 4):
            raise BackendError(f"{path}: expected a 3-D (N,T,F) or 4-D NHWC input, found shape {list(shape)}")
        super().__init__(path, shape[1:], self._out["shape"][-1])
        self._in_q = self._quant(self._in)
        self._out_q = self._quant(self._out)
        self.precision = {np.int8: "int8", np.uint8: "uint8"}.get(self._in["dtype"], "fp32")
        self._batch = int(shape[0])
        # A batch of -1 in the signature resizes; so does a fixed batch > 1 (image models). A fixed
        # batch of 1 runs one sample per invoke: recurrent heads are converted at batch 1, and their
        # fused LSTM ops keep batch-1 state tensors that refuse a resize.
        self._resizable = -1 in list(self._in.get("shape_signature", [])) or self._batch != 1

    @staticmethod
    def _quant(details):
        scale, zero = details.get("quantization", (0.0, 0))
        return (float(scale), int(zero)) if scale else None

    def _set_batch(self, n: int) -> None:
        if n != self._batch:
            self._interp.resize_tensor_input(self._in["index"], [n, *self.input_shape])
            self._interp.allocate_tensors()
            self._in = self._interp.get_input_details()[0]
            self._out = self._interp.get_output_details()[0]
            self._batch = n

    def _run(self, batch: np.ndarray) -> np.ndarray:
        x = quantize(batch, *self._in_q, self._in["dtype"]) if self._in_q else batch.astype(self._in["dtype"])
        self._interp.set_tensor(self._in["index"], x)
        # A fused LSTM keeps its state in variable tensors that carry over from one invoke to the
        # next: without this, every sequence after the first would start from the last one's end
        # (up to 8e-4 off the Keras head). Under a microsecond; a no-op for models without state.
        self._interp.reset_all_variables()
        self._interp.invoke()
        y = self._interp.get_tensor(self._out["index"])
        return dequantize(y, *self._out_q) if self._out_q else y.astype(np.float32)

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        if self._resizable:
            self._set_batch(len(batch))
            return self._run(batch)
        return np.concatenate([self._run(batch[i:i + 1]) for i in range(len(batch))])


def _first_line(exc: BaseException) -> str:
    """The line of a runtime's error that says what is wrong; OpenVINO's start with where it was thrown."""
    text = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    said = [line for line in text if not line.startswith(("Exception from ", "Check '"))]
    return (said or text or [type(exc).__name__])[0][:300]


def open(path, threads: int | None = None, **options) -> TFLiteBackend:
    if options:
        raise BackendError(f"{path}: TFLite takes no options {sorted(options)}")
    return TFLiteBackend(path, threads)
