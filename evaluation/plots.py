"""PNG figures for benchmark reports.

matplotlib is imported lazily (the edge runtime never needs it) and only the Agg backend is
used: figures are built as `matplotlib.figure.Figure` objects without pyplot, so nothing needs a
display and the caller's global backend (e.g. a notebook's) is left untouched. Every PNG is
rendered to memory and written atomically, so a crash never leaves a truncated image.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from feredge.evaluation.metrics import _cm_and_labels, _safe_div
from feredge.edge.fileio import write_bytes_atomic

_DPI = 110


def _new_figure(figsize, **kwargs):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=_DPI, layout="constrained", **kwargs)
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig, path: str | Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    write_bytes_atomic(path, buf.getvalue())


def plot_confusion(cm, labels: Sequence[str] | None, path: str | Path, *, normalize: bool = True,
                   title: str | None = None) -> None:
    """Heatmap of a confusion matrix (rows true, cols predicted) with every cell annotated.

    With normalize=True colours are row-normalised (per-class recall, so rare classes are as
    visible as common ones) and cells show "percent\\n(count)"; otherwise colours and text are
    raw counts. `cm` may also be a classification_report dict.
    """
    cm, labels = _cm_and_labels(cm, labels)
    cm = cm.astype(np.int64)
    n = len(labels)
    frac = _safe_div(cm, cm.sum(axis=1, keepdims=True))
    values, vmax = (frac, 1.0) if normalize else (cm, max(int(cm.max(initial=0)), 1))
    side = max(4.0, 0.75 * n + 2.5)
    fontsize = max(6.0, min(11.0, 60.0 / max(n, 1)))

    fig = _new_figure((side + 1.0, side))
    ax = fig.add_subplot()
    im = ax.imshow(values, cmap="Blues", vmin=0, vmax=vmax, interpolation="nearest")
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if normalize:
        cbar.ax.yaxis.set_major_formatter(lambda v, _pos: f"{100 * v:.0f}%")
    for i in range(n):
        for j in range(n):
            text = f"{100 * frac[i, j]:.1f}%\n({cm[i, j]})" if normalize else f"{cm[i, j]}"
            dark = values[i, j] > 0.55 * vmax
            ax.text(j, i, text, ha="center", va="center", fontsize=fontsize,
                    color="white" if dark else "black")
    ax.set_xticks(range(n), labels, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title(title or ("Confusion matrix (row-normalised)" if normalize else "Confusion matrix"))
    _save_png(fig, path)


def _series(history: Mapping[str, Sequence[float]], *keys: str) -> list[tuple[str, np.ndarray]]:
    out = []
    for k in keys:
        if k in history and len(history[k]):
            out.append((k, np.asarray(history[k], dtype=np.float64).ravel()))
    return out


def plot_history(history: Mapping[str, Sequence[float]], path: str | Path, *,
                 title: str | None = None) -> None:
    """Training curves from a Keras History.history dict: loss, accuracy and (if logged) LR.

    Epochs are numbered from 1 as Keras prints them. Panels whose keys are missing are dropped;
    the best val_loss / val_accuracy epoch is marked so early-stopping choices are visible.
    """
    panels = [
        ("loss", _series(history, "loss", "val_loss")),
        ("accuracy", _series(history, "accuracy", "val_accuracy", "acc", "val_acc")),
        ("learning rate", _series(history, "lr", "learning_rate")[:1]),
    ]
    panels = [(name, s) for name, s in panels if s]
    if not any(name != "learning rate" for name, _ in panels):
        raise ValueError(f"history has no loss/accuracy series; keys: {sorted(history)}")

    ratios = [1.0 if name == "learning rate" else 3.0 for name, _ in panels]
    fig = _new_figure((8.0, 1.2 + 1.1 * sum(ratios)))
    axes = fig.subplots(len(panels), 1, sharex=True, gridspec_kw={"height_ratios": ratios})
    axes = np.atleast_1d(axes)
    for ax, (name, series) in zip(axes, panels):
        for key, y in series:
            x = np.arange(1, len(y) + 1)
            ax.plot(x, y, marker="o" if len(y) <= 30 else None, markersize=3,
                    linestyle="--" if key.startswith("val_") else "-", label=key)
            if key.startswith("val_") and np.isfinite(y).any():
                best = int(np.nanargmin(y) if name == "loss" else np.nanargmax(y))
                ax.plot(best + 1, y[best], "k*", markersize=9, label=f"best {key} (epoch {best + 1})")
        if name == "learning rate":
            lr = series[0][1]
            pos = lr[np.isfinite(lr)]
            if pos.size and pos.min() > 0 and pos.max() / pos.min() > 10:
                ax.set_yscale("log")
        else:
            ax.legend(fontsize=8, loc="best")
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
    axes[-1].set_xlabel("epoch")
    axes[-1].xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title or "Training history")
    _save_png(fig, path)


def plot_robustness(clean_accuracy: float, rows: Sequence[Mapping], path: str | Path, *,
                    title: str | None = None) -> bool:
    """Accuracy and label agreement against the perturbation's value, one panel per kind that was
    measured at two or more values (rows: `feredge eval --perturb` robustness rows). Returns False,
    writing nothing, when no kind has two values to draw a line through."""
    from feredge.evaluation.perturb import KINDS, NEUTRAL

    by_kind: dict[str, list[tuple[float, float, float]]] = {}
    for row in rows:
        kind, _, value = row["condition"].partition(":")
        by_kind.setdefault(kind, []).append((float(value), row["accuracy"], row["agreement"]))
    kinds = [k for k, points in by_kind.items() if len(points) >= 2]
    if not kinds:
        return False
    fig = _new_figure((4.2 * len(kinds), 3.4))
    for i, kind in enumerate(kinds):
        ax = fig.add_subplot(1, len(kinds), i + 1)
        points = by_kind[kind]
        if kind in NEUTRAL and all(v != NEUTRAL[kind] for v, _, _ in points):
            points = points + [(NEUTRAL[kind], clean_accuracy, 1.0)]  # the clean crop
        values, acc, agree = (np.array(v) for v in zip(*sorted(points)))
        ax.plot(values, 100 * acc, "o-", label="accuracy")
        ax.plot(values, 100 * agree, "s--", label="same label as clean")
        ax.axhline(100 * clean_accuracy, color="grey", lw=0.8, ls=":", label="clean accuracy")
        ax.set_xlabel(f"{kind}: {KINDS[kind][0]}" if kind in KINDS else kind)
        ax.set_ylabel("%")
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    _save_png(fig, path)
    return True
