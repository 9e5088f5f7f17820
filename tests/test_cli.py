"""The feredge command end to end, in subprocesses as a user runs it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def feredge(*args, cwd=None, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "feredge.edge.cli", *map(str, args)], cwd=cwd or REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_help_lists_the_subcommands():
    result = feredge("--help")
    assert result.returncode == 0
    assert "train" in result.stdout and "eval" in result.stdout


def test_unknown_subcommand_is_usage_error():
    result = feredge("fly")
    assert result.returncode == 2 and "invalid choice" in result.stderr


@pytest.fixture(scope="module")
def trained_run(synthetic_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    result = feredge("train", "--data", synthetic_dataset, "--arch", "seed001", "--out", out, "--epochs", 3,
                     "--augment", "none", "--lr", "0.003", "--batch-size", 16)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "validation accuracy" in result.stdout
    return out


def test_eval_on_a_labelled_folder(trained_run, synthetic_dataset, tmp_path):
    result = feredge("eval", "--model", trained_run, "--data", synthetic_dataset, "--out", tmp_path / "ev")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "macro" in result.stdout.lower() and "surprise" in result.stdout
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["num_samples"] == 56  # the test split: 8 per class
    assert (tmp_path / "ev" / "confusion.png").stat().st_size > 1000


def test_eval_json_output(trained_run, synthetic_dataset):
    result = feredge("eval", "--model", trained_run / "model.keras", "--data", synthetic_dataset / "test", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert 0.0 <= report["accuracy"] <= 1.0 and len(report["per_class"]) == 7


def test_eval_under_perturbations(tmp_path):
    """The shipped model on the shipped sample."""
    result = feredge("eval", "--out", tmp_path / "ev", "--perturb", "noise:0,scale:8,box:1.6,noise:12")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "agreement" in result.stdout and "scale:8" in result.stdout
    report = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    rows = {row["condition"]: row for row in report["robustness"]}
    assert list(rows) == ["noise:0", "scale:8", "box:1.6", "noise:12"]
    # no noise is the clean crop: same labels, same accuracy
    assert rows["noise:0"]["agreement"] == 1.0 and rows["noise:0"]["accuracy"] == report["accuracy"]
    # an 8-pixel face or a box 1.6x too loose changes many labels and costs accuracy
    for name in ("scale:8", "box:1.6"):
        assert rows[name]["agreement"] < 0.9 and rows[name]["accuracy"] < report["accuracy"], rows[name]
        assert abs(rows[name]["accuracy_drop"] - (report["accuracy"] - rows[name]["accuracy"])) < 1e-9
    assert "box:1.6" in (tmp_path / "ev" / "report.txt").read_text()
    # noise was measured at two values: a curve of it
    assert (tmp_path / "ev" / "robustness.png").stat().st_size > 5000


def test_eval_bad_perturbation_is_a_one_line_error(trained_run, synthetic_dataset):
    _one_line_error(feredge("eval", "--model", trained_run, "--data", synthetic_dataset, "--perturb", "blur:2"),
                    "blur:2", "unknown kind")


def _one_line_error(result, *needles):
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = [line for line in result.stderr.splitlines() if line.startswith("feredge")]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_missing_model(tmp_path, synthetic_dataset):
    _one_line_error(feredge("eval", "--model", tmp_path / "nope", "--data", synthetic_dataset),
                    "nope", "no such model")


def test_truncated_model_file(trained_run, tmp_path, synthetic_dataset):
    broken = tmp_path / "broken"
    broken.mkdir()
    data = (trained_run / "model.keras").read_bytes()
    (broken / "model.keras").write_bytes(data[: len(data) // 2])
    for name in ("labels.json", "preprocess.json"):
        (broken / name).write_bytes((trained_run / name).read_bytes())
    _one_line_error(feredge("eval", "--model", broken, "--data", synthetic_dataset), "model.keras", "cannot load")


def test_unknown_architecture_and_missing_data(tmp_path, synthetic_dataset):
    _one_line_error(feredge("train", "--data", synthetic_dataset, "--arch", "vgg99", "--out", tmp_path / "r"),
                    "vgg99")
    _one_line_error(feredge("train", "--data", tmp_path / "nodata", "--out", tmp_path / "r2"), "nodata")


def test_corrupt_image_in_eval_data(trained_run, tmp_path):
    data = tmp_path / "faces"
    (data / "happy").mkdir(parents=True)
    (data / "happy" / "broken.jpg").write_bytes(b"not a jpeg at all")
    _one_line_error(feredge("eval", "--model", trained_run, "--data", data), "broken.jpg")


def test_compare_writes_table_and_records(trained_run, synthetic_dataset, tmp_path):
    result = feredge("compare", trained_run, "--data", synthetic_dataset, "--out", tmp_path / "cmp")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads((tmp_path / "cmp.json").read_text())
    assert rows[0]["arch"] == "seed001" and rows[0]["parameters"] == 106_503 and rows[0]["samples"] == 56
    assert rows[0]["epochs_trained"] == 3 and rows[0]["keras_ms_per_face"] > 0
    assert "| seed001 |" in (tmp_path / "cmp.md").read_text()


def test_eval_without_arguments_uses_the_shipped_model_and_sample():
    result = feredge("eval", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["num_samples"] == 350 and "pretrained" in report["model"]
    assert report["accuracy"] > 0.4  # a trained model on real faces; chance is 1/7


def test_eval_runs_an_exported_artifact_through_its_edge_backend():
    """The shipped bundle's artifacts, scored like the Keras model they came from."""
    keras_report = json.loads(feredge("eval", "--json").stdout)
    bundle = REPO / "models" / "pretrained" / "bundle"
    for artifact, same_labels in (("model.fp32.tflite", True), ("openvino/model.int8.xml", False)):
        result = feredge("eval", "--model", bundle / artifact, "--json")
        assert result.returncode == 0, result.stderr[-2000:]
        report = json.loads(result.stdout)
        assert report["num_samples"] == 350 and report["model"].endswith(artifact)
        if same_labels:  # fp32 gives Keras's labels: same preprocessing, same label order
            assert report["confusion_matrix"] == keras_report["confusion_matrix"]
        else:  # int8 within the export's 1-point rule
            assert abs(report["accuracy"] - keras_report["accuracy"]) <= 0.01 + 1e-9


