"""What every backend offers, and the shared input checks."""
from __future__ import annotations

import abc

import numpy as np


class BackendError(RuntimeError):
    """A one-line message naming the artifact and what went wrong (load or inference)."""


class Backend(abc.ABC):
    format: str = ""
    runtime: str = ""  # the package that runs it, with version
    precision: str = ""  # what actually ran (OpenVINO may run fp32 IR in bf16)

    def __init__(self, path, input_shape: tuple[int, ...], num_classes: int):
        self.path = path
        # One sample's fixed dims, batch axis excluded: (H, W, C) for an image model, (T, F) for a
        # sequence model such as the temporal head.
        self.input_shape = tuple(int(d) for d in input_shape)
        self.num_classes = int(num_classes)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """float32 (N, *input_shape), or one sample of input_shape -> float32 (N, classes)."""
        batch = np.asarray(batch)
        given = tuple(batch.shape)
        if batch.ndim == len(self.input_shape):
            batch = batch[None]
        if batch.ndim != len(self.input_shape) + 1 or tuple(batch.shape[1:]) != self.input_shape:
            raise BackendError(f"{self.path}: expected input of shape (N, {', '.join(map(str, self.input_shape))}), "
                               f"got {given}")
        if len(batch) == 0:
            return np.zeros((0, self.num_classes), np.float32)
        return self._predict(np.ascontiguousarray(batch, dtype=np.float32))

    @abc.abstractmethod
    def _predict(self, batch: np.ndarray) -> np.ndarray: ...

    def close(self) -> None:
        """Free the runtime's resources (optional for most runtimes)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path} {self.precision} via {self.runtime}>"


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return (q.astype(np.float32) - zero_point) * np.float32(scale)
