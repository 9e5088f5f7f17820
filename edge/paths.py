"""Where the shipped models, their bundles and the sample faces live, wherever the kit is installed."""
from __future__ import annotations

from pathlib import Path

# edge/ and models/ are installed side by side (editable or not), so this holds in both cases.
MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
PRETRAINED_DIR = MODELS_DIR / "pretrained"
DEFAULT_BUNDLE = PRETRAINED_DIR / "bundle"
DEFAULT_TEMPORAL_BUNDLE = PRETRAINED_DIR / "seed004" / "bundle"  # seed004's head, for feredge run --temporal
SAMPLE_DIR = MODELS_DIR / "sample"
# the face detectors' model files that ship with the runtime (attribution in their README)
DETECTORS_DIR = Path(__file__).resolve().parent / "detectors"
YUNET_MODEL = DETECTORS_DIR / "face_detection_yunet_2023mar.onnx"
BLAZEFACE_MODEL = DETECTORS_DIR / "face_detection_short_range.tflite"

# The shipped per-frame family by name: the Keras run (eval, export) and its bundle (run, bench).
SHIPPED_RUNS = {"edge": PRETRAINED_DIR, "nano": PRETRAINED_DIR / "nano"}
DEFAULT_NAME = "edge"


def shipped_bundle(name: str) -> Path:
    return SHIPPED_RUNS[name] / "bundle"


def _resolve(value: str | Path | None, what: str, shipped) -> Path:
    """A shipped name (exactly `edge` or `nano`: a folder of that name is `./nano`), else a path. A
    bare word that is neither is an error that lists the names, not a guess."""
    name = DEFAULT_NAME if value is None else str(value)
    if (value is None or isinstance(value, str)) and name in SHIPPED_RUNS:
        target = shipped(name)
        if not target.exists():
            hint = f"; make it with 'feredge export --model {name}'" if what == "bundle" else ""
            raise FileNotFoundError(f"{target}: the shipped {name!r} {what} is missing from this install{hint}")
        return target
    path = Path(value)
    bare = len(path.parts) == 1 and not path.suffix and ":" not in name  # git:REV names a commit's model
    if bare and not path.exists():  # meant as a name: list the names
        raise FileNotFoundError(f"{value}: no such {what}, and not a shipped model's name "
                                f"({', '.join(SHIPPED_RUNS)})")
    return path  # a path that does not exist gets the reader's own error (no such bundle, artifact...)


def resolve_bundle(value: str | Path | None) -> Path:
    """`--bundle` of run and bench: a bundle directory or a shipped name (default: edge)."""
    return _resolve(value, "bundle", shipped_bundle)


def resolve_model(value: str | Path | None) -> Path:
    """`--model` of eval and export: a run, model file or artifact, or a shipped name (default: edge)."""
    return _resolve(value, "model", SHIPPED_RUNS.__getitem__)
