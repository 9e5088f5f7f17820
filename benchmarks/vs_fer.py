"""End to end against the `fer` package, in one run: frames per second and faces found.

    python -m feredge.benchmarks.vs_fer --fer-path DIR --out DIR

`fer` (pip install fer; it pulls TensorFlow, torch and opencv-contrib, so install it apart:
`pip install --no-deps --target DIR fer` is enough for FER(mtcnn=False)) runs
`FER(mtcnn=False).detect_emotions` on every frame of a 640x480 test video of one face; feredge
runs `feredge run` configurations on the same video. Each configuration runs in its own process,
in rounds that alternate them, so a load that comes and goes hits all of them; the table gives
each one's median FPS over the rounds and its speed-up over fer in the same round. Detection rate
is against the video's ground truth (IoU >= 0.3), faces of 60 to 180 px.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger("feredge.bench")

# name -> e2e job settings; "pi" is the Pi-class profile: one thread, detection at 320 px
CONFIGS = {
    "haar every frame (the old default)": {"detector": "haar", "detect_scale": "auto", "detect_every": 1},
    "yunet every frame": {"detector": "yunet", "detect_scale": "auto", "detect_every": 1},
    "defaults: yunet every 30, tracked": {"detector": "yunet", "detect_scale": "auto", "detect_every": 30},
    "pi profile: 1 thread, 320 px, every 30": {"detector": "yunet", "detect_scale": "0.5", "detect_every": 30,
                                               "threads": 1, "cv_threads": 1},
}

FER_JOB = r"""
import json, sys, time
import cv2
from fer.fer import FER
video, truth_file = sys.argv[1], sys.argv[2]
cap = cv2.VideoCapture(video)
frames = []
while True:
    ok, frame = cap.read()
    if not ok:
        break
    frames.append(frame)
detector = FER(mtcnn=False)
detector.detect_emotions(frames[0])
started = time.perf_counter()
found = [detector.detect_emotions(frame) for frame in frames]
seconds = time.perf_counter() - started
print(json.dumps({"frames": len(frames), "fps": len(frames) / seconds,
                  "boxes": [[list(map(int, face["box"])) for face in faces] for faces in found]}))
"""


def _fer_round(video: Path, fer_path: str | None) -> dict:
    env = dict(os.environ)
    if fer_path:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (fer_path, env.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, "-c", FER_JOB, str(video), ""], capture_output=True, text=True,
                          env=env, timeout=1800)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"fer failed: {(done.stderr.strip().splitlines() or ['no output'])[-1]}")
    return json.loads(lines[-1])


def _fer_detection_rate(boxes: list, truth: dict) -> float:
    from feredge.edge.detect import iou

    found = total = 0
    for frame_boxes, expected in zip(boxes, truth["frames"]):
        for t in expected:
            total += 1
            found += any(iou(b, t["box"]) >= 0.3 for b in frame_boxes)
    return found / total if total else 0.0


def _feredge_round(bundle: str, artifact: str, video: Path, config: dict) -> dict:
    job = {"bundle": bundle, "artifact": artifact, "threads": config.get("threads"), "video": str(video),
           "max_frames": None, **{k: v for k, v in config.items() if k != "threads"}}
    done = subprocess.run([sys.executable, "-m", "feredge.benchmarks.e2e", json.dumps(job)], capture_output=True,
                          text=True, timeout=1800)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"feredge failed: {(done.stderr.strip().splitlines() or ['no output'])[-1]}")
    return json.loads(lines[-1])


def run(args) -> dict:
    from feredge.edge.device import describe_host, host_record
    from feredge.edge.paths import DEFAULT_BUNDLE
    from feredge.edge.testvideo import make_test_video

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    video = out / "one-face-640x480.mp4"
    truth = make_test_video(video, 1, seconds=args.seconds, fps=30.0, seed=5, hold_s=2.0,
                            face_px=(args.min_face_px, 180))
    bundle = args.bundle or str(DEFAULT_BUNDLE)
    rounds = []
    for r in range(args.rounds):
        log.info("round %d/%d: fer", r + 1, args.rounds)
        fer = _fer_round(video, args.fer_path)
        row = {"fer": {"fps": fer["fps"], "detection_rate": _fer_detection_rate(fer["boxes"], truth)}}
        for name, config in CONFIGS.items():
            log.info("round %d/%d: %s", r + 1, args.rounds, name)
            result = _feredge_round(bundle, args.artifact, video, config)
            stage = result["stage_ms"]
            total = sum(stage.values())
            row[name] = {"fps": result["fps"], "detection_rate": result.get("detection_rate"),
                         "detect_share": stage.get("detect", 0.0) / total if total else None,
                         "stage_ms": stage, "speedup": result["fps"] / fer["fps"],
                         "label_accuracy": result.get("label_accuracy")}
        rounds.append(row)
    names = ["fer", *CONFIGS]
    summary = {}
    for name in names:
        runs = [r[name] for r in rounds]
        summary[name] = {key: statistics.median(x[key] for x in runs)
                         for key in ("fps", "detection_rate", "detect_share", "speedup", "label_accuracy")
                         if all(x.get(key) is not None for x in runs)}
        if name != "fer":
            summary[name]["stage_ms"] = {k: statistics.median(x["stage_ms"][k] for x in runs)
                                         for k in runs[0]["stage_ms"]}
    result = {"host": host_record(), "where": describe_host(host_record()), "video": video.name,
              "face_px": truth["generator"]["face_px"],
              "frames": len(truth["frames"]), "artifact": args.artifact, "rounds": rounds, "summary": summary,
              "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (out / "vs_fer.json").write_text(json.dumps(result, indent=2) + "\n")
    text = format_table(result)
    (out / "vs_fer.md").write_text(text + "\n")
    print(text)
    return result


def format_table(result: dict) -> str:
    lines = ["| configuration | FPS | x fer | detection share of frame | detect ms | infer ms | faces found |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, s in result["summary"].items():
        stage = s.get("stage_ms", {})
        lines.append(f"| {name} | {s['fps']:.1f} | {s.get('speedup', 1.0):.2f} | "
                     + (f"{100 * s['detect_share']:.0f} %" if "detect_share" in s else "-") + " | "
                     + (f"{stage['detect']:.2f}" if "detect" in stage else "-") + " | "
                     + (f"{stage['infer']:.2f}" if "infer" in stage else "-") + " | "
                     + f"{100 * s['detection_rate']:.1f} % |")
    low, high = result["face_px"]
    lines += ["", f"{result['frames']} frames of one face ({low}-{high} px) at 640x480, artifact {result['artifact']}, "
                  f"median of {len(result['rounds'])} alternating rounds; measured on {result['where']}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fer-path", default=None, help="folder where fer is installed (pip install --target)")
    parser.add_argument("--bundle", default=None)
    parser.add_argument("--artifact", default="tflite-fp32")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-face-px", type=int, default=60, help="smallest face side in the video (>= 40)")
    parser.add_argument("--out", default="vs-fer")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
