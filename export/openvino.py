"""Keras -> OpenVINO IR: fp32, fp16 (weights compressed to half) and int8 (NNCF post-training).

NNCF's defaults clipped activation ranges and applied bias correction that cost a small CNN
several points of agreement (STACK.md), so int8 uses min/max ranges and no bias correction. The
mixed preset (asymmetric activations) agreed best with Keras for both `edge` models measured:
97.4-98.6 % top-1 agreement against 96.9-97.5 % for the performance (symmetric) preset, whose
1.14-point loss on the shipped 350-face sample failed the 1-point verification rule.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

PRECISIONS = ("fp32", "fp16", "int8")


def settings(precision: str) -> dict:
    base = {"converter": "openvino.convert_model (tf-keras model object)"}
    if precision == "fp16":
        return {**base, "weights": "float16 (compress_to_fp16)"}
    if precision == "int8":
        return {**base, "quantizer": "nncf.quantize", "preset": "mixed (symmetric weights, asymmetric activations)",
                "activation_ranges": "MINMAX", "bias_correction": False}
    return base


def convert(model):
    import openvino as ov

    return ov.convert_model(model)


def save(ov_model, xml_path: Path, precision: str) -> list[Path]:
    """Write model.<precision>.xml + .bin; returns both paths, the .xml first."""
    import openvino as ov

    xml_path = Path(xml_path)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov_model, str(xml_path), compress_to_fp16=precision == "fp16")
    return [xml_path, xml_path.with_suffix(".bin")]


def quantize_int8(ov_model, calib: np.ndarray):
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    if calib is None or not len(calib):
        raise ValueError("OpenVINO int8 needs calibration images")
    items = [calib[i:i + 1].astype(np.float32) for i in range(len(calib))]
    advanced = AdvancedQuantizationParameters(
        disable_bias_correction=True, activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX)
    return nncf.quantize(ov_model, nncf.Dataset(items), preset=nncf.QuantizationPreset.MIXED,
                         subset_size=len(items), advanced_parameters=advanced)
