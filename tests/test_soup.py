"""models.soup: the weight average of runs fine-tuned from one start, with batch norm measured again."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("tf_keras")

from feredge.edge.cli import main  # noqa: E402
from feredge.models.soup import mean_weights  # noqa: E402
from feredge.models.train import TrainConfig, train  # noqa: E402


def _run(data, out, **kw):
    base = dict(data=str(data), arch="edge_nano", out=str(out), epochs=1, batch_size=16, lr=3e-3, augment="none",
                patience=0, seed=7)
    base.update(kw)
    train(TrainConfig(**base), verbose=0)
    return out


def test_average_of_two_fine_tuned_runs_is_their_mean_with_fresh_batchnorm(synthetic_dataset, tmp_path):
    from feredge.models.swa import batchnorm_layers
    from feredge.models.tf_env import keras

    start = _run(synthetic_dataset, tmp_path / "start")
    members = [_run(synthetic_dataset, tmp_path / f"m{seed}", seed=seed, lr=1e-3, optimizer="sgd",
                    init_from=str(start)) for seed in (1, 2)]
    assert main(["average", *map(str, members), "--out", str(tmp_path / "soup")]) == 0

    loaded = [keras.models.load_model(m / "model.keras", compile=False) for m in members]
    soup = keras.models.load_model(tmp_path / "soup" / "model.keras", compile=False)
    kernel = 0  # the first convolution: the two runs differ, and the soup holds their mean
    a, b = (m.trainable_weights[kernel].numpy() for m in loaded)
    assert not np.allclose(a, b)
    np.testing.assert_allclose(soup.trainable_weights[kernel].numpy(), (a + b) / 2, rtol=1e-5, atol=1e-7)
    soup_bn, member_bn = batchnorm_layers(soup)[0], [batchnorm_layers(m)[0] for m in loaded]
    mean_of_members = (member_bn[0].moving_mean.numpy() + member_bn[1].moving_mean.numpy()) / 2
    assert not np.allclose(soup_bn.moving_mean.numpy(), mean_of_members)  # measured, not averaged

    record = json.loads((tmp_path / "soup" / "soup.json").read_text())
    assert [m["path"] for m in record["members"]] == [str(m) for m in members]
    assert record["batchnorm"]["images"] > 0 and [m["seed"] for m in record["members"]] == [1, 2]
    assert json.loads((tmp_path / "soup" / "config.json").read_text())["seed"] == 1  # the first member's record
    assert json.loads((tmp_path / "soup" / "state.json").read_text())["epochs_done"] == 1
    for name in ("preprocess.json", "labels.json"):
        assert (tmp_path / "soup" / name).read_text() == (members[0] / name).read_text()
    assert main(["eval", "--model", str(tmp_path / "soup"), "--data", str(synthetic_dataset), "--json"]) == 0

    # an existing folder is not overwritten unless asked
    assert main(["average", *map(str, members), "--out", str(tmp_path / "soup")]) == 2


def test_mean_weights_refuses_another_network():
    with pytest.raises(ValueError, match="member 2: its 1 weight arrays do not match"):
        mean_weights([[np.zeros(3), np.ones(2)], [np.zeros(3)]])
    mean = mean_weights([[np.zeros(2, np.float32)], [np.full(2, 3, np.float32)]])
    assert mean[0].dtype == np.float32 and mean[0].tolist() == [1.5, 1.5]


def test_average_needs_two_runs_of_one_preprocessing(synthetic_dataset, tmp_path, capsys):
    one = _run(synthetic_dataset, tmp_path / "one")
    assert main(["average", str(one), "--out", str(tmp_path / "soup")]) == 2
    assert "at least two runs" in capsys.readouterr().err
    other = _run(synthetic_dataset, tmp_path / "other", equalize="global")
    assert main(["average", str(one), str(other), "--out", str(tmp_path / "soup")]) == 2
    assert "preprocessing or labels differ" in capsys.readouterr().err


def test_model_card_of_an_averaged_model_gives_every_member_command_and_all_hours(tmp_path):
    import dataclasses

    from feredge.models.model_card import card_text

    base = tmp_path / "edge"
    base.mkdir()
    (base / "config.json").write_text(json.dumps(dataclasses.asdict(TrainConfig(data="fer", arch="edge",
                                                                                out=str(base), epochs=100))))
    (base / "history.json").write_text(json.dumps({"seconds": [3600.0] * 3}))
    config = dataclasses.asdict(TrainConfig(data="fer", arch="edge", out="x", epochs=60, lr=0.01,
                                            lr_schedule="constant", swa_epochs=50, init_from=str(base)))
    soup = {"members": [{"path": "a", "seed": 1234, "hours": 1.0}, {"path": "b", "seed": 2, "hours": 2.0}],
            "batchnorm": {"images": 28709}}
    per_class = {"angry": {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}}
    report = {"accuracy": 0.5, "macro_f1": 0.5, "weighted_f1": 0.5, "num_samples": 2, "per_class": per_class,
              "averaged_epochs": 50}
    card = card_text(tmp_path, report, config, {"seconds": [3600.0]}, 10, 10, None, "fer", soup=soup)
    commands = [line for line in card.splitlines() if line.startswith("feredge ")]
    assert len(commands) == 4
    assert "--out runs/edge-finetuned " in commands[1] and "--seed" not in commands[1]
    assert "--out runs/edge-finetuned-2 " in commands[2] and "--seed 2" in commands[2]
    assert commands[3] == "feredge average runs/edge-finetuned runs/edge-finetuned-2 --out runs/edge-average"
    assert "first stage took 3.0 h, both 4.0 h" in card  # one member's stage
    assert "mean of the weights of 2 runs" in card and "seed (1234, 2)" in card
    assert "all runs together took 6.0 h" in card  # 3 h first stage + 1 h + the second member's 2 h
