"""What aligned crops do to label accuracy: the box crop against the eye-aligned crop, same faces.

    python -m feredge.benchmarks.align --data DATA --limit 1000 --out DIR

Each labelled face (the test split of DATA; default the shipped sample) is enlarged to --side px,
turned by a roll angle (0, then 15 and 30 degrees to a random side, as a tilted head), pasted into a
640x480 textured scene and, for the perturbed conditions, the whole scene gets sensor noise or JPEG
compression. YuNet finds the face; the shipped bundle's tflite-fp32 labels the box crop and the
eye-aligned crop (edge.preprocess.aligned_crop) of the same detection. Faces YuNet misses count for
neither. The upright 48x48 crops, with no scene, give the reference accuracy.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger("feredge.bench")

CONDITIONS = [("upright", 0, None), ("roll 15", 15, None), ("roll 30", 30, None),
              ("upright, noise 8", 0, ("noise", 8)), ("roll 15, noise 8", 15, ("noise", 8)),
              ("upright, jpeg 40", 0, ("jpeg", 40)), ("roll 15, jpeg 40", 15, ("jpeg", 40))]


def _scene(face: np.ndarray, side: int, angle: float, rng, damage) -> tuple[np.ndarray, tuple]:
    from feredge.edge.testvideo import _background, _face_patch

    patch, alpha, m = _face_patch(face, side, 0.35)
    size = patch.shape[0]
    turn = cv2.getRotationMatrix2D((size / 2, size / 2), angle, 1.0)
    patch = cv2.warpAffine(patch, turn, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    alpha = cv2.warpAffine(alpha, turn, (size, size), flags=cv2.INTER_LINEAR)
    frame = cv2.cvtColor(_background(rng, 640, 480), cv2.COLOR_BGR2GRAY).astype(np.float32)
    x0, y0 = int(rng.integers(0, 640 - size)), int(rng.integers(0, 480 - size))
    region = frame[y0:y0 + size, x0:x0 + size]
    frame[y0:y0 + size, x0:x0 + size] = alpha * patch + (1 - alpha) * region
    frame = np.clip(frame + rng.normal(0, 2, frame.shape), 0, 255).astype(np.uint8)
    if damage and damage[0] == "noise":
        frame = np.clip(frame + rng.normal(0, damage[1], frame.shape), 0, 255).astype(np.uint8)
    elif damage and damage[0] == "jpeg":
        ok, data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, int(damage[1])])
        frame = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)
    return frame, (x0 + m, y0 + m, side, side)


def measure(data, limit: int, side: int, seed: int = 0) -> dict:
    from feredge.edge.bundle import Bundle
    from feredge.edge.detect import YuNetDetector, iou
    from feredge.edge.paths import DEFAULT_BUNDLE
    from feredge.edge.preprocess import aligned_crop, crop_face
    from feredge.evaluation.datasets import load_dataset
    from feredge.evaluation.predict import predict
    from feredge.evaluation.scoring import labels_in_model_order

    bundle = Bundle.load(DEFAULT_BUNDLE)
    backend = bundle.open(format="tflite", precision="fp32")
    dataset = load_dataset(data, split="test" if (Path(data) / "test").is_dir() else None)
    if limit and limit < len(dataset):
        dataset = dataset.subset(np.unique(np.linspace(0, len(dataset) - 1, limit).round().astype(int)))
    truth = labels_in_model_order(dataset, bundle.labels)
    spec = bundle.spec
    reference = float((predict(backend, dataset.images, spec).argmax(1) == truth).mean())
    log.info("%d faces from %s; upright crops: %.2f %%", len(dataset), data, 100 * reference)
    detector = YuNetDetector(scale=1.0)
    rows = []
    for name, angle, damage in CONDITIONS:
        rng = np.random.default_rng(seed)
        box_crops, aligned, labels = [], [], []
        for image, label in zip(dataset.images, truth):
            turn = angle * (1 if rng.random() < 0.5 else -1)
            frame, true_box = _scene(image, side, turn, rng, damage)
            found = [d for d in detector.detect(frame) if iou(d.box, true_box) >= 0.3]
            if not found:
                continue
            d = max(found, key=lambda d: iou(d.box, true_box))
            box_crops.append(crop_face(frame, d.box, spec.margin))
            try:
                aligned.append(aligned_crop(frame, d.landmarks[:2], d.eye_ref, spec.margin))
            except ValueError:
                aligned.append(box_crops[-1])
            labels.append(label)
        labels = np.asarray(labels)
        acc_box = float((predict(backend, box_crops, spec).argmax(1) == labels).mean()) if len(labels) else 0.0
        acc_aligned = float((predict(backend, aligned, spec).argmax(1) == labels).mean()) if len(labels) else 0.0
        rows.append({"condition": name, "roll_deg": angle, "damage": damage, "faces": len(dataset),
                     "detected": len(labels), "box_accuracy": acc_box, "aligned_accuracy": acc_aligned,
                     "gain_points": 100 * (acc_aligned - acc_box)})
        log.info("%-18s detected %d/%d; box %.2f %%, aligned %.2f %% (%+.2f points)", name, len(labels),
                 len(dataset), 100 * acc_box, 100 * acc_aligned, 100 * (acc_aligned - acc_box))
    backend.close()
    return {"data": str(data), "faces": len(dataset), "side_px": side, "reference_upright_crops": reference,
            "artifact": "tflite-fp32", "rows": rows}


def format_table(result: dict) -> str:
    lines = ["| condition | faces found | box crop | aligned crop | gain (points) |", "|---|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['condition']} | {r['detected']}/{r['faces']} | {100 * r['box_accuracy']:.2f} % | "
                     f"{100 * r['aligned_accuracy']:.2f} % | {r['gain_points']:+.2f} |")
    lines += ["", f"faces of {result['side_px']} px from {result['data']}; the same faces as upright 48x48 crops: "
                  f"{100 * result['reference_upright_crops']:.2f} %; {result['artifact']}; measured on {result['where']}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    from feredge.edge.device import describe_host, host_record
    from feredge.edge.paths import SAMPLE_DIR

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SAMPLE_DIR))
    parser.add_argument("--limit", type=int, default=0, help="faces, spread evenly over the set (0: all)")
    parser.add_argument("--side", type=int, default=120, help="face side in the scene, px")
    parser.add_argument("--out", default="align-bench")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cv2.setNumThreads(1)
    result = measure(args.data, args.limit, args.side)
    result["where"] = describe_host(host_record())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "align.json").write_text(json.dumps(result, indent=2) + "\n")
    text = format_table(result)
    (out / "align.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
