"""Hostile files: a model file runs no code unless the user trusts it (issue 35)."""
from __future__ import annotations

import json
import zipfile

import pytest

from feredge.edge.cli import main
from feredge.edge.labels import FER2013_LABELS
from feredge.edge.preprocess import PreprocessSpec
from feredge.models.model_io import code_in_model


def _fake_keras(path, layers):
    """A .keras archive whose config holds `layers` (class, config): read, never built."""
    config = {"class_name": "Functional", "config": {"name": "m", "layers": [
        {"class_name": kind, "config": {"name": f"l{i}", **extra}} for i, (kind, extra) in enumerate(layers)]}}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.json", json.dumps({"keras_version": "2.21.0"}))
        archive.writestr("config.json", json.dumps(config))
    return path


def test_code_layers_are_found_without_building_the_model(tmp_path):
    harmless = _fake_keras(tmp_path / "ok.keras", [("Conv2D", {}), ("TFOpLambda", {"function": "math.multiply"}),
                                                   ("TFOpLambda", {"function": "__operators__.add"})])
    assert code_in_model(harmless) == []
    hostile = _fake_keras(tmp_path / "bad.keras", [("Dense", {}), ("TFOpLambda", {"function": "io.write_file"}),
                                                   ("Lambda", {"function": "bytecode"})])
    found = code_in_model(hostile)
    assert found == ["layer 'l1' (TFOpLambda) calls a TensorFlow function named in the file (io.write_file)",
                     "layer 'l2' (Lambda) runs Python code stored in the file"]
    (tmp_path / "sm").mkdir()
    assert "SavedModel" in code_in_model(tmp_path / "sm")[0]


@pytest.fixture(scope="module")
def lambda_models(tmp_path_factory):
    """The same Lambda-layer model as .h5 and .keras, whose Lambda writes a marker file when it runs."""
    pytest.importorskip("tf_keras")
    from feredge.models.tf_env import keras

    root = tmp_path_factory.mktemp("hostile")
    marker = root / "pwned"

    def payload(t, path=str(marker)):  # defaults are stored with the marshalled code
        open(path, "w").write("ran")
        return t

    inputs = keras.Input((48, 48, 1))
    x = keras.layers.Lambda(payload, name="payload")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(x))
    model = keras.Model(inputs, keras.layers.Dense(7, activation="softmax")(x))
    paths = {}
    for suffix in (".h5", ".keras"):
        folder = root / suffix[1:]
        folder.mkdir()
        model.save(folder / f"model{suffix}")
        (folder / "labels.json").write_text(json.dumps(list(FER2013_LABELS)))
        PreprocessSpec().save(folder / "preprocess.json")
        paths[suffix] = folder / f"model{suffix}"
    marker.unlink(missing_ok=True)  # building the model above ran it once
    return paths, marker


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
@pytest.mark.parametrize("command", ["eval", "export"])
def test_a_lambda_model_runs_no_code_unless_trusted(lambda_models, suffix, command, tmp_path, capsys, monkeypatch):
    paths, marker = lambda_models
    monkeypatch.delenv("FEREDGE_TRUST_MODEL_CODE", raising=False)
    args = [command, "--model", str(paths[suffix])] + (["--out", str(tmp_path / "b"), "--formats", "tflite",
                                                         "--precisions", "fp32"] if command == "export" else [])
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "layer 'payload' (Lambda) runs Python code" in err[0] and "--trust-model-code" in err[0]
    assert not marker.exists()
    assert not (tmp_path / "b").exists()


def test_trusting_a_lambda_model_runs_it_with_a_warning(lambda_models, monkeypatch, capsys):
    from feredge.models.model_io import load_keras_model

    paths, marker = lambda_models
    monkeypatch.setenv("FEREDGE_TRUST_MODEL_CODE", "1")
    model = load_keras_model(paths[".h5"])
    assert marker.exists()  # the refusal above was what kept it from running
    assert model.layers[1].name == "payload"
    marker.unlink()


# --- export never deletes what it did not write ------------------------------------------------

@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """A small model with its preprocessing and labels: the bundle-writing rules below do not depend
    on which network is exported, and it converts in a fraction of the shipped model's time."""
    pytest.importorskip("tf_keras")
    from feredge.models.tf_env import keras

    folder = tmp_path_factory.mktemp("small")
    inputs = keras.Input((48, 48, 1))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    keras.Model(inputs, keras.layers.Dense(7, activation="softmax")(x)).save(folder / "model.keras")
    (folder / "labels.json").write_text(json.dumps(list(FER2013_LABELS)))
    PreprocessSpec().save(folder / "preprocess.json")
    return folder


def _export(model, out):
    from feredge.export import export_model

    return export_model(model, out, formats="tflite", precisions="fp32", progress=False)


@pytest.mark.parametrize("layout", ["webapp", "empty-json", "other-schema"])
def test_a_folder_with_a_file_named_manifest_json_is_not_replaced(layout, small_model, tmp_path):
    out = tmp_path / "webapp"
    (out / "src").mkdir(parents=True)
    files = {"manifest.json": json.dumps({"name": "my app", "icons": []}), "index.html": "<html>mine</html>",
             "src/app.js": "let precious = 1;"}
    if layout == "empty-json":
        files = {"manifest.json": "{}"}
    elif layout == "other-schema":  # a bundle-like manifest of a schema this kit never wrote
        files = {"manifest.json": json.dumps({"schema": 99, "artifacts": []})}
    for name, text in files.items():
        (out / name).write_text(text)
    with pytest.raises(FileExistsError, match="webapp: .*refusing to replace it, choose another --out"):
        _export(small_model, out)
    for name, text in files.items():
        assert (out / name).read_text() == text


def test_a_bundle_with_a_stranger_file_in_it_is_not_replaced(small_model, tmp_path):
    out = tmp_path / "b"
    _export(small_model, out)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"holds files no feredge bundle has \(notes\.txt\)"):
        _export(small_model, out)
    (out / "notes.txt").unlink()
    assert [a.id for a in _export(small_model, out).artifacts] == ["tflite-fp32"]  # a bundle it wrote: replaced


def test_leftovers_of_a_killed_export_are_removed_and_a_running_ones_kept(small_model, tmp_path):
    import os
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    stale = tmp_path / f".b.partial-{dead_pid}-x1y2"
    (stale / "openvino").mkdir(parents=True)
    (stale / "model.fp32.tflite").write_bytes(b"\0" * 1000)
    running = tmp_path / f".b.partial-{os.getppid()}-z3"  # the test runner: alive
    running.mkdir()
    unrelated = tmp_path / ".b.partial-notes"  # not a name this kit writes
    unrelated.mkdir()
    _export(small_model, tmp_path / "b")
    assert not stale.exists() and running.is_dir() and unrelated.is_dir()
