"""Where a trained model lives: the model file with its preprocessing spec and labels beside it.

A run directory (what `feredge train` writes) holds `model.keras`, `preprocess.json`,
`labels.json`, the history and the evaluation. Anything that reads a trained model goes
through `locate_model`, so a run directory and a bare model file are accepted alike.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from feredge.edge.fileio import write_text_atomic
from feredge.edge.preprocess import PreprocessSpec
from feredge.models import git_models

MODEL_FILE = "model.keras"
SPEC_FILE = "preprocess.json"
LABELS_FILE = "labels.json"
MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")


@dataclasses.dataclass(frozen=True)
class ModelFiles:
    model: Path  # .keras / .h5 file or a SavedModel directory
    spec: PreprocessSpec | None
    labels: tuple[str, ...] | None


def locate_model(path: str | Path) -> ModelFiles:
    """The model file and, when present beside it, its preprocessing spec and labels.

    `path` may also name a committed model, `git:REV[:PATH]` (models/git_models.py)."""
    path = git_models.resolve(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such model file or run directory")
    if path.is_dir():
        if (path / "saved_model.pb").exists():
            model, folder = path, path.parent
        elif (path / MODEL_FILE).exists():
            model, folder = path / MODEL_FILE, path
        else:
            raise FileNotFoundError(f"{path}: directory holds neither {MODEL_FILE} nor a SavedModel")
    else:
        if path.suffix.lower() not in MODEL_SUFFIXES:
            raise ValueError(f"{path}: not a Keras model file (expected {', '.join(MODEL_SUFFIXES)})")
        model, folder = path, path.parent
    spec = PreprocessSpec.load(folder / SPEC_FILE) if (folder / SPEC_FILE).exists() else None
    labels = load_labels(folder / LABELS_FILE) if (folder / LABELS_FILE).exists() else None
    return ModelFiles(model, spec, labels)


def load_labels(path: str | Path) -> tuple[str, ...]:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if isinstance(data, dict):
        data = data.get("labels")
    if not isinstance(data, list) or not data or not all(isinstance(x, str) and x for x in data):
        raise ValueError(f"{path}: expected a JSON list of class names")
    if len(set(data)) != len(data):
        raise ValueError(f"{path}: class names repeat")
    return tuple(data)


def save_labels(path: str | Path, labels) -> None:
    write_text_atomic(path, json.dumps(list(labels), indent=2) + "\n")


def run_record(run: str | Path) -> dict:
    """A run's config, history and final training state (empty dicts where a file is missing).

    A shipped model folder (models/pretrained) keeps the same files, its state.json beside them.
    """
    run = git_models.resolve(run)

    def read(*names):
        for name in names:
            file = run / name
            if file.is_file():
                return json.loads(file.read_text())
        return {}
    return {"config": read("config.json"), "history": read("history.json"),
            "state": read("checkpoint/state.json", "state.json")}


def base_run(config: dict) -> dict | None:
    """The run a fine-tuned run started from (--init-from RUN, or a model file inside it): its record and
    training hours."""
    try:  # a record outlives its starting run: a folder since deleted, a commit of another clone
        start = git_models.resolve(config["init_from"]) if config.get("init_from") else None
    except (OSError, ValueError, RuntimeError):
        return None
    if start is not None and start.is_file():  # RUN/model.keras, or RUN/checkpoint/last.keras (its last epoch)
        start = next((d for d in start.parents[:2] if (d / "config.json").is_file()), None)
    if start is None or not (start / "config.json").is_file():
        return None
    record = run_record(start)
    seconds = record["history"].get("seconds", [])
    return {**record, "hours": sum(seconds) / 3600 if seconds else None, "epochs": len(seconds)}


def resolve_labels(labels, model_files) -> tuple[str, ...] | None:
    """--labels as a labels.json path, a comma list or a sequence; else the run directory's."""
    if labels is None:
        return model_files.labels
    if isinstance(labels, (str, os.PathLike)):
        text = str(labels)
        if Path(text).is_file() or text.lower().endswith(".json"):
            if not Path(text).is_file():
                raise FileNotFoundError(f"{text}: no such labels file")
            return load_labels(text)
        names = tuple(x.strip() for x in text.split(",") if x.strip())
    else:
        names = tuple(str(x) for x in labels)
    if not names:
        raise ValueError("--labels names no classes")
    if len(set(names)) != len(names):
        raise ValueError(f"--labels repeats a class name: {', '.join(names)}")
    return names
