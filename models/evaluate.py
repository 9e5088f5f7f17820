"""`feredge eval`: load a Keras model or an exported artifact and score it on labelled faces.

The scoring itself is `evaluation.scoring` (no TensorFlow), so an artifact on a device is scored
by the same code as its Keras source.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from feredge.edge import formats
from feredge.evaluation.scoring import evaluate_model, write_evaluation


def evaluate_path(model_path: str | Path, data: str | Path, split: str | None = None, *,
                  out_dir: str | Path | None = None, skip_bad: bool = False,
                  flip_average: bool | None = None, perturb=(), labels=None, preprocess: dict | None = None,
                  limit: int | None = None) -> dict:
    """Load a trained model (run directory or file) and evaluate it on a labelled set. An exported
    artifact (.tflite, .onnx, OpenVINO .xml inside a bundle) runs through its edge backend instead,
    with the bundle's preprocessing and labels, so a quantized model is scored the same way.

    flip_average: None runs the model as its spec says; True/False overrides that, to measure both.
    perturb: evaluation.perturb conditions to score the model under as well. labels and
    preprocess (edge.preprocess_flags fields) describe a model that has no labels.json or
    preprocess.json beside it; an artifact's bundle already records both. limit: score that many
    faces spread evenly over the set (a fixed subset).
    """
    from feredge.evaluation.datasets import load_dataset

    if formats.of_path(model_path) is not None:  # an exported artifact, run by its edge backend
        if labels is not None or preprocess:
            raise ValueError(f"{model_path}: an exported artifact takes its labels and preprocessing from its "
                             f"bundle's manifest; --labels and the preprocessing flags are for Keras models")
        model, spec, labels, name = _load_artifact(Path(model_path))
    else:
        model, spec, labels, name = _load_keras(model_path, labels, preprocess)
    if flip_average is not None:
        spec = spec.replace(flip_average=flip_average)
    dataset = load_dataset(data, split=split, skip_bad=skip_bad, color=spec.channels == 3)
    if limit is not None and limit < len(dataset):  # evenly spread, so every class folder contributes
        dataset = dataset.subset(np.unique(np.linspace(0, len(dataset) - 1, limit).round().astype(int)))
    report = evaluate_model(model, dataset, spec, labels, perturb=perturb)
    report["model"] = str(name)
    report["data"] = str(data) + (f" [{split}]" if split else "")
    report["flip_average"] = spec.flip_average
    if out_dir:
        title = f"{Path(name).name}{' (flip-averaged)' if spec.flip_average else ''} on {report['data']}"
        write_evaluation(report, out_dir, title=title)
    return report


def _load_keras(model_path, labels=None, preprocess: dict | None = None):
    """(model, spec, labels, file) for a run directory or a Keras model file."""
    from feredge.edge import preprocess_flags
    from feredge.models.model_io import UnsafeModelError, load_keras_model
    from feredge.models.run_dir import locate_model, resolve_labels

    files = locate_model(model_path)
    if files.spec is None:  # refuse before loading TensorFlow and the model
        preprocess_flags.check_given(preprocess or {}, str(files.model))
    try:
        model = load_keras_model(files.model)
    except UnsafeModelError:
        raise
    except Exception as exc:  # Keras raises many types for a damaged file
        raise ValueError(f"{files.model}: cannot load the model ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    labels = resolve_labels(labels, files)
    if labels is None:
        raise ValueError(f"{files.model}: no labels.json beside the model, so the class order is unknown; pass "
                         f"--labels labels.json or --labels a,b,c")
    if len(labels) != model.output_shape[-1]:
        raise ValueError(f"{files.model}: the model has {model.output_shape[-1]} outputs but the labels name "
                         f"{len(labels)} classes ({', '.join(labels)})")
    spec, _ = preprocess_flags.resolve(files.spec, preprocess or {}, tuple(model.input_shape[1:]), str(files.model))
    return model, spec, labels, files.model


def _load_artifact(path: Path):
    """(model, spec, labels, file) for an artifact listed in the manifest of its bundle (the
    artifact's folder, or the one above for openvino/), checked against the manifest's sha256."""
    from feredge.edge.backends import open_artifact
    from feredge.edge.bundle import MANIFEST, Bundle

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such artifact file")
    root = next((d for d in (path.parent, path.parent.parent) if (d / MANIFEST).is_file()), None)
    if root is None:
        raise ValueError(f"{path}: not inside an export bundle (no {MANIFEST} beside it or above it); "
                         "the preprocessing and labels are unknown")
    bundle = Bundle.load(root)
    artifact = next((a for a in bundle.artifacts if (root / a.files[0]).resolve() == path.resolve()), None)
    if artifact is None:
        raise ValueError(f"{path}: not listed in {root / MANIFEST}")
    bundle.check(artifact)
    # the raw backend: evaluation.predict flip-averages by the spec itself
    return open_artifact(path), bundle.spec, bundle.labels, path


