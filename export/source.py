"""The model to export: a tf-keras model with its preprocessing spec, labels and fingerprint.

Accepts our run directories and users' models alike (`.keras`, `.h5`, SavedModel directory)
as long as they take one 4-D NHWC image and return one (N, classes) row per image. Anything
the converters or the pruning code cannot be trusted with is refused up front with a line
naming the layer or property, instead of failing minutes later inside a converter.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path

import numpy as np

from feredge.edge.bundle import sha256_file
from feredge.edge.preprocess import PreprocessSpec
from feredge.models.run_dir import locate_model, resolve_labels

log = logging.getLogger("feredge.export")

# Layers every converter here (TFLite, tf2onnx, OpenVINO) handles, by tf-keras class name.
SUPPORTED_LAYERS = frozenset({
    "InputLayer", "Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Dense", "BatchNormalization",
    "ReLU", "LeakyReLU", "PReLU", "ELU", "Activation", "Softmax", "MaxPooling2D", "AveragePooling2D",
    "GlobalAveragePooling2D", "GlobalMaxPooling2D", "Flatten", "Dropout", "SpatialDropout2D",
    "GaussianNoise", "GaussianDropout", "ActivityRegularization", "Add", "Subtract", "Multiply",
    "Average", "Maximum", "Minimum", "Concatenate", "ZeroPadding2D", "Cropping2D", "UpSampling2D",
    "Reshape", "Rescaling", "Sequential", "Functional",
})
ACTIVATIONS = frozenset({"linear", "relu", "relu6", "sigmoid", "hard_sigmoid", "tanh", "softmax", "elu",
                         "selu", "swish", "silu", "softplus", "softsign", "gelu", "exponential"})


@dataclasses.dataclass
class Source:
    model: object  # tf-keras Model, probabilities out
    path: Path  # the model file or SavedModel directory
    name: str
    spec: PreprocessSpec
    labels: tuple[str, ...]
    sha256: str
    output: str  # "probabilities" | "softmax added"
    spec_from: str  # where the spec came from (file or "model input")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.model.input_shape[1:])


def fingerprint(path: Path) -> str:
    """sha256 of a model file, or of a SavedModel directory's files (names and contents)."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + b"\0" + sha256_file(file).encode())
    return digest.hexdigest()


def load_source(model_path, *, labels=None, add_softmax: bool = False, preprocess: dict | None = None) -> Source:
    """preprocess: spec fields from edge.preprocess_flags (required when the model has no preprocess.json)."""
    from feredge.edge import preprocess_flags

    files = locate_model(model_path)
    flags = dict(preprocess or {})
    if files.spec is None:  # refuse before minutes of loading; the size is checked once the model is loaded
        preprocess_flags.check_given(flags, str(files.model))
    from feredge.models.tf_env import keras

    model = _load_keras(files.model, keras)
    check_model(model)
    shape = tuple(int(d) for d in model.input_shape[1:])
    if files.spec is not None:
        spec_file = str((Path(files.model).parent / "preprocess.json").resolve())
        if files.spec.input_shape != shape:
            raise ValueError(f"{spec_file}: the spec is for {files.spec.height}x{files.spec.width}x"
                             f"{files.spec.channels} input but the model takes {shape[0]}x{shape[1]}x{shape[2]}")
        spec, how = preprocess_flags.resolve(files.spec, flags, shape, str(files.model))
        spec_from = spec_file + (" with flags" if how.endswith("flags") else "")
    else:
        spec, spec_from = preprocess_flags.resolve(None, flags, shape, str(files.model))
    names = resolve_labels(labels, files)
    classes = int(model.output_shape[-1])
    if names is None:
        raise ValueError(f"{files.model}: no labels.json beside the model, so the class order is unknown; "
                         f"pass --labels labels.json or --labels a,b,c ({classes} names)")
    if len(names) != classes:
        raise ValueError(f"{files.model}: the model has {classes} outputs but the labels name {len(names)} "
                         f"classes ({', '.join(names)})")
    model, output = _probabilities(model, files.model, spec, add_softmax, keras)
    return Source(model, Path(files.model), model.name, spec, names, fingerprint(Path(files.model)), output, spec_from)


def _load_keras(path: Path, keras):
    from feredge.models.model_io import check_safe, trusted

    check_safe(path)  # before loading: an .h5 Lambda runs while the model is built
    try:
        model = keras.models.load_model(path, compile=False, safe_mode=not trusted())
    except Exception as exc:  # Keras raises many types for damaged or foreign files
        version = _keras3_version(path)
        if version:
            raise ValueError(f"{path}: saved by Keras {version}; export needs a tf-keras (Keras 2) model: build it "
                             f"with tf_keras, load the weights (load_weights) and save it again") from None
        unsupported = _unsupported_in_config(path, keras)
        if unsupported:
            name, kind = unsupported[0]
            raise ValueError(f"{path}: layer {name!r} ({kind}) is not supported by export (Lambda and custom "
                             f"layers are not; use built-in layers)") from None
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:240]
        raise ValueError(f"{path}: cannot load the model ({type(exc).__name__}: {first})") from None
    if not isinstance(model, keras.Model):
        raise ValueError(f"{path}: a SavedModel but not a Keras model (export needs a tf-keras model)")
    return model


