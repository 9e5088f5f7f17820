"""seed004 end to end: train on clips, eval, export and verify the head, run it live, bench it.

One tiny run (the shipped sample split into train/test folders, clips of 4 frames) is trained
and exported once per session; every test reads it.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("feredge.models.tf_env")

from feredge.edge.cli import main as feredge  # noqa: E402
from feredge.edge.paths import SAMPLE_DIR  # noqa: E402

FRAMES = 4


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    """The shipped sample as a split folder: 30 training and 10 test faces per class."""
    root = tmp_path_factory.mktemp("faces")
    for folder in sorted(p for p in SAMPLE_DIR.iterdir() if p.is_dir()):
        files = sorted(folder.iterdir())
        for split, part in (("train", files[:30]), ("test", files[-10:])):
            (root / split / folder.name).mkdir(parents=True)
            for f in part:
                shutil.copy(f, root / split / folder.name / f.name)
    return root


@pytest.fixture(scope="module")
def run_dir(faces, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "seed004"
    code = feredge(["train", "--arch", "seed004", "--data", str(faces), "--out", str(out), "--frames", str(FRAMES),
                    "--epochs", "2", "--units", "8", "--dense", "8", "-q"])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def bundle_dir(run_dir, faces, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "seed004"
    code = feredge(["export", "--model", str(run_dir), "--out", str(out), "--data", str(faces),
                    "--formats", "tflite,onnx,openvino", "--precisions", "fp32", "--calib-count", "35", "-q"])
    assert code == 0
    return out


def test_a_trained_run_holds_the_head_its_description_and_the_comparison(run_dir):
    from feredge.models.temporal_train import load_temporal_run

    info = json.loads((run_dir / "temporal.json").read_text())
    assert info["frames"] == FRAMES and info["features"] == "logprobs" and info["frame_model"] == "shipped"
    head, info2, labels, frame_files = load_temporal_run(run_dir)
    assert head.input_shape[1:] == (FRAMES, 7) and info2 == info and len(labels) == 7
    comparison = json.loads((run_dir / "comparison.json").read_text())
    assert [r["model"].split(" ")[0] for r in comparison["rows"]] == ["per-frame", "per-frame", "temporal"]
    assert comparison["clips"] == 70 and all(0 <= r["accuracy"] <= 1 for r in comparison["rows"])
    assert len(comparison["changing"]["rows"]) == 3 and comparison["changing"]["min_tail"] == info["min_tail"]
    assert (run_dir / "eval" / "confusion.png").is_file()
    assert json.loads((run_dir / "config.json").read_text())["arch"] == "seed004"
    assert not list(run_dir.parent.glob(".partial-*"))


def test_training_refuses_to_replace_a_folder_it_did_not_write(faces, tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    code = feredge(["train", "--arch", "seed004", "--data", str(faces), "--out", str(tmp_path / "mine"), "-q"])
    assert code == 2 and "not a feredge run" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_eval_scores_clip_folders_per_clip_with_the_comparison(run_dir, faces, tmp_path, capsys):
    from feredge.evaluation.clip_sources import clip_source
    from feredge.evaluation.clips import write_clip_folders

    clips = clip_source(faces, "test", FRAMES, seed=5)
    write_clip_folders(clips, tmp_path / "clips")
    code = feredge(["eval", "--model", str(run_dir), "--data", str(tmp_path / "clips"), "--json", "-q"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["clips"] == len(clips) == 70 and len(result["rows"]) == 3
    report = result["rows"][-1]["report"]
    assert np.array(report["confusion_matrix"]).sum() == 70
    code = feredge(["eval", "--model", str(run_dir), "--data", str(tmp_path / "clips"), "--out", str(tmp_path / "ev")])
    out = capsys.readouterr().out
    assert code == 0 and "temporal head (seed004)" in out and "per-frame + EMA" in out
    assert (tmp_path / "ev" / "comparison.md").is_file() and (tmp_path / "ev" / "confusion.png").is_file()


def test_eval_refuses_clips_of_another_length(run_dir, faces, tmp_path, capsys):
    from feredge.evaluation.clip_sources import clip_source
    from feredge.evaluation.clips import write_clip_folders

    write_clip_folders(clip_source(faces, "test", FRAMES + 1, seed=5, limit=7), tmp_path / "clips")
    assert feredge(["eval", "--model", str(run_dir), "--data", str(tmp_path / "clips")]) == 2
    assert f"clips of {FRAMES + 1} frames, but the temporal model reads {FRAMES}" in capsys.readouterr().err


def test_the_exported_head_is_verified_in_every_format_and_matches_keras(run_dir, bundle_dir):
    from feredge.edge.bundle import Bundle
    from feredge.edge.temporal import TemporalHead
    from feredge.models.temporal_train import load_temporal_run

    bundle = Bundle.load(bundle_dir)
    assert bundle.manifest["temporal"]["frames"] == FRAMES and bundle.manifest["input"]["layout"] == "NTF"
    ids = {a.id for a in bundle.artifacts}
    assert {"tflite-fp32", "onnx-fp32", "openvino-fp32"} <= ids
    assert all(a.verification.passed and a.verification.samples == 70 for a in bundle.artifacts)
    head = load_temporal_run(run_dir)[0]
    x = np.log(np.random.default_rng(0).dirichlet(np.ones(7), size=(3, FRAMES)).astype(np.float32))
    reference = head.predict(x, verbose=0)
    for fmt in ("tflite", "onnx", "openvino"):
        live = TemporalHead.load(bundle_dir, format=fmt, precision="fp32")
        assert live.frames == FRAMES and np.abs(live.predict(x) - reference).max() < 1e-4, fmt
        assert np.abs(live.predict(x[0]) - reference[0]).max() < 1e-4
        live.close()


def test_a_converter_that_cannot_hold_the_head_is_rejected_with_its_own_error(run_dir, faces, tmp_path):
    from feredge.edge import formats
    from feredge.export.temporal import export_temporal

    formats.register(formats.Format("nolstm", ".nolstm", ("fp32",), backend="feredge.edge.backends.onnxrt",
                                    runtimes=("onnxruntime",), exporter="no_lstm_format"))
    try:
        bundle = export_temporal(run_dir, tmp_path / "b", formats="onnx,nolstm", precisions="fp32", data=faces,
                                 calib_count=14)
    finally:
        formats.unregister("nolstm")
    assert [a.id for a in bundle.artifacts] == ["onnx-fp32"]
    (rejected,) = bundle.manifest["rejected"]
    assert rejected["id"] == "nolstm-fp32"
    assert "the nolstm converter failed: Bidirectional(LSTM) is not supported by this converter" in rejected["reason"]
    assert "--unidirectional" in rejected["reason"]
    assert not list((tmp_path / "b").rglob("*.nolstm"))
    assert "nolstm fp32: the nolstm converter failed" in (tmp_path / "b" / "summary.txt").read_text()


def test_the_shipped_head_belongs_to_the_shipped_model_and_runs_by_default(tmp_path, capsys):
    from feredge.edge.bundle import Bundle
    from feredge.edge.paths import DEFAULT_BUNDLE, DEFAULT_TEMPORAL_BUNDLE, PRETRAINED_DIR
    from feredge.edge.testvideo import make_test_video

    shipped = Bundle.load(DEFAULT_TEMPORAL_BUNDLE)
    assert shipped.manifest["temporal"]["frame_model_sha256"] == Bundle.load(DEFAULT_BUNDLE).manifest["model"]["sha256"]
    assert {a.format for a in shipped.artifacts} == {"tflite", "onnx", "openvino"}
    assert all(a.verification.passed and a.verification.samples == 3589 for a in shipped.artifacts)
    for artifact in shipped.artifacts:
        shipped.check(artifact)  # every file is there, unaltered
    assert json.loads((PRETRAINED_DIR / "seed004" / "temporal.json").read_text())["frames"] == 16
    video = tmp_path / "one.mp4"
    make_test_video(video, faces=1, seconds=2, fps=15)
    assert feredge(["run", "--headless", "--source", str(video), "--temporal", "--backend", "onnx"]) == 0
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines() if line.startswith("{\"frame\"")]
    assert sum(bool(f.get("temporal_label")) for line in lines for f in line["faces"]) >= 10
    from feredge.edge.run_cli import _open_temporal

    head = _open_temporal("default", "onnx", Bundle.load(DEFAULT_BUNDLE))  # the per-frame artifact's format
    assert head.id == "onnx-fp32"
    head.close()


def test_a_per_frame_bundle_is_not_taken_for_a_temporal_head(tmp_path, capsys):
    from feredge.edge.bundle import BundleError
    from feredge.edge.paths import DEFAULT_BUNDLE
    from feredge.edge.temporal import TemporalHead

    with pytest.raises(BundleError, match="a per-frame bundle, not a temporal one"):
        TemporalHead.load(DEFAULT_BUNDLE)
    code = feredge(["run", "--headless", "--temporal", str(DEFAULT_BUNDLE), "--max-frames", "2"])
    assert code == 2 and "not a temporal one" in capsys.readouterr().err


def test_run_temporal_labels_each_track_once_it_has_t_frames(bundle_dir, tmp_path, capsys):
    from feredge.edge.testvideo import make_test_video

    video = tmp_path / "one.mp4"
    make_test_video(video, faces=1, seconds=2, fps=10)
    code = feredge(["run", "--headless", "--source", str(video), "--temporal", str(bundle_dir), "--stats", "-q"])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{\"frame\"")]
    faces = [(line["frame"], face) for line in lines for face in line["faces"]]
    assert len(faces) >= 15
    labelled = [(i, f) for i, f in faces if f.get("temporal_label")]
    assert labelled and all(f["temporal_label"] in ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
                            and abs(sum(f["temporal_probabilities"]) - 1) < 1e-2 for _, f in labelled)
    first_track_frames = [i for i, f in faces if f["track"] == faces[0][1]["track"]]
    assert all(f["temporal_label"] is None and f["temporal_frames"] < FRAMES
               for i, f in faces if i in first_track_frames[:FRAMES - 1])
    assert all("temporal" in line["stage_ms"] for line in lines)


def test_bench_temporal_measures_the_head_per_artifact_and_its_cost_end_to_end(bundle_dir, tmp_path, capsys):
    from feredge.edge.testvideo import make_test_video

    video = tmp_path / "one.mp4"
    make_test_video(video, faces=1, seconds=2, fps=10)
    code = feredge(["bench", "--temporal", str(bundle_dir), "--min-time", "0.05", "--min-runs", "5",
                    "--warmup", "0.01", "--video", str(video), "--e2e-frames", "12", "--out", str(tmp_path / "b"), "-q"])
    assert code == 0
    result = json.loads((tmp_path / "b" / "temporal.json").read_text())
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert {r["artifact"] for r in result["rows"]} == {a["id"] for a in manifest["artifacts"]}
    assert all(r["p50_ms"] > 0 and r["bytes"] > 0 for r in result["rows"])
    assert [r["label"] for r in result["e2e"]] == ["tflite-fp32 t1", "tflite-fp32 t1 +temporal"] * 2
    with_head = [r for r in result["e2e"] if r["label"].endswith("+temporal")]
    assert all(r["frames"] == 12 and r["stage_ms"]["temporal"] > 0 and "temporal_label_accuracy" in r for r in with_head)
    assert all("temporal" not in r["stage_ms"] for r in result["e2e"] if r not in with_head)
    assert (tmp_path / "b" / "temporal.csv").is_file() and "seed004 head" in capsys.readouterr().out


def test_splice_puts_another_expression_first_and_keeps_the_clips_own_last_frames():
    from feredge.models.temporal_train import splice

    x = np.stack([np.full((8, 7), i, np.float32) for i in range(6)])
    y = np.array([0, 0, 1, 1, 2, 2])
    out = splice(x, y, 3, np.random.default_rng(0))
    heads = set()
    for i in range(6):
        assert (out[i, -3:] == i).all()  # the tail, which the label names, is the clip's own
        k = int((out[i, :, 0] != i).sum())
        assert 1 <= k <= 5 and (out[i, :k, 0] == out[i, 0, 0]).all()
        assert y[int(out[i, 0, 0])] != y[i]  # and the head is another class
        heads.add(k)
    assert len(heads) > 1 and (x[:, :, 0] == np.arange(6)[:, None]).all()  # x itself untouched


def test_track_buffers_keep_the_last_t_frames_and_forget_gone_tracks():
    from feredge.edge.temporal import TrackBuffers, frame_features

    buffers = TrackBuffers(frames=3, forget=2)
    for i in range(4):
        buffers.push(7, np.eye(7)[i % 7])
        buffers.tick()
    assert buffers.full(7) and np.array_equal(buffers.sequence(7).argmax(1), [1, 2, 3])
    assert frame_features(np.zeros(7)).min() == pytest.approx(np.log(1e-7), rel=1e-4)
    for _ in range(3):
        buffers.tick()
    assert len(buffers) == 0 and not buffers.full(7)


def test_clip_sources_tell_clips_from_faces_and_keep_splits_apart(faces, tmp_path):
    from feredge.evaluation.clip_sources import clip_source, is_clip_data
    from feredge.evaluation.clips import write_clip_folders

    train = clip_source(faces, "train", FRAMES, seed=0, limit=14, stratified=True)
    test = clip_source(faces, "test", FRAMES, seed=0)
    assert len(train) == 14 and sorted(np.bincount(train.labels)) == [2] * 7 and len(test) == 70
    assert "seed 1000" in test.source and "seed 0)" in train.source
    assert not is_clip_data(faces) and not is_clip_data(SAMPLE_DIR)
    write_clip_folders(test, tmp_path / "clips")
    assert is_clip_data(tmp_path / "clips")
    assert np.array_equal(clip_source(tmp_path / "clips", None, FRAMES).clips.shape, test.clips.shape)
