"""edge.backends on a sequence model: seed004's temporal head, (N, T, F) in, (N, classes) out."""
from __future__ import annotations

import numpy as np
import pytest

tf_env = pytest.importorskip("feredge.models.tf_env")

from feredge.edge.backends import BackendError, installed_formats, open_artifact  # noqa: E402
from feredge.models.temporal import build_head  # noqa: E402

FRAMES, FEATURES, CLASSES = 16, 7, 7
# artifact -> (format, file written here, file in the shipped bundle, open options, tolerance against Keras)
ARTIFACTS = {
    "tflite": ("tflite", "head.tflite", "model.fp32.tflite", {}, 1e-4),
    "tflite-dynamic": ("tflite", None, "model.dynamic.tflite", {}, 2e-3),  # int8 weights, float32 input
    "onnx": ("onnx", "head.onnx", "model.fp32.onnx", {}, 1e-4),
    "openvino": ("openvino", "ov/head.xml", "openvino/model.fp32.xml", {"precision_hint": "f32"}, 1e-4),
}


@pytest.fixture(scope="module", params=["shipped-bilstm", "lstm"])
def exported(request, tmp_path_factory):
    """(folder, file of each artifact, input, Keras output). The BiLSTM is the shipped head and its
    shipped bundle, which test_seed004 shows the exporter can make; the unidirectional LSTM is
    converted here, in every format whose runtime is installed (each TFLite conversion of an LSTM
    takes ~10 s, so its dynamic-range file is left to the shipped BiLSTM)."""
    x = np.random.default_rng(3).normal(size=(3, FRAMES, FEATURES)).astype(np.float32)
    if request.param == "shipped-bilstm":
        from feredge.edge.paths import DEFAULT_TEMPORAL_BUNDLE
        from feredge.models.model_io import load_keras_model

        head = load_keras_model(DEFAULT_TEMPORAL_BUNDLE.parent / "model.keras")
        assert head.input_shape[1:] == (FRAMES, FEATURES)
        files = {name: entry[2] for name, entry in ARTIFACTS.items()}
        return DEFAULT_TEMPORAL_BUNDLE, files, x, head.predict(x, verbose=0)

    from feredge.export import onnx as onnx_export
    from feredge.export import openvino as ov_export
    from feredge.export import tflite as tflite_export

    tmp_path = tmp_path_factory.mktemp("lstm")
    head = build_head(frames=FRAMES, feature_dim=FEATURES, classes=CLASSES, bidirectional=False)
    have = installed_formats()
    if "tflite" in have:
        tflite_export.convert(head, tmp_path / "head.tflite", "fp32")
    if "onnx" in have:
        onnx_export.convert(head, tmp_path / "head.onnx", "fp32", scratch=tmp_path)
    if "openvino" in have:
        ov_export.convert(head, tmp_path / "ov" / "head.xml", "fp32")
    files = {name: entry[1] for name, entry in ARTIFACTS.items() if entry[1]}
    return tmp_path, files, x, head.predict(x, verbose=0)


def _open(exported, name):
    fmt, _, _, options, tolerance = ARTIFACTS[name]
    if fmt not in installed_formats():
        pytest.skip(f"no {fmt} runtime installed")
    root, files, x, reference = exported
    if name not in files:
        pytest.skip(f"{name} is tested on the shipped BiLSTM head only")
    return open_artifact(root / files[name], threads=1, **options), x, reference, tolerance


@pytest.mark.parametrize("name", list(ARTIFACTS))
def test_a_backend_runs_the_temporal_head_like_keras(exported, name):
    backend, x, reference, tolerance = _open(exported, name)
    with backend:
        assert backend.input_shape == (FRAMES, FEATURES) and backend.num_classes == CLASSES
        assert np.abs(backend.predict(x) - reference).max() < tolerance
        # again, and one sample alone in another order: no state carried from one sequence to the next
        assert np.abs(backend.predict(x) - reference).max() < tolerance
        single = backend.predict(x[2])
        assert single.shape == (1, CLASSES) and np.abs(single - reference[2:]).max() < tolerance
        assert backend.predict(x[:0]).shape == (0, CLASSES)
        with pytest.raises(BackendError, match=rf"{backend.path.name}: expected input of shape \(N, 16, 7\), "
                                               rf"got \(3, 15, 7\)"):
            backend.predict(x[:, :15])
        with pytest.raises(BackendError, match=backend.path.name):
            backend.predict(x[..., None])


def test_the_converters_write_the_recurrent_ops_not_loops(exported):
    """TFLite: the fused UNIDIRECTIONAL_SEQUENCE_LSTM (a while loop would be slow and unquantizable);
    ONNX: the LSTM op."""
    root, files = exported[:2]
    if "tflite" in installed_formats():
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(root / files["tflite"]))
        assert "UNIDIRECTIONAL_SEQUENCE_LSTM" in {d["op_name"] for d in interpreter._get_ops_details()}
    if "onnx" in installed_formats():
        import onnx

        assert "LSTM" in {node.op_type for node in onnx.load(str(root / files["onnx"])).graph.node}


def test_openvino_runs_other_batch_sizes_on_a_dynamic_batch_compile(exported):
    backend, x, reference, tolerance = _open(exported, "openvino")
    with backend:
        assert np.abs(backend.predict(x[:2]) - reference[:2]).max() < tolerance
        assert set(backend._requests) == {1, None}  # the static batch-1 request and the dynamic one


def test_the_image_path_refuses_a_sequence_model_in_one_line(exported):
    from feredge.edge.pipeline import Pipeline
    from feredge.edge.preprocess import PreprocessSpec
    from feredge.edge.tta import with_flip_average

    name = next((n for n in ("onnx", "tflite", "openvino") if ARTIFACTS[n][0] in installed_formats()), None)
    if name is None:
        pytest.skip("no runtime installed")
    backend, *_ = _open(exported, name)
    with backend:
        with pytest.raises(ValueError, match=rf"{backend.path.name}: the model takes input \(16, 7\)") as info:
            Pipeline(backend, PreprocessSpec(), tuple("abcdefg"))
        assert "\n" not in str(info.value)
        with pytest.raises(BackendError, match=rf"{backend.path.name}: flip averaging needs an image model"):
            with_flip_average(backend, True)
        assert with_flip_average(backend, False) is backend
