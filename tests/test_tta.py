"""Test-time flip averaging (edge.tta) on the real shipped network, through every consumer of the spec."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from feredge.edge.bundle import Bundle
from feredge.edge.preprocess import PreprocessSpec, preprocess
from feredge.edge.tta import FlipAveraged, flip_averaged, mirrored, with_flip_average
from runtime_support import MODEL_DIR, build_test_bundle, sample_faces


@pytest.fixture(scope="module")
def bundle(bundle_cache):
    return Bundle.load(build_test_bundle(bundle_cache))


@pytest.fixture(scope="module")
def faces(bundle):
    images, _, _ = sample_faces(per_class=4)
    return preprocess(images, bundle.spec)


def test_flip_average_is_the_mean_of_a_face_and_its_mirror(bundle, faces):
    with bundle.open(format="tflite", precision="fp32") as raw:
        plain, flipped = raw.predict(faces), raw.predict(mirrored(faces))
        averaged = FlipAveraged(raw).predict(faces)
    assert not np.allclose(plain, flipped, atol=1e-3)  # the network is not mirror-symmetric: the test can fail
    np.testing.assert_allclose(averaged, (plain + flipped) / 2, atol=1e-5)
    np.testing.assert_allclose(averaged.sum(axis=1), 1.0, atol=1e-4)


def test_flip_averaged_answer_ignores_which_way_the_face_looks(bundle, faces):
    with with_flip_average(bundle.open(format="onnx", precision="fp32"), True) as backend:
        np.testing.assert_allclose(backend.predict(faces), backend.predict(mirrored(faces)), atol=1e-5)


def test_wrapping_is_idempotent_and_off_means_untouched(bundle):
    raw = bundle.open(format="tflite", precision="fp32")
    once = with_flip_average(raw, True)
    assert with_flip_average(raw, False) is raw
    assert with_flip_average(once, True) is once
    assert (once.format, once.precision, once.input_shape) == (raw.format, raw.precision, raw.input_shape)
    once.close()


def test_flip_averaged_sees_the_same_one_face_per_call_as_its_batch(bundle, faces):
    with bundle.open(format="tflite", precision="int8", verify=False) as raw:
        backend = FlipAveraged(raw)
        one_by_one = np.concatenate([backend.predict(faces[i:i + 1]) for i in range(len(faces))])
        np.testing.assert_allclose(one_by_one, backend.predict(faces), atol=1e-5)
    assert flip_averaged(lambda b: np.ones((len(b), 7), np.float32), faces[:0]).shape == (0, 7)


def test_spec_field_round_trips_and_defaults_to_off(tmp_path):
    path = tmp_path / "preprocess.json"
    PreprocessSpec(flip_average=True).save(path)
    assert PreprocessSpec.load(path).flip_average is True
    old = json.loads(path.read_text())
    del old["flip_average"]  # a spec written before the field existed
    path.write_text(json.dumps(old))
    assert PreprocessSpec.load(path).flip_average is False
    path.write_text(json.dumps({**old, "flip_average": "yes"}))
    with pytest.raises(ValueError, match="preprocess.json.*flip_average must be true or false"):
        PreprocessSpec.load(path)


def flip_averaged_copy(bundle, tmp_path):
    """The test bundle with flip_average switched on in its manifest's spec."""
    copy = tmp_path / "bundle"
    shutil.copytree(bundle.root, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["preprocess"]["flip_average"] = True
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_a_bundle_whose_spec_says_so_opens_flip_averaged(bundle, tmp_path):
    flipped = Bundle.load(flip_averaged_copy(bundle, tmp_path))
    with flipped.open(format="tflite", precision="fp32") as backend:
        assert isinstance(backend, FlipAveraged)
    with bundle.open(format="tflite", precision="fp32") as backend:
        assert not isinstance(backend, FlipAveraged)


def test_bench_worker_times_and_scores_both_passes(bundle, faces, tmp_path):
    from feredge.benchmarks.worker import measure

    np.save(tmp_path / "x.npy", faces)
    path = str(bundle.path(bundle.find("tflite", "fp32")))
    job = {"path": path, "threads": 1, "warmup_s": 0, "min_s": 0, "min_runs": 3, "data": str(tmp_path / "x.npy")}
    measure({**job, "probs_out": str(tmp_path / "plain.npy")})
    measure({**job, "spec": bundle.spec.replace(flip_average=True).to_dict(), "probs_out": str(tmp_path / "flip.npy")})
    with bundle.open(format="tflite", precision="fp32") as raw:
        expected = (raw.predict(faces) + raw.predict(mirrored(faces))) / 2
    np.testing.assert_allclose(np.load(tmp_path / "flip.npy"), expected, atol=1e-5)
    assert not np.allclose(np.load(tmp_path / "plain.npy"), expected, atol=1e-3)


def test_bench_rows_of_a_flip_averaged_bundle_say_so(bundle, tmp_path):
    from feredge.benchmarks.harness import BenchOptions, run_bench
    from feredge.benchmarks.recommend import apply_gate

    copy = flip_averaged_copy(bundle, tmp_path)
    opts = BenchOptions(select=("tflite-fp32",), warmup_s=0, min_s=0, min_runs=3, reference="artifact")
    records = run_bench(copy, opts, progress=False)["records"]
    apply_gate(records, max_drop=1.0)
    assert [r.flip_average for r in records] == [True]
    assert any("flip-averaged" in flag for flag in records[0].flags)


def test_keras_evaluation_follows_the_override(tmp_path):
    import cv2

    from feredge.evaluation.metrics import classification_report
    from feredge.models.evaluate import evaluate_path
    from feredge.models.tf_env import keras

    data = tmp_path / "faces"
    images, labels, names = sample_faces(per_class=3)
    for image, name in zip(images, names):
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(data / name), image)
    off = evaluate_path(MODEL_DIR, data, flip_average=False)
    on = evaluate_path(MODEL_DIR, data, flip_average=True, out_dir=tmp_path / "eval")
    assert (off["flip_average"], on["flip_average"]) == (False, True)
    assert "(flip-averaged)" in (tmp_path / "eval" / "report.txt").read_text().splitlines()[0]

    model = keras.models.load_model(MODEL_DIR / "model.keras", compile=False)
    x = preprocess(images, PreprocessSpec.load(MODEL_DIR / "preprocess.json"))
    expected = (model.predict_on_batch(x) + model.predict_on_batch(mirrored(x))) / 2
    y = np.array([on["labels"].index(name) for name in labels])
    assert on["confusion_matrix"] == classification_report(y, expected.argmax(1), on["labels"])["confusion_matrix"]


def test_export_can_switch_it_on_and_verifies_the_way_the_device_runs(tmp_path):
    from feredge.export import export_model
    from feredge.export.verify import accuracy

    out = export_model(MODEL_DIR, tmp_path / "bundle", formats=("tflite",), precisions=("fp32",),
                       flip_average=True, progress=False)
    assert out.spec.flip_average is True
    assert json.loads((out.root / "preprocess.json").read_text())["flip_average"] is True
    record = out.artifacts[0]
    images, labels, _ = sample_faces()
    x = preprocess(images, out.spec)
    y = np.array([out.labels.index(name) for name in labels])
    with out.open(record) as backend:
        measured = accuracy(backend.predict(x), y)
    assert out.manifest["artifacts"][0]["verification"]["accuracy"] == pytest.approx(measured, abs=1e-9)
