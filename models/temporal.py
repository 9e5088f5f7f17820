"""seed004's temporal head (paper 004): per-frame CNN features in, one label per clip out.

The per-frame extractor is the shipped `edge` model, frozen: clips made from still faces cannot
teach better frame features than FER-2013 training did, and a frozen extractor lets the device
reuse the per-frame network it already runs. What the head reads from each frame is either the
256-d `head_fc` features or the 7 class log-probabilities; the second needs nothing beyond the
artifacts a bundle already has.

    head = build_head(frames=16, feature_dim=256, classes=7)   # BiLSTM -> Dense -> softmax
"""
from __future__ import annotations

import numpy as np

def build_head(frames: int, feature_dim: int, classes: int, units: int = 32, dense: int = 32,
               dropout: float = 0.3, bidirectional: bool = True):
    """Paper 004's sequence classifier: a (bidirectional) LSTM over T frame features, a dense
    layer and a softmax. bidirectional=False gives the unidirectional fallback for converters
    that cannot hold a BiLSTM."""
    from feredge.models.tf_env import keras

    layers = keras.layers
    inputs = keras.Input((frames, feature_dim), name="features")
    lstm = layers.LSTM(units, name="lstm")
    x = layers.Bidirectional(lstm, name="bilstm")(inputs) if bidirectional else lstm(inputs)
    x = layers.Dropout(dropout, name="drop")(x)
    x = layers.Dense(dense, activation="relu", name="fc")(x)
    outputs = layers.Dense(classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="seed004_head" if bidirectional else "seed004_head_uni")


def head_macs(frames: int, feature_dim: int, units: int, dense: int, classes: int, bidirectional: bool = True) -> int:
    """Multiply-accumulates of one clip through the head: the LSTM's four gates per step
    (input and recurrent matrices), both directions, then the dense layers."""
    per_step = 4 * units * (feature_dim + units)
    return int(per_step * frames * (2 if bidirectional else 1) + (2 if bidirectional else 1) * units * dense
               + dense * classes)


def frame_extractor(model):
    """A Keras model from a face crop batch to the 256-d head_fc features."""
    from feredge.models.tf_env import keras

    return keras.Model(model.inputs, model.get_layer("head_fc").output, name="frame_features")


def clip_features(extractor, clips: np.ndarray, spec, batch_size: int = 512) -> np.ndarray:
    """(N, T, 256) float32 head_fc features of (N, T, H, W) uint8 clips, through the spec's preprocessing."""
    from feredge.evaluation.predict import predict

    n, t = clips.shape[:2]
    flat = clips.reshape(n * t, *clips.shape[2:])
    return predict(extractor, flat, spec.replace(flip_average=False), batch_size=batch_size).reshape(n, t, -1)


def logprobs_from_features(model, features: np.ndarray) -> np.ndarray:
    """The per-frame class log-probabilities the full model gives, from its head_fc features: the
    last dense layer and softmax in numpy (dropout is off at inference), so one pass gives both."""
    weights, bias = model.get_layer("predictions").get_weights()
    logits = features @ weights + bias
    logits -= logits.max(axis=-1, keepdims=True)
    return (logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True))).astype(np.float32)
