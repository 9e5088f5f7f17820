"""feredge export: every format and precision from a small trained model, users' models, bad input.

One tiny seed001 is trained once per module on the generated faces and exported once to every
format and precision; the tests share that bundle. Users' models are small functional networks
built here. Pruning has its own module (test_pruning.py).
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tf_keras")
pytest.importorskip("tf2onnx")
pytest.importorskip("openvino")

from feredge.edge.bundle import Bundle, sha256_file  # noqa: E402
from feredge.edge.labels import FER2013_LABELS  # noqa: E402
from feredge.edge.preprocess import PreprocessSpec, preprocess  # noqa: E402
from feredge.export import export_model  # noqa: E402
from feredge.export.pipeline import ExportIncomplete  # noqa: E402
from feredge.evaluation.datasets import load_dataset  # noqa: E402
from feredge.models.tf_env import keras  # noqa: E402
from feredge.models.train import TrainConfig, train  # noqa: E402
from export_helpers import user_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ALL_IDS = {"tflite-fp32", "tflite-fp16", "tflite-dynamic", "tflite-int8", "onnx-fp32", "onnx-int8",
           "openvino-fp32", "openvino-fp16", "openvino-int8"}
TOOLCHAIN_KEYS = {"tensorflow", "tf_keras", "tensorflow_model_optimization", "tf2onnx", "onnx", "onnxruntime",
                  "openvino", "nncf", "ai_edge_litert", "numpy", "cv2"}


@pytest.fixture(scope="module")
def trained_run(synthetic_dataset, tmp_path_factory):
    """A seed001 run directory (model.keras, preprocess.json, labels.json) that learned the discs."""
    out = tmp_path_factory.mktemp("export-run") / "run"
    report = train(TrainConfig(data=str(synthetic_dataset), arch="seed001", out=str(out), epochs=3, batch_size=16,
                               lr=3e-3, augment="none", patience=0, seed=7), verbose=0)
    assert report["accuracy"] > 0.5
    return out


@pytest.fixture(scope="module")
def bundle(trained_run, synthetic_dataset, tmp_path_factory):
    """Built whatever verification says (allow_drop), so a rule one artifact misses fails the tests that
    check it (test_manifest_fields), not every test of the module."""
    out = tmp_path_factory.mktemp("export-bundle") / "bundle"
    return export_model(trained_run, out, calib=synthetic_dataset / "train", calib_count=64, data=synthetic_dataset,
                        progress=False, allow_drop=True)


@pytest.fixture(scope="module")
def test_faces(synthetic_dataset):
    data = load_dataset(synthetic_dataset, split="test", use_cache=False, progress=False)
    return data


def _keras_probs(run, faces):
    model = keras.models.load_model(run / "model.keras", compile=False)
    spec = PreprocessSpec.load(run / "preprocess.json")
    x = preprocess(faces.images, spec)
    return x, np.asarray(model.predict(x, verbose=0))


# --- the full bundle -------------------------------------------------------------------------

def test_every_format_and_precision_is_exported(bundle):
    assert {a.id for a in bundle.artifacts} == ALL_IDS
    skipped = {(s["format"], s["precision"]) for s in bundle.manifest["skipped"]}
    assert skipped == {("onnx", "fp16"), ("onnx", "dynamic"), ("openvino", "dynamic")}
    names = {a.id: a.files for a in bundle.artifacts}
    assert names["tflite-int8"] == ("model.int8.tflite",)
    assert names["onnx-fp32"] == ("model.fp32.onnx",)
    assert names["openvino-fp16"] == ("openvino/model.fp16.xml", "openvino/model.fp16.bin")


def test_manifest_fields(bundle, trained_run, synthetic_dataset):
    m = bundle.manifest
    assert m["schema"] == 1
    model = m["model"]
    assert model["name"] == "seed001"
    assert Path(model["source"]) == trained_run / "model.keras"
    assert model["sha256"] == sha256_file(trained_run / "model.keras")
    assert model["parameters"] == 106_503 and model["macs"] > 5_000_000
    assert model["output"] == "probabilities"
    assert m["labels"] == list(FER2013_LABELS) == list(bundle.labels)
    assert m["input"] == {"height": 48, "width": 48, "channels": 1, "layout": "NHWC", "dtype": "float32"}
    assert m["preprocess"] == PreprocessSpec.load(trained_run / "preprocess.json").to_dict()
    assert set(m["toolchain"]) == TOOLCHAIN_KEYS and all(m["toolchain"].values())
    created = datetime.datetime.fromisoformat(m["created"])
    assert created.tzinfo is not None
    assert abs((datetime.datetime.now(datetime.timezone.utc) - created).total_seconds()) < 3600
    assert m["calibration"] == {"source": str(synthetic_dataset / "train"), "count": 64}
    assert m["verification_data"]["count"] == 56 and "[test]" in m["verification_data"]["source"]
    assert m["verification_data"]["keras_accuracy"] > 0.5
    assert m["target"]["name"] == "generic" and m["rejected"] == []
    assert {"machine", "cpu", "isa"} <= set(m["verified_on"]) and isinstance(m["verified_on"]["isa"], list)
    schemes = {a["id"]: a["settings"].get("scheme") for a in m["artifacts"]}
    assert schemes["onnx-int8"] == m["target"]["onnx_scheme"] == "u8s8-r7"
    assert schemes["openvino-int8"] == m["target"]["openvino_scheme"] == "fix-all"
    for a in m["artifacts"]:
        assert a["pruning"] is None
        v = a["verification"]
        assert {"samples", "agreement", "max_abs_diff", "accuracy", "reference_accuracy", "accuracy_drop",
                "threshold", "passed", "ran_precision", "runtime"} <= set(v)
        assert v["samples"] == 56 and v["passed"] is True, (a["id"], v)
        assert v["reference_accuracy"] == pytest.approx(m["verification_data"]["keras_accuracy"])
        assert v["accuracy_drop"] == pytest.approx(v["reference_accuracy"] - v["accuracy"])
        if a["precision"] in ("fp32", "fp16"):
            assert v["threshold"] == {"min_agreement": 0.995} and v["agreement"] >= 0.995
        else:
            assert v["threshold"] == {"max_accuracy_drop": 0.01} and v["accuracy_drop"] <= 0.01
    ov32 = next(a for a in m["artifacts"] if a["id"] == "openvino-fp32")["verification"]
    assert ov32["precision_hint"] == "f32" and ov32["ran_precision"] == "fp32" and ov32["max_abs_diff"] < 1e-4
    ov16 = next(a for a in m["artifacts"] if a["id"] == "openvino-fp16")["verification"]
    assert ov16["precision_hint"] == "f32" and ov16["max_abs_diff"] < 0.01
    for v in (ov32, ov16):  # what this CPU runs by default (bf16 on AMX machines) is recorded too
        assert set(v["device_default"]) == {"ran_precision", "agreement", "max_abs_diff", "accuracy"}
    # OpenVINO int8: every NNCF candidate was tried, and the one kept agrees best on the calibration faces
    ov8 = next(a for a in m["artifacts"] if a["id"] == "openvino-int8")["settings"]
    tried = ov8["calibration_agreement"]
    assert set(tried) == set(ov8["candidates"]) == {"minmax", "nncf-default"}
    assert all(0.0 <= share <= 1.0 for share in tried.values())
    assert tried[ov8["chosen"]] == max(tried.values())
    assert ov8["activation_ranges"] == ("MINMAX" if ov8["chosen"] == "minmax" else "NNCF default")


def test_files_and_checksums(bundle):
    root = bundle.root
    listed = {"manifest.json", "preprocess.json", "labels.json", "summary.txt"}
    for artifact in bundle.artifacts:
        bundle.check(artifact)  # sha256 of every file
        assert set(artifact.sha256) == set(artifact.files)
        assert artifact.bytes == sum((root / f).stat().st_size for f in artifact.files)
        listed |= set(artifact.files)
    on_disk = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    assert on_disk == listed  # nothing left over from conversion (no scratch files)
    for name, digest in bundle.manifest["files"].items():
        assert sha256_file(root / name) == digest
    assert json.loads((root / "labels.json").read_text()) == list(FER2013_LABELS)
    assert PreprocessSpec.load(root / "preprocess.json") == bundle.spec
    assert not [p for p in root.parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]
    assert Bundle.load(root).manifest == bundle.manifest


def test_every_artifact_runs_through_the_edge_backends(bundle, trained_run, test_faces):
    x, reference = _keras_probs(trained_run, test_faces)
    for artifact in bundle.artifacts:
        hint = {"precision_hint": "f32"} if artifact.format == "openvino" else {}
        with bundle.open(artifact, threads=1, **hint) as backend:
            probs = backend.predict(x)
        assert probs.shape == reference.shape
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=0.02)
        agreement = np.mean(probs.argmax(1) == reference.argmax(1))
        if artifact.precision == "fp32":
            assert agreement >= 0.995 and np.abs(probs - reference).max() < 1e-4, artifact.id
        elif artifact.precision == "fp16":
            assert agreement >= 0.995 and np.abs(probs - reference).max() < 0.02, artifact.id
        else:
            assert agreement >= 0.9, artifact.id
    assert bundle.find("tflite", "int8").verification.ran_precision == "int8"
    assert bundle.find("onnx", "int8").verification.ran_precision == "int8"


def _weights_of(artifact_path: Path, fmt: str) -> list[tuple[str, np.ndarray]]:
    """(consuming op, 8-bit weight array) of every quantized weight in an ONNX or OpenVINO int8 file."""
    if fmt == "onnx":
        import onnx
        from onnx import numpy_helper

        graph = onnx.load(str(artifact_path)).graph
        inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        return [("DequantizeLinear", inits[n.input[0]]) for n in graph.node
                if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].dtype == np.int8]
    import openvino as ov

    out = []
    for op in ov.Core().read_model(str(artifact_path)).get_ops():
        if op.get_type_name() == "Constant" and op.get_element_type() == ov.Type.i8:
            node = op
            for _ in range(4):  # Constant -> Convert -> Multiply (scale) -> the layer
                node = next(iter(node.output(0).get_target_inputs())).get_node()
                if node.get_type_name() in ("Convolution", "GroupConvolution", "MatMul"):
                    break
            out.append((node.get_type_name(), op.get_data()))
    return out


def test_int8_weights_are_7_bit_so_no_cpu_saturates(bundle):
    """The portable schemes: a pair of 8-bit activation x weight products must fit 16 bits, which
    VPMADDUBSW on x86 without VNNI needs (255 * 64 * 2 < 32767); full int8 weights do not fit."""
    onnx_weights = _weights_of(bundle.path(bundle.find("onnx", "int8")), "onnx")
    assert onnx_weights and all(np.abs(w.astype(int)).max() <= 64 for _, w in onnx_weights)
    import onnx

    graph = onnx.load(str(bundle.path(bundle.find("onnx", "int8")))).graph
    zero_points = {i.name: i.data_type for i in graph.initializer}
    activations = {zero_points[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear"}
    assert activations == {onnx.TensorProto.UINT8}
    ov_weights = _weights_of(bundle.path(bundle.find("openvino", "int8")), "openvino")
    dense = [w for op, w in ov_weights if op in ("Convolution", "MatMul")]
    # depthwise (GroupConvolution) kernels widen to 32 bits in oneDNN and keep full range
    assert dense and all(np.abs(w.astype(int)).max() <= 64 for w in dense)


def test_the_saturating_schemes_keep_full_range_weights(trained_run, synthetic_dataset, tmp_path):
    """What the x86-vnni target builds differs from the portable bundle where it matters: full 8-bit
    weights, and a one-line warning when this CPU cannot verify them faithfully."""
    out = export_model(trained_run, tmp_path / "vnni", formats="onnx", precisions="int8", target="x86-vnni",
                       calib=synthetic_dataset / "train", calib_count=64, data=synthetic_dataset, allow_drop=True,
                       progress=False)
    artifact = out.find("onnx", "int8")
    assert artifact.verification is not None and out.manifest["target"]["name"] == "x86-vnni"
    weights = _weights_of(out.path(artifact), "onnx")
    assert max(np.abs(w.astype(int)).max() for _, w in weights) > 64


def test_summary_table(bundle):
    text = (bundle.root / "summary.txt").read_text()
    header = next(line for line in text.splitlines() if line.startswith("format"))
    for column in ("precision", "pruning", "size", "agreement", "accuracy", "drop", "ran"):
        assert column in header
    rows = [line for line in text.splitlines() if line.split()[:1] in (["tflite"], ["onnx"], ["openvino"])]
    assert len(rows) == 9 and all(row.rstrip().endswith("ok") for row in rows)


# --- verification limits -----------------------------------------------------------------------

def test_failed_verification_names_the_artifact_and_keeps_the_old_bundle(bundle, trained_run, synthetic_dataset,
                                                                         tmp_path, monkeypatch):
    import feredge.export.verify as export_verify

    out = tmp_path / "b"
    shutil.copytree(bundle.root, out)
    before = (out / "manifest.json").read_bytes()
    monkeypatch.setattr(export_verify, "MIN_AGREEMENT", 1.01)  # nothing can pass
    with pytest.raises(ExportIncomplete, match=r"every artifact \(tflite-fp32: top-1 agreement 100\.00 % .* below "
                                               r"101\.0 %\).*unchanged.*--allow-drop") as failed:
        export_model(trained_run, out, formats="tflite", precisions="fp32", data=synthetic_dataset, progress=False)
    assert "REJECTED" in failed.value.summary and "rejected tflite-fp32" in failed.value.summary
    assert (out / "manifest.json").read_bytes() == before
    kept = export_model(trained_run, out, formats="tflite", precisions="fp32", data=synthetic_dataset,
                        allow_drop=True, progress=False)
    v = kept.find("tflite", "fp32").verification
    assert v.passed is False and v.allowed is True
    assert "FAILED (allowed)" in (out / "summary.txt").read_text()
    assert [a.id for a in kept.artifacts] == ["tflite-fp32"]  # the old bundle was replaced whole


def test_a_rejected_artifact_is_left_out_and_the_others_are_written(trained_run, synthetic_dataset, tmp_path,
                                                                   monkeypatch, capsys):
    import feredge.export.verify as export_verify
    from feredge.edge.cli import main

    monkeypatch.setattr(export_verify, "MAX_ACCURACY_DROP", -0.5)  # int8 would have to gain 50 points
    out = tmp_path / "partial"
    code = main(["export", "--model", str(trained_run), "--out", str(out), "--formats", "tflite", "--precisions",
                 "fp32,int8", "--data", str(synthetic_dataset), "--calib", str(synthetic_dataset / "train"),
                 "--calib-count", "32", "-q"])
    printed = capsys.readouterr()
    assert code == 3
    kept = Bundle.load(out)
    assert [a.id for a in kept.artifacts] == ["tflite-fp32"]
    assert not (out / "model.int8.tflite").exists()
    rejected = kept.manifest["rejected"]
    assert [r["id"] for r in rejected] == ["tflite-int8"] and "points below its Keras source" in rejected[0]["reason"]
    assert "REJECTED" in printed.out and "rejected tflite-int8 (not in the bundle)" in printed.out
    assert "1 artifact(s) rejected and left out: tflite-int8 (exit 3)" in printed.err
    kept.check(kept.artifacts[0])


# --- models nobody here wrote --------------------------------------------------------------------

USER_LABELS = ("angry", "happy", "neutral", "sad", "surprise")


def test_user_model_64x64_rgb_five_classes(synthetic_dataset, tmp_path):
    model = user_model()
    data = load_dataset(synthetic_dataset, split="train", use_cache=False, progress=False)
    keep = np.isin(np.array(data.classes)[data.labels], USER_LABELS)
    spec = PreprocessSpec(height=64, width=64, channels=3)
    x = preprocess(data.images[keep], spec)
    y = np.array([USER_LABELS.index(data.classes[i]) for i in data.labels[keep]])
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=4, batch_size=16, verbose=0)
    path = tmp_path / "user" / "net.h5"  # a bare .h5 without preprocess.json or labels.json
    path.parent.mkdir()
    model.save(path)
    with pytest.raises(ValueError, match=r"net\.h5: no preprocess\.json.*--normalize and --equalize"):
        export_model(path, tmp_path / "bundle", labels=",".join(USER_LABELS), progress=False)
    out = export_model(path, tmp_path / "bundle", precisions="fp32,int8", labels=",".join(USER_LABELS),
                       calib=synthetic_dataset / "train", calib_count=48, data=synthetic_dataset, allow_drop=True,
                       progress=False, preprocess={"normalize": "unit", "equalize": "none"})
    m = out.manifest
    assert m["input"]["height"] == 64 and m["input"]["channels"] == 3 and m["labels"] == list(USER_LABELS)
    assert m["preprocess"]["channels"] == 3 and m["model"]["name"] == "user_net"
    assert {a.id for a in out.artifacts} == {"tflite-fp32", "tflite-int8", "onnx-fp32", "onnx-int8",
                                            "openvino-fp32", "openvino-int8"}
    assert m["verification_data"]["labelled"] == 40  # 5 of the 7 classes, 8 faces each
    for a in out.artifacts:
        v = a.verification
        if a.precision == "fp32":
            assert v.passed and v.agreement >= 0.995, (a.id, v)
        else:
            assert v.agreement >= 0.85, (a.id, v)
        with out.open(a) as backend:
            assert backend.input_shape == (64, 64, 3) and backend.num_classes == 5


def test_user_savedmodel_loads_with_labels_file(tmp_path, monkeypatch):
    from feredge.export.source import load_source

    folder = tmp_path / "user" / "sm"
    user_model().save(folder, save_format="tf")
    (tmp_path / "labels.json").write_text(json.dumps(list(USER_LABELS)))  # not beside the model
    flags = {"normalize": "symmetric", "equalize": "clahe"}
    monkeypatch.delenv("FEREDGE_TRUST_MODEL_CODE", raising=False)
    with pytest.raises(ValueError, match="a SavedModel: a TensorFlow graph.*--trust-model-code"):
        load_source(folder, labels=str(tmp_path / "labels.json"), preprocess=flags)
    monkeypatch.setenv("FEREDGE_TRUST_MODEL_CODE", "1")  # a graph may hold any operation: the user says so
    source = load_source(folder, labels=str(tmp_path / "labels.json"), preprocess=flags)
    assert source.input_shape == (64, 64, 3) and source.labels == USER_LABELS
    assert source.spec.channels == 3 and len(source.sha256) == 64
    assert source.spec.normalize == "symmetric" and source.spec.equalize == "clahe" and source.spec_from == "flags"
    with pytest.raises(ValueError, match="5 outputs but the labels name 7"):
        load_source(folder, labels=",".join(FER2013_LABELS), preprocess=flags)
    with pytest.raises(ValueError, match="no labels.json beside the model.*--labels"):
        load_source(folder, preprocess=flags)


def _save_with_labels(model, folder: Path, name="model.keras", classes=FER2013_LABELS) -> Path:
    """A run-directory-like folder: the model, labels.json and a default preprocess.json."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / name)
    (folder / "labels.json").write_text(json.dumps(list(classes)))
    shape = tuple(model.input_shape[1:]) if isinstance(model.input_shape, tuple) else ()
    h, w, c = shape if len(shape) == 3 and shape[2] in (1, 3) else (48, 48, 1)
    PreprocessSpec(height=h, width=w, channels=c).save(folder / "preprocess.json")
    return folder / name


