"""Soft targets from trained teachers, for knowledge distillation into a small network.

Offline distillation: each teacher labels every training image once (un-augmented, averaged
with its mirror image, since expressions are left-right symmetric), and the student then learns
from a mix of the true one-hot label and the teachers' softened distribution. Per batch this
costs nothing; a teacher pass over FER-2013's train split takes seconds to a few minutes, where
an online teacher would add its forward pass to every step of every epoch. The targets are
stored in the run, so a resumed run learns from exactly the same ones.

The price is that an augmented crop (rotated, partly erased, noisy) keeps the soft label of the
clean face. With `views=K` the teachers instead label K fixed augmented copies of every image,
un-flipped, exactly as the student will see them ("consistent" teaching, Beyer et al. 2022), and
epoch e trains on copy e mod K: K teacher passes once, nothing per step.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from feredge.evaluation.predict import predict

log = logging.getLogger("feredge.distill")

TARGETS_FILE = "teacher_targets.npy"
TEACHERS_FILE = "teachers.json"  # who the teachers were, kept with the run: a teacher path may later change


def soften(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """Softmax at `temperature` of the logits behind `probabilities` (softmax outputs)."""
    logits = np.log(np.clip(probabilities.astype(np.float64), 1e-12, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    soft = np.exp(logits)
    return (soft / soft.sum(axis=1, keepdims=True)).astype(np.float32)


def load_teacher(teacher: str | Path, classes):
    """A teacher's Keras model, preprocessing spec and the column order that puts its classes in `classes` order."""
    from feredge.models.run_dir import locate_model
    from feredge.models.model_io import load_keras_model

    files = locate_model(teacher)
    if files.spec is None or files.labels is None:
        raise ValueError(f"{teacher}: a teacher needs its preprocess.json and labels.json beside the model")
    if set(files.labels) != set(classes):
        raise ValueError(f"{teacher}: teacher classes {list(files.labels)} differ from the data's {list(classes)}")
    model = load_keras_model(files.model)
    return model, files.spec, [files.labels.index(name) for name in classes]


def label_images(loaded, images: np.ndarray, *, flip: bool = True, batch_size: int = 256) -> np.ndarray:
    """Class probabilities of a `load_teacher` result for raw `images`, flip-averaged when `flip`."""
    model, spec, order = loaded
    return predict(model, images, spec.replace(flip_average=flip), batch_size=batch_size)[:, order]


def teacher_probabilities(teacher: str | Path, images: np.ndarray, classes, *, batch_size: int = 256) -> np.ndarray:
    """One teacher's class probabilities for raw `images`, flip-averaged, in `classes` order."""
    return label_images(load_teacher(teacher, classes), images, batch_size=batch_size)


def distilled_targets(onehot: np.ndarray, teachers: list[np.ndarray], alpha: float, temperature: float) -> np.ndarray:
    """(1 - alpha) * true label + alpha * the teachers' mean distribution softened at `temperature`."""
    soft = soften(np.mean(teachers, axis=0), temperature)
    return ((1 - alpha) * onehot + alpha * soft).astype(np.float32)


def describe_teacher(teacher: str | Path) -> dict:
    """What identifies a teacher and what it cost, read now: its folder may later hold another model."""
    import json

    from feredge.edge.bundle import sha256_file
    from feredge.models.run_dir import locate_model, run_record

    files = locate_model(teacher)
    folder = Path(files.model).parent
    record = run_record(folder)
    seconds = record["history"].get("seconds", [])
    metrics = [m for m in (folder / "metrics.json", folder / "eval" / "metrics.json", folder / "test-eval" / "metrics.json")
               if m.is_file()]
    accuracy = json.loads(metrics[0].read_text()).get("accuracy") if metrics else None
    arch = record["config"].get("arch")
    if arch is None:  # a shipped folder from before it kept config.json: the network's own name
        from feredge.models.model_io import load_keras_model
        arch = load_keras_model(files.model).name
    return {"path": str(teacher), "model_sha256": sha256_file(files.model), "arch": arch, "test_accuracy": accuracy,
            "training_hours": sum(seconds) / 3600 if seconds else None, "epochs": len(seconds) or None}


def build_targets(teachers, images: np.ndarray, labels: np.ndarray, classes, alpha: float,
                  temperature: float, views: list[np.ndarray] | None = None) -> np.ndarray:
    """Distilled targets, (N, C) for the clean images or, given augmented `views`, (K, N, C): one per view."""
    onehot = np.eye(len(classes), dtype=np.float32)[labels]
    sets = views if views else [images]
    probs = [[] for _ in sets]
    for teacher in teachers:
        loaded = load_teacher(teacher, classes)
        for k, view in enumerate(sets):
            what = f"view {k + 1}/{len(sets)} of " if views else ""
            log.info("teacher %s: labelling %s%d training images", teacher, what, len(view))
            p = label_images(loaded, view, flip=not views)
            log.info("teacher %s: %.2f %% agree with the true labels", teacher, 100 * np.mean(p.argmax(1) == labels))
            probs[k].append(p)
    targets = [distilled_targets(onehot, p, alpha, temperature) for p in probs]
    return np.stack(targets) if views else targets[0]
