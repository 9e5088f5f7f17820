"""`predict`: a model's class probabilities for faces, run exactly as its preprocessing spec says.

Every caller above the device runtime (evaluation, distillation, export verification, the
benchmark's reference) goes through here, so the spec's steps, flip averaging included, are
applied in one place. The device runtime applies the same spec through `edge.preprocess` and
`Bundle.open` (a flip-averaged backend).
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from feredge.edge.preprocess import PreprocessSpec, preprocess
from feredge.edge.tta import FlipAveraged, flip_averaged


def _batch_fn(model) -> tuple[Callable[[np.ndarray], np.ndarray], int | None]:
    """(batch -> probabilities, number of classes if known) for a Keras model, an edge backend or a callable."""
    if isinstance(model, FlipAveraged):  # the spec decides, not the wrapper: never flip twice
        model = model.inner
    if hasattr(model, "predict_on_batch"):  # Keras: without predict()'s per-call tf.data overhead
        return model.predict_on_batch, int(model.output_shape[-1])
    if hasattr(model, "num_classes") and hasattr(model, "predict"):
        return model.predict, int(model.num_classes)
    if callable(model):
        return model, None
    raise TypeError(f"cannot predict with {type(model).__name__}: expected a Keras model, a backend or a callable")


def predict(model, faces: np.ndarray, spec: PreprocessSpec, *, prepared: bool = False,
            batch_size: int = 256) -> np.ndarray:
    """(N, classes) float32 probabilities of `model` for `faces`, in chunks of `batch_size`.

    faces are uint8 crops, preprocessed here by `spec`; `prepared=True` says they already are
    model inputs (float NHWC, as export verification keeps them). Flip averaging follows
    `spec.flip_average`: pass `spec.replace(flip_average=False)` to measure without it.
    """
    run, num_classes = _batch_fn(model)
    if spec.flip_average:
        run = functools.partial(flip_averaged, run)
    chunks = []
    for start in range(0, len(faces), batch_size):
        x = faces[start:start + batch_size]
        chunks.append(np.asarray(run(x if prepared else preprocess(x, spec)), dtype=np.float32))
    if len(chunks) == 1:
        return chunks[0]
    if not chunks:
        if num_classes is None:
            raise ValueError("no faces to predict, and the model does not say how many classes it has")
        return np.zeros((0, num_classes), np.float32)
    return np.concatenate(chunks)