def _keras3_version(path: Path) -> str | None:
    """The Keras version a .keras archive was written by, if it was Keras 3 (tf-keras cannot read those)."""
    import json
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                version = str(json.loads(archive.read("metadata.json")).get("keras_version", ""))
                return version if version.startswith("3.") else None
    except Exception:
        return None
    return None


def _unsupported_in_config(path: Path, keras) -> list[tuple[str, str]]:
    """(layer name, class) of every layer in the saved architecture export cannot handle."""
    found = []

    def walk(entry):
        if not isinstance(entry, dict):
            return
        kind, config = entry.get("class_name"), entry.get("config")
        if isinstance(config, dict) and isinstance(config.get("layers"), list):
            for layer in config["layers"]:
                walk(layer)
            return
        if isinstance(kind, str) and isinstance(config, dict) and "name" in config:
            if kind not in SUPPORTED_LAYERS:
                found.append((config["name"], kind))

    from feredge.models.model_io import saved_config

    config = saved_config(Path(path))
    if config:
        walk(config)
    return found


def check_model(model) -> None:
    """Refuse, naming the layer or property, what the converters cannot be trusted with."""
    where = f"model {model.name!r}"
    if len(model.inputs) != 1:
        raise ValueError(f"{where} has {len(model.inputs)} inputs; export needs one image input")
    if len(model.outputs) != 1:
        raise ValueError(f"{where} has {len(model.outputs)} outputs; export needs one (N, classes) output")
    shape = tuple(model.input_shape)
    if len(shape) != 4:
        raise ValueError(f"{where}: input shape {shape} is not a 4-D (N, height, width, channels) image")
    if any(d is None for d in shape[1:]):
        raise ValueError(f"{where}: input shape {shape} has an unknown height, width or channels; "
                         f"export needs a fixed input size")
    if shape[3] not in (1, 3):
        raise ValueError(f"{where}: input has {shape[3]} channels (shape {shape}); faces are 1 (gray) or 3 (RGB) "
                         f"channels in NHWC layout")
    out = tuple(model.output_shape)
    if len(out) != 2 or out[1] is None or out[1] < 2:
        raise ValueError(f"{where}: output shape {out} is not (N, classes) with at least 2 classes")
    for layer in _all_layers(model):
        kind = type(layer).__name__
        if kind not in SUPPORTED_LAYERS:
            raise ValueError(f"{where}: layer {layer.name!r} ({kind}) is not supported by export "
                             f"(supported: built-in image layers such as Conv2D, SeparableConv2D, "
                             f"BatchNormalization, Add, Dense; Lambda and custom layers are not)")
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            raise ValueError(f"{where}: layer {layer.name!r} ({kind}) uses data_format={layer.data_format}; "
                             f"export needs channels_last (NHWC)")
        activation = getattr(layer, "activation", None)
        if activation is not None:
            act_name = getattr(activation, "__name__", type(activation).__name__)
            if act_name not in ACTIVATIONS:
                raise ValueError(f"{where}: layer {layer.name!r} ({kind}) uses activation {act_name!r}, "
                                 f"which export does not support")


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers") and type(layer).__name__ in ("Sequential", "Functional"):
            yield from _all_layers(layer)


def ends_in_softmax(model) -> bool:
    layer = model.layers[-1]
    while type(layer).__name__ in ("Sequential", "Functional"):
        layer = layer.layers[-1]
    if type(layer).__name__ == "Softmax":
        return True
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", "") == "softmax"


def outputs_look_like_probabilities(model, spec: PreprocessSpec) -> bool:
    """Rows non-negative and summing to 1 on a few inputs spanning the spec's value range."""
    from feredge.edge.preprocess import normalize

    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (8, spec.height, spec.width, spec.channels), dtype=np.uint8)
    raw[0], raw[1] = 0, 255
    probs = np.asarray(model(normalize(raw, spec), training=False))
    return bool(np.all(probs >= -1e-6) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-3))


def _probabilities(model, path, spec, add_softmax: bool, keras):
    if ends_in_softmax(model) or outputs_look_like_probabilities(model, spec):
        if add_softmax:
            log.warning("%s: the model already outputs probabilities; --add-softmax ignored", path)
        return model, "probabilities"
    if not add_softmax:
        raise ValueError(f"{path}: the model outputs logits (rows do not sum to 1 and the last layer has no "
                         f"softmax); pass --add-softmax to append one")
    log.info("%s: appending a softmax to the logits output", path)
    outputs = keras.layers.Softmax(name="added_softmax")(model.outputs[0])
    return keras.Model(model.inputs, outputs, name=model.name), "softmax added"
