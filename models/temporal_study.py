"""A first study of seed004's temporal head on synthetic clips: per-frame, EMA and BiLSTM compared.

    python -m feredge.models.temporal_study --data DATA --train-clips 6000 --frames 16 --out DIR

Clips come from FER-2013 stills by `evaluation.clips`' recipe: training clips from the train split
(a stratified subset), test clips from all of PublicTest, each split with its own seed. Per-frame
features come from the shipped `edge` model, frozen. On the same PublicTest clips it reports
per-clip accuracy and macro-F1 of:
- the per-frame model, its label on the last frame (what a live view shows at that moment);
- the per-frame model with the runtime's EMA (alpha 0.5) over the clip, read at the last frame;
- the temporal head (BiLSTM) on 256-d head_fc features and on 7 class log-probabilities.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("feredge.train")


def _ema_last(probs: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """(N, T, C) -> (N, C): the EMA of each clip's probabilities at its last frame, as the runtime's."""
    value = probs[:, 0]
    for t in range(1, probs.shape[1]):
        value = alpha * probs[:, t] + (1 - alpha) * value
    return value


def run(args) -> dict:
    from feredge.edge.paths import PRETRAINED_DIR
    from feredge.evaluation.clips import Recipe, synthesize_clips
    from feredge.evaluation.datasets import load_dataset, stratified_split
    from feredge.evaluation.metrics import classification_report
    from feredge.evaluation.scoring import labels_in_model_order
    from feredge.models.model_io import load_keras_model
    from feredge.models.run_dir import locate_model
    from feredge.models.temporal import (build_head, clip_features, frame_extractor, head_macs,
                                         logprobs_from_features)
    from feredge.models.tf_env import keras

    started = time.perf_counter()
    files = locate_model(PRETRAINED_DIR)
    model, spec, labels = load_keras_model(files.model), files.spec, tuple(files.labels)
    recipe = Recipe(frames=args.frames)
    train = load_dataset(args.data, split="train")
    test = load_dataset(args.data, split="test")
    if args.train_clips < len(train):
        _, keep = stratified_split(train.labels, args.train_clips / len(train), seed=args.seed)
        train = train.subset(keep)
    if args.test_clips and args.test_clips < len(test):  # evenly spread, every class folder contributes
        test = test.subset(np.unique(np.linspace(0, len(test) - 1, args.test_clips).round().astype(int)))
    y_train, y_test = labels_in_model_order(train, labels), labels_in_model_order(test, labels)
    log.info("synthesizing %d training and %d PublicTest clips of %d frames", len(train), len(test), args.frames)
    train_clips = synthesize_clips(train.images, y_train, labels, seed=args.seed, recipe=recipe)
    test_clips = synthesize_clips(test.images, y_test, labels, seed=args.seed + 1000, recipe=recipe)
    result = {"data": str(args.data), "frames": args.frames, "train_clips": len(train), "test_clips": len(test),
              "extractor": "models/pretrained (edge), frozen", "rows": []}
    extractor = frame_extractor(model)
    log.info("per-frame features of %d frames", (len(train) + len(test)) * args.frames)
    fc = {"train": clip_features(extractor, train_clips.clips, spec), "test": clip_features(extractor, test_clips.clips, spec)}
    inputs = {"logprobs": {k: logprobs_from_features(model, v) for k, v in fc.items()}, "head_fc": fc}
    order = np.random.default_rng(args.seed).permutation(len(y_train))  # the split is sorted by class
    for features, x in inputs.items():
        keras.utils.set_random_seed(args.seed)
        head = build_head(args.frames, x["train"].shape[-1], len(labels), units=args.units, dense=args.dense)
        head.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                     metrics=["accuracy"])
        head.fit(x["train"][order], y_train[order], batch_size=128, epochs=args.epochs, validation_split=0.1, verbose=2,
                 callbacks=[keras.callbacks.EarlyStopping(patience=4, restore_best_weights=True)])
        pred = head.predict(x["test"], batch_size=512, verbose=0).argmax(1)
        report = classification_report(y_test, pred, list(labels))
        result["rows"].append({"model": f"BiLSTM head on {features}", "accuracy": report["accuracy"],
                               "macro_f1": report["macro_f1"],
                               "recall": {k: v["recall"] for k, v in report["per_class"].items()},
                               "parameters": int(head.count_params()),
                               "macs": head_macs(args.frames, x["train"].shape[-1], args.units, args.dense,
                                                 len(labels))})
        result.setdefault("confusion", {})[features] = report["confusion_matrix"]
    probs = {"test": np.exp(inputs["logprobs"]["test"])}
    for name, scores in (("per-frame, last frame", probs["test"][:, -1]), ("per-frame + EMA 0.5", _ema_last(probs["test"]))):
        report = classification_report(y_test, scores.argmax(1), list(labels))
        result["rows"].insert(len(result["rows"]) - 2, {
            "model": name, "accuracy": report["accuracy"], "macro_f1": report["macro_f1"],
            "recall": {k: v["recall"] for k, v in report["per_class"].items()}})
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def format_table(result: dict) -> str:
    lines = ["| model | clip accuracy | macro-F1 | happy recall | head parameters | head MACs |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['model']} | {100 * r['accuracy']:.2f} % | {r['macro_f1']:.4f} | "
                     f"{100 * r['recall']['happy']:.1f} % | {r.get('parameters', '-')} | {r.get('macs', '-')} |")
    lines += ["", f"{result['test_clips']} PublicTest clips of {result['frames']} frames; head trained on "
                  f"{result['train_clips']} training clips; extractor {result['extractor']}; measured on {result['where']}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    from feredge.edge.device import describe_host, host_record

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--train-clips", type=int, default=6000)
    parser.add_argument("--test-clips", type=int, default=0, help="PublicTest clips, spread evenly (0: all)")
    parser.add_argument("--units", type=int, default=32)
    parser.add_argument("--dense", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="temporal-study")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = run(args)
    result["where"] = describe_host(host_record())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "temporal.json").write_text(json.dumps(result, indent=2) + "\n")
    text = format_table(result)
    (out / "temporal.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
