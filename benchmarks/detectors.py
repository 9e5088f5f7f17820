"""`feredge bench --detectors`: every face detector on scenes with known faces, by face size.

Scenes are 640x480 frames with one to three real faces from the shipped sample pasted at known
boxes (the FER crop, the framing the classifier was trained on) onto textured, noisy backgrounds,
with face sides drawn evenly from each size bin; empty frames of the same kind count false
detections. Test videos (edge.testvideo) add moving faces. Per detector and detection scale:

- ms per frame (median of all frames, one thread where the detector takes one);
- detection rate by true face side (IoU >= 0.3 with the true box);
- false detections per frame on frames with no face;
- the detected box against the true one: side ratio (10th/50th/90th percentile) and the centre's
  offset in face sides, which is what `--detector NAME` corrects so that crops match training.

--photos DIR adds a folder of your own full photos, which has no ground truth: per detector, ms
per image, faces per image and the share of images with at least one face.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger("feredge.bench")

SIZE_BINS = ((24, 32), (32, 40), (40, 48), (48, 64), (64, 96), (96, 240))  # true face side, px
DETECTORS = ("haar", "yunet", "blazeface")
WIDTH, HEIGHT = 640, 480


def _bin_name(lo: int, hi: int) -> str:
    return f"{lo}-{hi - 1}"


def make_scenes(per_bin: int = 40, empty: int = 40, seed: int = 0, sample_dir=None):
    """([(gray frame, [true boxes])], [empty gray frames]): per_bin faces in each size bin."""
    from feredge.edge.paths import SAMPLE_DIR
    from feredge.edge.testvideo import _background, _face_patch, _sample_files

    rng = np.random.default_rng(seed)
    files = _sample_files(Path(sample_dir) if sample_dir else SAMPLE_DIR)
    sides = [int(rng.integers(lo, hi)) for lo, hi in SIZE_BINS for _ in range(per_bin)]
    rng.shuffle(sides)
    scenes = []
    while sides:
        frame = cv2.cvtColor(_background(rng, WIDTH, HEIGHT), cv2.COLOR_BGR2GRAY)
        boxes = []
        for _ in range(int(rng.integers(1, 4))):
            if not sides:
                break
            side = sides[-1]
            patch, alpha, m = _face_patch(cv2.imread(str(files[int(rng.integers(len(files)))][1]),
                                                     cv2.IMREAD_GRAYSCALE), side, 0.25)
            ph, pw = patch.shape
            for _ in range(30):  # a free place: faces never overlap
                x0, y0 = int(rng.integers(0, WIDTH - pw)), int(rng.integers(0, HEIGHT - ph))
                if all(x0 + pw < bx - 4 or bx + bw + 4 < x0 or y0 + ph < by - 4 or by + bh + 4 < y0
                       for bx, by, bw, bh in ((b[0] - b[4], b[1] - b[4], b[2] + 2 * b[4], b[3] + 2 * b[4])
                                              for b in boxes)):
                    break
            else:
                break
            region = frame[y0:y0 + ph, x0:x0 + pw].astype(np.float32)
            frame[y0:y0 + ph, x0:x0 + pw] = (alpha * patch + (1 - alpha) * region).astype(np.uint8)
            boxes.append((x0 + m, y0 + m, side, side, m))
            sides.pop()
        frame = np.clip(frame + rng.normal(0, 4, frame.shape), 0, 255).astype(np.uint8)
        scenes.append((frame, [b[:4] for b in boxes]))
    empties = [np.clip(cv2.cvtColor(_background(rng, WIDTH, HEIGHT), cv2.COLOR_BGR2GRAY)
                       + rng.normal(0, 4, (HEIGHT, WIDTH)), 0, 255).astype(np.uint8) for _ in range(empty)]
    return scenes, empties


def _match(detections, truth, threshold: float = 0.3):
    """[(true box, detection or None)] by greedy IoU."""
    from feredge.edge.detect import iou

    pairs = sorted(((iou(d.box, t), di, ti) for di, d in enumerate(detections) for ti, t in enumerate(truth)),
                   reverse=True)
    used_d, found = set(), {}
    for overlap, di, ti in pairs:
        if overlap < threshold:
            break
        if di not in used_d and ti not in found:
            used_d.add(di)
            found[ti] = detections[di]
    return [(t, found.get(ti)) for ti, t in enumerate(truth)], len(detections) - len(used_d)


def _timed(detector, frame) -> tuple[list, float]:
    t0 = time.perf_counter()
    found = detector.detect(frame)
    return found, (time.perf_counter() - t0) * 1e3


def measure_detector(name: str, scale, scenes, empties, videos=()) -> dict:
    from feredge.edge.detect import parse_detector

    detector = parse_detector(name, scale=scale, min_face=0)
    detector.detect(scenes[0][0])  # warm-up: the first call allocates
    times, hits, offsets, ratios = [], {_bin_name(*b): [0, 0] for b in SIZE_BINS}, [], []
    for frame, truth in scenes:
        found, ms = _timed(detector, frame)
        times.append(ms)
        pairs, _ = _match(found, truth)
        for (x, y, side, _), det in pairs:
            key = next(_bin_name(lo, hi) for lo, hi in SIZE_BINS if lo <= side < hi)
            hits[key][1] += 1
            if det is not None:
                hits[key][0] += 1
                dx, dy, dw, dh = det.box
                ratios.append(dw / side)
                offsets.append(((dx + dw / 2 - x - side / 2) / side, (dy + dh / 2 - y - side / 2) / side))
    false = 0
    for frame in empties:
        found, ms = _timed(detector, frame)
        times.append(ms)
        false += len(found)
    row = {
        "detector": name, "scale": str(scale), "ms_per_frame": float(np.median(times)),
        "ms_p90": float(np.percentile(times, 90)),
        "detection_rate": {k: (h / n if n else None) for k, (h, n) in hits.items()},
        "faces": {k: n for k, (_, n) in hits.items()},
        "rate_40_and_larger": _rate_from(hits, 40),
        "false_per_frame": false / len(empties) if empties else None,
        "box_side_ratio": [float(v) for v in np.percentile(ratios, [10, 50, 90])] if ratios else None,
        "box_centre_offset": [float(v) for v in np.median(offsets, axis=0)] if offsets else None,
    }
    for video, truth in videos:
        row.setdefault("videos", []).append(_on_video(detector, video, truth))
    return row


def _rate_from(hits: dict, smallest: int) -> float | None:
    """Detection rate over the bins that start at `smallest` px or more."""
    chosen = [v for k, v in hits.items() if int(k.split("-")[0]) >= smallest]
    found, total = sum(h for h, _ in chosen), sum(n for _, n in chosen)
    return found / total if total else None


def _on_video(detector, video: Path, truth: dict) -> dict:
    cap = cv2.VideoCapture(str(video))
    times, found_n, total, false = [], 0, 0, 0
    for expected in truth["frames"]:
        ok, frame = cap.read()
        if not ok:
            break
        found, ms = _timed(detector, cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
        times.append(ms)
        boxes = [t["box"] for t in expected]
        pairs, extra = _match(found, boxes)
        total += len(boxes)
        found_n += sum(det is not None for _, det in pairs)
        false += extra
    cap.release()
    return {"video": video.name, "frames": len(times), "ms_per_frame": float(np.median(times)) if times else None,
            "detection_rate": found_n / total if total else None, "false_per_frame": false / len(times) if times else None}


def on_photos(detector, folder: Path) -> dict:
    from feredge.edge.fileio import read_image
    from feredge.edge.preprocess import to_gray

    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"))
    if not files:
        raise ValueError(f"{folder}: no .jpg, .jpeg, .png or .bmp photos")
    times, counts = [], []
    for path in files:
        image = read_image(path)
        if image is None:
            raise ValueError(f"{path}: not a readable image (corrupt or empty)")
        gray = to_gray(image)
        found, ms = _timed(detector, gray)
        times.append(ms)
        counts.append(len(found))
    return {"folder": str(folder), "images": len(files), "ms_per_image": float(np.median(times)),
            "faces_per_image": float(np.mean(counts)), "images_with_a_face": float(np.mean(np.asarray(counts) > 0))}


def run(args) -> dict:
    from feredge.edge.device import describe_host, host_record
    from feredge.edge.testvideo import make_test_video

    cv2.setNumThreads(args.cv_threads)
    scenes, empties = make_scenes(args.per_bin, args.empty, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    videos = []
    for faces in (1, 3):
        path = out / "videos" / f"faces{faces}.mp4"
        truth = make_test_video(path, faces, seconds=args.video_seconds, fps=15.0, seed=20 + faces, hold_s=1.0,
                                face_px=(60, 180))
        videos.append((path, truth))
    rows = []
    jobs = [(name, scale) for name in args.detectors.split(",") for scale in
            (("1", "auto") if name != "blazeface" else ("1",))]
    for i, (name, scale) in enumerate(jobs, 1):
        log.info("[%d/%d] %s at detection scale %s", i, len(jobs), name, scale)
        rows.append(measure_detector(name, scale if scale == "auto" else float(scale), scenes, empties, videos))
        if getattr(args, "photos", None):
            from feredge.edge.detect import parse_detector

            detector = parse_detector(name, scale=scale if scale == "auto" else float(scale), min_face=0)
            rows[-1]["photos"] = on_photos(detector, Path(args.photos))
    result = {"host": host_record(), "where": describe_host(host_record()), "frame": [WIDTH, HEIGHT],
              "scenes": len(scenes), "faces": sum(len(t) for _, t in scenes), "empty_frames": len(empties),
              "opencv_threads": args.cv_threads, "rows": rows}
    (out / "detectors.json").write_text(json.dumps(result, indent=2) + "\n")
    text = format_table(result)
    (out / "detectors.md").write_text(text + "\n")
    print(text)
    return result


def format_table(result: dict) -> str:
    bins = [_bin_name(*b) for b in SIZE_BINS]
    head = ["detector", "scale", "ms/frame", *[f"{b} px" for b in bins], ">=40 px", "false/frame",
            "side ratio p10/50/90", "centre dx,dy", "video ms", "video det."]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        rates = [("-" if r["detection_rate"][b] is None else f"{100 * r['detection_rate'][b]:.0f} %") for b in bins]
        ratio = "-" if not r["box_side_ratio"] else "/".join(f"{v:.2f}" for v in r["box_side_ratio"])
        centre = "-" if not r["box_centre_offset"] else ",".join(f"{v:+.2f}" for v in r["box_centre_offset"])
        vids = r.get("videos", [])
        vms = "/".join(f"{v['ms_per_frame']:.1f}" for v in vids) or "-"
        vdet = "/".join(f"{100 * v['detection_rate']:.0f} %" for v in vids) or "-"
        if "photos" in r:
            ph = r["photos"]
            vdet += (f"; photos: {ph['ms_per_image']:.1f} ms, {ph['faces_per_image']:.2f} faces, "
                     f"{100 * ph['images_with_a_face']:.0f} % with one")
        lines.append("| " + " | ".join([r["detector"], r["scale"], f"{r['ms_per_frame']:.2f}", *rates,
                                        f"{100 * (r['rate_40_and_larger'] or 0):.0f} %",
                                        f"{r['false_per_frame']:.3f}", ratio, centre, vms, vdet]) + " |")
    lines.append("")
    lines.append(f"{result['scenes']} scenes of {result['frame'][0]}x{result['frame'][1]} with {result['faces']} "
                 f"faces, {result['empty_frames']} empty frames; video columns: 1-face / 3-face test video; "
                 f"measured on {result['where']}, OpenCV threads {result['opencv_threads']}")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--detectors", default=",".join(DETECTORS), help="detectors to compare (comma-separated)")
    p.add_argument("--per-bin", type=int, default=40, help="faces per size bin")
    p.add_argument("--empty", type=int, default=40, help="frames with no face (false detections)")
    p.add_argument("--video-seconds", type=float, default=6.0)
    p.add_argument("--cv-threads", type=int, default=1, help="OpenCV threads (1: what one core gives)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--photos", default=None, help="a folder of full photos (no ground truth: counts and time)")
    p.add_argument("--out", default="detector-bench")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
