"""models.train on generated data: the loss falls, the run is written, and a stopped run resumes."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

pytest.importorskip("tf_keras")

import feredge.models.train as train_mod  # noqa: E402
from feredge.models.train import (  # noqa: E402
    TrainConfig, TrainState, class_weight_vector, learning_rate, resume, time_left, train,
)


def _config(data, out, **kw):
    base = dict(data=str(data), arch="seed001", out=str(out), epochs=4, batch_size=16, lr=3e-3,
                augment="none", patience=0, seed=7)
    base.update(kw)
    return TrainConfig(**base)


def test_training_lowers_loss_and_writes_a_complete_run(synthetic_dataset, tmp_path):
    report = train(_config(synthetic_dataset, tmp_path / "run"), verbose=0)
    run = tmp_path / "run"
    history = json.loads((run / "history.json").read_text())
    assert len(history["loss"]) == 4
    assert history["loss"][-1] < 0.8 * history["loss"][0]
    assert report["accuracy"] > 0.5  # chance is 1/7
    for name in ("model.keras", "preprocess.json", "labels.json", "config.json", "history.png",
                 "eval/metrics.json", "eval/report.txt", "eval/confusion.png", "checkpoint/state.json"):
        assert (run / name).is_file(), name
    assert json.loads((run / "labels.json").read_text())[0] == "angry"
    assert json.loads((run / "eval/metrics.json").read_text())["accuracy"] == pytest.approx(report["accuracy"])


@pytest.mark.parametrize("optimizer", [{}, {"optimizer": "sgd", "lr": 0.03, "weight_decay": 5e-4}],
                         ids=["adam", "sgd-decay"])
def test_stopped_run_resumes_where_an_unbroken_run_would_be(synthetic_dataset, tmp_path, monkeypatch, optimizer):
    train(_config(synthetic_dataset, tmp_path / "whole", **optimizer), verbose=0)
    whole = json.loads((tmp_path / "whole" / "history.json").read_text())

    real_save = train_mod._save_checkpoint

    def save_then_stop(run, model, state, *rest):
        real_save(run, model, state, *rest)
        if state.epochs_done == 2:
            raise KeyboardInterrupt  # as if Ctrl-C right after the epoch-2 checkpoint

    monkeypatch.setattr(train_mod, "_save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train(_config(synthetic_dataset, tmp_path / "split", **optimizer), verbose=0)
    monkeypatch.setattr(train_mod, "_save_checkpoint", real_save)
    state = json.loads((tmp_path / "split" / "checkpoint" / "state.json").read_text())
    assert state["epochs_done"] == 2

    report = resume(tmp_path / "split", verbose=0)
    split = json.loads((tmp_path / "split" / "history.json").read_text())
    assert report["epochs_trained"] == 4
    np.testing.assert_allclose(split["loss"], whole["loss"], rtol=1e-3)
    np.testing.assert_allclose(split["val_accuracy"], whole["val_accuracy"], atol=1e-6)


def test_resume_can_extend_a_finished_run(synthetic_dataset, tmp_path):
    train(_config(synthetic_dataset, tmp_path / "run", epochs=2), verbose=0)
    report = resume(tmp_path / "run", epochs=3, verbose=0)
    assert report["epochs_trained"] == 3
    assert json.loads((tmp_path / "run" / "config.json").read_text())["epochs"] == 3


def test_existing_run_is_never_clobbered(synthetic_dataset, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "model.keras").write_text("precious")
    with pytest.raises(FileExistsError, match="is not a training run"):  # not even with --overwrite
        train(_config(synthetic_dataset, tmp_path / "run"), overwrite=True, verbose=0)
    (tmp_path / "run" / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match="--resume"):
        train(_config(synthetic_dataset, tmp_path / "run"), verbose=0)
    assert (tmp_path / "run" / "model.keras").read_text() == "precious"
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        resume(tmp_path / "run", verbose=0)


def test_bad_config_rejected():
    with pytest.raises(ValueError, match="augment"):
        TrainConfig(data="x", augment="wild").validate()
    with pytest.raises(ValueError, match="class-weights"):
        TrainConfig(data="x", class_weights="inverse").validate()


def test_bad_optimizer_settings_rejected():
    with pytest.raises(ValueError, match="--optimizer"):
        TrainConfig(data="x", optimizer="rmsprop").validate()
    with pytest.raises(ValueError, match="--weight-decay"):
        TrainConfig(data="x", weight_decay=-1e-4).validate()


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_weight_decay_shrinks_kernels_only_and_survives_a_checkpoint(optimizer, tmp_path):
    from feredge.models.tf_env import keras

    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, name="c")(inputs)
    x = keras.layers.BatchNormalization(name="c_bn")(x)
    outputs = keras.layers.Dense(3, name="d")(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    for layer in ("c", "d"):
        model.get_layer(layer).bias.assign(np.ones(model.get_layer(layer).bias.shape))
    cfg = TrainConfig(data="x", optimizer=optimizer, lr=0.1, weight_decay=0.5)
    model.compile(optimizer=train_mod.build_optimizer(cfg), loss="mse")

    def step_with_zero_gradients(m):
        before = {v.name: v.numpy().copy() for v in m.trainable_variables}
        m.optimizer.apply_gradients([(np.zeros(v.shape, np.float32), v) for v in m.trainable_variables])
        return {v.name: v.numpy() / np.where(before[v.name] == 0, 1, before[v.name]) for v in m.trainable_variables}

    ratios = step_with_zero_gradients(model)  # decoupled decay: w <- w (1 - lr x decay)
    model.save(tmp_path / "last.keras")
    restored = train_mod.load_checkpoint_model(tmp_path / "last.keras")
    assert type(restored.optimizer).__name__ == type(model.optimizer).__name__
    for after in (ratios, step_with_zero_gradients(restored)):
        for name, ratio in after.items():
            expected = 1.0 if ("bias" in name or "_bn/" in name) else 0.95
            np.testing.assert_allclose(ratio[ratio != 0], expected, rtol=1e-5, err_msg=name)


def test_time_left_uses_recent_epochs_and_ignores_one_slow_one():
    assert time_left([60, 60, 60, 60, 300], 100) == ", about 1.7 h left"  # median 60 s, not the mean
    assert time_left([500, 500, 500, 30, 30, 30, 30, 30], 10) == ", about 5 min left"  # only the last five
    assert time_left([2, 3, 4], 3) == ", about 9 s left"
    assert time_left([60], 0) == "" and time_left([], 5) == ""


def test_class_weights_hand_computed():
    labels = np.array([0, 0, 0, 1])  # 2 classes present of 3
    np.testing.assert_allclose(class_weight_vector(labels, 3, "balanced"), [4 / 6, 4 / 2, 0])
    np.testing.assert_allclose(class_weight_vector(labels, 3, "sqrt"), [math.sqrt(4 / 6), math.sqrt(2), 0])
    np.testing.assert_allclose(class_weight_vector(labels, 3, "none"), [1, 1, 1])


def test_learning_rate_schedules():
    cfg = TrainConfig(data="x", epochs=10, lr=1e-3, min_lr=1e-5, warmup_epochs=2)
    state = TrainState(lr=1e-3)
    rates = [learning_rate(cfg, e, state) for e in range(10)]
    assert rates[0] == pytest.approx(5e-4) and rates[2] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(rates[2:], rates[3:])) and rates[-1] > 1e-5
    plateau = TrainConfig(data="x", lr_schedule="plateau")
    assert learning_rate(plateau, 5, TrainState(lr=2.5e-4)) == 2.5e-4


def test_mixed_precision_run_saves_a_float32_model(synthetic_dataset, tmp_path):
    from feredge.models.tf_env import keras

    report = train(_config(synthetic_dataset, tmp_path / "run", epochs=3, mixed_precision=True), verbose=0)
    assert keras.mixed_precision.global_policy().name == "float32"  # restored for whatever runs next
    assert report["accuracy"] > 0.5
    saved = keras.models.load_model(tmp_path / "run" / "model.keras", compile=False)
    assert {layer.dtype_policy.name for layer in saved.layers} == {"float32"}
    trained = keras.models.load_model(tmp_path / "run" / "checkpoint" / "last.keras", compile=False)
    assert "mixed_bfloat16" in {layer.dtype_policy.name for layer in trained.layers}


def test_mixed_precision_under_an_isa_cap_trains_or_fails_in_one_line(synthetic_dataset, tmp_path):
    """TensorFlow on oneDNN picks bf16 kernels from the CPU's flags, which ONEDNN_MAX_CPU_ISA=AVX2
    forbids on an AVX512-BF16 or AMX CPU: there the run must stop before training with one line
    naming the cap, and leave no folder; on an AVX2-only CPU the same command trains."""
    import os
    import subprocess
    import sys

    out = tmp_path / "run"
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    done = subprocess.run([sys.executable, "-m", "feredge", "train", "--data", str(synthetic_dataset), "--arch",
                           "seed001", "--epochs", "1", "--batch-size", "16", "--augment", "none", "--mixed-precision",
                           "--out", str(out)], env=env, capture_output=True, text=True, timeout=300)
    from feredge.edge.device import host_record

    if done.returncode == 0:  # oneDNN's bf16 kernels run under the cap on this CPU (seen on AVX2-only x86)
        assert not {"avx512_bf16", "amx_bf16"} & set(host_record()["isa"]), "should have stopped"
        assert (out / "model.keras").is_file()
    else:
        assert done.returncode == 2, done.stderr[-2000:]
        line = done.stderr.strip().splitlines()[-1]
        assert "Traceback" not in done.stderr and "ONEDNN_MAX_CPU_ISA=AVX2" in line and "--mixed-precision" in line
        assert not out.exists()


def test_soften_keeps_the_ranking_and_flattens_with_temperature():
    from feredge.models.distill import distilled_targets, soften

    p = np.array([[0.7, 0.2, 0.1]], np.float32)
    np.testing.assert_allclose(soften(p, 1.0), p, rtol=1e-5)
    warm = soften(p, 4.0)
    assert warm.sum() == pytest.approx(1.0) and warm[0, 0] > warm[0, 1] > warm[0, 2] and warm[0, 0] < 0.5
    onehot = np.array([[0, 1, 0]], np.float32)
    mixed = distilled_targets(onehot, [p, p], alpha=0.25, temperature=1.0)
    np.testing.assert_allclose(mixed, 0.75 * onehot + 0.25 * p, rtol=1e-5)


def test_student_learns_from_a_teacher_and_resumes_on_the_same_targets(synthetic_dataset, tmp_path):
    from feredge.models.distill import TARGETS_FILE

    train(_config(synthetic_dataset, tmp_path / "teacher", epochs=3), verbose=0)
    cfg = _config(synthetic_dataset, tmp_path / "student", epochs=2, teachers=[str(tmp_path / "teacher")],
                  distill_alpha=1.0, distill_temperature=2.0)
    report = train(cfg, verbose=0)
    targets = np.load(tmp_path / "student" / TARGETS_FILE)
    assert targets.shape == (7 * 24, 7)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, rtol=1e-5)
    assert targets.max(axis=1).mean() < 0.99  # soft, not one-hot: alpha 1 is the teacher alone
    assert report["epochs_trained"] == 2
    from feredge.edge.bundle import sha256_file
    [teacher] = json.loads((tmp_path / "student" / "teachers.json").read_text())
    assert teacher["model_sha256"] == sha256_file(tmp_path / "teacher" / "model.keras")
    assert teacher["epochs"] == 3 and teacher["arch"] == cfg.arch and teacher["training_hours"] > 0
    # a run folder keeps its accuracy in eval/metrics.json; the card names it beside the teacher
    assert teacher["test_accuracy"] == pytest.approx(json.loads((tmp_path / "teacher/eval/metrics.json").read_text())["accuracy"])

    np.save(tmp_path / "student" / TARGETS_FILE, np.full_like(targets, 1 / 7))  # marked: a resume must reuse them
    resume(tmp_path / "student", epochs=3, verbose=0)
    np.testing.assert_allclose(np.load(tmp_path / "student" / TARGETS_FILE), 1 / 7)


def test_teachers_label_each_augmented_view_and_the_epochs_cycle_through_them(synthetic_dataset, tmp_path):
    from feredge.models.distill import TARGETS_FILE, label_images, load_teacher
    from feredge.models.train import augmented_views, epoch_batches

    train(_config(synthetic_dataset, tmp_path / "teacher", epochs=3), verbose=0)
    cfg = _config(synthetic_dataset, tmp_path / "student", epochs=3, teachers=[str(tmp_path / "teacher")],
                  distill_alpha=1.0, distill_temperature=1.0, distill_views=2, augment="camera")
    train(cfg, verbose=0)
    targets = np.load(tmp_path / "student" / TARGETS_FILE)
    assert targets.shape == (2, 7 * 24, 7)
    assert np.abs(targets[0] - targets[1]).max() > 0.01  # two views, two labellings

    from feredge.models.train import _load_splits
    data, _ = _load_splits(cfg)
    views = augmented_views(data, cfg)
    assert not np.array_equal(views[0], views[1]) and not np.array_equal(views[0], data.images)
    np.testing.assert_array_equal(views[1], augmented_views(data, cfg)[1])  # a resume rebuilds the same copies
    # alpha 1, T 1: each view's target is the teacher's own un-flipped output on exactly that copy
    np.testing.assert_allclose(targets[1], label_images(load_teacher(tmp_path / "teacher", data.classes), views[1],
                                                        flip=False), atol=1e-5)
    from feredge.edge.preprocess import PreprocessSpec, preprocess
    spec = PreprocessSpec.load(tmp_path / "student" / "preprocess.json")
    batches = list(epoch_batches(data, spec, cfg, 3, np.ones(7, np.float32), targets, views))
    order = np.random.default_rng([cfg.seed, 3]).permutation(len(data))
    x, t, _ = batches[0]  # epoch 3 of 2 views trains on view 1, in epoch 3's order
    np.testing.assert_allclose(t, targets[1][order[:cfg.batch_size]])
    np.testing.assert_allclose(x, preprocess(views[1][order[:cfg.batch_size]], spec))
    assert sum(len(t) for _, t, _ in batches) == len(data)

    with pytest.raises(ValueError, match="distill-views"):
        _config(synthetic_dataset, tmp_path / "x", distill_views=2).validate()  # no teacher


def test_teacher_with_other_classes_is_refused(synthetic_dataset, tmp_path):
    from feredge.models.distill import teacher_probabilities

    train(_config(synthetic_dataset, tmp_path / "teacher", epochs=1), verbose=0)
    with pytest.raises(ValueError, match="teacher classes"):
        teacher_probabilities(tmp_path / "teacher", np.zeros((2, 48, 48), np.uint8), ["cat", "dog"])


def test_weight_average_is_the_mean_and_survives_a_save(tmp_path):
    from feredge.models.swa import WeightAverage

    rng = np.random.default_rng(0)
    snapshots = [[rng.normal(size=(3, 2)).astype(np.float32), rng.normal(size=4).astype(np.float32)]
                 for _ in range(5)]
    average = WeightAverage()
    for weights in snapshots[:3]:
        average.add(weights)
    average.save(tmp_path / "avg.npz")
    resumed = WeightAverage.load(tmp_path / "avg.npz")
    for weights in snapshots[3:]:
        resumed.add(weights)
    assert resumed.count == 5
    for i in range(2):
        np.testing.assert_allclose(resumed.weights[i], np.mean([s[i] for s in snapshots], axis=0), rtol=1e-6)
    with pytest.raises(ValueError, match="does not match"):
        resumed.add(snapshots[0][:1])


def test_generator_dataset_yields_the_batches_in_order_without_autotuning():
    from feredge.models.tf_env import generator_dataset

    rng = np.random.default_rng(3)
    batches = [(rng.random((n, 8, 8, 1), dtype=np.float32), np.eye(7, dtype=np.float32)[rng.integers(0, 7, n)],
                rng.random(n, dtype=np.float32)) for n in (4, 4, 2)]
    dataset = generator_dataset(lambda: iter(batches), (8, 8, 1), (7,), ())
    # Autotuning's optimisation thread made the end of some epochs wait for up to 60 s.
    assert dataset.options().autotune.enabled is False
    got = list(dataset.as_numpy_iterator())
    assert len(got) == len(batches)
    for pair in zip(got, batches):
        for array, expected in zip(*pair):
            np.testing.assert_array_equal(array, expected)


def test_batchnorm_recalibration_measures_the_plain_average_of_the_batches():
    from feredge.models.swa import recalibrate_batchnorm
    from feredge.models.tf_env import keras

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.BatchNormalization(momentum=0.99)(inputs))
    rng = np.random.default_rng(1)
    batches = [rng.normal(loc=5.0, scale=2.0, size=(32, 3)).astype(np.float32) for _ in range(4)]
    assert recalibrate_batchnorm(model, iter(batches)) == 4
    bn = model.layers[-1]
    np.testing.assert_allclose(bn.moving_mean.numpy(), np.mean([b.mean(axis=0) for b in batches], axis=0), rtol=1e-4)
    np.testing.assert_allclose(bn.moving_variance.numpy(), np.mean([b.var(axis=0) for b in batches], axis=0),
                               rtol=1e-3)
    assert bn.momentum == 0.99


def test_swa_run_ships_the_average_of_its_last_epochs(synthetic_dataset, tmp_path, monkeypatch):
    from feredge.models.tf_env import keras

    train(_config(synthetic_dataset, tmp_path / "start", arch="edge_nano", epochs=1), verbose=0)  # has batch norm
    start = keras.models.load_model(tmp_path / "start" / "model.keras", compile=False)
    seen = []
    real_save = train_mod._save_checkpoint

    def record(run, model, state, *rest):
        if not state.swa_averaged:
            seen.append([w.numpy().copy() for w in model.trainable_weights])
        real_save(run, model, state, *rest)

    monkeypatch.setattr(train_mod, "_save_checkpoint", record)
    cfg = _config(synthetic_dataset, tmp_path / "swa", arch="edge_nano", epochs=3, swa_epochs=2, lr_schedule="constant",
                  lr=1e-3, init_from=str(tmp_path / "start"))
    report = train(cfg, verbose=0)
    assert report["averaged_epochs"] == 2
    shipped = keras.models.load_model(tmp_path / "swa" / "model.keras", compile=False)
    assert shipped.count_params() == start.count_params()
    kernel = 0  # the first convolution: moved away from the start, and equal to the mean of epochs 2 and 3
    assert not np.allclose(seen[0][kernel], start.trainable_weights[kernel].numpy())
    np.testing.assert_allclose(shipped.trainable_weights[kernel].numpy(),
                               (seen[1][kernel] + seen[2][kernel]) / 2, rtol=1e-4, atol=1e-6)


def test_init_from_refuses_another_architecture(synthetic_dataset, tmp_path):
    train(_config(synthetic_dataset, tmp_path / "small", epochs=1), verbose=0)
    with pytest.raises(ValueError, match=r"model\.keras.*do not fit the edge"):
        train(_config(synthetic_dataset, tmp_path / "big", arch="edge", init_from=str(tmp_path / "small")), verbose=0)
    with pytest.raises(FileNotFoundError, match="no trained model"):
        train(_config(synthetic_dataset, tmp_path / "none", init_from=str(tmp_path / "missing")), verbose=0)
    with pytest.raises(ValueError, match="--swa-epochs"):
        _config(synthetic_dataset, tmp_path / "x", swa_epochs=9).validate()
