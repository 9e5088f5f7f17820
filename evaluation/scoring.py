"""Scoring a model on labelled faces: the classification report, robustness under perturbations,
and the files an evaluation writes (metrics.json, report.txt, confusion.png).

numpy, OpenCV and (for the plots) matplotlib only: training, export and the benchmarks score
through here, and so can a device.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from feredge.edge.fileio import write_text_atomic
from feredge.edge.preprocess import PreprocessSpec
from feredge.evaluation.datasets import LabelledImages
from feredge.evaluation.metrics import classification_report, format_confusion, format_report
from feredge.evaluation.predict import predict

log = logging.getLogger("feredge.eval")


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
    """The classification report; with perturb (evaluation.perturb.Condition list) also a
    "robustness" list: accuracy, macro-F1 and agreement with the clean labels under each condition."""
    y_true = labels_in_model_order(data, tuple(model_labels))
    clean = predict(model, data.images, spec).argmax(axis=1)
    report = classification_report(y_true, clean, list(model_labels))
    if perturb:
        report["robustness"] = []
        for i, condition in enumerate(perturb, 1):
            log.info("perturbation %d/%d: %s", i, len(perturb), condition.name)
            pred = predict(model, condition.apply(data.images), spec).argmax(axis=1)
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
        from feredge.evaluation.plots import plot_confusion, plot_robustness
        plot_confusion(np.array(report["confusion_matrix"]), report["labels"], out_dir / "confusion.png", title=title)
        if report.get("robustness"):
            plot_robustness(report["accuracy"], report["robustness"], out_dir / "robustness.png", title=title)
    except ImportError:
        log.warning("matplotlib is not installed: no confusion.png")
