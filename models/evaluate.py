"""`feredge eval`: accuracy, per-class precision/recall/F1 and the confusion matrix of a Keras model.

The metric code is `benchmarks.metrics` (numpy only), so a device reports the same numbers.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from feredge.benchmarks.metrics import classification_report, format_confusion, format_report
from feredge.edge.fileio import write_text_atomic
from feredge.edge.preprocess import PreprocessSpec, preprocess
from feredge.edge.tta import flip_averaged
from feredge.models.datasets import LabelledImages

log = logging.getLogger("feredge.eval")


def predict_probs(model, images: np.ndarray, spec: PreprocessSpec, batch_size: int = 256) -> np.ndarray:
    """Class probabilities for uint8 face crops, preprocessed in chunks to bound memory; flip-averaged
    when the spec says so, as on the device."""
    out = []
    for start in range(0, len(images), batch_size):
        x = preprocess(images[start:start + batch_size], spec)
        out.append(flip_averaged(model.predict_on_batch, x) if spec.flip_average else model.predict_on_batch(x))
    return np.concatenate(out) if out else np.zeros((0, model.output_shape[-1]), np.float32)


def labels_in_model_order(data: LabelledImages, model_labels: tuple[str, ...]) -> np.ndarray:
    """The dataset's labels re-indexed by name into the model's output order."""
    position = {name: i for i, name in enumerate(model_labels)}
    missing = sorted({data.classes[i] for i in np.unique(data.labels)} - set(position))
    if missing:
        raise ValueError(f"the data has class(es) {', '.join(missing)} that the model does not predict "
                         f"(model labels: {', '.join(model_labels)})")
    lookup = np.array([position.get(name, -1) for name in data.classes])
    return lookup[data.labels]


def evaluate_model(model, data: LabelledImages, spec: PreprocessSpec, model_labels, perturb=()) -> dict:
    """The classification report; with perturb (benchmarks.perturb.Condition list) also a
    "robustness" list: accuracy, macro-F1 and agreement with the clean labels under each condition."""
    y_true = labels_in_model_order(data, tuple(model_labels))
    clean = predict_probs(model, data.images, spec).argmax(axis=1)
    report = classification_report(y_true, clean, list(model_labels))
    if perturb:
        report["robustness"] = []
        for i, condition in enumerate(perturb, 1):
            log.info("perturbation %d/%d: %s", i, len(perturb), condition.name)
            pred = predict_probs(model, condition.apply(data.images), spec).argmax(axis=1)
            scores = classification_report(y_true, pred, list(model_labels))
            report["robustness"].append({
                "condition": condition.name, "accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"],
                "accuracy_drop": report["accuracy"] - scores["accuracy"],
                "agreement": float(np.mean(pred == clean)) if len(clean) else 1.0})
    return report


def format_robustness(report: dict) -> str:
    """The robustness rows as a table (percentages)."""
    lines = [f"{'condition':<12} {'accuracy':>9} {'drop':>7} {'macro-F1':>9} {'agreement':>10}",
             f"{'clean':<12} {100 * report['accuracy']:8.2f}% {'':>7} {report['macro_f1']:9.4f} {'100.00%':>10}"]
    for row in report.get("robustness", []):
        lines.append(f"{row['condition']:<12} {100 * row['accuracy']:8.2f}% {100 * row['accuracy_drop']:+6.2f} "
                     f"{row['macro_f1']:9.4f} {100 * row['agreement']:9.2f}%")
    return "\n".join(lines)


def write_evaluation(report: dict, out_dir: str | Path, title: str) -> None:
    """metrics.json, report.txt and confusion.png into out_dir; robustness.png too when a kind of
    perturbation was measured at two or more values."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "metrics.json", json.dumps(report, indent=2) + "\n")
    text = f"{title}\n\n{format_report(report)}\n\nconfusion matrix (rows: true, columns: predicted)\n" \
           f"{format_confusion(report['confusion_matrix'], report['labels'])}\n"
    if report.get("robustness"):
        text += f"\nunder camera-path perturbations (agreement: same label as on the clean crop)\n" \
                f"{format_robustness(report)}\n"
    write_text_atomic(out_dir / "report.txt", text)
    try:
        from feredge.benchmarks.plots import plot_confusion, plot_robustness
        plot_confusion(np.array(report["confusion_matrix"]), report["labels"], out_dir / "confusion.png", title=title)
        if report.get("robustness"):
            plot_robustness(report["accuracy"], report["robustness"], out_dir / "robustness.png", title=title)
    except ImportError:
        log.warning("matplotlib is not installed: no confusion.png")


def evaluate_path(model_path: str | Path, data: str | Path, split: str | None = None, *,
                  out_dir: str | Path | None = None, skip_bad: bool = False,
                  flip_average: bool | None = None, perturb=(), labels=None, preprocess: dict | None = None,
                  limit: int | None = None) -> dict:
    """Load a trained model (run directory or file) and evaluate it on a labelled set. An exported
    artifact (.tflite, .onnx, OpenVINO .xml inside a bundle) runs through its edge backend instead,
    with the bundle's preprocessing and labels, so a quantized model is scored the same way.

    flip_average: None runs the model as its spec says; True/False overrides that, to measure both.
    perturb: benchmarks.perturb conditions to score the model under as well. labels and
    preprocess (edge.preprocess_flags fields) describe a model that has no labels.json or
    preprocess.json beside it; an artifact's bundle already records both. limit: score that many
    faces spread evenly over the set (a fixed subset).
    """
    from feredge.models.datasets import load_dataset

    if Path(model_path).suffix.lower() in ARTIFACT_SUFFIXES:
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


ARTIFACT_SUFFIXES = (".tflite", ".onnx", ".xml")


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


class _ArtifactModel:
    """An edge backend behind the two Keras members that evaluation uses."""

    def __init__(self, backend):
        self.backend = backend
        self.output_shape = (None, backend.num_classes)
        self.input_shape = (None, *backend.input_shape)

    def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
        return self.backend.predict(x)


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
    # the raw backend: predict_probs flip-averages by the spec itself
    return _ArtifactModel(open_artifact(path)), bundle.spec, bundle.labels, path


