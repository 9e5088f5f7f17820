"""Keras -> TFLite at fp32, fp16 (weights), dynamic-range (int8 weights) and full int8.

Full int8 calibrates on real faces (the representative dataset) and takes and returns int8
tensors; the edge backend applies the input/output scale and zero point. The experimental
sparse encoding is not used: LiteRT's XNNPACK delegate cannot prepare it (STACK.md).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

PRECISIONS = ("fp32", "fp16", "dynamic", "int8")


def settings(precision: str, scheme: str | None = None) -> dict:
    return {
        "fp32": {"converter": "tf.lite.TFLiteConverter.from_keras_model"},
        "fp16": {"converter": "tf.lite.TFLiteConverter.from_keras_model", "weights": "float16",
                 "activations": "float32"},
        "dynamic": {"converter": "tf.lite.TFLiteConverter.from_keras_model", "weights": "int8 (per channel)",
                    "activations": "float32, quantized on the fly"},
        "int8": {"converter": "tf.lite.TFLiteConverter.from_keras_model", "weights": "int8 (per channel)",
                 "activations": "int8", "input": "int8", "output": "int8",
                 "calibration": "representative dataset"},
    }[precision]


def convert(model, path: Path, precision: str, *, calib: np.ndarray | None = None, scratch: Path | None = None,
            scheme: str | None = None) -> dict:
    """Write `model` as a .tflite file at `path`; returns the manifest's settings (one int8 scheme:
    LiteRT's XNNPACK kernels do not saturate on any CPU measured)."""
    from feredge.models.tf_env import tf

    if precision not in PRECISIONS:
        raise ValueError(f"TFLite has no precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    converter = _converter(model)
    if precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif precision == "int8":
        if calib is None or not len(calib):
            raise ValueError("TFLite int8 needs calibration images")

        def representative():
            for i in range(len(calib)):
                yield [calib[i:i + 1].astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    Path(path).write_bytes(converter.convert())
    return settings(precision)


def _recurrent(model) -> bool:
    from feredge.models.tf_env import keras

    stack = list(model.layers)
    while stack:
        layer = stack.pop()
        if isinstance(layer, (keras.layers.RNN, keras.layers.Bidirectional)):
            return True
        stack += getattr(layer, "layers", [])
    return False


def _converter(model):
    """The converter for a Keras model. One with recurrent layers (seed004's LSTM head) is taken
    from a concrete function of batch 1: from the Keras model the converter stops at
    'tf.TensorListReserve op requires element_shape to be static', while a fixed batch lowers
    each LSTM to a fused UNIDIRECTIONAL_SEQUENCE_LSTM op."""
    from feredge.models.tf_env import tf

    if not _recurrent(model):
        return tf.lite.TFLiteConverter.from_keras_model(model)
    spec = tf.TensorSpec([1, *model.input_shape[1:]], tf.float32)
    function = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    return tf.lite.TFLiteConverter.from_concrete_functions([function], model)
