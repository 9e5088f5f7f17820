"""Stochastic weight averaging (Izmailov et al., 2018): ship the mean of the weights of the last
epochs rather than one epoch's weights.

Epochs at a constant learning rate wander around a wide minimum; their average lies nearer its
centre, which generalises better than any single epoch and needs no pick of a "best" epoch on
the validation set. The batch-normalisation statistics of the averaged weights are not the
average of the epochs' statistics, so they are measured again with one pass over training data.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("feredge.swa")

AVERAGE_FILE = "swa_average.npz"


class WeightAverage:
    """Running mean of a model's weight list, stored beside a checkpoint so a resumed run continues it."""

    def __init__(self, weights: list[np.ndarray] | None = None, count: int = 0):
        self.weights = weights
        self.count = count

    def add(self, weights: list[np.ndarray]) -> None:
        if self.weights is None:
            self.weights = [np.array(w, np.float64) for w in weights]
        else:
            if len(weights) != len(self.weights):
                raise ValueError(f"weight list of {len(weights)} arrays does not match the average's "
                                 f"{len(self.weights)}")
            for mean, w in zip(self.weights, weights):
                mean += (w - mean) / (self.count + 1)
        self.count += 1

    def as_model_weights(self, like: list[np.ndarray]) -> list[np.ndarray]:
        return [m.astype(w.dtype) for m, w in zip(self.weights, like)]

    def save(self, path: Path) -> None:
        with open(path, "wb") as f:
            np.savez(f, count=self.count, *self.weights)

    @classmethod
    def load(cls, path: Path) -> "WeightAverage":
        with np.load(path) as data:
            count = int(data["count"])
            weights = [data[f"arr_{i}"].astype(np.float64) for i in range(len(data.files) - 1)]
        return cls(weights, count)


def batchnorm_layers(model) -> list:
    from feredge.models.tf_env import keras

    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif hasattr(layer, "layers"):
            found.extend(batchnorm_layers(layer))
    return found


def recalibrate_batchnorm(model, batches) -> int:
    """Replace every BN layer's moving mean and variance with their plain average over `batches`
    (forward passes in training mode, weights untouched). Returns the number of batches used."""
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    saved = [layer.momentum for layer in layers]
    for layer in layers:
        layer.moving_mean.assign(np.zeros(layer.moving_mean.shape, np.float32))
        layer.moving_variance.assign(np.ones(layer.moving_variance.shape, np.float32))
    n = 0
    try:
        for x in batches:
            for layer in layers:  # moving <- moving*m + batch*(1-m) with m = n/(n+1): a cumulative mean
                layer.momentum = n / (n + 1)
            model(x, training=True)
            n += 1
    finally:
        for layer, momentum in zip(layers, saved):
            layer.momentum = momentum
    log.info("batch-norm statistics of the averaged weights measured on %d batches", n)
    return n
