"""How much the harness itself adds: its timed `predict` against a bare runtime loop and the
runtimes' own benchmark tools (LiteRT's `litert-benchmark`, OpenVINO's `benchmark_app`).

Each measurement runs in a fresh process, one after the other, on the same artifact and
thread count. Usage of the bare loop (by the harness):
    python -m feredge.benchmarks.overhead bare ARTIFACT THREADS RUNS  -> median ms on stdout
"""
from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from feredge.benchmarks.harness import BenchOptions, run_worker
from feredge.edge.bundle import Bundle


def bare_loop_ms(path: str, threads: int, runs: int) -> float:
    """The runtime's own call and nothing else: no input checks, no (de)quantization, no copies."""
    import numpy as np

    if path.endswith(".tflite"):
        from feredge.edge.backends.tflite import _interpreter_class
        Interpreter, _ = _interpreter_class()
        interp = Interpreter(model_path=path, num_threads=threads)
        interp.allocate_tensors()
        inp = interp.get_input_details()[0]
        interp.set_tensor(inp["index"], np.zeros(inp["shape"], inp["dtype"]))
        call = interp.invoke
    else:
        import openvino as ov
        core = ov.Core()
        model = core.read_model(path)
        shape = [1, *(d.get_length() for d in list(model.inputs[0].get_partial_shape())[1:])]
        model.reshape(shape)
        compiled = core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads})
        request = compiled.create_infer_request()
        request.set_input_tensor(ov.Tensor(np.zeros(shape, np.float32)))
        call = request.infer
    for _ in range(max(20, runs // 10)):
        call()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        call()
        times.append(time.perf_counter_ns() - t0)
    return statistics.median(times) / 1e6


def _native_tool(name: str) -> str | None:
    beside = Path(sys.executable).parent / name  # console scripts of the runtime's own wheel
    return str(beside) if beside.exists() else shutil.which(name)


def native_tflite_ms(path: str, threads: int, runs: int) -> float | None:
    tool = _native_tool("litert-benchmark")
    if not tool:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        subprocess.run([tool, "--model", path, "--num_runs", str(runs), "--warmup_runs", str(max(20, runs // 10)),
                        "--num_threads", str(threads), "--result_json", str(out)],
                       capture_output=True, text=True, timeout=600)
        if not out.exists():
            return None
        return float(json.loads(out.read_text())["latency"]["median_ms"])


def native_openvino_ms(path: str, threads: int, runs: int, shape: tuple[int, ...]) -> float | None:
    tool = _native_tool("benchmark_app")
    if not tool:
        return None
    # benchmark_app accepts a thread count only with the performance hint off (one stream = latency).
    done = subprocess.run([tool, "-m", path, "-d", "CPU", "-hint", "none", "-nstreams", "1", "-api", "sync",
                           "-nthreads", str(threads), "-niter", str(runs),
                           "-shape", "[" + ",".join(map(str, shape)) + "]"],
                          capture_output=True, text=True, timeout=600)
    match = re.search(r"Median:\s+([\d.]+)\s*(us|ms)", done.stdout)
    if not match:
        return None
    return float(match.group(1)) / (1000.0 if match.group(2) == "us" else 1.0)


def measure_overhead(bundle_dir, opts: BenchOptions, runs: int = 2000) -> dict:
    bundle = Bundle.load(bundle_dir)
    threads = opts.threads[0]
    rows, lines = [], []
    for fmt, native in (("tflite", native_tflite_ms), ("openvino", native_openvino_ms)):
        candidates = [a for a in bundle.artifacts if a.format == fmt and a.precision == "fp32" and not a.pruning]
        if not candidates:
            continue
        artifact = candidates[0]
        path = str(bundle.path(artifact))
        harness = run_worker({"path": path, "threads": threads, "batch": 1, "warmup_s": opts.warmup_s,
                              "min_s": opts.min_s, "min_runs": runs}, opts.timeout_s)
        if "error" in harness:
            lines.append(f"{artifact.id}: harness run failed ({harness['error']})")
            continue
        bare = subprocess.run([sys.executable, "-m", "feredge.benchmarks.overhead", "bare", path, str(threads), str(runs)],
                              capture_output=True, text=True, timeout=opts.timeout_s)
        bare_ms = float(bare.stdout.strip().splitlines()[-1]) if bare.returncode == 0 and bare.stdout.strip() else None
        native_ms = (native(path, threads, runs) if fmt == "tflite"
                     else native(path, threads, runs, (1, *bundle.spec.input_shape)))
        row = {"artifact": artifact.id, "threads": threads, "harness_p50_ms": harness["latency"]["p50_ms"],
               "bare_loop_p50_ms": bare_ms, "native_tool_median_ms": native_ms}
        rows.append(row)
        parts = [f"{artifact.id} ({threads} thread): harness p50 {row['harness_p50_ms']:.4f} ms"]
        if bare_ms is not None:
            parts.append(f"bare runtime loop {bare_ms:.4f} ms (harness adds {1000 * (row['harness_p50_ms'] - bare_ms):+.1f} µs)")
        parts.append(f"native tool median {native_ms:.4f} ms" if native_ms is not None else "native tool not installed")
        lines.append("; ".join(parts))
    return {"rows": rows, "lines": lines or ["no fp32 TFLite or OpenVINO artifact to measure the overhead on"]}


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "bare":
        print(bare_loop_ms(sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
    else:
        sys.exit("usage: python -m feredge.benchmarks.overhead bare ARTIFACT THREADS RUNS")
