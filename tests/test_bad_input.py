"""Bad input, as an adversarial user brings it: every case exits 2 with one line naming the problem.

One table of cases across `run`, `bench`, `eval`, `export` and bundles (the shipped bundle,
damaged in copies), run in-process through the real `feredge` entry point. Full-disk and
read-only cases use a tiny tmpfs when this machine lets the tests mount one (root), and
/dev/full, which fails every write with ENOSPC for anyone.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from feredge.edge.cli import main
from feredge.edge.paths import DEFAULT_BUNDLE

LABELS = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]


def _damage(root: Path, how: str) -> None:
    """Change the copy of a bundle at `root` in one way a hostile or broken bundle might differ."""
    path = root / "manifest.json"
    m = json.loads(path.read_text())
    first = m["artifacts"][0]
    if how == "list":
        m = [m]
    elif how == "not-json":
        path.write_text("{ not json")
        return
    elif how == "schema":
        m["schema"] = 2
    elif how == "no-artifacts":
        m["artifacts"] = []
    elif how == "no-files":
        first["files"] = []
    elif how == "null-sha":
        first["sha256"] = None
    elif how == "missing-sha":
        first["sha256"] = {}
    elif how == "outside":
        shutil.copy(root / first["files"][0], root.parent / "outside.tflite")
        first["files"] = ["../outside.tflite"]
    elif how == "absolute":
        first["files"] = [str((root / first["files"][0]).resolve())]
    elif how == "labels-count":
        m["labels"] = LABELS[:3]
    elif how == "labels-repeat":
        m["labels"] = LABELS[:6] + ["angry"]
    elif how == "format":
        first["format"] = "tensorrt"
    elif how == "truncated":
        data = (root / first["files"][0]).read_bytes()
        (root / first["files"][0]).write_bytes(data[: len(data) // 3])
        return
    elif how == "missing-file":
        (root / first["files"][0]).unlink()
        return
    elif how == "no-manifest":
        path.unlink()
        return
    elif how == "preprocess":
        m["preprocess"]["normalize"] = "magic"
    path.write_text(json.dumps(m))


BUNDLE_CASES = [  # (damage, expected words in the one line)
    ("list", "not a bundle manifest (a JSON list"),
    ("not-json", "not valid JSON"),
    ("schema", "schema 2 is not the supported 1"),
    ("no-artifacts", "artifacts must be a non-empty list"),
    ("no-files", "files must be a non-empty list"),
    ("null-sha", "every file needs its sha256"),
    ("missing-sha", "every file needs its sha256"),
    ("outside", "lies outside the bundle folder"),
    ("absolute", "lies outside the bundle folder"),
    ("labels-count", "the model has 7 outputs but the manifest names 3 labels"),
    ("labels-repeat", "labels repeat a class name"),
    ("format", "format must be one of"),
    ("truncated", "sha256 differs from the manifest"),
    ("missing-file", "listed in the manifest but missing"),
    ("no-manifest", "not a bundle (no manifest.json)"),
    ("preprocess", "normalize must be one of"),
]


@pytest.fixture
def damaged(tmp_path):
    def make(how: str) -> Path:
        root = tmp_path / "bundle"
        shutil.copytree(DEFAULT_BUNDLE, root)
        _damage(root, how)
        return root
    return make


def _one_line(capsys, code, expected_code, words):
    err = [line for line in capsys.readouterr().err.splitlines()
           if line.strip() and not line.startswith(("note:", "bundle:", "backend:"))]
    assert code == expected_code, err
    assert len(err) == 1 and err[0].startswith("feredge ") and words in err[0], err


@pytest.mark.parametrize("how, words", BUNDLE_CASES, ids=[c[0] for c in BUNDLE_CASES])
def test_a_damaged_bundle_is_one_line_in_run(how, words, damaged, capsys):
    _one_line(capsys, main(["run", "--bundle", str(damaged(how)), "--headless", "--max-frames", "1",
                            "--backend", "tflite"]), 2, words)


@pytest.mark.parametrize("how, words", [c for c in BUNDLE_CASES if c[0] in ("list", "outside", "null-sha")],
                         ids=["list", "outside", "null-sha"])
def test_a_damaged_bundle_is_one_line_in_bench(how, words, damaged, tmp_path, capsys):
    _one_line(capsys, main(["bench", "--bundle", str(damaged(how)), "--no-accuracy", "--out", str(tmp_path / "o")]),
              2, words)


RUN_CASES = [  # (arguments, expected words)
    (["--min-face", "-5"], "--min-face must be at least 1"),
    (["--fps", "-5"], "--fps must be above 0"),
    (["--margin", "1e9"], "--margin must be between 0 and 2"),
    (["--margin", "nan"], "--margin must be between 0 and 2"),
    (["--threads", "0"], "--threads must be at least 1"),
    (["--max-frames", "-1"], "--max-frames must be at least 1"),
    (["--detect-every", "0"], "--detect-every must be at least 1"),
    (["--detect-scale", "3"], "--detect-scale must be in (0, 1]"),
    (["--source", "/nonexistent.mp4"], "/nonexistent.mp4: no such file, folder or camera"),
    (["--smooth", "bogus"], "unknown smoothing 'bogus'"),
    (["--detector", "bogus"], "unknown detector 'bogus'"),
    (["--precision", "int4"], "no int4 artifact"),
    (["--backend", "tensorrt"], "unknown backend 'tensorrt'"),
    (["--serve", "127.0.0.1:99999"], "bad port"),
    (["--record", "/nonexistent-dir/x.mp4"], "no such folder for the recording"),
    (["--record", "out.txt"], "record to an .mp4 file"),
    (["--output", "/nonexistent-dir/x.jsonl"], "no such folder for the JSON lines output"),
    (["--output", "/dev/full"], "/dev/full: cannot write the JSON lines output (No space left on device)"),
    (["--output", "/proc/version"], "/proc/version: cannot write the JSON lines output"),
    (["--bundle", "/nonexistent"], "/nonexistent: no such bundle directory"),
]


@pytest.mark.parametrize("args, words", RUN_CASES, ids=[" ".join(c[0]) for c in RUN_CASES])
def test_bad_run_arguments_are_one_line(args, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _one_line(capsys, main(["run", "--headless", "--max-frames", "2", *args]), 2, words)


def test_a_failed_start_does_not_truncate_the_output_file(tmp_path, capsys):
    out = tmp_path / "results.jsonl"
    out.write_text("yesterday's results\n")
    assert main(["run", "--headless", "--output", str(out), "--source", "/nonexistent.mp4"]) == 2
    assert out.read_text() == "yesterday's results\n"


BENCH_CASES = [
    (["--batch", "0"], "--batch must be at least 1"),
    (["--max-drop", "-1"], "--max-drop must be >= 0"),
    (["--min-runs", "0"], "--min-runs must be at least 1"),
    (["--artifacts", "nope"], "no artifact matches nope"),
    (["--bundle", "/nonexistent"], "/nonexistent: no such bundle directory"),
    (["--video", "/nonexistent.mp4"], "no such video file"),
    (["--detectors", "haar", "--video-seconds", "0"], "--video-seconds must hold at least one frame at 15 FPS"),
]


@pytest.mark.parametrize("args, words", BENCH_CASES, ids=[" ".join(c[0]) for c in BENCH_CASES])
def test_bad_bench_arguments_are_one_line(args, words, capsys, tmp_path):
    _one_line(capsys, main(["bench", "--no-accuracy", "--out", str(tmp_path / "o"), *args]), 2, words)


EVAL_CASES = [
    (["--data", "/nonexistent"], "/nonexistent: no such file or directory"),
    (["--model", "/nonexistent/run"], "no such model"),
    (["--model", str(DEFAULT_BUNDLE / "model.int8.tflite"), "--perturb", "blur:3"], "unknown kind 'blur'"),
    (["--model", str(DEFAULT_BUNDLE / "model.int8.tflite"), "--labels", "a,b"], "takes its labels and preprocessing"),
    (["--normalize", "zscore"], "zscore needs its statistics"),
    (["--input-size", "48by48"], "expected HxW"),
]


@pytest.mark.parametrize("args, words", EVAL_CASES, ids=[" ".join(c[0][-2:]) for c in EVAL_CASES])
def test_bad_eval_arguments_are_one_line(args, words, capsys):
    _one_line(capsys, main(["eval", *args]), 2, words)


EXPORT_CASES = [  # all refused before TensorFlow is imported
    (["--formats", "tflite,tensorrt"], "unknown format 'tensorrt'"),
    (["--precisions", "int4"], "unknown precision 'int4'"),
    (["--skip", "openvino-fp64"], "unknown artifact to skip"),
    (["--calib", "/nonexistent/faces"], "no such calibration folder"),
    (["--calib-count", "0"], "--calib-count must be at least 1"),
    (["--prune", "magnitude:0.5"], "pruning needs fine-tuning data"),
    (["--model", "/nonexistent/run"], "no such model"),
    (["--normalize", "minmax"], "--normalize 'minmax'"),
]


@pytest.mark.parametrize("args, words", EXPORT_CASES, ids=[" ".join(c[0]) for c in EXPORT_CASES])
def test_bad_export_arguments_are_one_line(args, words, capsys, tmp_path):
    _one_line(capsys, main(["export", "--out", str(tmp_path / "b"), *args]), 2, words)
    assert not (tmp_path / "b").exists()


# --- full disk, read-only file system ------------------------------------------------------------

@pytest.fixture
def tiny_fs(tmp_path):
    """A 64 kB tmpfs (root only), unmounted after the test."""
    where = tmp_path / "tiny"
    where.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); /dev/full covers ENOSPC for JSON lines")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_a_recording_that_fills_the_disk_is_an_error_not_a_success(tiny_fs, tmp_path, capsys):
    from feredge.edge.testvideo import make_test_video

    video = tmp_path / "v.mp4"
    make_test_video(video, 1, seconds=2.0, fps=10.0, seed=3)
    code = main(["run", "--source", str(video), "--headless", "--output", str(tmp_path / "o.jsonl"),
                 "--record", str(tiny_fs / "rec.mp4"), "--detector", "none"])
    err = capsys.readouterr().err
    assert code == 2 and "rec.mp4" in err and ("No space left" in err or "could not be written completely" in err)
    assert "recorded" not in err
    assert not (tiny_fs / "rec.mp4").exists() and not list(tiny_fs.glob(".rec*"))


def test_a_read_only_file_system_is_one_line(tiny_fs, capsys):
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True)
    _one_line(capsys, main(["run", "--headless", "--max-frames", "2", "--output", str(tiny_fs / "o.jsonl")]), 2,
              "not writable for the JSON lines output")
    _one_line(capsys, main(["run", "--headless", "--max-frames", "2", "--record", str(tiny_fs / "r.mp4")]), 2,
              "r.mp4")
    _one_line(capsys, main(["eval", "--model", str(DEFAULT_BUNDLE / "model.int8.tflite"), "--out",
                            str(tiny_fs / "ev")]), 2, "Read-only file system")


def test_a_truncated_openvino_ir_names_the_cause(tmp_path):
    from feredge.edge.backends import BackendError, open_artifact

    shutil.copytree(DEFAULT_BUNDLE / "openvino", tmp_path / "ov")
    weights = tmp_path / "ov" / "model.int8.bin"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(BackendError, match=r"model\.int8\.xml: cannot read OpenVINO IR \(Incorrect weights"):
        open_artifact(tmp_path / "ov" / "model.int8.xml")


def test_ctrl_c_during_export_exits_130_like_run(monkeypatch, capsys, tmp_path):
    import feredge.export.pipeline as export_pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_pipeline, "export_model", interrupted)
    assert main(["export", "--out", str(tmp_path / "b")]) == 130
    assert "interrupted; nothing half-written was kept" in capsys.readouterr().err


def test_a_failed_training_leaves_no_empty_folder_and_never_overwrites_a_stranger(tmp_path):
    pytest.importorskip("tf_keras")
    from feredge.models.train import TrainConfig, train

    (tmp_path / "empty-data").mkdir()
    out = tmp_path / "run"
    with pytest.raises(Exception):
        train(TrainConfig(data=str(tmp_path / "empty-data"), arch="seed001", out=str(out), epochs=1))
    assert not out.exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="is not a training run"):
        train(TrainConfig(data=str(tmp_path / "empty-data"), arch="seed001", out=str(mine), epochs=1),
              overwrite=True)
    assert (mine / "thesis.tex").read_text() == "precious"


def test_a_bench_in_which_every_artifact_failed_exits_3(tmp_path, capsys):
    pytest.importorskip("openvino")
    code = main(["bench", "--artifacts", "openvino", "--device", "NPU-that-is-not-here", "--no-accuracy",
                 "--no-recommend", "--min-time", "0.1", "--min-runs", "5", "--warmup", "0.05",
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 3 and "every artifact failed (openvino-int8: error:" in err
    assert not (DEFAULT_BUNDLE / "recommendation.json").exists()


def test_auto_moves_on_when_an_artifact_does_not_open_here(tmp_path, caplog):
    """As an OpenVINO IR that does not compile on a Cortex-A72: the recommendation names it, it
    fails to load, and run --backend auto says so in one line and runs the next choice."""
    from feredge.edge.bundle import sha256_file
    from feredge.edge.device import device_key

    root = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, root)
    weights = root / "openvino" / "model.int8.bin"
    weights.write_bytes(weights.read_bytes()[:1000])
    m = json.loads((root / "manifest.json").read_text())
    ov = next(a for a in m["artifacts"] if a["id"] == "openvino-int8")
    ov["sha256"]["openvino/model.int8.bin"] = sha256_file(weights)  # intact as far as the hash goes
    (root / "manifest.json").write_text(json.dumps(m))
    (root / "recommendation.json").write_text(json.dumps({"device": device_key(), "artifact": "openvino-int8",
                                                          "threads": 1}))
    caplog.set_level("INFO")
    assert main(["run", "--bundle", str(root), "--headless", "--max-frames", "1"]) == 0
    err = caplog.text
    notes = [line for line in err.splitlines() if "does not open here" in line]
    assert len(notes) == 1 and "openvino-int8 does not open here (cannot read OpenVINO IR" in notes[0]
    assert "backend: tflite-fp32" in err
    assert main(["run", "--bundle", str(root), "--headless", "--max-frames", "1", "--backend", "openvino"]) == 2


def test_eval_without_arguments_on_a_device_without_tensorflow_scores_the_bundle(tmp_path):
    """The README's main job on a Pi: no TensorFlow, so the shipped bundle's TFLite artifact is scored."""
    import sys

    blocked = ("import sys; sys.modules['tensorflow'] = None; sys.modules['tf_keras'] = None\n"
               "from edge.cli import main; sys.exit(main(['eval', '--json']))")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["model"].endswith("model.fp32.tflite") and report["num_samples"] == 350
    assert "no TensorFlow here: evaluating the shipped bundle's tflite-fp32" in done.stderr


def test_a_sink_that_fails_while_closing_does_not_hide_why_the_run_failed(caplog):
    from feredge.edge.outputs import Sink

    class Broken(Sink):
        def close(self):
            raise OSError(28, "No space left on device", "rec.mp4")

    with pytest.raises(ValueError, match="the real cause"):
        with Broken():
            raise ValueError("the real cause")
    assert "also failed while closing" in caplog.text
    with pytest.raises(OSError, match="No space left"):  # alone, the closing failure is the error
        with Broken():
            pass


def test_unknown_class_folder_names_a_fix_that_exists(tmp_path):
    from feredge.evaluation.datasets import load_dataset

    (tmp_path / "bored").mkdir()
    import cv2
    import numpy as np

    cv2.imwrite(str(tmp_path / "bored" / "a.png"), np.zeros((48, 48), np.uint8))
    (tmp_path / "happy").mkdir()
    cv2.imwrite(str(tmp_path / "happy" / "b.png"), np.zeros((48, 48), np.uint8))
    with pytest.raises(ValueError) as info:
        load_dataset(tmp_path, use_cache=False, progress=False)
    assert "unknown class folder 'bored'" in str(info.value) and "keep_native_classes" not in str(info.value)
