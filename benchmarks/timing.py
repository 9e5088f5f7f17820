"""Latency measurement in the spirit of benchmark_model / benchmark_app: warm up, then time.

The timed loop holds nothing but the call and two perf_counter_ns reads; inputs are made once.
"""
from __future__ import annotations

import time

import numpy as np


def time_calls(call, *, warmup_s: float = 0.5, warmup_runs: int = 5, min_s: float = 1.0,
               min_runs: int = 50, max_runs: int = 100_000) -> np.ndarray:
    """Per-call wall times in nanoseconds, after at least `warmup_s` and `warmup_runs` of warm-up."""
    start = time.perf_counter()
    done = 0
    while done < warmup_runs or time.perf_counter() - start < warmup_s:
        call()
        done += 1
    times = []
    clock = time.perf_counter_ns
    began = clock()
    limit = int(min_s * 1e9)
    while len(times) < max_runs and (len(times) < min_runs or clock() - began < limit):
        t0 = clock()
        call()
        times.append(clock() - t0)
    return np.asarray(times, dtype=np.int64)


def summarize(times_ns: np.ndarray, batch: int = 1) -> dict:
    ms = times_ns / 1e6
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    mean = float(ms.mean())
    return {
        "runs": int(len(ms)),
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "mean_ms": mean,
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "std_ms": float(ms.std()),
        "fps": 1000.0 * batch / mean if mean > 0 else None,
        # A wide spread means the device was busy or throttling: say so rather than hide it.
        "noisy": bool(p90 > 1.5 * p50 or ms.std() > 0.5 * mean),
    }