def test_eval_of_a_bare_model_file_needs_labels_and_preprocessing(synthetic_dataset, tmp_path):
    from feredge.models.evaluate import evaluate_path

    path = tmp_path / "bare" / "net.h5"  # nothing beside it
    path.parent.mkdir()
    _tiny("softmax").save(path)
    with pytest.raises(ValueError, match=r"net\.h5: no preprocess\.json.*--normalize and --equalize"):
        evaluate_path(path, synthetic_dataset, "test")
    flags = {"normalize": "symmetric", "equalize": "global"}
    with pytest.raises(ValueError, match=r"net\.h5: no labels\.json.*--labels"):
        evaluate_path(path, synthetic_dataset, "test", preprocess=flags)
    report = evaluate_path(path, synthetic_dataset, "test", labels=",".join(FER2013_LABELS), preprocess=flags)
    assert report["num_samples"] == 56 and report["labels"] == list(FER2013_LABELS)
    with pytest.raises(ValueError, match="flags say 64x64x1 input but the model takes 48x48x1"):
        evaluate_path(path, synthetic_dataset, "test", labels=",".join(FER2013_LABELS),
                      preprocess={**flags, "height": 64, "width": 64})


def _tiny(head_activation=None, shape=(48, 48, 1)):
    keras.utils.set_random_seed(1)
    return keras.Sequential([keras.Input(shape), keras.layers.Conv2D(4, 3, activation="relu"),
                             keras.layers.GlobalAveragePooling2D(),
                             keras.layers.Dense(7, activation=head_activation)], name="tiny")


