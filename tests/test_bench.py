"""benchmarks: the harness on a small real bundle — records, gate, recommendation, compare."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from feredge.benchmarks.harness import BenchOptions, run_bench
from feredge.benchmarks.records import BenchRecord
from feredge.benchmarks.merge import merge_results
from feredge.benchmarks.recommend import RECOMMENDATION_FILE, apply_gate, recommend
from feredge.benchmarks.report import format_table, to_csv, write_reports
from feredge.edge.bundle import Bundle, sha256_file
from runtime_support import SAMPLE_DIR, build_test_bundle, feredge

QUICK = dict(warmup_s=0.02, min_s=0.05, min_runs=5)


@pytest.fixture(scope="module")
def bundle(bundle_cache, tmp_path_factory):
    built = build_test_bundle(bundle_cache)
    copy = tmp_path_factory.mktemp("bench") / "bundle"
    shutil.copytree(built, copy)  # the harness writes recommendation.json into the bundle
    return copy


@pytest.fixture(scope="module")
def result(bundle):
    opts = BenchOptions(threads=(1, 2), select=("tflite", "onnx-fp32"), **QUICK)
    return run_bench(bundle, opts, progress=False)


def test_records_are_complete_and_consistent(result, bundle):
    b = Bundle.load(bundle)
    records = result["records"]
    ids = {a.id for a in b.artifacts if a.format == "tflite"} | {"onnx-fp32"}
    assert {(r.artifact, r.threads) for r in records} == {(i, t) for i in ids for t in (1, 2)}
    assert result["reference"] == "keras" and result["samples"] == 350
    for r in records:
        assert r.status == "ok", r.status
        assert r.min_ms <= r.p50_ms <= r.p90_ms <= r.p99_ms <= r.max_ms
        assert r.fps == pytest.approx(1000 / r.mean_ms)
        assert r.runs >= 5 and r.load_ms > 0 and r.first_inference_ms > 0 and r.peak_rss_mb > 0
        assert r.size_bytes == b.find(id=r.artifact).bytes
        assert 0.0 <= r.accuracy <= 1.0 and 0.0 <= r.agreement <= 1.0 and 0.0 <= r.macro_f1 <= 1.0
        assert r.accuracy_drop == pytest.approx(r.reference_accuracy - r.accuracy)
        assert r.precision_ran and r.runtime and r.device["cpu"]
    fp32 = next(r for r in records if r.artifact == "tflite-fp32")
    assert fp32.agreement >= 0.99 and fp32.precision_ran == "fp32"


def test_accuracy_matches_the_export_verification(result, bundle):
    """The harness and the exporter measure the same thing on the same sample."""
    b = Bundle.load(bundle)
    for r in result["records"]:
        verification = b.find(id=r.artifact).verification
        if verification and verification.samples == result["samples"]:
            assert r.accuracy == pytest.approx(verification.accuracy, abs=1e-9)


def test_gate_flags_a_degraded_artifact(bundle, tmp_path):
    """Swap the int8 model for one with shuffled weights: the gate must flag its accuracy drop."""
    degraded = tmp_path / "degraded"
    shutil.copytree(bundle, degraded)
    manifest = json.loads((degraded / "manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["id"] == "tflite-int8")
    fp32 = next(a for a in manifest["artifacts"] if a["id"] == "tflite-fp32")
    shutil.copy(degraded / fp32["files"][0], degraded / entry["files"][0])  # a stand-in we then break:
    _scramble_tflite_weights(degraded / entry["files"][0])
    entry["sha256"] = {entry["files"][0]: sha256_file(degraded / entry["files"][0])}
    (degraded / "manifest.json").write_text(json.dumps(manifest))
    res = run_bench(degraded, BenchOptions(select=("tflite-fp32", "tflite-int8"), **QUICK), progress=False)
    apply_gate(res["records"], max_drop=1.0)
    bad = next(r for r in res["records"] if r.artifact == "tflite-int8")
    good = next(r for r in res["records"] if r.artifact == "tflite-fp32")
    assert bad.accuracy_drop > 0.05 and any("drops" in f for f in bad.flags)
    assert not any("drops" in f for f in good.flags)
    assert recommend(res["records"], max_drop=1.0)["artifact"] == "tflite-fp32"


def _scramble_tflite_weights(path):
    """Shuffle the values of every float kernel (tensors of rank >= 2 with data) through LiteRT's
    own flatbuffer tools: the graph, shapes and shape constants stay valid, the weights are wrong."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    rng = np.random.default_rng(0)
    float32 = flatbuffer_utils.schema_fb.TensorType.FLOAT32
    for tensor in model.subgraphs[0].tensors:
        data = model.buffers[tensor.buffer].data
        if tensor.type == float32 and data is not None and len(tensor.shape) >= 2:
            values = np.frombuffer(np.asarray(data, np.uint8).tobytes(), np.float32).copy()
            rng.shuffle(values)
            model.buffers[tensor.buffer].data = np.frombuffer(values.tobytes(), np.uint8)
    flatbuffer_utils.write_model(model, str(path))


