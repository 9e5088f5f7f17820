"""Import TensorFlow with tf-keras (Keras 2) as `keras`, quietly, the same way everywhere.

TF_USE_LEGACY_KERAS must be set before TensorFlow is first imported: pruning
(tensorflow-model-optimization) and tf2onnx's Keras path work only on tf-keras models, and
importing tfmot flips the switch anyway, so `tf.keras` would otherwise change meaning mid-run.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide the cuInit and oneDNN banners

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

__all__ = ["tf", "keras"]