def test_eval_artifact_errors(tmp_path):
    import shutil

    loose = tmp_path / "model.int8.tflite"
    shutil.copy(REPO / "models" / "pretrained" / "bundle" / "model.int8.tflite", loose)
    _one_line_error(feredge("eval", "--model", loose), "model.int8.tflite", "not inside an export bundle")
    bundle = shutil.copytree(REPO / "models" / "pretrained" / "bundle", tmp_path / "bundle")
    damaged = bundle / "model.int8.tflite"
    damaged.write_bytes(damaged.read_bytes()[:1000])
    _one_line_error(feredge("eval", "--model", damaged), "model.int8.tflite", "sha256")


def test_model_card_is_written_from_measured_figures(trained_run, synthetic_dataset, tmp_path):
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    note = "<!-- hand-written -->\n## Notes\n\nMeasured by hand: 12.34 %.\n<!-- /hand-written -->"
    (shipped / "MODEL_CARD.md").write_text(f"# Model card: `old`\n\nold text\n\n{note}\n\nmore old text\n")
    kept_row = {"arch": "seed000", "note": "kept from an earlier session", "accuracy": 0.6612, "macro_f1": 0.5983,
                "parameters": 1799591, "macs": 118_100_000, "recall": {"angry": 0.608}}
    (tmp_path / "cmp.json").write_text(json.dumps([kept_row]))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "feredge.models.model_card", str(trained_run), "--data",
                             str(synthetic_dataset), "--out", str(shipped), "--compare", str(tmp_path / "cmp.json")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((shipped / "metrics.json").read_text())
    card = (shipped / "MODEL_CARD.md").read_text()
    assert f"{100 * metrics['accuracy']:.2f} %" in card and "106,503 parameters" in card
    spec = json.loads((trained_run / "preprocess.json").read_text())
    assert f"multiply-accumulates per {spec['height']}x{spec['width']} face" in card
    assert "--arch seed001" in card and "Known limitations" in card and "| disgust |" in card
    assert note in card and "old text" not in card  # the hand-written block survives, the rest is rewritten
    assert "| seed000 (kept from an earlier session) | 66.12 % |" in card
    for name in ("model.keras", "preprocess.json", "labels.json", "confusion.png", "history.png",
                 "config.json", "history.json", "state.json", "comparison.json"):
        assert (shipped / name).is_file(), name
    # the shipped folder is a run record of its own: compare reads it like the run it came from
    from feredge.models.run_dir import run_record
    state = run_record(trained_run)["state"]
    assert run_record(shipped)["state"] == {k: v for k, v in state.items() if k != "history"}  # kept once, in history.json
    assert run_record(shipped)["history"] == run_record(trained_run)["history"] == state["history"]
    from PIL import Image
    for name in ("confusion.png", "history.png"):  # palette PNGs keep the folder small
        with Image.open(shipped / name) as image:
            assert image.mode == "P" and image.size[0] > 300, name