def test_logits_model_is_refused_then_exported_with_add_softmax(tmp_path):
    path = _save_with_labels(_tiny(), tmp_path / "logits")
    with pytest.raises(ValueError, match="outputs logits.*--add-softmax"):
        export_model(path, tmp_path / "b", formats="tflite", precisions="fp32", progress=False)
    assert not (tmp_path / "b").exists()
    out = export_model(path, tmp_path / "b", formats="tflite", precisions="fp32", add_softmax=True, progress=False)
    assert out.manifest["model"]["output"] == "softmax added"
    x = np.random.default_rng(0).random((5, 48, 48, 1), np.float32)
    with out.open(format="tflite") as backend:
        np.testing.assert_allclose(backend.predict(x).sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("case", ["lambda", "custom", "5d", "two_inputs"])
def test_unsupported_models_name_the_layer_or_property(case, tmp_path):
    layers = keras.layers
    if case == "lambda":
        inputs = keras.Input((48, 48, 1))
        x = layers.Lambda(lambda t: t * 2.0, name="double_it")(inputs)
        x = layers.GlobalAveragePooling2D()(layers.Conv2D(4, 3)(x))
        model, name, needle = keras.Model(inputs, layers.Dense(7, activation="softmax")(x)), "m.h5", "'double_it' (Lambda)"
    elif case == "custom":
        class Scale(layers.Layer):
            def call(self, t):
                return t * 2.0
        inputs = keras.Input((48, 48, 1))
        x = layers.GlobalAveragePooling2D()(Scale(name="scale")(inputs))
        model, name, needle = keras.Model(inputs, layers.Dense(7, activation="softmax")(x)), "m.keras", "Scale"
    elif case == "5d":
        inputs = keras.Input((4, 48, 48, 1))
        x = layers.GlobalAveragePooling3D()(layers.Conv3D(4, 3)(inputs))
        model, name, needle = keras.Model(inputs, layers.Dense(7, activation="softmax")(x)), "m.keras", "not a 4-D"
    else:
        a, b = keras.Input((48, 48, 1)), keras.Input((48, 48, 1))
        x = layers.GlobalAveragePooling2D()(layers.Add()([a, b]))
        model, name, needle = keras.Model([a, b], layers.Dense(7, activation="softmax")(x)), "m.keras", "2 inputs"
    path = _save_with_labels(model, tmp_path / case, name)
    with pytest.raises(ValueError) as info:
        export_model(path, tmp_path / "b", formats="tflite", precisions="fp32", progress=False)
    message = str(info.value)
    assert needle in message and "\n" not in message, message
    assert not (tmp_path / "b").exists()


# --- bad input ---------------------------------------------------------------------------------

def _no_leftovers(parent: Path):
    return not [p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]


def test_plan_skips_named_combinations_and_refuses_unknown_ones():
    from feredge.export.pipeline import plan

    jobs, skipped = plan("tflite,onnx,openvino", "fp32,int8", skip="openvino-fp32")
    assert ("openvino", "fp32") not in jobs and ("openvino", "int8") in jobs and len(jobs) == 5
    assert {"format": "openvino", "precision": "fp32", "reason": "left out on request (--skip)"} in skipped
    with pytest.raises(ValueError, match="unknown artifact to skip 'openvino-fp64'"):
        plan(skip="openvino-fp64")
    with pytest.raises(ValueError, match="nothing to export.*once tflite-fp32 are skipped"):
        plan("tflite", "fp32", skip="tflite-fp32")


def test_missing_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope: no such model"):
        export_model(tmp_path / "nope", tmp_path / "b", progress=False)
    assert _no_leftovers(tmp_path) and not (tmp_path / "b").exists()


def test_truncated_model_file(trained_run, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    data = (trained_run / "model.keras").read_bytes()
    (broken / "model.keras").write_bytes(data[: len(data) // 2])
    for name in ("labels.json", "preprocess.json"):
        shutil.copy(trained_run / name, broken / name)
    with pytest.raises(ValueError, match=r"model\.keras: cannot load the model"):
        export_model(broken, tmp_path / "b", progress=False)
    assert _no_leftovers(tmp_path) and not (tmp_path / "b").exists()


def test_empty_calibration_folder(trained_run, tmp_path):
    (tmp_path / "calib").mkdir()
    with pytest.raises(ValueError, match="calib: empty calibration folder"):
        export_model(trained_run, tmp_path / "b", calib=tmp_path / "calib", progress=False)
    assert _no_leftovers(tmp_path)


def test_keras3_file_is_named_as_such(tmp_path):
    import zipfile

    path = tmp_path / "k3" / "model.keras"
    path.parent.mkdir()
    with zipfile.ZipFile(path, "w") as archive:  # the layout Keras 3 writes; tf-keras cannot read it
        archive.writestr("metadata.json", json.dumps({"keras_version": "3.15.1"}))
        archive.writestr("config.json", json.dumps({"class_name": "Sequential", "config": {"layers": []}}))
    (path.parent / "labels.json").write_text(json.dumps(list(FER2013_LABELS)))
    PreprocessSpec().save(path.parent / "preprocess.json")
    with pytest.raises(ValueError, match=r"model\.keras: saved by Keras 3\.15\.1; export needs a tf-keras"):
        export_model(path, tmp_path / "b", progress=False)


def test_calibration_folder_without_images(trained_run, tmp_path):
    calib = tmp_path / "calib"
    (calib / "happy").mkdir(parents=True)
    (calib / "notes.txt").write_text("not a face")
    (calib / "happy" / "fake.png").write_bytes(b"\x89PNG but not really")
    with pytest.raises(ValueError, match="calib: no usable images among 2 files"):
        export_model(trained_run, tmp_path / "b", calib=calib, formats="tflite", precisions="int8", progress=False)
    assert _no_leftovers(tmp_path) and not (tmp_path / "b").exists()


def test_missing_calibration_folder(trained_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere: no such calibration folder"):
        export_model(trained_run, tmp_path / "b", calib=tmp_path / "nowhere", progress=False)


def test_unwritable_output(trained_run, tmp_path):
    (tmp_path / "file.txt").write_text("a file, not a folder")
    out = tmp_path / "file.txt" / "bundle"  # even root cannot create a folder under a file
    with pytest.raises(PermissionError, match="bundle: cannot create the output directory"):
        export_model(trained_run, out, progress=False)


def test_output_folder_that_is_not_a_bundle_is_not_replaced(trained_run, tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="photos: exists, is not empty and holds no bundle"):
        export_model(trained_run, out, progress=False)
    assert (out / "holiday.jpg").read_bytes() == b"precious"


def test_ctrl_c_leaves_the_earlier_bundle_and_no_temporary_files(bundle, trained_run, tmp_path, monkeypatch):
    import feredge.export.onnx as export_onnx

    out = tmp_path / "b"
    shutil.copytree(bundle.root, out)
    before = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_onnx, "convert_fp32", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_model(trained_run, out, formats="tflite,onnx", precisions="fp32", progress=False)
    after = {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_bad_formats_and_pruning_without_data(trained_run, tmp_path):
    with pytest.raises(ValueError, match="unknown format 'tensorrt'"):
        export_model(trained_run, tmp_path / "b", formats="tflite,tensorrt")
    with pytest.raises(ValueError, match="unknown precision 'int4'"):
        export_model(trained_run, tmp_path / "b", precisions="int4")
    with pytest.raises(ValueError, match="pruning needs fine-tuning data: pass --data DIR"):
        export_model(trained_run, tmp_path / "b", prune="magnitude:0.5")
    with pytest.raises(ValueError, match="method must be magnitude or structured"):
        export_model(trained_run, tmp_path / "b", prune="random:0.5")


# --- the command line --------------------------------------------------------------------------

def feredge(*args, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "feredge.edge.cli", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_exports_and_prints_the_summary(trained_run, synthetic_dataset, tmp_path):
    result = feredge("export", "--model", trained_run, "--out", tmp_path / "b", "--formats", "tflite",
                     "--precisions", "fp32,int8", "--calib", synthetic_dataset, "--calib-count", 32,
                     "--data", synthetic_dataset)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("format"))
    assert "agreement" in header and "accuracy" in header and "drop" in header
    assert sum(line.startswith("tflite") for line in lines) == 2
    assert f"bundle: {tmp_path / 'b'}" in result.stdout
    assert "converting" in result.stderr  # progress goes to stderr
    assert Bundle.load(tmp_path / "b").manifest["calibration"]["count"] == 32


@pytest.mark.parametrize("args, needle", [
    (("--model", "/nonexistent/run"), "no such model"),
    (("--prune", "magnitude:0.5"), "pruning needs fine-tuning data: pass --data DIR"),
    (("--calib", "/nonexistent/faces"), "no such calibration folder"),
])
def test_cli_bad_input_is_one_line_and_exit_2(args, needle, tmp_path):
    result = feredge("export", "--out", tmp_path / "b", *args, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("feredge export: error:"), result.stderr
    assert needle in lines[0]
