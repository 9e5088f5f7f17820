"""Load Keras model files without running code they carry, unless the user says to trust them.

A model file is a program as much as data: an `.h5` Lambda layer is marshalled Python bytecode
that runs while the model is built, a TFOpLambda layer calls whatever TensorFlow function it
names (`io.write_file` included), and a SavedModel is a graph that may hold any operation. So
every Keras load in the kit goes through `load_keras_model`, which reads the architecture first,
without building it, and refuses such parts with one line unless `--trust-model-code` was given
(then it warns). Plain layers, the kit's own models among them, load as before.
"""
from __future__ import annotations

import json
import logging
import os
import zipfile
from pathlib import Path

log = logging.getLogger("feredge")

TRUST_ENV = "FEREDGE_TRUST_MODEL_CODE"  # set by --trust-model-code; inherited by worker processes
TRUST_FLAG = "--trust-model-code"
CODE_LAYERS = {
    "Lambda": "runs Python code stored in the file",
    "TFOpLambda": "calls a TensorFlow function named in the file",
    "SlicingOpLambda": "calls a TensorFlow function named in the file",
}
# TFOpLambda functions that only compute (what `x * 2` or `tf.nn.relu(x)` in a functional model saves as)
SAFE_OP_PREFIXES = ("math.", "nn.", "__operators__.", "image.resize")
SAFE_OPS = frozenset({"reshape", "concat", "stack", "transpose", "expand_dims", "squeeze", "cast", "clip_by_value",
                      "identity", "split", "pad", "reduce_mean", "reduce_sum", "reduce_max", "compat.v1.transpose"})


class UnsafeModelError(ValueError):
    """The model file would run code on load or on inference; one line naming the file and the part."""


def add_trust_argument(p) -> None:
    p.add_argument(TRUST_FLAG, action="store_true",
                   help="load model files whose Lambda layers, TensorFlow-op layers or SavedModel graphs run "
                        "code (refused by default: a model file from elsewhere can do anything its code does)")


def trusted() -> bool:
    return os.environ.get(TRUST_ENV) == "1"


def saved_config(path: Path) -> dict | None:
    """The architecture stored in a .keras or .h5 file, read without building the model."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return json.loads(archive.read("config.json"))
        if path.suffix.lower() in (".h5", ".hdf5"):
            import h5py

            with h5py.File(path, "r") as fh:
                text = fh.attrs.get("model_config")
                return json.loads(text.decode() if isinstance(text, bytes) else text) if text else None
    except Exception:  # a damaged file: loading it reports the error itself
        return None
    return None


def code_in_model(path) -> list[str]:
    """What in the model file would run code: 'layer 'x' (Lambda): runs Python code stored in the file'."""
    path = Path(path)
    if path.is_dir():
        return ["a SavedModel: a TensorFlow graph, which may hold any operation"]
    found: list[str] = []

    def walk(entry):
        if isinstance(entry, list):
            for item in entry:
                walk(item)
            return
        if not isinstance(entry, dict):
            return
        kind, config = entry.get("class_name"), entry.get("config")
        if isinstance(kind, str) and isinstance(config, dict) and kind in CODE_LAYERS:
            function = str(config.get("function", ""))
            if kind == "Lambda" or not (function.startswith(SAFE_OP_PREFIXES) or function in SAFE_OPS):
                name = config.get("name", "?")
                what = CODE_LAYERS[kind] + (f" ({function})" if kind != "Lambda" and function else "")
                found.append(f"layer {name!r} ({kind}) {what}")
        for value in entry.values():
            walk(value)

    walk(saved_config(path))
    return found


def check_safe(path, trust: bool | None = None) -> None:
    """Raise UnsafeModelError (one line) if the file would run code and the user did not trust it."""
    trust = trusted() if trust is None else trust
    found = code_in_model(path)
    if not found:
        return
    if not trust:
        more = f" and {len(found) - 1} more" if len(found) > 1 else ""
        raise UnsafeModelError(f"{path}: {found[0]}{more}; feredge does not run code from model files unless told "
                               f"to: pass {TRUST_FLAG} if you trust this file")
    log.warning("%s: %s%s: running it because of %s", path, found[0],
                f" (and {len(found) - 1} more)" if len(found) > 1 else "", TRUST_FLAG)


def load_keras_model(path, *, compile: bool = False, trust: bool | None = None):
    """keras.models.load_model, after check_safe; Keras's own safe mode stays on unless trusted."""
    from feredge.models.tf_env import keras

    trust = trusted() if trust is None else trust
    check_safe(path, trust)
    return keras.models.load_model(path, compile=compile, safe_mode=not trust)