def test_model_card_training_command_reproduces_the_config():
    import argparse
    import dataclasses
    import shlex

    from feredge.models import cli_train
    from feredge.models.model_card import _train_command
    from feredge.models.train import TrainConfig

    config = dataclasses.asdict(TrainConfig(
        data="fer", arch="edge", out="runs/edge", epochs=100, warmup_epochs=3, label_smoothing=0.1,
        augment="strong", equalize="global", mixed_precision=True, teachers=["runs/a", "runs/b"],
        distill_alpha=0.7, optimizer="sgd", lr=0.05, weight_decay=5e-4))
    parser = argparse.ArgumentParser()
    cli_train.add_arguments(parser)
    args = parser.parse_args(shlex.split(_train_command(config))[2:])
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    rebuilt = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    assert dataclasses.asdict(TrainConfig(**rebuilt)) == config


def test_model_card_of_a_fine_tuned_run_gives_both_stages(tmp_path):
    import dataclasses

    from feredge.models.model_card import card_text
    from feredge.models.train import TrainConfig

    base = tmp_path / "edge"
    base.mkdir()
    base_config = dataclasses.asdict(TrainConfig(data="fer", arch="edge", out=str(base), epochs=100))
    (base / "config.json").write_text(json.dumps(base_config))
    (base / "history.json").write_text(json.dumps({"seconds": [3600.0] * 3}))
    config = dataclasses.asdict(TrainConfig(data="fer", arch="edge", out="x", epochs=30, lr=3e-4,
                                            lr_schedule="constant", swa_epochs=25, init_from=str(base),
                                            optimizer="sgd", weight_decay=5e-4))
    per_class = {"angry": {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}}
    report = {"accuracy": 0.5, "macro_f1": 0.5, "weighted_f1": 0.5, "num_samples": 2, "per_class": per_class,
              "best_epoch": 7, "averaged_epochs": 25}
    card = card_text(tmp_path, report, config, {"seconds": [1800.0] * 2}, 10, 10, None, "fer")
    commands = [line for line in card.splitlines() if line.startswith("feredge train")]
    assert len(commands) == 2
    assert "--init-from" not in commands[0] and "--epochs 100" in commands[0]
    assert "--init-from runs/edge " in commands[1] + " " and "--swa-epochs 25" in commands[1]
    assert "last 25 epochs is shipped" in card and "best PublicTest accuracy" not in card
    assert "first stage took 3.0 h, both 4.0 h" in card
    assert "Recipe: SGD with Nesterov momentum 0.9 (peak learning rate 0.0003" in card
    assert "decoupled weight decay 0.0005 on kernels only" in card
    assert card.splitlines()[2].startswith("The default model of feredge:") and "`feredge eval --data fer`" in card
    nano = card_text(tmp_path, report, config, {"seconds": [1800.0] * 2}, 10, 10, None, "fer", shipped_as="nano")
    assert nano.splitlines()[2].startswith("The `nano` model of feredge's family (`--model nano`, `--bundle nano`):")
    assert "`feredge eval --model nano --data fer`" in nano


