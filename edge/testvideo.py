"""Test videos with known faces, and scoring a run against them.

`make_test_video` pastes real FER-2013 faces from the shipped sample (enlarged, with a feathered
margin, since FER crops are tight) onto a textured, noisy background and moves them; each face is
held for `hold_s` seconds and then replaced by another, so the labels change during the video. The
ground truth (per frame: each face's box, label and sample file) is written beside the video as
`NAME.truth.json` and returned. `score_run` compares a run's results with it: detection rate (IoU
matching), false detections, and label accuracy against the true labels and, optionally, against
reference predictions made on the original crops.

    python -m feredge.edge.testvideo out/one.mp4 --faces 1 --seconds 10 --fps 15
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import cv2
import numpy as np

from feredge.edge.detect import iou
from feredge.edge.fileio import write_text_atomic
from feredge.edge.paths import SAMPLE_DIR


def _sample_files(sample_dir: Path) -> list[tuple[str, Path]]:
    files = []
    for folder in sorted(p for p in Path(sample_dir).iterdir() if p.is_dir()):
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in (".jpg", ".jpeg", ".png"):
                files.append((folder.name, path))
    if not files:
        raise ValueError(f"{sample_dir}: no face images in class folders")
    return files


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A smooth random field with some edges and a colour tint: no flat wall for the detector."""
    low = rng.integers(0, 256, (max(2, height // 40), max(2, width // 40), 3), dtype=np.uint8)
    field = cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    field = 0.5 * field + 50
    field = 0.5 * field + 0.5 * field.mean(axis=2, keepdims=True)  # muted colours
    for _ in range(12):  # a few bars and rectangles, like furniture
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(20, width // 3)), y0 + int(rng.integers(20, height // 3))
        cv2.rectangle(field, (x0, y0), (x1, y1), tuple(float(v) for v in rng.integers(60, 170, 3)), -1)
    field = cv2.GaussianBlur(field, (0, 0), 3)
    return np.clip(field + rng.normal(0, 8, field.shape), 0, 255).astype(np.uint8)


def _face_patch(face: np.ndarray, size: int, margin: float) -> tuple[np.ndarray, np.ndarray, int]:
    """The face enlarged to size x size inside a replicated border of `margin`, with a feathered alpha."""
    big = cv2.resize(face, (size, size), interpolation=cv2.INTER_CUBIC)
    m = int(round(size * margin))
    patch = cv2.copyMakeBorder(big, m, m, m, m, cv2.BORDER_REPLICATE)
    alpha = np.zeros(patch.shape, np.float32)
    inner = max(1, m // 2)
    alpha[inner:patch.shape[0] - inner, inner:patch.shape[1] - inner] = 1.0
    alpha = cv2.GaussianBlur(alpha, (0, 0), max(1.0, m / 4))
    alpha[m:m + size, m:m + size] = 1.0  # the face itself is never blended
    return patch, alpha, m


def make_test_video(path: str | Path, faces: int = 1, *, seconds: float = 10.0, fps: float = 15.0,
                    size: tuple[int, int] = (640, 480), face_px: tuple[int, int] = (140, 180), margin: float = 0.25,
                    hold_s: float = 2.0, seed: int = 0, sample_dir: str | Path | None = None,
                    noise: float = 4.0) -> dict:
    """Write an MP4 (mp4v) with `faces` moving faces; return (and save as NAME.truth.json) the ground truth.

    Faces are drawn (seeded) from the sample's class folders; each of the `faces` slots keeps its own
    lane (the frame is split into equal columns) and face sizes shrink to fit the lane when needed.
    """
    path = Path(path)
    width, height = size
    if faces < 1:
        raise ValueError("a test video needs at least one face")
    rng = np.random.default_rng(seed)
    files = _sample_files(Path(sample_dir) if sample_dir else SAMPLE_DIR)
    lane_w = width / faces
    wobble = 12  # horizontal motion within the lane, pixels each side
    max_face = int(min(face_px[1], (lane_w - 2 * wobble - 4) / (1 + 2 * margin), (height - 40) / (1 + 2 * margin)))
    min_face = int(min(face_px[0], max_face))
    if min_face < 40:
        raise ValueError(f"{faces} faces do not fit a {width}x{height} frame")
    frames_total = int(round(seconds * fps))
    hold = max(1, int(round(hold_s * fps)))
    background = _background(rng, width, height)
    # per slot: motion phase and period, and the face shown in each hold period
    slots = []
    for s in range(faces):
        picks = rng.choice(len(files), size=math.ceil(frames_total / hold) + 1, replace=False
                           if math.ceil(frames_total / hold) + 1 <= len(files) else True)
        sizes = rng.integers(min_face, max_face + 1, size=len(picks))
        slots.append({"faces": [(files[i], int(sz)) for i, sz in zip(picks, sizes)],
                      "phase": float(rng.uniform(0, 2 * math.pi)), "period": float(rng.uniform(3.0, 6.0)),
                      "offset": int(rng.integers(0, hold))})
    cache: dict[tuple[str, int], tuple] = {}
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
    if not writer.isOpened():
        raise ValueError(f"{path}: OpenCV cannot write mp4v video here")
    truth_frames = []
    try:
        for f in range(frames_total):
            t = f / fps
            frame = background.copy()
            truth = []
            for s, slot in enumerate(slots):
                (label, file), face_size = slot["faces"][(f + slot["offset"]) // hold]
                key = (str(file), face_size)
                if key not in cache:
                    face = cv2.imread(str(file), cv2.IMREAD_GRAYSCALE)
                    cache[key] = _face_patch(face, face_size, margin)
                patch, alpha, m = cache[key]
                ph, pw = patch.shape
                cx = lane_w * (s + 0.5) + wobble * math.sin(2 * math.pi * t / slot["period"] + slot["phase"])
                span = max(0.0, (height - ph) / 2 - 2)
                cy = height / 2 + span * math.sin(2 * math.pi * t / (slot["period"] * 1.3) + slot["phase"] * 2)
                x0, y0 = int(round(cx - pw / 2)), int(round(cy - ph / 2))
                x0, y0 = min(max(0, x0), width - pw), min(max(0, y0), height - ph)
                region = frame[y0:y0 + ph, x0:x0 + pw].astype(np.float32)
                blended = alpha[..., None] * patch[..., None].astype(np.float32) + (1 - alpha[..., None]) * region
                frame[y0:y0 + ph, x0:x0 + pw] = blended.astype(np.uint8)
                truth.append({"box": [x0 + m, y0 + m, face_size, face_size], "label": label,
                              "file": f"{label}/{Path(file).name}"})
            if noise:
                frame = np.clip(frame + rng.normal(0, noise, frame.shape), 0, 255).astype(np.uint8)
            writer.write(frame)
            truth_frames.append(truth)
    except BaseException:
        writer.release()
        tmp.unlink(missing_ok=True)
        raise
    writer.release()
    os.replace(tmp, path)
    truth = {"video": path.name, "fps": float(fps), "width": width, "height": height, "faces_per_frame": faces,
             "frames": truth_frames,
             "generator": {"seed": seed, "seconds": seconds, "face_px": [min_face, max_face], "margin": margin,
                           "hold_s": hold_s, "noise": noise}}
    write_text_atomic(truth_path(path), json.dumps(truth) + "\n")
    return truth


def truth_path(video: str | Path) -> Path:
    video = Path(video)
    return video.with_name(video.stem + ".truth.json")


def load_truth(video: str | Path) -> dict:
    path = truth_path(video) if not str(video).endswith(".json") else Path(video)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no ground truth beside the video (made by edge.testvideo)") from None


def score_run(results, truth: dict, iou_threshold: float = 0.3, reference: dict | None = None) -> dict:
    """Detection rate and label accuracy of a run (FrameResults or their dicts) against the truth.

    box_scale: percentiles of the detected box side over the true face side.
    reference: optional {sample file: label predicted on the original 48x48 crop}; gives
    `reference_agreement`, the share of matched faces whose label equals that prediction.
    """
    frames = truth["frames"]
    n_truth = matched = false_pos = correct = correct_smoothed = agree = temporal = correct_temporal = 0
    per_frame_hits, box_scale = [], []
    for result in results:
        r = result.to_dict() if hasattr(result, "to_dict") else result
        expected = frames[r["frame"] % len(frames)]
        dets = r["faces"]
        pairs = sorted(((iou(d["box"], t["box"]), di, ti) for di, d in enumerate(dets)
                        for ti, t in enumerate(expected)), reverse=True)
        used_d, used_t = set(), set()
        for overlap, di, ti in pairs:
            if overlap < iou_threshold:
                break
            if di in used_d or ti in used_t:
                continue
            used_d.add(di)
            used_t.add(ti)
            d, t = dets[di], expected[ti]
            box_scale.append(d["box"][2] / t["box"][2])
            correct += d["label"] == t["label"]
            correct_smoothed += d.get("smoothed_label") == t["label"]
            if d.get("temporal_label"):  # faces whose track already had T frames
                temporal += 1
                correct_temporal += d["temporal_label"] == t["label"]
            if reference is not None:
                agree += d["label"] == reference.get(t["file"])
        n_truth += len(expected)
        matched += len(used_t)
        false_pos += len(dets) - len(used_d)
        per_frame_hits.append(len(used_t))
    frames_seen = len(per_frame_hits)
    out = {
        "frames": frames_seen, "faces": n_truth, "detected": matched,
        "detection_rate": matched / n_truth if n_truth else 0.0,
        "false_detections": false_pos, "false_per_frame": false_pos / frames_seen if frames_seen else 0.0,
        "label_accuracy": correct / matched if matched else 0.0,
        "smoothed_label_accuracy": correct_smoothed / matched if matched else 0.0,
        "iou_threshold": iou_threshold,
        # detected box side / true face side over matched faces (10th, 50th, 90th percentile): how
        # loose or tight the detector frames a face, which the crop and so the label depend on
        "box_scale": [float(v) for v in np.percentile(box_scale, [10, 50, 90])] if box_scale else None,
    }
    if reference is not None:
        out["reference_agreement"] = agree / matched if matched else 0.0
    if temporal:
        out["temporal_label_accuracy"] = correct_temporal / temporal
        out["temporal_labelled"] = temporal
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m feredge.edge.testvideo", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="the .mp4 to write (its ground truth goes beside it as NAME.truth.json)")
    parser.add_argument("--faces", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--fps", type=float, default=15.0)
    parser.add_argument("--size", default="640x480", help="WIDTHxHEIGHT")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hold", type=float, default=2.0,
                        help="seconds each face stays before the next one (shorter: more distinct faces, so "
                             "label accuracy over the video says more about a model)")
    args = parser.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    if args.hold <= 0:
        parser.error(f"--hold must be positive, not {args.hold:g}")
    truth = make_test_video(args.out, args.faces, seconds=args.seconds, fps=args.fps, size=(w, h), seed=args.seed,
                            hold_s=args.hold)
    distinct = len({face["file"] for frame in truth["frames"] for face in frame})
    print(f"{args.out}: {len(truth['frames'])} frames, {args.faces} face(s) each, {distinct} distinct faces, "
          f"truth in {truth_path(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
