"""End to end: the runtime's own Pipeline over a video, per artifact and thread count.

Each run is a fresh process (like the latency rows) that builds the pipeline with the same
defaults as `feredge run` (Haar detection, EMA smoothing, crop margin from the spec) and draws
the overlay as a window would, so the FPS here is the FPS of the demo. When the video has a
ground truth beside it (made by edge.testvideo) the run is scored against it.
Usage (by the harness): python -m feredge.benchmarks.e2e '{"bundle": ..., "artifact": ..., ...}'
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


class _DrawOnly:
    """A sink that wants the annotated picture, as a window or the MJPEG page would, and drops it."""

    needs_image = True

    def write(self, result) -> bool:
        return True


def e2e_job(job: dict) -> dict:
    started = time.perf_counter()
    from feredge.edge import formats, run_cli
    from feredge.edge.bundle import Bundle
    from feredge.edge.device import memory_mb
    from feredge.edge.detect import DEFAULT_DETECTOR, parse_detector
    from feredge.edge.pipeline import Pipeline
    from feredge.edge.smoothing import parse_smoother
    import cv2

    from feredge.edge.sources import open_source

    defaults = argparse.ArgumentParser()
    run_cli.add_arguments(defaults)
    d = defaults.parse_args([])
    bundle = Bundle.load(job["bundle"])
    artifact = bundle.find(id=job["artifact"])
    options = formats.runtime_options(artifact.format, device="CPU")
    backend = bundle.open(artifact, threads=job["threads"], **options)
    if job.get("cv_threads"):
        cv2.setNumThreads(int(job["cv_threads"]))
    # feredge run's defaults for a video unless the job says otherwise
    detector = parse_detector(job.get("detector", DEFAULT_DETECTOR),
                              scale=run_cli._parse_scale(str(job.get("detect_scale", d.detect_scale))),
                              min_face=job.get("min_face"), every=int(job.get("detect_every", run_cli.TRACK_EVERY)))
    spec = bundle.spec.replace(align=bool(job["align"])) if "align" in job else bundle.spec
    temporal = None
    if job.get("temporal"):  # seed004's head beside the per-frame artifact, in its format when there is one
        from feredge.edge.temporal import TemporalHead

        held = {a.format for a in Bundle.load(job["temporal"]).artifacts}
        temporal = TemporalHead.load(job["temporal"], format=artifact.format if artifact.format in held else None)
    pipeline = Pipeline(backend, spec, bundle.labels, detector, parse_smoother(job.get("smooth", "ema:0.5")),
                        temporal=temporal)
    results, first = [], []

    def keep(result):
        if not first:  # from process start (interpreter, imports, model load, first frame) when known
            first.append(run_cli.process_age_s() or time.perf_counter() - started)
        results.append(result.to_dict())

    with open_source(job["video"]) as source:
        summary = pipeline.run(source, [_DrawOnly()], max_frames=job.get("max_frames"), on_result=keep)
    out = {"frames": summary.frames, "faces": summary.faces, "fps": summary.fps, "stage_ms": summary.stage_ms_mean,
           "first_result_s": first[0] if first else None, "peak_rss_mb": memory_mb(),
           "precision_ran": backend.precision, "runtime": backend.runtime}
    truth_file = Path(job["video"]).with_name(Path(job["video"]).stem + ".truth.json")
    if truth_file.is_file():
        from feredge.edge.testvideo import load_truth, score_run
        score = score_run(results, load_truth(job["video"]))
        out.update(detection_rate=score["detection_rate"], label_accuracy=score["label_accuracy"],
                   smoothed_label_accuracy=score["smoothed_label_accuracy"],
                   false_per_frame=score["false_per_frame"], box_scale=score["box_scale"])
        if "temporal_label_accuracy" in score:
            out["temporal_label_accuracy"] = score["temporal_label_accuracy"]
    return out


def run_e2e(bundle_dir, video, threads=(1,), max_frames: int | None = 300,
            artifacts: list[str] | None = None, timeout_s: float = 900.0, progress: bool = True,
            temporal=None) -> list[dict]:
    """One row per (artifact, threads); by default the fp32 and int8 artifact of every format.
    temporal: a seed004 bundle run beside each artifact (rows labelled '+temporal')."""
    from feredge.edge.bundle import Bundle

    bundle = Bundle.load(bundle_dir)
    if not Path(video).is_file() and not str(video).isdigit():
        raise FileNotFoundError(f"{video}: no such video file")
    ids = artifacts or [a.id for a in bundle.artifacts if a.precision in ("fp32", "int8") and not a.pruning]
    rows = []
    for artifact in ids:
        for t in threads:
            label = f"{artifact} t{t}" + (" +temporal" if temporal else "")
            if progress:
                print(f"[e2e] {label} on {Path(str(video)).name} ...", file=sys.stderr, flush=True)
            job = {"bundle": str(bundle_dir), "artifact": artifact, "threads": t, "video": str(video),
                   "max_frames": max_frames, **({"temporal": str(temporal)} if temporal else {})}
            done = subprocess.run([sys.executable, "-m", "feredge.benchmarks.e2e", json.dumps(job)],
                                  capture_output=True, text=True, timeout=timeout_s)
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            if done.returncode != 0 or not lines:
                tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
                rows.append({"label": label, "artifact": artifact, "threads": t,
                             "error": tail[:300], "frames": 0, "fps": 0.0, "stage_ms": {}})
                continue
            rows.append({"label": label, "artifact": artifact, "threads": t,
                         "video": str(video), **json.loads(lines[-1])})
    return rows


if __name__ == "__main__":
    print(json.dumps(e2e_job(json.loads(sys.argv[1]))))
