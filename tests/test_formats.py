"""The table of formats (edge/formats.py): adding a format is one exporter module and one entry.

The test adds ONNX Runtime's ORT format (tests/ort_format.py, run by the existing ONNX Runtime
backend) and takes it through export, verification, the manifest, the bundle reader, the edge
backend and evaluation, with no other change to the kit.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from feredge.edge import formats
from feredge.edge.bundle import Bundle, BundleError
from runtime_support import MODEL_DIR, sample_faces

ORT = formats.Format("ort", ".ort", ("fp32",), backend="feredge.edge.backends.onnxrt", runtimes=("onnxruntime",),
                     exporter="ort_format", options=("providers",))


@pytest.fixture(scope="module")
def ort_bundle(tmp_path_factory):
    from feredge.export import export_model

    formats.register(ORT)
    try:
        out = tmp_path_factory.mktemp("ort") / "bundle"
        bundle = export_model(MODEL_DIR, out, formats="ort", precisions="fp32,int8", progress=False)
        yield bundle
    finally:
        formats.unregister("ort")


@pytest.fixture(autouse=True)
def registered():
    formats.register(ORT)
    yield
    formats.unregister("ort")


def test_the_new_format_is_exported_verified_and_listed(ort_bundle):
    manifest = json.loads((ort_bundle.root / "manifest.json").read_text())
    assert [a["id"] for a in manifest["artifacts"]] == ["ort-fp32"]
    artifact = ort_bundle.find("ort", "fp32")
    assert artifact.files == ("model.fp32.ort",) and (ort_bundle.root / "model.fp32.ort").is_file()
    assert artifact.verification.passed and artifact.verification.agreement >= 0.99
    assert artifact.settings["optimization"] == "basic"
    # the precision the exporter does not offer is skipped with the table's reason
    assert manifest["skipped"] == [{"format": "ort", "precision": "int8", "reason": "not offered"}]


def test_the_new_format_runs_through_the_edge_backend_and_eval(ort_bundle):
    from feredge.edge.backends import format_of
    from feredge.edge.preprocess import preprocess
    from feredge.models.evaluate import evaluate_path

    path = ort_bundle.path(ort_bundle.find("ort"))
    assert format_of(path) == "ort"
    images, _, _ = sample_faces(per_class=3)
    backend = ort_bundle.open(format="ort")
    probs = backend.predict(preprocess(images, ort_bundle.spec))
    backend.close()
    assert probs.shape == (len(images), len(ort_bundle.labels)) and np.allclose(probs.sum(1), 1, atol=1e-4)
    report = evaluate_path(path, MODEL_DIR.parent / "sample")
    assert report["accuracy"] == pytest.approx(ort_bundle.find("ort").verification.accuracy, abs=1e-9)


def test_an_unregistered_format_is_refused_by_name(ort_bundle):
    formats.unregister("ort")
    with pytest.raises(BundleError, match="format must be one of tflite, onnx, openvino"):
        Bundle.load(ort_bundle.root)


def test_a_suffix_belongs_to_one_format():
    with pytest.raises(ValueError, match="suffix .onnx already belongs"):
        formats.register(formats.Format("onnx2", ".onnx", ("fp32",), "m", ("onnxruntime",), "e"))


def test_runtime_options_keep_what_the_backend_takes():
    given = {"device": "CPU", "providers": "auto", "precision_hint": None}
    assert formats.runtime_options("openvino", **given) == {"device": "CPU"}
    assert formats.runtime_options("onnx", **given) == {"providers": "auto"}
    assert formats.runtime_options("tflite", **given) == {}
