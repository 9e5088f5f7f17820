"""The shipped model family by name, and the benchmark that puts models on one accuracy-latency plot."""
from __future__ import annotations

import csv
import json

import pytest

from feredge.benchmarks import family
from feredge.edge import paths
from runtime_support import build_test_bundle, feredge


def test_shipped_names_resolve_and_paths_pass_through(tmp_path, monkeypatch):
    assert paths.resolve_bundle(None) == paths.DEFAULT_BUNDLE
    assert paths.resolve_bundle("edge") == paths.DEFAULT_BUNDLE
    assert paths.resolve_model("edge") == paths.PRETRAINED_DIR
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nano").mkdir()  # a folder with a shipped name is reached as ./nano
    assert paths.resolve_bundle("./nano").resolve() == (tmp_path / "nano").resolve()
    with pytest.raises(FileNotFoundError, match=r"nope: no such bundle, and not a shipped model's name \(edge, nano\)"):
        paths.resolve_bundle("nope")
    # anything else that is not there is left to its reader, which knows what is wrong with it
    for value in ("git:HEAD", "missing/bundle", "model.tflite"):
        assert paths.resolve_model(value) == type(paths.PRETRAINED_DIR)(value)
    monkeypatch.setitem(paths.SHIPPED_RUNS, "nano", tmp_path / "not-installed")
    with pytest.raises(FileNotFoundError, match="the shipped 'nano' model is missing from this install"):
        paths.resolve_model("nano")


def test_cli_names_an_unknown_model(tmp_path):
    done = feredge("run", "--bundle", "tiny", "--headless", cwd=tmp_path)
    assert done.returncode != 0
    assert "tiny: no such bundle, and not a shipped model's name (edge, nano)" in done.stderr


@pytest.fixture(scope="module")
def bundle(bundle_cache):
    return build_test_bundle(bundle_cache)


def test_family_times_and_scores_bundles_and_extra_files(bundle, tmp_path):
    extra = bundle / "model.fp32.tflite"
    out = tmp_path / "family"
    assert family.main(["--bundle", f"test={bundle}", "--extra", f"copy={extra}@test", "--formats", "tflite",
                        "--rounds", "2", "--calls", "3", "--reference", "copy", "--out", str(out)]) == 0
    rows = json.loads((out / "family.json").read_text())["rows"]
    tflite = [r for r in rows if r["model"] == "test"]
    assert {r["artifact"] for r in tflite} == {"tflite-fp32", "tflite-int8"}
    copy = next(r for r in rows if r["model"] == "copy")
    fp32 = next(r for r in tflite if r["artifact"] == "tflite-fp32")
    # the same file read through the bundle's preprocessing and labels scores the same
    assert copy["accuracy"] == fp32["accuracy"] and 0 < fp32["accuracy"] <= 1
    assert copy["parameters"] == fp32["parameters"] > 0
    assert all(len(r["rounds_ms"]) == 2 and r["latency_ms"] > 0 for r in rows)
    with open(out / "family.csv") as fh:
        assert len(list(csv.DictReader(fh))) == len(rows)
    table = (out / "family.md").read_text()
    from feredge.edge.device import host_record

    assert "vs copy" in table and "2 interleaved rounds of 3 calls" in table
    assert f"on {host_record()['cpu']} ({host_record()['machine']}; " in table.splitlines()[0]
    assert (out / "family.png").stat().st_size > 10_000


def test_family_rejects_bad_input_in_one_line(bundle, tmp_path, capsys):
    file = bundle / "model.fp32.tflite"
    cases = [(["--extra", f"x={file}@other"], "expected NAME=FILE@BUNDLE with BUNDLE one of test"),
             (["--extra", "x=/nonexistent.tflite@test"], "/nonexistent.tflite: no such file (--extra x)")]
    for extra, words in cases:
        assert family.main(["--bundle", f"test={bundle}", *extra, "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0]
    assert family.main(["--bundle", "nope", "--out", str(tmp_path)]) == 2
    assert "nope: no such bundle, and not a shipped model's name" in capsys.readouterr().err


def test_a_shipped_name_reaches_run_eval_and_export(bundle, tmp_path, monkeypatch):
    import importlib.util
    import shutil

    from feredge.edge.cli import main
    from feredge.export.cli import default_out
    from feredge.models.cli_eval import _shipped_or_given

    home = tmp_path / "nano"
    shutil.copytree(bundle, home / "bundle")
    monkeypatch.setitem(paths.SHIPPED_RUNS, "nano", home)
    out = tmp_path / "faces.jsonl"
    assert main(["run", "--bundle", "nano", "--headless", "--max-frames", "3", "--output", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 3
    # export writes a shipped model's own bundle; any other model goes to bundles/NAME
    assert default_out(home) == home / "bundle" and default_out(paths.PRETRAINED_DIR) == paths.DEFAULT_BUNDLE
    assert default_out(tmp_path / "runs" / "mine").as_posix() == "bundles/mine"
    # a device without TensorFlow evaluates the named model's bundle through its edge runtime
    assert _shipped_or_given("nano") == home
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorflow" else real(name, *a))
    artifact = _shipped_or_given("nano")
    assert artifact.parent == home / "bundle" and artifact.name.endswith(".tflite")


def test_the_shipped_nano_is_a_smaller_verified_member_that_runs_by_name(tmp_path):
    """The real second bundle: made from the shipped nano model, every artifact verified on
    PublicTest, smaller than edge, and reached by name from run, eval and bench."""
    from feredge.edge.bundle import Bundle, sha256_file

    nano, edge = Bundle.load(paths.shipped_bundle("nano")), Bundle.load(paths.DEFAULT_BUNDLE)
    assert nano.manifest["model"]["sha256"] == sha256_file(paths.SHIPPED_RUNS["nano"] / "model.keras")
    assert nano.manifest["model"]["parameters"] < edge.manifest["model"]["parameters"] / 3
    assert nano.manifest["model"]["macs"] < edge.manifest["model"]["macs"] / 3
    assert {(a.format, a.precision) for a in nano.artifacts} >= {("tflite", "fp32"), ("tflite", "int8")}
    for artifact in nano.artifacts:
        assert artifact.verification.passed and artifact.verification.samples == 3589
        nano.check(artifact)  # every file is there, unaltered
    assert "The `nano` model of feredge's family" in (paths.SHIPPED_RUNS["nano"] / "MODEL_CARD.md").read_text()

    done = feredge("eval", "--model", "nano", "--json")
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["num_samples"] == 350 and report["accuracy"] > 0.4 and "nano" in report["model"]
    done = feredge("run", "--bundle", "nano", "--headless", "--max-frames", "3")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "nano" in done.stderr and len([ln for ln in done.stdout.splitlines() if ln.startswith("{")]) == 3
    done = feredge("bench", "--bundle", "nano", "--artifacts", "tflite", "--no-accuracy", "--min-time", "0.05",
                   "--min-runs", "5", "--warmup", "0", "--no-recommend", "--out", str(tmp_path / "b"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(next((tmp_path / "b").rglob("*.json")).read_text())
    assert "tflite-int8" in json.dumps(rows)
