"""Classification metrics in plain numpy.

No sklearn or TensorFlow here on purpose: the same code runs on the workstation and on a
Raspberry Pi, so both report identical numbers for the same predictions.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np


def _as_labels(y: Any, name: str, num_classes: int) -> np.ndarray:
    """1-D int64 class indices in [0, num_classes), or ValueError naming the offending value."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D class indices, got shape {arr.shape} "
                         "(take argmax of one-hot/probability rows first)")
    if arr.dtype.kind == "f":
        bad = arr[~np.isfinite(arr) | (arr != np.round(arr))] if arr.size else arr
        if bad.size:
            raise ValueError(f"{name} contains non-integer label {bad[0]!r}")
    elif arr.dtype.kind not in "iu" and arr.size:
        raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    bad = arr[(arr < 0) | (arr >= num_classes)]
    if bad.size:
        raise ValueError(f"{name} contains label {int(bad[0])} outside [0, {num_classes})")
    return arr


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num/den with 0.0 where den == 0 (sklearn's zero_division=0), without numpy warnings."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den != 0)


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """int64 (C, C) counts; rows are the true class, columns the predicted class."""
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    c = int(num_classes)
    t = _as_labels(y_true, "y_true", c)
    p = _as_labels(y_pred, "y_pred", c)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.size} vs {p.size}")
    return np.bincount(t * c + p, minlength=c * c).reshape(c, c).astype(np.int64)


def classification_report(y_true, y_pred, labels: Sequence[str]) -> dict:
    """Per-class and averaged precision/recall/F1 as a JSON-ready dict of plain Python numbers.

    Zero-division convention (sklearn's zero_division=0): precision of a class that is never
    predicted is 0.0, recall of a class with no support is 0.0, and F1 is 0.0 when both are 0.
    Macro averages run over *all* labels, including absent ones, so a model that ignores a class
    is penalised. Weighted F1 weights by support; accuracy of an empty set is 0.0.
    """
    labels = [str(x) for x in labels]
    if len(set(labels)) != len(labels):
        raise ValueError(f"duplicate label names: {labels}")
    cm = confusion_matrix(y_true, y_pred, len(labels))
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    precision = _safe_div(tp, cm.sum(axis=0))
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    n = int(cm.sum())
    return {
        "num_samples": n,
        "accuracy": float(_safe_div(tp.sum(), n)),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "weighted_f1": float(_safe_div((f1 * support).sum(), n)),
        "labels": labels,
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]),
                   "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(labels)
        },
        "confusion_matrix": cm.tolist(),
    }


def format_report(report: Mapping) -> str:
    """Fixed-width per-class table plus accuracy / macro / weighted lines, for logs and READMEs."""
    labels = list(report["labels"])
    w = max([len("weighted avg")] + [len(x) for x in labels])
    n = report["num_samples"]
    head = f"{'class':<{w}}  {'precision':>9}  {'recall':>9}  {'f1-score':>9}  {'support':>8}"
    lines = [head, "-" * len(head)]
    for name in labels:
        r = report["per_class"][name]
        lines.append(f"{name:<{w}}  {r['precision']:>9.4f}  {r['recall']:>9.4f}  "
                     f"{r['f1']:>9.4f}  {r['support']:>8d}")
    lines.append("-" * len(head))
    blank = " " * 9
    lines.append(f"{'accuracy':<{w}}  {blank}  {blank}  {report['accuracy']:>9.4f}  {n:>8d}")
    lines.append(f"{'macro avg':<{w}}  {report['macro_precision']:>9.4f}  "
                 f"{report['macro_recall']:>9.4f}  {report['macro_f1']:>9.4f}  {n:>8d}")
    lines.append(f"{'weighted avg':<{w}}  {blank}  {blank}  {report['weighted_f1']:>9.4f}  {n:>8d}")
    return "\n".join(lines)


def _cm_and_labels(report_or_cm, labels: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
    """Accept a classification_report dict or a bare matrix; check it is square and matches labels."""
    if isinstance(report_or_cm, Mapping):
        cm = np.asarray(report_or_cm["confusion_matrix"])
        labels = report_or_cm["labels"] if labels is None else labels
    else:
        cm = np.asarray(report_or_cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {cm.shape}")
    if labels is None:
        labels = [str(i) for i in range(cm.shape[0])]
    labels = [str(x) for x in labels]
    if len(labels) != cm.shape[0]:
        raise ValueError(f"{len(labels)} labels for a {cm.shape[0]}x{cm.shape[0]} confusion matrix")
    return cm, labels


def format_confusion(report_or_cm, labels: Sequence[str] | None = None) -> str:
    """Fixed-width confusion table: rows are the true class, columns the predicted class.

    `labels` may be omitted when a classification_report dict is given (its labels are used).
    """
    cm, labels = _cm_and_labels(report_or_cm, labels)
    corner = "true \\ pred"
    rw = max([len(corner)] + [len(x) for x in labels])
    cw = max([len(x) for x in labels] + [len(str(int(v))) for v in cm.ravel()] + [1])
    lines = [f"{corner:<{rw}}" + "".join(f"  {x:>{cw}}" for x in labels)]
    for name, row in zip(labels, cm):
        lines.append(f"{name:<{rw}}" + "".join(f"  {int(v):>{cw}d}" for v in row))
    return "\n".join(lines)


def top1_agreement(probs_a, probs_b) -> float:
    """Fraction of rows whose argmax agrees, e.g. a quantized model versus its float source."""
    a, b = np.asarray(probs_a), np.asarray(probs_b)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"expected two (N, C) arrays of the same shape, got {a.shape} and {b.shape}")
    if a.shape[0] == 0:
        raise ValueError("top1_agreement of zero rows is undefined")
    return float(np.mean(a.argmax(axis=1) == b.argmax(axis=1)))
