"""`feredge train --arch seed004` and `feredge eval` of a seed004 run: the temporal head on clips.

The per-frame model (default: the shipped `edge` model) stays frozen; its class log-probabilities
on each frame of a clip are the head's input (`edge.temporal.frame_features`), so the head runs on
the device beside any per-frame artifact. Training clips come from the training split only; the
head's early stopping watches 10 % of them, never the test clips. A run directory holds the
head (model.keras), labels.json, the per-frame model's preprocess.json, temporal.json (frames,
features, which per-frame model), config.json, history.json, and the evaluation on the test
clips: eval/ (report, confusion) and comparison.json/.md (per-frame, EMA, temporal).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from feredge.edge.fileio import write_text_atomic

log = logging.getLogger("feredge.train")

TEMPORAL_FILE = "temporal.json"
EMA_ALPHA = 0.5  # the runtime's default smoothing for video (feredge run --smooth ema:0.5)


@dataclasses.dataclass
class TemporalConfig:
    data: str
    out: str = "runs/seed004"
    frame_model: str = ""  # run directory or model file; "" = the shipped model
    frames: int = 16
    train_split: str | None = "train"
    val: str = "test"  # the data's test split, or a clip folder / video labels CSV
    limit: int | None = 6000  # training clips (a stratified sample of the split's faces)
    units: int = 32
    dense: int = 32
    bidirectional: bool = True
    epochs: int = 40
    patience: int = 5
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    switch_rate: float = 0.25  # spliced copies of this share of the training clips join them (see splice)
    min_tail: int = 4  # frames of the new expression at the end of a spliced clip


def is_temporal_run(path) -> bool:
    path = Path(path)
    return (path / TEMPORAL_FILE).is_file() if path.is_dir() else (path.parent / TEMPORAL_FILE).is_file()


def load_temporal_run(path):
    """(head model, temporal.json dict, labels, frame ModelFiles) of a seed004 run directory."""
    from feredge.models.model_io import load_keras_model
    from feredge.models.run_dir import locate_model

    path = Path(path)
    run = path if path.is_dir() else path.parent
    try:
        info = json.loads((run / TEMPORAL_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{run / TEMPORAL_FILE}: cannot read the temporal description ({exc})") from None
    if not isinstance(info, dict) or not isinstance(info.get("frames"), int) or info.get("features") != "logprobs":
        raise ValueError(f"{run / TEMPORAL_FILE}: expected frames (an integer) and features 'logprobs'")
    files = locate_model(run)
    head = load_keras_model(files.model)
    if tuple(head.input_shape[1:]) != (info["frames"], len(files.labels or ())):
        raise ValueError(f"{files.model}: input {tuple(head.input_shape[1:])} is not (frames, classes) = "
                         f"({info['frames']}, {len(files.labels or ())})")
    return head, info, files.labels, frame_model_files(info.get("frame_model", ""), run)


def frame_model_files(name: str, run: Path | None = None):
    """The per-frame model a run names: '' or 'shipped' is models/pretrained; a relative path is
    taken from the run folder first."""
    from feredge.edge.paths import PRETRAINED_DIR
    from feredge.models.run_dir import locate_model

    if name in ("", "shipped"):
        return locate_model(PRETRAINED_DIR)
    path = Path(name)
    if run is not None and not path.is_absolute() and (run / path).exists():
        path = run / path
    return locate_model(path)


def frame_logprobs(model, clips: np.ndarray, spec, *, chunk: int = 4096) -> np.ndarray:
    """(N, T, classes) head features of (N, T, H, W) uint8 clips through the per-frame Keras model,
    preprocessed as its spec says, flip averaging included (what the device's artifact gives)."""
    from feredge.edge.temporal import frame_features
    from feredge.evaluation.predict import predict

    n, t = clips.shape[:2]
    flat = clips.reshape(n * t, *clips.shape[2:])
    out, started = [], time.perf_counter()
    for start in range(0, len(flat), chunk):
        out.append(predict(model, flat[start:start + chunk], spec))
        done = min(start + chunk, len(flat))
        if len(flat) > chunk:
            log.info("per-frame model: %d/%d frames (%.0f frames/s)", done, len(flat),
                     done / max(time.perf_counter() - started, 1e-9))
    probs = np.concatenate(out) if out else np.zeros((0, 1), np.float32)
    return frame_features(probs).reshape(n, t, -1)


def cached_logprobs(frame_files, clips: np.ndarray, load_model) -> np.ndarray:
    """frame_logprobs, kept in $FEREDGE_CACHE/temporal (default ~/.cache/feredge/temporal) under a
    key of the model file, its spec and the clips' bytes: training the head again, with other
    settings, then takes minutes instead of a pass of the per-frame model over every frame."""
    import hashlib
    import os

    key = hashlib.sha256(_sha256(frame_files.model).encode())
    key.update(json.dumps(frame_files.spec.to_dict(), sort_keys=True).encode())
    key.update(str(clips.shape).encode())
    key.update(memoryview(np.ascontiguousarray(clips)).cast("B"))
    root = Path(os.environ.get("FEREDGE_CACHE") or Path.home() / ".cache" / "feredge") / "temporal"
    path = root / f"logprobs-{key.hexdigest()[:32]}.npy"
    try:
        cached = np.load(path, allow_pickle=False)
        if cached.shape[:2] == clips.shape[:2]:
            log.info("per-frame log-probabilities of %d clips from cache %s", len(clips), path)
            return cached
    except (OSError, ValueError):
        pass
    x = frame_logprobs(load_model(), clips, frame_files.spec)
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.save(fh, x, allow_pickle=False)
        tmp.replace(path)
    except OSError as exc:  # a read-only home: no cache, same result
        log.info("not caching the log-probabilities (%s)", exc)
    return x


def model_order(clips, labels) -> np.ndarray:
    from feredge.evaluation.scoring import labels_in_model_order

    try:
        return labels_in_model_order(clips, tuple(labels))
    except ValueError as exc:
        raise ValueError(f"{clips.source}: {exc}") from None


def ema_last(probs: np.ndarray, alpha: float = EMA_ALPHA) -> np.ndarray:
    """(N, T, C) -> (N, C): each clip's EMA of the probabilities at its last frame, as the runtime's."""
    value = probs[:, 0]
    for t in range(1, probs.shape[1]):
        value = alpha * probs[:, t] + (1 - alpha) * value
    return value


def splice(x: np.ndarray, y: np.ndarray, min_tail: int, rng: np.random.Generator) -> np.ndarray:
    """Each sequence with its first k frames taken from a clip of another class, k drawn from
    [1, T - min_tail]; the label stays the tail's. Clips made from stills never change expression,
    so without these a head learns to hold the first expression it saw for T frames; with them it
    learns to follow a change once `min_tail` frames show it."""
    n, t = x.shape[:2]
    out = x.copy()
    if n == 0 or len(np.unique(y)) < 2:
        return out
    ks = rng.integers(1, max(1, t - min_tail) + 1, n)
    for i in range(n):
        j = rng.integers(n)
        while y[j] == y[i]:
            j = rng.integers(n)
        out[i, :ks[i]] = x[j, :ks[i]]
    return out


def compare(features: np.ndarray, y: np.ndarray, head_probs: np.ndarray, labels) -> dict:
    """Per-clip reports of the per-frame model (last frame), with EMA, and the temporal head."""
    from feredge.evaluation.metrics import classification_report

    frame_probs = np.exp(features)
    rows = []
    for name, scores in (("per-frame (last frame)", frame_probs[:, -1]),
                         (f"per-frame + EMA {EMA_ALPHA}", ema_last(frame_probs)),
                         ("temporal head (seed004)", head_probs)):
        report = classification_report(y, scores.argmax(1), list(labels))
        rows.append({"model": name, "accuracy": report["accuracy"], "macro_f1": report["macro_f1"],
                     "recall": {k: v["recall"] for k, v in report["per_class"].items()}, "report": report})
    return {"clips": int(len(y)), "frames": int(features.shape[1]), "rows": rows}


def format_comparison(result: dict) -> str:
    labels = list(result["rows"][0]["recall"])
    lines = []
    for title, part in (("steady clips (one expression throughout)", result),
                        (f"changing clips (another expression first; the last {result['changing']['min_tail']} "
                         f"or more frames show the label)" if result.get("changing") else "", result.get("changing"))):
        if not part:
            continue
        lines += [f"{title}:", "", "| model | clip accuracy | macro-F1 | "
                  + " | ".join(f"{k} recall" for k in labels) + " |", "|---|---:|---:|" + "---:|" * len(labels)]
        for r in part["rows"]:
            lines.append(f"| {r['model']} | {100 * r['accuracy']:.2f} % | {r['macro_f1']:.4f} | "
                         + " | ".join(f"{100 * r['recall'][k]:.1f} %" for k in labels) + " |")
        lines.append("")
    return "\n".join(lines).rstrip()


def build_and_fit(cfg: TemporalConfig, x: np.ndarray, y: np.ndarray, classes: int):
    """The head trained with Adam on cross-entropy; early stopping on 10 % of the training clips.
    Spliced copies of a `switch_rate` share of the clips join the steady ones."""
    from feredge.models.temporal import build_head
    from feredge.models.tf_env import keras

    keras.utils.set_random_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if cfg.switch_rate > 0:
        chosen = rng.permutation(len(y))[:int(round(cfg.switch_rate * len(y)))]
        x = np.concatenate([x, splice(x[chosen], y[chosen], cfg.min_tail, rng)])
        y = np.concatenate([y, y[chosen]])
    order = rng.permutation(len(y))  # splits come sorted by class
    head = build_head(cfg.frames, x.shape[-1], classes, units=cfg.units, dense=cfg.dense,
                      bidirectional=cfg.bidirectional)
    head.compile(optimizer=keras.optimizers.Adam(cfg.lr), loss="sparse_categorical_crossentropy",
                 metrics=["accuracy"])
    history = head.fit(x[order], y[order], batch_size=cfg.batch_size, epochs=cfg.epochs, validation_split=0.1,
                       verbose=2, callbacks=[keras.callbacks.EarlyStopping(
                           patience=cfg.patience, restore_best_weights=True, monitor="val_accuracy")])
    return head, {k: [float(v) for v in vals] for k, vals in history.history.items()}


def _check_out(out: Path, overwrite: bool) -> None:
    from feredge.models.train import CONFIG_FILE

    if out.exists():
        if not (out / CONFIG_FILE).is_file():  # never delete what this kit did not write
            raise FileExistsError(f"{out}: exists and is not a feredge run; choose another --out")
        if not overwrite:
            raise FileExistsError(f"{out}: already holds a run; use --overwrite to replace it "
                                  f"(a seed004 head trains in minutes, so there is no --resume)")


def _swap_in(tmp: Path, out: Path) -> None:
    """The finished run replaces the old one only now: a failed or interrupted run loses nothing."""
    old = out.with_name(f".old-{out.name}")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def train_temporal(cfg: TemporalConfig, *, overwrite: bool = False) -> dict:
    """Train the head into cfg.out (written aside and swapped in when done); returns the summary."""
    from feredge.evaluation.clip_sources import clip_source

    if cfg.frames < 2:
        raise ValueError(f"--frames must be at least 2, not {cfg.frames}")
    if not 0 <= cfg.switch_rate <= 1 or cfg.min_tail < 1:
        raise ValueError(f"--switch-rate must be within 0-1 and --min-tail at least 1 (got {cfg.switch_rate}, "
                         f"{cfg.min_tail})")
    started = time.perf_counter()
    out = Path(cfg.out)
    frame_files = frame_model_files(cfg.frame_model)
    if frame_files.spec is None or frame_files.labels is None:
        raise ValueError(f"{frame_files.model}: the per-frame model needs preprocess.json and labels.json beside it")
    train_clips = clip_source(cfg.data, cfg.train_split, cfg.frames, seed=cfg.seed, limit=cfg.limit, stratified=True)
    val_clips = clip_source(cfg.data if cfg.val == "test" else cfg.val, "test" if cfg.val == "test" else None,
                            cfg.frames, seed=cfg.seed)
    _check_out(out, overwrite)
    final, out = out, out.with_name(f".partial-{out.name}")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    try:
        report = _train_into(cfg, out, frame_files, train_clips, val_clips)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    _swap_in(out, final)
    report["seconds"] = round(time.perf_counter() - started, 1)
    log.info("seed004 head: %s parameters, %s MACs per clip; %s written in %.0f s", f"{report['parameters']:,}",
             f"{report['macs']:,}", final, report["seconds"])
    return report


def _train_into(cfg: TemporalConfig, out: Path, frame_files, train_clips, val_clips) -> dict:
    from feredge.evaluation.scoring import write_evaluation
    from feredge.models.model_io import load_keras_model
    from feredge.models.run_dir import save_labels
    from feredge.models.temporal import head_macs
    from feredge.models.train import CONFIG_FILE, _save_model_atomic

    write_text_atomic(out / CONFIG_FILE, json.dumps({"arch": "seed004", **dataclasses.asdict(cfg)}, indent=2) + "\n")
    labels = frame_files.labels
    y_train, y_val = model_order(train_clips, labels), model_order(val_clips, labels)
    log.info("seed004: %d training clips from %s; %d test clips from %s; %d frames each",
             len(train_clips), train_clips.source, len(val_clips), val_clips.source, cfg.frames)
    loaded = []

    def frame_model():  # loaded once, and only when a cache misses
        loaded[:] = loaded or [load_keras_model(frame_files.model)]
        return loaded[0]

    x_train = cached_logprobs(frame_files, train_clips.clips, frame_model)
    x_val = cached_logprobs(frame_files, val_clips.clips, frame_model)
    head, history = build_and_fit(cfg, x_train, y_train, len(labels))
    _save_model_atomic(head, out / "model.keras")
    save_labels(out / "labels.json", labels)
    frame_files.spec.save(out / "preprocess.json")
    macs = head_macs(cfg.frames, len(labels), cfg.units, cfg.dense, len(labels), cfg.bidirectional)
    info = {"frames": cfg.frames, "features": "logprobs",
            "frame_model": str(Path(cfg.frame_model).resolve()) if cfg.frame_model else "shipped",
            "frame_model_sha256": _sha256(frame_files.model), "bidirectional": cfg.bidirectional,
            "units": cfg.units, "dense": cfg.dense, "parameters": int(head.count_params()), "macs": macs,
            "switch_rate": cfg.switch_rate, "min_tail": cfg.min_tail}
    write_text_atomic(out / TEMPORAL_FILE, json.dumps(info, indent=2) + "\n")
    write_text_atomic(out / "history.json", json.dumps(history, indent=1) + "\n")
    result = evaluate_clips(head, x_val, y_val, labels, out, val_clips.source, cfg.min_tail)
    write_evaluation(result["rows"][-1]["report"], out / "eval", title=f"seed004 head on {val_clips.source}")
    epochs = len(history.get("loss", []))
    best = int(np.argmax(history["val_accuracy"])) + 1 if history.get("val_accuracy") else epochs
    report = {"accuracy": result["rows"][-1]["accuracy"], "macro_f1": result["rows"][-1]["macro_f1"],
              "epochs_trained": epochs, "best_epoch": best, "parameters": info["parameters"], "macs": macs}
    return report


def evaluate_clips(head, features: np.ndarray, y: np.ndarray, labels, out: Path | None, source: str,
                   min_tail: int = 4) -> dict:
    """The comparison on these clips, and on the same clips spliced (the expression changes, and
    the last `min_tail` frames or more show the label: how fast each method follows a change);
    written as comparison.json/.md into out when given."""
    from feredge.edge.device import describe_host, host_record

    def head_probs(x):
        return head.predict(x, batch_size=512, verbose=0) if len(x) else np.zeros((0, len(labels)), np.float32)

    result = compare(features, y, head_probs(features), labels)
    changing = splice(features, y, min_tail, np.random.default_rng(1))
    result["changing"] = {"min_tail": min_tail, **compare(changing, y, head_probs(changing), labels)}
    result["data"] = source
    result["where"] = describe_host(host_record())
    if out is not None:
        write_text_atomic(out / "comparison.json", json.dumps(result, indent=2) + "\n")
        write_text_atomic(out / "comparison.md", format_comparison(result) + f"\n\n{len(y)} clips of "
                          f"{features.shape[1]} frames from {source}; measured on {result['where']}\n")
    return result


def evaluate_temporal_run(run, data, split: str | None, *, out_dir=None, limit: int | None = None,
                          seed: int = 0) -> dict:
    """`feredge eval` of a seed004 run: per-clip accuracy, macro-F1, recall, confusion, and the comparison."""
    from feredge.evaluation.clip_sources import clip_source
    from feredge.evaluation.scoring import write_evaluation
    from feredge.models.model_io import load_keras_model

    head, info, labels, frame_files = load_temporal_run(run)
    clips = clip_source(data, split, info["frames"], seed=seed, limit=limit)
    y = model_order(clips, labels)
    features = cached_logprobs(frame_files, clips.clips, lambda: load_keras_model(frame_files.model))
    result = evaluate_clips(head, features, y, labels, Path(out_dir) if out_dir else None, clips.source,
                            int(info.get("min_tail", 4)))
    if out_dir:
        write_evaluation(result["rows"][-1]["report"], out_dir, title=f"seed004 head on {clips.source}")
    return result


def _sha256(path: Path) -> str:
    from feredge.edge.bundle import sha256_file

    return sha256_file(path) if Path(path).is_file() else ""
