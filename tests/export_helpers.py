"""Models the export tests build: networks "nobody here wrote"."""
from __future__ import annotations

from feredge.models.tf_env import keras


def user_model(classes=5, size=64, seed=0):
    """A user-style functional network: SeparableConv2D, BatchNorm, a residual Add, GAP, Dropout."""
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    inputs = keras.Input((size, size, 3), name="image")
    x = layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="stem")(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    y = layers.SeparableConv2D(16, 3, padding="same", use_bias=False, name="sep1")(x)
    y = layers.BatchNormalization(name="sep1_bn")(y)
    y = layers.ReLU(name="sep1_relu")(y)
    x = layers.Add(name="add1")([x, y])
    x = layers.MaxPooling2D(name="pool1")(x)
    x = layers.SeparableConv2D(32, 3, padding="same", name="sep2")(x)
    x = layers.BatchNormalization(name="sep2_bn")(x)
    x = layers.ReLU(name="sep2_relu")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(0.2, name="drop")(x)
    x = layers.Dense(24, activation="relu", name="fc")(x)
    outputs = layers.Dense(classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="user_net")
