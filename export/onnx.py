"""Keras -> ONNX fp32 (tf2onnx) and int8 (ONNX Runtime static quantization, QDQ, per channel).

The int8 model keeps float input and output: QuantizeLinear/DequantizeLinear pairs around the
int8 weights and activations, which ONNX Runtime fuses into integer kernels on the CPU and
TensorRT reads as explicit quantization. Calibration is MinMax over real faces.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

PRECISIONS = ("fp32", "int8")
OPSET = 17


def settings(precision: str) -> dict:
    if precision == "fp32":
        return {"converter": "tf2onnx.convert.from_keras", "opset": OPSET}
    return {"converter": "tf2onnx.convert.from_keras", "opset": OPSET,
            "quantizer": "onnxruntime.quantization.quantize_static", "format": "QDQ", "per_channel": True,
            "weights": "int8", "activations": "int8", "calibration": "MinMax",
            "preprocessing": "onnxruntime.quantization.quant_pre_process"}


def convert_fp32(model, path: Path) -> None:
    import tf2onnx

    from models.tf_env import tf

    signature = [tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name="input")]
    tf2onnx.convert.from_keras(model, input_signature=signature, opset=OPSET, output_path=str(path))


def quantize_int8(fp32_path: Path, path: Path, calib: np.ndarray, scratch: Path) -> None:
    """Static QDQ int8 from an fp32 .onnx; intermediate files go to `scratch`, not the bundle."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calib is None or not len(calib):
        raise ValueError("ONNX int8 needs calibration images")
    prepared = Path(scratch) / "model.prep.onnx"
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

    reader = Reader()
    quantize_static(str(prepared), str(path), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
