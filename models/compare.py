"""`feredge compare`: trained runs side by side on one test split.

Accuracy, macro-F1 and per-class recall on the same data; parameters and MACs from the network;
seconds per epoch and total training time from the run's own history; Keras inference
milliseconds per face at batch 1 on this machine.
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np

from feredge.edge.fileio import write_text_atomic


def keras_ms_per_face(model, input_shape, runs: int = 200, warmup: int = 20) -> float:
    """Median wall time of one batch-1 forward pass (a traced call, as a serving loop would make)."""
    from feredge.models.tf_env import tf

    x = tf.constant(np.random.default_rng(0).random((1, *input_shape), dtype=np.float32))
    call = tf.function(lambda t: model(t, training=False))
    for _ in range(warmup):
        call(x).numpy()
    times = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        call(x).numpy()
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times) / 1e6


def describe_run(run: str | Path, data, split: str | None) -> dict:
    from feredge.models.architectures import count_macs
    from feredge.evaluation.datasets import load_dataset
    from feredge.evaluation.scoring import evaluate_model
    from feredge.models.run_dir import base_run, locate_model, run_record
    from feredge.models.model_io import load_keras_model

    run = Path(run)
    files = locate_model(run)
    model = load_keras_model(files.model)
    record = run_record(run)
    config, history = record["config"], record["history"]
    base = base_run(config)  # a fine-tuned run also cost its starting run's training
    dataset = load_dataset(data, split=split, color=files.spec.channels == 3, progress=False)
    report = evaluate_model(model, dataset, files.spec, files.labels)
    seconds = history.get("seconds", [])
    val = history.get("val_accuracy", [])
    return {
        "run": str(run),
        "arch": config.get("arch", model.name),
        "label": row_label(config.get("arch", model.name), config),
        "parameters": int(model.count_params()),
        "macs": count_macs(model),
        "accuracy": report["accuracy"],
        "macro_f1": report["macro_f1"],
        "recall": {label: v["recall"] for label, v in report["per_class"].items()},
        "epochs_trained": len(seconds) + (base["epochs"] if base else 0),
        "best_epoch": (f"avg {record['state']['swa_averaged']}" if record["state"].get("swa_averaged")
                       else int(np.argmax(val)) + 1 if val else None),
        "seconds_per_epoch": statistics.median(seconds) if seconds else None,
        "training_hours": sum(seconds) / 3600 + ((base["hours"] or 0) if base else 0) if seconds else None,
        "keras_ms_per_face": keras_ms_per_face(model, files.spec.input_shape),
        "data": f"{data}" + (f" [{split}]" if split else ""),
        "samples": report["num_samples"],
    }


def row_label(arch: str, config: dict) -> str:
    """The table's name for a run: its architecture, and how it was trained if not from scratch alone
    with Adam and no weight decay (the recipe of the seed rows)."""
    teachers = config.get("teachers") or []
    how = [word for word, used in (("distilled" + (f" from {len(teachers)}" if len(teachers) > 1 else ""), teachers),
                                   ("fine-tuned", config.get("init_from")),
                                   ("weight-averaged", config.get("swa_epochs"))) if used]
    if config.get("optimizer", "adam") != "adam":
        how.append(config["optimizer"].upper())
    if config.get("weight_decay"):
        how.append(f"weight decay {config['weight_decay']:g}")
    return f"{arch} ({', '.join(how)})" if how else arch


def merge_rows(*row_lists: list[dict]) -> list[dict]:
    """One table from several record files; a later row replaces an earlier one of the same run (or,
    where either lacks a run folder, the same label): two runs trained alike both keep their rows."""
    merged: list[dict] = []
    for rows in row_lists:
        for row in rows:
            merged = [kept for kept in merged if not _same_run(kept, row)]
            merged.append(row)
    return merged


def _same_run(a: dict, b: dict) -> bool:
    if a.get("run") and b.get("run"):
        return a["run"] == b["run"]
    return _name(a) == _name(b)


def load_rows(path: str | Path) -> list[dict]:
    path = Path(path)
    try:
        rows = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such comparison file") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    needed = ("arch", "accuracy", "macro_f1", "parameters", "macs", "recall")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and all(k in r for k in needed) for r in rows):
        raise ValueError(f"{path}: expected a list of 'feredge compare' records with {', '.join(needed)}")
    return rows


def _name(row: dict) -> str:
    return row.get("label") or row["arch"]


def _cell_name(row: dict) -> str:
    name, note = _name(row), row.get("note")
    if not note:
        return name
    return f"{name[:-1]}; {note})" if name.endswith(")") else f"{name} ({note})"


def format_markdown(rows: list[dict]) -> str:
    head = ("| network | accuracy | macro-F1 | parameters | MACs | s/epoch | epochs (best) | "
            "train h | Keras ms/face |")
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {_cell_name(r)} | {100 * r['accuracy']:.2f} % | {r['macro_f1']:.4f} | {r['parameters']:,} | "
            f"{r['macs'] / 1e6:.1f} M | {_num(r.get('seconds_per_epoch'), '.0f')} | "
            f"{_num(r.get('epochs_trained'), '')} ({_num(r.get('best_epoch'), '')}) | "
            f"{_num(r.get('training_hours'), '.2f')} | "
            f"{_num(r.get('keras_ms_per_face'), '.2f')} |")
    labels = list(rows[0]["recall"]) if rows else []
    lines += ["", "| network | " + " | ".join(f"{label} recall" for label in labels) + " |",
              "|---|" + "---:|" * len(labels)]
    for r in rows:
        lines.append(f"| {_cell_name(r)} | " + " | ".join(f"{100 * r['recall'][label]:.1f} %" for label in labels) + " |")
    return "\n".join(lines) + "\n"


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def add_arguments(p) -> None:
    from feredge.models.model_io import add_trust_argument

    add_trust_argument(p)
    p.add_argument("runs", nargs="+", help="run directories written by feredge train")
    p.add_argument("--data", required=True, help="labelled test data (a folder with test/, class folders or the CSV)")
    p.add_argument("--split", help="split of --data (default: test when the data has one)")
    p.add_argument("--out", help="write the table here (.md) and the records beside it (.json)")
    p.add_argument("--keep", metavar="JSON", action="append", default=[],
                   help="records of earlier runs to keep in the table (a comparison .json, e.g. "
                        "models/pretrained/comparison.json); rows measured now replace same-named ones")


def run(args) -> int:
    split = args.split
    if split is None and (Path(args.data).suffix.lower() == ".csv" or (Path(args.data) / "test").is_dir()):
        split = "test"
    kept = [load_rows(path) for path in args.keep]
    rows = merge_rows(*kept, [describe_run(r, args.data, split) for r in args.runs])
    table = format_markdown(rows)
    print(table)
    if args.out:
        out = Path(args.out)
        write_text_atomic(out.with_suffix(".md"), table)
        write_text_atomic(out.with_suffix(".json"), json.dumps(rows, indent=2) + "\n")
    return 0
