"""One artifact, measured in a fresh process: load, first inference, latency, memory, predictions.

A process per (artifact, threads) keeps runtimes from sharing thread pools, caches or memory,
so each row's peak memory is that runtime's own. Usage (by the harness):
    python -m feredge.benchmarks.worker '{"path": ..., "threads": 1, ...}'  -> one JSON line on stdout
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np

from feredge.edge.device import memory_mb


def measure(job: dict) -> dict:
    from feredge.benchmarks.timing import summarize, time_calls
    from feredge.edge import formats
    from feredge.edge.backends import open_artifact
    from feredge.edge.preprocess import PreprocessSpec
    from feredge.edge.tta import with_flip_average
    from feredge.evaluation.predict import predict

    path = job["path"]
    options = job.get("options", {})
    # Import the runtime before the baseline, so memory counts the model, not the library.
    import importlib
    fmt = formats.of_path(path)
    if fmt is not None:
        importlib.import_module(fmt.backend)
    baseline = memory_mb("VmRSS")
    t0 = time.perf_counter()
    spec = PreprocessSpec.from_dict(job["spec"]) if job.get("spec") else PreprocessSpec()
    # timed as the device runs it: a flip-averaged model pays for both passes
    backend = with_flip_average(open_artifact(path, threads=job.get("threads"), **options), spec.flip_average)
    load_ms = (time.perf_counter() - t0) * 1e3
    batch = int(job.get("batch", 1))
    rng = np.random.default_rng(0)
    x = rng.random((batch, *backend.input_shape), dtype=np.float32)  # made once, outside the loop
    t0 = time.perf_counter()
    backend.predict(x)
    first_ms = (time.perf_counter() - t0) * 1e3
    times = time_calls(lambda: backend.predict(x), warmup_s=job.get("warmup_s", 0.5),
                       min_s=job.get("min_s", 1.0), min_runs=job.get("min_runs", 50))
    result = {
        "runtime": backend.runtime,
        "precision_ran": backend.precision,
        "load_ms": load_ms,
        "first_inference_ms": first_ms,
        "latency": summarize(times, batch),
        "peak_rss_mb": memory_mb("VmHWM"),
        "model_rss_mb": memory_mb("VmRSS") - baseline,
    }
    if job.get("data"):
        data = np.load(job["data"], mmap_mode="r")
        probs = predict(backend, np.ascontiguousarray(data), spec, prepared=True,
                        batch_size=int(job.get("predict_batch", 64)))
        np.save(job["probs_out"], probs)
    return result


def main() -> int:
    job = json.loads(sys.argv[1])
    try:
        result = measure(job)
    except Exception as exc:  # reported as the row's status; the harness goes on with the others
        text = str(exc).strip().splitlines()
        result = {"error": f"{type(exc).__name__}: {text[0] if text else ''}"[:400]}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