def test_model_card_names_teachers_by_hash_and_counts_their_hours(tmp_path):
    import dataclasses

    from feredge.models.model_card import card_text
    from feredge.models.train import TrainConfig

    config = dataclasses.asdict(TrainConfig(data="fer", arch="edge", out="x", epochs=2,
                                            teachers=["models/pretrained"]))
    per_class = {"angry": {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}}
    report = {"accuracy": 0.5, "macro_f1": 0.5, "weighted_f1": 0.5, "num_samples": 2, "per_class": per_class,
              "best_epoch": 2}
    teacher = {"path": "models/pretrained", "model_sha256": "0123456789abcdef" * 4, "arch": "edge",
               "test_accuracy": 0.6824, "training_hours": 3.73, "epochs": 100}
    card = card_text(tmp_path, report, config, {"seconds": [1800.0] * 2}, 10, 10, None, "fer", [teacher])
    assert ("Distilled from `edge` from `models/pretrained` (model sha256 0123456789ab, 68.24 % on PublicTest, "
            "3.7 h of training).") in card
    assert "4.7 h in all" in card  # 1.0 h of its own + 3.73 h of the teacher's
    unknown = card_text(tmp_path, report, config, {"seconds": [1800.0] * 2}, 10, 10, None, "fer",
                        [{**teacher, "training_hours": None}])
    assert "not all on record" in unknown and "teachers' own training," not in unknown
    assert "--distill-views" not in card
    views = card_text(tmp_path, report, {**config, "distill_views": 10}, {"seconds": [1800.0] * 2}, 10, 10, None,
                      "fer", [teacher])
    assert "--distill-views 10" in views and "labelled 10 fixed augmented copies" in views


def test_model_card_counts_a_teacher_that_is_also_the_first_stage_once(tmp_path):
    import dataclasses

    from feredge.edge.bundle import sha256_file
    from feredge.models.model_card import card_text
    from feredge.models.train import TrainConfig

    base = tmp_path / "runs" / "edge-long"
    base.mkdir(parents=True)
    (base / "model.keras").write_bytes(b"first stage weights")
    (base / "config.json").write_text(json.dumps(dataclasses.asdict(TrainConfig(data="fer", arch="edge", out="b"))))
    (base / "history.json").write_text(json.dumps({"seconds": [3600.0] * 4}))
    config = dataclasses.asdict(TrainConfig(data="fer", arch="edge", out="x", epochs=2, init_from=str(base),
                                            teachers=[str(base), "runs/other"]))
    per_class = {"angry": {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}}
    report = {"accuracy": 0.5, "macro_f1": 0.5, "weighted_f1": 0.5, "num_samples": 2, "per_class": per_class,
              "best_epoch": 2}
    as_base = {"path": str(base), "model_sha256": sha256_file(base / "model.keras"), "arch": "edge",
               "test_accuracy": 0.69, "training_hours": 4.0, "epochs": 4}
    other = {"path": "runs/other", "model_sha256": "f" * 64, "arch": "edge", "test_accuracy": 0.68,
             "training_hours": 2.0, "epochs": 2}
    card = card_text(tmp_path, report, config, {"seconds": [1800.0] * 2}, 10, 10, None, "fer", [as_base, other])
    assert "7.0 h in all, the first stage counted once." in card  # 1 + 4 (first stage) + 2, not + 4 again


def test_hand_written_sections_are_found_in_order():
    from feredge.models.model_card import hand_written_sections

    card = ("a\n<!-- hand-written -->one<!-- /hand-written -->\nb\n"
            "<!-- hand-written -->two<!-- /hand-written -->\n<!-- hand-written -->unclosed")
    assert hand_written_sections(card) == ["<!-- hand-written -->one<!-- /hand-written -->",
                                           "<!-- hand-written -->two<!-- /hand-written -->"]


