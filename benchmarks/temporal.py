"""`feredge bench --temporal [BUNDLE]`: the latency of seed004's head, per artifact and thread count.

The head runs once per tracked face per frame, on one (1, T, classes) sequence; its cost is what
`--temporal` adds to a frame beside the per-frame model. Load time, latency percentiles and size
come from this device; the accuracy column is the bundle's own verification record (clips).
"""
from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path

import numpy as np

from feredge.benchmarks.timing import summarize, time_calls

log = logging.getLogger("feredge.bench")


def measure(root, threads=(1,), *, warmup_s: float = 0.5, min_s: float = 1.0, min_runs: int = 50) -> dict:
    from feredge.edge.backends import installed_formats
    from feredge.edge.bundle import Bundle
    from feredge.edge.device import describe_host, host_record
    from feredge.edge.temporal import TemporalHead, temporal_block

    bundle = Bundle.load(root)
    if temporal_block(bundle) is None:
        raise ValueError(f"{root}: not a temporal bundle (export a seed004 run with feredge export --model RUN)")
    frames, classes = bundle.manifest["temporal"]["frames"], len(bundle.labels)
    x = np.log(np.random.default_rng(0).dirichlet(np.ones(classes), size=(1, frames)).astype(np.float32))
    rows, have = [], installed_formats()
    for artifact in bundle.artifacts:
        if artifact.format not in have:
            log.info("%s: %s is not installed here, skipped", artifact.id, artifact.format)
            continue
        for n in threads:
            started = time.perf_counter()
            head = TemporalHead.load(root, format=artifact.format, precision=artifact.precision, threads=n)
            load_s = time.perf_counter() - started
            try:
                stats = summarize(time_calls(lambda: head.predict(x), warmup_s=warmup_s, min_s=min_s,
                                             min_runs=min_runs))
                runtime = head.backend.runtime
            finally:
                head.close()
            check = artifact.verification
            rows.append({"artifact": artifact.id, "threads": n, "runtime": runtime, "bytes": artifact.bytes,
                         "load_s": round(load_s, 4), **{k: stats[k] for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms",
                                                                             "runs", "noisy")},
                         "accuracy": check.accuracy if check else None,
                         "agreement": check.agreement if check else None})
            log.info("%s, %d thread(s): p50 %.3f ms", artifact.id, n, stats["p50_ms"])
    return {"bundle": str(root), "frames": frames, "classes": classes,
            "parameters": bundle.manifest["model"].get("parameters"), "macs": bundle.manifest["model"].get("macs"),
            "where": describe_host(host_record()), "rows": rows}


def e2e_with_and_without(frame_bundle, root, video, threads=(1,), artifacts=None, max_frames: int | None = 300,
                         rounds: int = 2) -> list[dict]:
    """The runtime's pipeline on a video per artifact, without and with the head, interleaved
    `rounds` times (each run its own process) so that a busy machine hits both alike."""
    from feredge.benchmarks.e2e import run_e2e

    rows = []
    for _ in range(rounds):
        for head in (None, root):
            rows += run_e2e(frame_bundle, video, threads, max_frames, artifacts, temporal=head)
    return rows


def format_e2e(rows: list[dict]) -> str:
    lines = ["| run | frames | FPS | detect | infer | temporal | label acc. (per frame / EMA / temporal) |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['label']} | error: {r['error']} | | | | | |")
            continue
        ms = r["stage_ms"]
        acc = " / ".join("-" if r.get(k) is None else f"{100 * r[k]:.1f} %"
                         for k in ("label_accuracy", "smoothed_label_accuracy", "temporal_label_accuracy"))
        lines.append(f"| {r['label']} | {r['frames']} | {r['fps']:.1f} | {ms.get('detect', 0):.2f} ms | "
                     f"{ms.get('infer', 0):.2f} ms | {ms['temporal']:.3f} ms | {acc} |" if "temporal" in ms else
                     f"| {r['label']} | {r['frames']} | {r['fps']:.1f} | {ms.get('detect', 0):.2f} ms | "
                     f"{ms.get('infer', 0):.2f} ms | - | {acc} |")
    return "\n".join(lines)


def format_table(result: dict) -> str:
    lines = ["| artifact | threads | size | load | p50 | p90 | p99 | clip accuracy (verified) | agreement |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        acc = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.2f} %"
        agree = "-" if r["agreement"] is None else f"{100 * r['agreement']:.2f} %"
        lines.append(f"| {r['artifact']} | {r['threads']} | {r['bytes'] / 1024:.1f} kB | {1000 * r['load_s']:.1f} ms | "
                     f"{r['p50_ms']:.3f} ms | {r['p90_ms']:.3f} ms | {r['p99_ms']:.3f} ms | {acc} | {agree} |"
                     + (" noisy" if r["noisy"] else ""))
    lines += ["", f"seed004 head over {result['frames']} frames x {result['classes']} log-probabilities "
                  f"({result['parameters']:,} parameters, {result['macs']:,} MACs), one clip per call; "
                  f"measured on {result['where']}"]
    if result.get("e2e"):
        lines += ["", f"end to end on {result['e2e'][0].get('video', '?')} (feredge run's defaults, overlay drawn):",
                  "", format_e2e(result["e2e"])]
    return "\n".join(lines)


def write(result: dict, out) -> Path:
    from feredge.edge.fileio import write_text_atomic

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "temporal.json", json.dumps(result, indent=2) + "\n")
    write_text_atomic(out / "temporal.md", format_table(result) + "\n")
    with open(out / ".temporal.csv.tmp", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(result["rows"][0]) if result["rows"] else ["artifact"])
        writer.writeheader()
        writer.writerows(result["rows"])
    (out / ".temporal.csv.tmp").replace(out / "temporal.csv")
    return out