def test_gate_and_recommendation_rules():
    device = {"machine": "x", "cpu": "c", "system": "s"}
    rec = lambda a, prec, p50, drop, thr=1: BenchRecord(  # noqa: E731
        artifact=a, format="tflite", precision=prec, threads=thr, batch=1, size_bytes=1, p50_ms=p50, fps=1000 / p50,
        accuracy=0.6 - drop, accuracy_drop=drop, device=device)
    records = [rec("tflite-fp32", "fp32", 1.0, 0.0), rec("tflite-int8", "int8", 1.5, 0.002),
               rec("tflite-dynamic", "dynamic", 0.5, 0.03)]
    apply_gate(records, max_drop=1.0)
    assert any("slower than tflite-fp32" in f for f in records[1].flags)
    assert any("drops 3.00 points" in f for f in records[2].flags)
    assert records[0].flags == []
    assert recommend(records, max_drop=1.0)["artifact"] == "tflite-fp32"
    assert recommend(records, max_drop=5.0)["artifact"] == "tflite-dynamic"


def test_reports_and_compare(result, tmp_path):
    written = write_reports(result, tmp_path / "a")
    for key in ("json", "csv", "md", "latency_plot"):
        assert written[key].stat().st_size > 100, key
    assert to_csv(result["records"]).count("\n") == len(result["records"]) + 1
    other = json.loads(json.dumps({**result, "records": [r.to_dict() for r in result["records"]]}))
    other["device"] = {**other["device"], "hostname": "pi5", "board": "Raspberry Pi 5 Model B Rev 1.0"}
    for r in other["records"]:
        r["device"] = {**r["device"], "board": "Raspberry Pi 5 Model B Rev 1.0"}
    (tmp_path / "b.json").write_text(json.dumps(other))
    merged = merge_results([result, other], ["a", "b"])
    assert len(merged["records"]) == 2 * len(result["records"])
    table = format_table(merged["records"])
    assert "Raspberry Pi 5" in table and len(merged["devices"]) == 2
    cli = feredge("bench", "compare", written["json"], tmp_path / "b.json", "--out", tmp_path / "cmp")
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert (tmp_path / "cmp" / "compare.md").is_file() and "Raspberry Pi 5" in cli.stdout


def test_cli_bench_stores_the_recommendation(bundle, tmp_path):
    cli = feredge("bench", "--bundle", bundle, "--artifacts", "tflite-fp32,onnx-fp32", "--warmup", "0.02",
                  "--min-time", "0.05", "--min-runs", "5", "--data", SAMPLE_DIR, "--out", tmp_path / "out")
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert "recommended on this device" in cli.stdout
    stored = json.loads((bundle / RECOMMENDATION_FILE).read_text())
    assert stored["artifact"] in ("tflite-fp32", "onnx-fp32") and stored["device"]["machine"]
    assert json.loads((tmp_path / "out" / "bench.json").read_text())["recommendation"] == stored


def test_cli_bench_bad_input(tmp_path):
    cli = feredge("bench", "--bundle", tmp_path / "missing")
    assert cli.returncode == 2 and cli.stderr.strip().startswith("feredge bench: error:")
    assert "missing" in cli.stderr and len(cli.stderr.strip().splitlines()) == 1


def test_end_to_end_rows_on_a_test_video(bundle, tmp_path):
    from feredge.benchmarks.e2e import run_e2e
    from feredge.edge.testvideo import make_test_video

    video = tmp_path / "one.mp4"
    make_test_video(video, faces=1, seconds=2.0, fps=10.0)
    rows = run_e2e(bundle, video, threads=(1,), max_frames=12, artifacts=["tflite-fp32"], progress=False)
    assert len(rows) == 1 and "error" not in rows[0], rows
    row = rows[0]
    assert row["frames"] == 12 and row["fps"] > 0 and row["first_result_s"] > 0
    assert set(row["stage_ms"]) == {"capture", "detect", "preprocess", "infer", "smooth", "draw"}
    assert row["stage_ms"]["draw"] > 0  # the overlay is drawn, as in the demo
    assert 0.0 <= row["detection_rate"] <= 1.0 and 0.0 <= row["label_accuracy"] <= 1.0


def test_detector_bench_scores_detectors_by_face_size_and_on_photos(tmp_path):
    """`feredge bench --detectors` on a few generated scenes and a folder of photos (no bundle)."""
    import cv2

    from feredge.benchmarks.detectors import SIZE_BINS, make_scenes

    scenes, _ = make_scenes(per_bin=2, empty=0, seed=3)
    photos = tmp_path / "photos"
    photos.mkdir()
    assert len(scenes) >= 3
    for i, (frame, _) in enumerate(scenes[:3]):
        cv2.imwrite(str(photos / f"{i}.png"), frame)
    cli = feredge("bench", "--detectors", "haar,yunet", "--faces-per-size", 3, "--photos", photos,
                  "--video-seconds", 1.5, "--out", tmp_path / "out", timeout=600)
    assert cli.returncode == 0, cli.stderr[-2000:]
    result = json.loads((tmp_path / "out" / "detectors.json").read_text())
    assert [(r["detector"], r["scale"]) for r in result["rows"]] == [("haar", "1.0"), ("haar", "auto"),
                                                                     ("yunet", "1.0"), ("yunet", "auto")]
    assert result["faces"] == 3 * len(SIZE_BINS) and result["empty_frames"] == 3
    for row in result["rows"]:
        assert set(row["faces"].values()) == {3} and row["ms_per_frame"] > 0
        assert all(rate is None or 0 <= rate <= 1 for rate in row["detection_rate"].values())
        assert row["photos"]["images"] == 3 and [v["frames"] for v in row["videos"]] == [22, 22]  # 1.5 s at 15 FPS
    yunet = next(r for r in result["rows"] if r["detector"] == "yunet")
    assert yunet["detection_rate"]["96-239"] >= 2 / 3 and yunet["box_side_ratio"][1] == pytest.approx(1.0, abs=0.25)
    assert "| yunet |" in (tmp_path / "out" / "detectors.md").read_text()