def test_compare_keeps_earlier_records_and_names_how_a_run_was_trained(tmp_path):
    from feredge.models.compare import format_markdown, load_rows, merge_rows, row_label

    assert row_label("edge", {}) == "edge"
    assert row_label("edge", {"teachers": ["t"], "init_from": "r"}) == "edge (distilled, fine-tuned)"
    assert row_label("edge", {"optimizer": "adam", "weight_decay": 0.0}) == "edge"
    assert row_label("edge", {"optimizer": "sgd", "weight_decay": 5e-4}) == "edge (SGD, weight decay 0.0005)"
    noted = {"arch": "edge", "label": "edge (SGD)", "note": "not shipped", "accuracy": 0.7, "macro_f1": 0.7,
             "parameters": 1, "macs": 1e6, "recall": {"angry": 0.5}}
    assert "| edge (SGD; not shipped) | 70.00 % |" in format_markdown([noted])
    row = {"arch": "edge", "accuracy": 0.6824, "macro_f1": 0.6737, "parameters": 613639, "macs": 57.1e6,
           "recall": {"angry": 0.589}}
    old = [row, {**row, "arch": "seed001", "accuracy": 0.5957}]
    new = [{**row, "accuracy": 0.70}, {**row, "label": "edge (distilled)", "accuracy": 0.71}]
    merged = merge_rows(old, new)
    assert [(r.get("label") or r["arch"], r["accuracy"]) for r in merged] == [
        ("seed001", 0.5957), ("edge", 0.70), ("edge (distilled)", 0.71)]
    twins = [{**row, "run": "runs/a", "accuracy": 0.69}, {**row, "run": "runs/b", "accuracy": 0.695}]
    again = merge_rows(old, twins, [{**row, "run": "runs/a", "accuracy": 0.691}])
    assert [(r.get("run"), r["accuracy"]) for r in again] == [(None, 0.5957), ("runs/b", 0.695), ("runs/a", 0.691)]
    assert row_label("edge", {"teachers": ["a", "b"], "init_from": "r", "swa_epochs": 24}) == \
        "edge (distilled from 2, fine-tuned, weight-averaged)"
    table = format_markdown(merged)
    assert "| edge (distilled) | 71.00 % |" in table and "| seed001 | 59.57 % | 0.6737 | 613,639 | 57.1 M | - |" in table

    path = tmp_path / "cmp.json"
    path.write_text(json.dumps([{"arch": "edge"}]))
    with pytest.raises(ValueError, match=r"cmp.json: expected a list of 'feredge compare' records"):
        load_rows(path)
    path.write_text("[{")
    with pytest.raises(ValueError, match=r"cmp.json: not valid JSON"):
        load_rows(path)


def test_comparison_only_rewrites_the_table_and_keeps_the_rest_of_the_card(tmp_path, capsys):
    from feredge.models.model_card import main

    row = {"arch": "edge", "accuracy": 0.6824, "macro_f1": 0.6737, "parameters": 613639, "macs": 57.1e6,
           "recall": {"angry": 0.589}}
    rows = [row, {**row, "arch": "seed000", "accuracy": 0.6612}, {**row, "arch": "seed003", "accuracy": 0.6400},
            {**row, "arch": "seed001", "accuracy": 0.5957}]
    (tmp_path / "cmp.json").write_text(json.dumps(rows))
    note = "<!-- hand-written -->\nThe seed000 row is a shortened run.\n<!-- /hand-written -->"
    card = ("# Model card: `edge`\n\nmeasured text\n\n## Comparison with the seed networks\n\n"
            "| network | accuracy |\n| old-row | 1 % |\n\nNot in this table yet: `seed003`.\n\n"
            f"{note}\n\n## Known limitations\n\nlimits\n")
    (tmp_path / "MODEL_CARD.md").write_text(card)
    assert main(["--comparison-only", "--compare", str(tmp_path / "cmp.json"), "--out", str(tmp_path)]) == 0
    new = (tmp_path / "MODEL_CARD.md").read_text()
    assert "old-row" not in new and "Not in this table yet" not in new
    assert new.startswith("# Model card: `edge`\n\nmeasured text\n\n") and new.endswith(f"{note}\n\n## Known limitations\n\nlimits\n")
    order = [new.index(f"| {name} | ") for name in ("seed001", "seed003", "seed000", "edge")]
    assert order == sorted(order)  # the papers' order, our network last
    assert json.loads((tmp_path / "comparison.json").read_text()) == rows

    # a card without the section gets it before its limitations
    (tmp_path / "MODEL_CARD.md").write_text("# Model card\n\n## Known limitations\n\nlimits\n")
    assert main(["--comparison-only", "--compare", str(tmp_path / "cmp.json"), "--out", str(tmp_path)]) == 0
    new = (tmp_path / "MODEL_CARD.md").read_text()
    assert new.index("| seed003 | 64.00 % |") < new.index("## Known limitations")

    (tmp_path / "cmp.json").write_text("[{")
    assert main(["--comparison-only", "--compare", str(tmp_path / "cmp.json"), "--out", str(tmp_path)]) == 2
    assert "cmp.json: not valid JSON" in capsys.readouterr().err
    assert "| seed003 | 64.00 % |" in (tmp_path / "MODEL_CARD.md").read_text()  # a failed update changes nothing
