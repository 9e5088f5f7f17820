"""The seed networks of the papers this project grew from, and our own `edge` network.

Built with tf-keras (Keras 2): tensorflow-model-optimization pruning and tf2onnx's Keras path
only accept tf-keras models (see STACK.md), so everything here uses it.
"""
from __future__ import annotations

from collections.abc import Callable

from feredge.models.tf_env import keras

layers = keras.layers

ARCHITECTURES: dict[str, Callable[..., "keras.Model"]] = {}
# The paper's own input and output, used when the caller does not override them.
DEFAULT_INPUT: dict[str, tuple[int, int, int]] = {}
DEFAULT_CLASSES: dict[str, int] = {}


def _register(name: str, input_shape: tuple[int, int, int], num_classes: int):
    def wrap(fn):
        ARCHITECTURES[name] = fn
        DEFAULT_INPUT[name] = input_shape
        DEFAULT_CLASSES[name] = num_classes
        return fn
    return wrap


def build_model(name: str, input_shape: tuple[int, int, int] | None = None, num_classes: int | None = None) -> "keras.Model":
    """A fresh, uncompiled network by name, with the paper's input/output unless overridden."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose one of {', '.join(sorted(ARCHITECTURES))}")
    shape = tuple(input_shape or DEFAULT_INPUT[name])
    classes = num_classes or DEFAULT_CLASSES[name]
    return ARCHITECTURES[name](shape, classes)


@_register("seed001", (48, 48, 1), 7)
def seed001(input_shape, num_classes):
    """Paper 001: a three-convolution CNN, valid padding, 106,503 parameters at 48x48x1 -> 7."""
    return keras.Sequential([
        keras.Input(input_shape),
        layers.Conv2D(16, 5, activation="relu"),
        layers.MaxPooling2D(),
        layers.Conv2D(32, 5, activation="relu"),
        layers.MaxPooling2D(),
        layers.Conv2D(64, 3, activation="relu"),
        layers.MaxPooling2D(),
        layers.Flatten(),
        layers.Dense(128, activation="relu"),
        layers.Dense(num_classes, activation="softmax", dtype="float32"),
    ], name="seed001")


@_register("seed002", (128, 128, 3), 6)
def seed002(input_shape, num_classes):
    """Paper 002 (low-light FER): two convolutions on 128x128 RGB, 3,692,390 parameters -> 6 classes."""
    return keras.Sequential([
        keras.Input(input_shape),
        layers.Conv2D(16, 3, activation="relu"),
        layers.MaxPooling2D(),
        layers.Conv2D(32, 3, activation="relu"),
        layers.MaxPooling2D(),
        layers.Flatten(),
        layers.Dense(128, activation="relu"),
        layers.Dense(num_classes, activation="softmax", dtype="float32"),
    ], name="seed002")


@_register("seed003", (48, 48, 1), 7)
def seed003(input_shape, num_classes):
    """Paper 003: paired 5x5 and 3x3 convolutions with dropout 0.4, 1,375,175 parameters."""
    return keras.Sequential([
        keras.Input(input_shape),
        layers.Conv2D(64, 5, activation="relu"),
        layers.Conv2D(64, 5, activation="relu"),
        layers.MaxPooling2D(),
        layers.Dropout(0.4),
        layers.Conv2D(128, 3, activation="relu"),
        layers.Conv2D(128, 3, activation="relu"),
        layers.MaxPooling2D(),
        layers.Dropout(0.4),
        layers.Flatten(),
        layers.Dense(128, activation="relu"),
        layers.Dense(num_classes, activation="softmax", dtype="float32"),
    ], name="seed003")


def _conv_bn(x, filters, separable=False, name=None):
    conv = layers.SeparableConv2D if separable else layers.Conv2D
    x = conv(filters, 3, padding="same", use_bias=False, name=name)(x)
    x = layers.BatchNormalization(name=None if name is None else name + "_bn")(x)
    return layers.ReLU(name=None if name is None else name + "_relu")(x)


@_register("seed000", (48, 48, 1), 7)
def seed000(input_shape, num_classes):
    """Paper 000 names no exact layers ("multiple convolutional, pooling and fully connected
    layers", ReLU, softmax; 72.3 %). Our reading: the VGG-style CNN with batch normalisation that
    such results on FER-2013 come from: four blocks of two 3x3 convolutions (32-64-128-256),
    max-pooling and dropout, then two fully connected layers."""
    inputs = keras.Input(input_shape)
    x = inputs
    for block, filters in enumerate((32, 64, 128, 256), start=1):
        x = _conv_bn(x, filters, name=f"block{block}_conv1")
        x = _conv_bn(x, filters, name=f"block{block}_conv2")
        x = layers.MaxPooling2D(name=f"block{block}_pool")(x)
        x = layers.Dropout(0.25, name=f"block{block}_drop")(x)
    x = layers.Flatten()(x)
    for i, units in enumerate((256, 128), start=1):
        x = layers.Dense(units, use_bias=False, name=f"fc{i}")(x)
        x = layers.BatchNormalization(name=f"fc{i}_bn")(x)
        x = layers.ReLU(name=f"fc{i}_relu")(x)
        x = layers.Dropout(0.5, name=f"fc{i}_drop")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="predictions", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="seed000")


@_register("edge", (48, 48, 1), 7)
def edge(input_shape, num_classes):
    """Our network for devices (about 57 M MACs, 0.6 M parameters at 48x48): full 3x3
    convolutions only where channels are few, depthwise-separable ones with residual
    connections once channels grow, global average pooling instead of a big flatten, batch
    normalisation throughout (folded away at export)."""
    return _edge_family(input_shape, num_classes, "edge", separable_s2=False, widths=(128, 256, 512))


@_register("edge_wide", (48, 48, 1), 7)
def edge_wide(input_shape, num_classes):
    """A candidate successor to `edge` (about 53 M MACs, 0.85 M parameters at 48x48): the one
    full 3x3 convolution at 24x24 (21 M of edge's 57 M MACs) becomes depthwise-separable, and the
    MACs it frees widen the residual stages at 12x12 and 6x6 by a quarter. It asks whether width
    late buys more than a full convolution early. Trained once with the shipped recipe (sessions
    20-21) it did not: 69.30 % against edge's 69.60 %, so it is kept as a tried option, not shipped
    (see the model card)."""
    return _edge_family(input_shape, num_classes, "edge_wide", separable_s2=True, widths=(160, 320, 640))


@_register("edge_nano", (48, 48, 1), 7)
def edge_nano(input_shape, num_classes):
    """The small member of the family (about 14 M MACs, 0.15 M parameters at 48x48), meant to be
    distilled from `edge`: one full 3x3 convolution at 48x48 with 16 channels, separable
    convolutions everywhere else, one residual block of 128 channels at 12x12 and three at 6x6
    (where a block costs a quarter as much), a widening to 256 before pooling, a 128-unit head.
    Its TFLite fp32 file runs about 10 % faster than the `fer` package's TFLite mini-Xception on
    an AVX2 CPU (issue 40)."""
    inputs = keras.Input(input_shape)
    x = _conv_bn(inputs, 16, name="s1_conv")
    x = _conv_bn(x, 32, separable=True, name="s1_sep")
    x = layers.MaxPooling2D(name="s1_pool")(x)
    x = _conv_bn(x, 64, separable=True, name="s2_sep1")
    x = _conv_bn(x, 128, separable=True, name="s2_sep2")
    x = layers.MaxPooling2D(name="s2_pool")(x)
    for stage, blocks in ((3, 1), (4, 3)):  # 12x12, then 6x6, at 128 channels
        for i in range(1, blocks + 1):
            y = _conv_bn(x, 128, separable=True, name=f"s{stage}_sep{i}")
            x = layers.Add(name=f"s{stage}_add{i}")([x, y])
        if stage == 3:
            x = layers.MaxPooling2D(name="s3_pool")(x)
    x = _conv_bn(x, 256, separable=True, name="s4_widen")
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(0.3, name="head_drop")(x)
    x = layers.Dense(128, activation="relu", name="head_fc")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="predictions", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="edge_nano")


@_register("mini_xception", (64, 64, 1), 7)
def mini_xception(input_shape, num_classes):
    """The network of the `fer` package (Arriaga et al. 2017, "Real-time convolutional neural
    networks for emotion and gender classification"), layer for layer: two 8-channel valid 3x3
    convolutions, four residual modules of two separable convolutions and a strided 1x1 shortcut
    (16/32/64/128 channels), a 3x3 convolution to the classes and global average pooling. 58,423
    parameters and 10.2 M MACs at 64x64x1. Its L2 penalty is left to the trainer's weight decay."""
    inputs = keras.Input(input_shape)
    x = inputs
    for i in (1, 2):
        x = layers.Conv2D(8, 3, use_bias=False, name=f"stem_conv{i}")(x)
        x = layers.BatchNormalization(name=f"stem_conv{i}_bn")(x)
        x = layers.ReLU(name=f"stem_conv{i}_relu")(x)
    for module, filters in enumerate((16, 32, 64, 128), start=1):
        shortcut = layers.Conv2D(filters, 1, strides=2, padding="same", use_bias=False, name=f"m{module}_shortcut")(x)
        shortcut = layers.BatchNormalization(name=f"m{module}_shortcut_bn")(shortcut)
        x = _conv_bn(x, filters, separable=True, name=f"m{module}_sep1")
        x = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False, name=f"m{module}_sep2")(x)
        x = layers.BatchNormalization(name=f"m{module}_sep2_bn")(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"m{module}_pool")(x)
        x = layers.Add(name=f"m{module}_add")([x, shortcut])
    x = layers.Conv2D(num_classes, 3, padding="same", name="classes_conv")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Softmax(name="predictions", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="mini_xception")


def _edge_family(input_shape, num_classes, name, separable_s2, widths):
    stage3, stage4, out = widths
    inputs = keras.Input(input_shape)
    x = _conv_bn(inputs, 32, name="s1_conv")
    x = _conv_bn(x, 64, separable=True, name="s1_sep")
    x = layers.MaxPooling2D(name="s1_pool")(x)
    x = _conv_bn(x, 64, separable=separable_s2, name="s2_conv")
    x = _conv_bn(x, stage3, separable=True, name="s2_sep")
    x = layers.MaxPooling2D(name="s2_pool")(x)
    for stage, widen in ((3, stage4), (4, out)):
        width = x.shape[-1]
        for i in range(1, 4):
            y = _conv_bn(x, width, separable=True, name=f"s{stage}_sep{i}")
            x = layers.Add(name=f"s{stage}_add{i}")([x, y])
        x = _conv_bn(x, widen, separable=True, name=f"s{stage}_widen")
        if stage == 3:
            x = layers.MaxPooling2D(name=f"s{stage}_pool")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(0.5, name="head_drop")(x)
    x = layers.Dense(256, activation="relu", name="head_fc")(x)
    x = layers.Dropout(0.3, name="head_drop2")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="predictions", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=name)


def count_macs(model: "keras.Model") -> int:
    """Multiply-accumulates of one forward pass (batch 1) over the layers that do real work."""
    total = 0
    for layer in _flat_layers(model):
        if isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D, layers.SeparableConv2D, layers.Dense)):
            out = layer.output_shape
            if isinstance(out, list):
                out = out[0]
            spatial = 1
            for d in out[1:-1]:
                spatial *= d
            if isinstance(layer, layers.SeparableConv2D):
                kh, kw = layer.kernel_size
                cin = layer.input_shape[-1]
                total += spatial * (kh * kw * cin * layer.depth_multiplier + cin * layer.depth_multiplier * out[-1])
            elif isinstance(layer, layers.DepthwiseConv2D):
                kh, kw = layer.kernel_size
                total += spatial * kh * kw * out[-1]
            elif isinstance(layer, layers.Conv2D):
                kh, kw = layer.kernel_size
                cin = layer.input_shape[-1] // layer.groups
                total += spatial * kh * kw * cin * out[-1]
            else:
                total += spatial * layer.input_shape[-1] * out[-1]
    return int(total)


def _flat_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _flat_layers(layer)
        else:
            yield layer
