"""Keras -> ONNX fp32 (tf2onnx) and int8 (ONNX Runtime static quantization, QDQ, per channel).

The int8 model keeps float input and output: QuantizeLinear/DequantizeLinear pairs around the
int8 weights and activations, which ONNX Runtime fuses into integer kernels on the CPU and
TensorRT reads as explicit quantization. Calibration is MinMax over real faces.

Which 8-bit types to use is a question of the CPU that will run the model, not of the model:
on x86 without VNNI, ONNX Runtime multiplies 8-bit values with VPMADDUBSW, which adds two
8-bit products into a 16-bit register that saturates. Full-range int8 weights overflow it and
the same file scores 2-3 points lower on such a CPU than on a VNNI one (README, "Int8 on every
CPU"). `SCHEMES` lists the candidates; a scheme marked portable cannot saturate on any CPU, so
what verification measures here is what every CPU computes.
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np

PRECISIONS = ("fp32", "int8")
OPSET = 17


@dataclasses.dataclass(frozen=True)
class Scheme:
    activations: str  # "int8" | "uint8"
    weights: str  # "int8" | "uint8"
    reduce_range: bool  # 7-bit weights: a pair of products fits 16 bits whatever the CPU
    portable: bool  # no CPU class can saturate its 16-bit pair sums
    note: str


SCHEMES = {
    "s8s8": Scheme("int8", "int8", False, False, "full 8-bit: saturates on x86 CPUs without VNNI (AVX2 only)"),
    "s8s8-r7": Scheme("int8", "int8", True, True, "7-bit weights, int8 activations: ARM's native signed path"),
    "u8s8": Scheme("uint8", "int8", False, False, "full 8-bit, VNNI's native u8*s8: saturates without VNNI"),
    "u8s8-r7": Scheme("uint8", "int8", True, True, "7-bit weights, uint8 activations: x86's native u8*s8 path"),
    "u8u8": Scheme("uint8", "uint8", False, True, "x86 without VNNI widens to 16 bits: exact, but slower"),
}
# On an AVX2-only EPYC (benchmarks/results/x86_64-epyc-avx2-int8-schemes) u8s8-r7 lost 0.03 points
# on PublicTest and was the fastest int8 scheme; s8s8 lost 2.59 and was 1.8x slower.
DEFAULT_SCHEME = "u8s8-r7"


def settings(precision: str, scheme: str = DEFAULT_SCHEME) -> dict:
    if precision == "fp32":
        return {"converter": "tf2onnx.convert.from_keras", "opset": OPSET}
    s = SCHEMES[scheme]
    return {"converter": "tf2onnx.convert.from_keras", "opset": OPSET,
            "quantizer": "onnxruntime.quantization.quantize_static", "format": "QDQ", "per_channel": True,
            "scheme": scheme, "weights": s.weights, "activations": s.activations, "reduce_range": s.reduce_range,
            "portable": s.portable, "calibration": "MinMax",
            "preprocessing": "onnxruntime.quantization.quant_pre_process"}


def convert(model, path: Path, precision: str, *, calib: np.ndarray | None = None, scratch: Path,
            scheme: str | None = None) -> dict:
    """Write `model` as .onnx at `path`: fp32 from tf2onnx, int8 quantized from that fp32 graph,
    which is converted once per model into `scratch` and shared by both precisions."""
    if precision not in PRECISIONS:
        raise ValueError(f"ONNX has no precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    fp32 = Path(scratch) / "onnx.fp32.onnx"
    if not fp32.is_file():
        convert_fp32(model, fp32)
    if precision == "fp32":
        shutil.copyfile(fp32, path)
    else:
        quantize_int8(fp32, path, calib, scratch, scheme or DEFAULT_SCHEME)
    return settings(precision, scheme or DEFAULT_SCHEME)


def convert_fp32(model, path: Path) -> None:
    import tf2onnx

    from feredge.models.tf_env import tf

    signature = [tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name="input")]
    tf2onnx.convert.from_keras(model, input_signature=signature, opset=OPSET, output_path=str(path))


def quantize_int8(fp32_path: Path, path: Path, calib: np.ndarray, scratch: Path, scheme: str = DEFAULT_SCHEME) -> None:
    """Static QDQ int8 from an fp32 .onnx; intermediate files go to `scratch`, not the bundle."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if scheme not in SCHEMES:
        raise ValueError(f"unknown ONNX int8 scheme {scheme!r} (choose from {', '.join(SCHEMES)})")
    if calib is None or not len(calib):
        raise ValueError("ONNX int8 needs calibration images")
    s = SCHEMES[scheme]
    prepared = Path(scratch) / f"{Path(fp32_path).stem}.prep.onnx"
    quant_pre_process(str(fp32_path), str(prepared))
    input_name = onnx.load(str(prepared), load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):
        """Preprocessed faces, 32 per call (MinMax ranges do not depend on the batching)."""

        def __init__(self):
            self.i = 0

        def get_next(self):
            if self.i >= len(calib):
                return None
            self.i += 32
            return {input_name: calib[self.i - 32:self.i].astype(np.float32)}

        def rewind(self):
            self.i = 0

    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    quantize_static(str(prepared), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=types[s.activations], weight_type=types[s.weights],
                    reduce_range=s.reduce_range)
