"""`feredge average`: the mean of the weights of several runs of one network (a "model soup",
Wortsman et al., 2022).

Runs fine-tuned from the same starting weights stay in one basin of the loss, so the mean of
their weights is itself a good network, and usually a better one than any member: averaging
cancels part of what each run's seed drew. Unlike an ensemble it costs nothing at inference.
Runs trained from different random starts do not average; check the result before shipping it.

As in weight averaging within a run (models/swa.py), batch-norm statistics are measured again
on training batches, drawn with the first run's augmentation, seed and preprocessing.

The output folder keeps the first member's record (config, history, teachers, final state) next to
soup.json, which names every member with its hash, seed and hours, so the model card can give
the commands and the whole cost.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np

from feredge.edge.bundle import sha256_file
from feredge.edge.fileio import write_text_atomic
from feredge.models.run_dir import LABELS_FILE, MODEL_FILE, SPEC_FILE, locate_model, run_record

log = logging.getLogger("feredge.soup")

SOUP_FILE = "soup.json"  # the members, as they were when averaged
MEMBER_RECORD = ("config.json", "history.json", "teachers.json", "history.png")


def mean_weights(weight_lists: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Element-wise mean of same-shaped weight lists, in float64, cast back to each array's dtype."""
    first = weight_lists[0]
    for i, weights in enumerate(weight_lists[1:], 1):
        shapes, expected = [w.shape for w in weights], [w.shape for w in first]
        if shapes != expected:
            raise ValueError(f"member {i + 1}: its {len(shapes)} weight arrays do not match the first member's "
                             f"{len(expected)} (a different network)")
    return [np.mean([np.asarray(ws[k], np.float64) for ws in weight_lists], axis=0).astype(first[k].dtype)
            for k in range(len(first))]


def _load_members(runs: list[str]):
    from feredge.models.model_io import load_keras_model

    if len(runs) < 2:
        raise ValueError("averaging needs at least two runs")
    files = [locate_model(r) for r in runs]
    for run, f in zip(runs, files):
        if f.spec is None or f.labels is None:
            raise ValueError(f"{run}: needs its preprocess.json and labels.json beside the model")
        if f.spec != files[0].spec or f.labels != files[0].labels:
            raise ValueError(f"{run}: its preprocessing or labels differ from {runs[0]}'s")
    models = [load_keras_model(f.model) for f in files]
    return files, models


def _member(run: str, files) -> dict:
    record = run_record(Path(files.model).parent)
    seconds = record["history"].get("seconds", [])
    return {"path": str(run), "model_sha256": sha256_file(files.model), "seed": record["config"].get("seed"),
            "hours": sum(seconds) / 3600 if seconds else None}


def average_runs(runs: list[str], out: str | Path, *, data: str | None = None, overwrite: bool = False) -> Path:
    """Write the weight average of `runs` (run folders or git:REV) to `out`, batch norm recalibrated
    on `data`'s train split (default: the data the first run was trained on)."""
    from feredge.models.swa import recalibrate_batchnorm
    from feredge.models.train import TrainConfig, _load_splits, epoch_batches

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: already exists; use --overwrite")
    files, models = _load_members(runs)
    model = models[0]
    model.set_weights(mean_weights([m.get_weights() for m in models]))
    log.info("averaged the weights of %d runs of %s (%s parameters)", len(runs), model.name,
             f"{model.count_params():,}")

    first = run_record(Path(files[0].model).parent)["config"]
    if not first:
        raise ValueError(f"{runs[0]}: no config.json, so the batches to measure batch norm on are unknown")
    cfg = TrainConfig(**{**first, "data": data or first["data"], "teachers": [], "distill_views": 0})
    train_set, _ = _load_splits(cfg)
    onehot = np.eye(len(train_set.classes), dtype=np.float32)[train_set.labels]
    ones = np.ones(len(train_set.classes), np.float32)
    recalibrate_batchnorm(model, (x for x, _, _ in epoch_batches(train_set, files[0].spec, cfg, cfg.epochs, ones,
                                                                   onehot)))

    tmp = out.with_name(".tmp." + out.name)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save(tmp / MODEL_FILE)
    folder = Path(files[0].model).parent
    for name in (SPEC_FILE, LABELS_FILE, *MEMBER_RECORD):
        if (folder / name).is_file():
            shutil.copy2(folder / name, tmp / name)
    state = run_record(folder)["state"]
    write_text_atomic(tmp / "state.json", json.dumps({k: v for k, v in state.items() if k != "history"}) + "\n")
    record = {"members": [_member(r, f) for r, f in zip(runs, files)],
              "batchnorm": {"data": cfg.data, "split": cfg.train_split, "augment": cfg.augment, "seed": cfg.seed,
                            "epoch": cfg.epochs, "images": len(train_set)}}
    write_text_atomic(tmp / SOUP_FILE, json.dumps(record, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)
    log.info("wrote %s", out / MODEL_FILE)
    return out


def add_arguments(p) -> None:
    from feredge.models.model_io import add_trust_argument

    add_trust_argument(p)
    p.add_argument("runs", nargs="+", help="run folders or git:REV of one network, fine-tuned from the same weights")
    p.add_argument("--out", required=True, help="folder for the averaged model, its spec and labels")
    p.add_argument("--data", help="labelled faces to measure batch norm on (default: the first run's training data)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")


def run(args) -> int:
    average_runs(args.runs, args.out, data=args.data, overwrite=args.overwrite)
    print(f"averaged {len(args.runs)} runs into {args.out}; measure it with: feredge eval --model {args.out} "
          f"--data DATA")
    return 0
