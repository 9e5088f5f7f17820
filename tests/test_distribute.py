"""`feredge train --strategy mirrored|multiworker`: the batch and learning-rate rules, the sharded
loading, and real runs: MirroredStrategy on two logical CPU devices (a subprocess, since logical
devices must be set before TensorFlow starts) and MultiWorkerMirroredStrategy with two worker
processes on localhost ports."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from feredge.models.distribute import (
    Task, epoch_length, plan_batches, replica_batches, shard_positions, tf_config_task,
)

pytest.importorskip("tf_keras")

from feredge.models.train import TrainConfig, _load_shard, _load_splits, epoch_batches, train  # noqa: E402

TIMEOUT = 150  # seconds for one training process; a healthy one takes 10-25 s on 2 busy cores
RUN_FILES = {"model.keras", "preprocess.json", "labels.json", "config.json", "history.json", "history.png",
             "eval/metrics.json", "eval/report.txt", "eval/confusion.png", "checkpoint/state.json",
             "checkpoint/last.keras"}


def _recipe(data, **kw) -> dict:
    base = dict(data=str(data), arch="seed001", epochs=3, batch_size=16, lr=3e-3, augment="none", patience=0,
                seed=7, lr_schedule="constant")
    base.update(kw)
    return base


def _flags(recipe: dict) -> list[str]:
    flags = []
    for key, value in recipe.items():
        if key == "teachers":
            flags += [arg for teacher in value for arg in ("--teacher", teacher)]
        else:
            flags += ["--" + key.replace("_", "-"), str(value)]
    return flags


def _feredge(*args: str, env: dict | None = None, cwd=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "feredge", "train", *args], cwd=cwd, text=True,
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, what: str) -> str:
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"{what}: no end after {TIMEOUT} s\n{out[-3000:]}")
    assert proc.returncode == 0, f"{what} failed ({proc.returncode}):\n{out[-3000:]}"
    return out


def _kill_after(procs: list[subprocess.Popen], line: str) -> str:
    """Read the first process's output until `line` appears (the log line of an epoch, written after its
    checkpoint), then kill them all: a run stopped hard at that point."""
    def kill():
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)

    timer = threading.Timer(TIMEOUT, kill)  # a hung process must not hang the test
    timer.start()
    seen = []
    try:
        for text in procs[0].stdout:
            seen.append(text)
            if line in text:
                break
    finally:
        timer.cancel()
        kill()
        for proc in procs:
            proc.communicate()
    output = "".join(seen)
    assert line in output, f"never saw {line!r}:\n{output[-3000:]}"
    return output


def _files(run: Path) -> set[str]:
    return {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()}


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _evaluate(run: Path, data: Path) -> float:
    from feredge.edge.preprocess import PreprocessSpec
    from feredge.evaluation.datasets import load_dataset
    from feredge.evaluation.scoring import evaluate_model
    from feredge.models.model_io import load_keras_model

    val = load_dataset(data, split="test")
    report = evaluate_model(load_keras_model(run / "model.keras"), val, PreprocessSpec.load(run / "preprocess.json"),
                            val.classes)
    return report["accuracy"]


# --- rules without TensorFlow ------------------------------------------------------------------

def test_tf_config_names_the_chief_and_the_ranks():
    cluster = {"worker": ["a:1", "b:2", "c:3"]}
    assert tf_config_task(json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}})) == \
        Task(workers=3, rank=0, is_chief=True, address="a:1")
    assert tf_config_task(json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 2}})) == \
        Task(workers=3, rank=2, is_chief=False, address="c:3")
    with_chief = {"chief": ["c:0"], "worker": ["w:1"]}
    assert tf_config_task(json.dumps({"cluster": with_chief, "task": {"type": "chief", "index": 0}})).is_chief
    task = tf_config_task(json.dumps({"cluster": with_chief, "task": {"type": "worker", "index": 0}}))
    assert (task.rank, task.workers, task.is_chief) == (1, 2, False)
    for bad in ("", "{}", json.dumps({"cluster": {"ps": ["p:1"], "worker": ["w:1"]}, "task": {"type": "worker", "index": 0}}),
                json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 3}})):
        with pytest.raises(ValueError, match="TF_CONFIG"):
            tf_config_task(bad)


def test_the_batch_is_global_and_the_rate_scales_only_when_asked():
    plan = plan_batches(64, replicas=4, workers=2, lr_scaling="none")
    assert (plan.global_batch, plan.per_worker, plan.per_replica, plan.lr_factor) == (64, 32, 16, 1)
    assert plan_batches(64, replicas=4, workers=2, lr_scaling="linear").lr_factor == 4
    with pytest.raises(ValueError, match="global batch and must divide by the 3 replicas"):
        plan_batches(64, replicas=3, workers=1, lr_scaling="none")
    with pytest.raises(ValueError, match="--cpu-devices"):
        TrainConfig(data="x", cpu_devices=2).validate()  # the default strategy has one device
    with pytest.raises(ValueError, match="--strategy"):
        TrainConfig(data="x", strategy="horovod").validate()
    with pytest.raises(ValueError, match="--lr-scaling"):
        TrainConfig(data="x", lr_scaling="sqrt").validate()


def test_workers_shard_the_file_list_and_decode_only_their_part(synthetic_dataset, monkeypatch):
    import feredge.evaluation.datasets as datasets

    cfg = TrainConfig(data=str(synthetic_dataset), val="split:0.25", limit=100, seed=3)
    whole, whole_val = _load_splits(cfg)
    decoded = []
    real_read = datasets.read_image
    monkeypatch.setattr(datasets, "read_image", lambda path, flag: decoded.append(path) or real_read(path, flag))

    one, val, shard = _load_shard(cfg, workers=1, rank=0)  # one worker: exactly what the plain path loads
    np.testing.assert_array_equal(one.images, whole.images)
    assert one.sources == whole.sources and val.sources == whole_val.sources
    np.testing.assert_array_equal(shard.positions, np.arange(len(whole)))

    parts = []
    for rank in range(3):
        decoded.clear()
        part, val, shard = _load_shard(cfg, workers=3, rank=rank)
        np.testing.assert_array_equal(shard.positions, shard_positions(len(whole), 3, rank))
        np.testing.assert_array_equal(shard.labels, whole.labels)  # every worker knows all labels (class weights)
        assert part.sources == [whole.sources[i] for i in shard.positions]
        # its shard, the validation images and one probe of the image size: not the other workers' images
        assert len(set(decoded) - set(part.sources) - set(val.sources)) <= 1
        assert len(decoded) <= len(part) + len(val) + 1
        parts.append(part)
    assert sorted(s for p in parts for s in p.sources) == sorted(whole.sources)
    assert abs(len(parts[0]) - len(parts[2])) <= 1


def test_fer_csv_listing_decodes_only_the_chosen_rows(tmp_path):
    from feredge.evaluation.datasets import list_dataset, load_dataset

    rows = ["emotion,pixels,Usage"]
    rng = np.random.default_rng(0)
    for i in range(9):
        rows.append(f"{i % 7},{' '.join(str(v) for v in rng.integers(0, 256, 48 * 48))},"
                    f"{'Training' if i % 3 else 'PublicTest'}")
    rows.insert(4, "3,1 2 3,Training")  # a bad row: skipped when decoded with skip_bad
    (tmp_path / "fer.csv").write_text("\n".join(rows) + "\n")
    listing = list_dataset(tmp_path / "fer.csv", split="train", skip_bad=True)
    whole = load_dataset(tmp_path / "fer.csv", split="train", skip_bad=True, use_cache=False)
    assert len(listing) == len(whole) + 1
    data, kept = listing.decode([5, 0, 3])
    assert kept.tolist() == [0, 1, 2] and data.sources == [listing.sources[i] for i in (5, 0, 3)]
    good = [listing.sources.index(s) for s in whole.sources]
    data, kept = listing.decode(good)
    np.testing.assert_array_equal(data.images, whole.images)
    bad = [i for i in range(len(listing)) if i not in good]
    data, kept = listing.decode(bad + good[:1])
    assert kept.tolist() == [1] and data.skipped == {"wrong number of pixel values": 1}


def test_replicas_split_the_plain_runs_batches_and_workers_pad_to_one_length(synthetic_dataset):
    from feredge.edge.preprocess import PreprocessSpec

    cfg = TrainConfig(data=str(synthetic_dataset), batch_size=16, augment="standard", seed=5, limit=50)
    data, _ = _load_splits(cfg)
    spec, ones = PreprocessSpec(48, 48, 1), np.ones(7, np.float32)
    targets = np.eye(7, dtype=np.float32)[data.labels]
    plain = list(epoch_batches(data, spec, cfg, 2, ones, targets))
    parts = list(replica_batches(iter(plain), 2))
    assert len(parts) == 2 * len(plain)
    for k, batch in enumerate(plain):  # two replicas' halves are the plain batch, augmentation included
        for a, b, whole in zip(parts[2 * k], parts[2 * k + 1], batch):
            np.testing.assert_array_equal(np.concatenate([a, b]), whole)
    assert epoch_length([25, 24], 1) == 25 and epoch_length([25, 24], 2) == 26
    shard = data.subset(np.arange(25))  # a worker with 25 images where another has 26
    padded = list(epoch_batches(shard, spec, cfg, 2, ones, targets[:25], batch_size=8, stream=(2, 1), length=26))
    assert [len(x) for x, _, _ in padded] == [8, 8, 8, 2]


def test_the_cpu_cannot_be_split_once_tensorflow_runs():
    from feredge.models.tf_env import split_cpu, tf

    tf.constant(1.0) + 1  # TensorFlow is running now
    have = len(tf.config.list_logical_devices("CPU"))
    assert split_cpu(have) == have
    with pytest.raises(RuntimeError, match="FEREDGE_CPU_DEVICES"):
        split_cpu(have + 1)


# --- real runs ---------------------------------------------------------------------------------

def test_mirrored_on_two_cpu_devices_follows_the_plain_run_and_resumes_mid_average(synthetic_dataset, tmp_path):
    """The same recipe, killed after epoch 2 of 3 and resumed, on two replicas of 8 images each
    and on one device with batches of 16: seed001 has no batch norm, so the two differ only in
    how the gradient sums are rounded. Doubling the batch or the rate would change the loss by
    far more than the tolerance."""
    recipe = _recipe(synthetic_dataset, swa_epochs=2)
    report = train(TrainConfig(**recipe, out=str(tmp_path / "plain")), verbose=0)
    plain = json.loads((tmp_path / "plain" / "history.json").read_text())

    run = tmp_path / "mirrored"
    first = _feredge(*_flags(recipe), "--out", str(run), "--strategy", "mirrored", "--cpu-devices", "2", cwd=tmp_path)
    _kill_after([first], "epoch 2/3:")
    assert json.loads((run / "checkpoint" / "state.json").read_text())["epochs_done"] == 2
    out = _finish(_feredge("--resume", "--out", str(run), cwd=tmp_path), "mirrored resume")
    assert "resuming" in out and "after epoch 2 of 3" in out and "2 replicas" in out

    mirrored = json.loads((run / "history.json").read_text())
    np.testing.assert_allclose(mirrored["loss"], plain["loss"], rtol=1e-3)
    np.testing.assert_allclose(mirrored["val_loss"], plain["val_loss"], rtol=1e-2, atol=1e-4)
    np.testing.assert_allclose(mirrored["val_accuracy"], plain["val_accuracy"], atol=1.5 / 56)
    config = json.loads((run / "config.json").read_text())
    assert (config["strategy"], config["cpu_devices"], config["batch_size"]) == ("mirrored", 2, 16)
    assert {k: config["distribution"][k] for k in ("replicas", "workers", "per_replica_batch_size", "lr")} == \
        {"replicas": 2, "workers": 1, "per_replica_batch_size": 8, "lr": 3e-3}
    assert _files(run) == _files(tmp_path / "plain") == RUN_FILES | {"checkpoint/swa_average.npz"}
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(report["accuracy"], abs=1.5 / 56)
    assert json.loads((run / "checkpoint" / "state.json").read_text())["swa_averaged"] == 2
    assert _evaluate(run, synthetic_dataset) == pytest.approx(metrics["accuracy"]) and metrics["accuracy"] > 0.5


def test_two_workers_on_localhost_shard_distil_average_and_resume(synthetic_dataset, tmp_path):
    """Two MultiWorkerMirroredStrategy workers (TF_CONFIG, localhost ports): each decodes half of
    the training files, teachers label each worker's half and the chief keeps the gathered whole,
    z-score statistics are summed over both, only worker 0 writes the run; killed after epoch 2 of
    3 and resumed, mid weight average."""
    train(TrainConfig(**_recipe(synthetic_dataset, epochs=2, lr_schedule="cosine"), out=str(tmp_path / "teacher")),
          verbose=0)
    recipe = _recipe(synthetic_dataset, augment="standard", normalize="zscore", teachers=[str(tmp_path / "teacher")],
                     distill_views=2, swa_epochs=2)
    run = tmp_path / "run"
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    temps = [tmp_path / f"tmp{i}" for i in range(2)]

    def workers(*args):
        procs = []
        for i, temp in enumerate(temps):
            temp.mkdir(exist_ok=True)
            env = {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}),
                   "TMPDIR": str(temp)}
            procs.append(_feredge(*args, "--out", str(run), env=env, cwd=tmp_path))
        return procs

    first = workers(*_flags(recipe), "--strategy", "multiworker")
    _kill_after(first, "epoch 2/3:")
    targets = np.load(run / "teacher_targets.npy")
    assert targets.shape == (2, 7 * 24, 7)  # both views of all 168 images: the workers' halves, gathered
    np.testing.assert_allclose(targets.sum(axis=-1), 1.0, rtol=1e-5)

    left = {p.name for t in temps for p in t.iterdir()}  # what the killed worker 1 could not clean up
    chief, other = workers("--resume")
    out = [_finish(chief, "worker 0"), _finish(other, "worker 1")]
    for rank, text in enumerate(out):
        assert f"worker {rank} of 2: decoded its shard, 84 of the 168 training images" in text
        assert "after epoch 2 of 3" in text
    assert "worker 1: done" in out[1]
    np.testing.assert_array_equal(np.load(run / "teacher_targets.npy"), targets)  # the resume kept them

    config = json.loads((run / "config.json").read_text())
    assert {k: config["distribution"][k] for k in ("workers", "replicas", "per_worker_batch_size")} == \
        {"workers": 2, "replicas": 2, "per_worker_batch_size": 8}
    assert _files(run) == RUN_FILES | {"checkpoint/swa_average.npz", "teacher_targets.npy", "teachers.json"}
    assert [p.name for t in temps for p in t.iterdir() if p.name.startswith("feredge-worker")
            and p.name not in left] == []  # worker 1 deleted its folder

    from feredge.edge.preprocess import PreprocessSpec, fit_zscore
    from feredge.evaluation.datasets import load_dataset
    spec = PreprocessSpec.load(run / "preprocess.json")
    whole = fit_zscore(load_dataset(synthetic_dataset, split="train").images, PreprocessSpec(48, 48, 1))
    assert (spec.mean, spec.std) == pytest.approx((whole.mean, whole.std), abs=2e-6)
    assert len(json.loads((run / "history.json").read_text())["loss"]) == 3
    assert json.loads((run / "checkpoint" / "state.json").read_text())["swa_averaged"] == 2
    accuracy = json.loads((run / "eval" / "metrics.json").read_text())["accuracy"]
    assert _evaluate(run, synthetic_dataset) == pytest.approx(accuracy) and accuracy > 0.5
