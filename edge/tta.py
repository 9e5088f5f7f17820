"""Test-time flip averaging: a face and its mirror image, one averaged answer.

Facial expressions are close to left-right symmetric, so a network trained with random flips
gives two slightly different opinions on a face and its mirror; their mean is a little more
accurate (+0.4 points for the shipped model on PublicTest) for twice the inference. Whether a
model uses it is part of its `PreprocessSpec` (`flip_average`), so training-side evaluation,
export verification, the runtime and the benchmark all pay for it and report it alike.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from feredge.edge.backends.base import Backend, BackendError


def mirrored(batch: np.ndarray) -> np.ndarray:
    """NHWC faces flipped left-right."""
    return batch[:, :, ::-1]


def flip_averaged(predict: Callable[[np.ndarray], np.ndarray], batch: np.ndarray) -> np.ndarray:
    """Mean of `predict` on the faces and on their mirror images, in one call of twice the batch."""
    n = len(batch)
    probs = np.asarray(predict(np.concatenate([batch, mirrored(batch)])), dtype=np.float32)
    return (probs[:n] + probs[n:]) / 2


class FlipAveraged(Backend):
    """A backend whose every prediction is flip-averaged; timing it times both passes."""

    def __init__(self, inner: Backend):
        if len(inner.input_shape) != 3:  # mirroring is for (H, W, C) faces, not (T, F) sequences
            raise BackendError(f"{inner.path}: flip averaging needs an image model of (H, W, C) input, "
                               f"this one takes {inner.input_shape}")
        super().__init__(inner.path, inner.input_shape, inner.num_classes)
        self.inner = inner
        self.format, self.runtime, self.precision = inner.format, inner.runtime, inner.precision

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        return flip_averaged(self.inner.predict, batch)

    def close(self) -> None:
        self.inner.close()

    def __repr__(self) -> str:
        return f"<flip-averaged {self.inner!r}>"


def with_flip_average(backend: Backend, enabled: bool) -> Backend:
    return FlipAveraged(backend) if enabled and not isinstance(backend, FlipAveraged) else backend
