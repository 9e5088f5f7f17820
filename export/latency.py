"""Single-face latency for the pruning report, measured in alternation.

The machine may be busy (training, tests): timing model A for a while and then model B lets a
change in load masquerade as a speed-up or a slow-down. Alternating one call of each per round
exposes both to the same load, and the median of many rounds ignores the worst interruptions.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import numpy as np


def alternating_medians_ms(calls: list[Callable[[], object]], runs: int = 200, warmup: int = 20) -> list[float]:
    for _ in range(warmup):
        for call in calls:
            call()
    times = [[] for _ in calls]
    for _ in range(runs):
        for i, call in enumerate(calls):
            start = time.perf_counter()
            call()
            times[i].append(time.perf_counter() - start)
    return [float(np.median(t) * 1000) for t in times]


def keras_call(model) -> Callable[[], object]:
    """Batch-1 forward pass of a Keras model as a compiled tf.function (no Keras predict overhead)."""
    from feredge.models.tf_env import tf

    x = tf.zeros((1, *model.input_shape[1:]), tf.float32)
    fn = tf.function(lambda t: model(t, training=False), autograph=False)
    return lambda: fn(x).numpy()


def keras_latency_ms(*models, runs: int = 200) -> list[float]:
    """Median batch-1 latency of each Keras model, in milliseconds, measured in alternation."""
    return alternating_medians_ms([keras_call(m) for m in models], runs=runs)


def artifact_latency_ms(paths_and_options: list[tuple[object, dict]], face: np.ndarray, runs: int = 200) -> list[float]:
    """Median single-face latency (one thread) of artifact files through the edge backends."""
    from feredge.edge.backends import open_artifact

    x = np.ascontiguousarray(face[:1], dtype=np.float32)
    with contextlib.ExitStack() as stack:
        backends = [stack.enter_context(open_artifact(path, threads=1, **options))
                    for path, options in paths_and_options]
        return alternating_medians_ms([lambda b=b: b.predict(x) for b in backends], runs=runs)
