"""The int8 sanity gate and the recommendation `feredge run --backend auto` reads."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from feredge.benchmarks.records import BenchRecord
from feredge.edge.fileio import write_text_atomic

log = logging.getLogger("feredge.bench")

RECOMMENDATION_FILE = "recommendation.json"
SLOWER_MARGIN = 1.05  # a quantized artifact within 5 % of its fp32 sibling is not called slower


def apply_gate(records: list[BenchRecord], max_drop: float) -> None:
    """Set `flags` on every record: slower than its fp32 sibling, too big an accuracy drop, noisy."""
    fp32 = {(r.format, r.threads, r.batch): r for r in records if r.precision == "fp32" and not r.pruning and r.ok}
    for r in records:
        flags = []
        if r.ok:
            sibling = fp32.get((r.format, r.threads, r.batch))
            if sibling is not None and sibling is not r and r.p50_ms > SLOWER_MARGIN * sibling.p50_ms:
                flags.append(f"slower than {sibling.artifact} ({r.p50_ms:.3f} vs {sibling.p50_ms:.3f} ms)")
            if r.accuracy_drop is not None and 100 * r.accuracy_drop > max_drop:
                flags.append(f"drops {100 * r.accuracy_drop:.2f} points (> {max_drop:g})")
            if r.noisy:
                flags.append("noisy timing")
            if r.flip_average:
                flags.append("flip-averaged: 2 inferences per face, both timed")
        r.flags = flags


def recommend(records: list[BenchRecord], max_drop: float) -> dict | None:
    """The fastest artifact (and thread count) within the accuracy budget."""
    within = [r for r in records if r.ok and (r.accuracy_drop is None or 100 * r.accuracy_drop <= max_drop)]
    if not within:
        return None
    best = min(within, key=lambda r: (r.p50_ms, r.threads))
    return {
        "device": {k: best.device[k] for k in ("machine", "cpu", "system")},
        "artifact": best.artifact, "threads": best.threads, "batch": best.batch,
        "p50_ms": best.p50_ms, "fps": best.fps, "accuracy": best.accuracy,
        "accuracy_drop": best.accuracy_drop, "max_drop": max_drop,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_recommendation(bundle_dir: str | Path, recommendation: dict) -> Path | None:
    path = Path(bundle_dir) / RECOMMENDATION_FILE
    try:
        write_text_atomic(path, json.dumps(recommendation, indent=2) + "\n")
    except OSError as exc:
        log.warning("%s: cannot store the recommendation (%s); feredge run --backend auto will not see it",
                    path, exc.strerror or exc)
        return None
    return path
