"""Pruning: the rebuilt structured model computes exactly what the original did on the channels it
kept, residual groups are pruned consistently, MACs really fall; magnitude pruning reaches the
asked sparsity and both kinds export through the bundle."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tf_keras")
pytest.importorskip("tensorflow_model_optimization")

from feredge.export.pruning import PruneRequest, choose_channels, parse_prune, structured_prune  # noqa: E402
from feredge.models.architectures import count_macs  # noqa: E402
from feredge.models.tf_env import keras  # noqa: E402
from export_helpers import user_model  # noqa: E402

layers = keras.layers


def _zero_channels(model, removable: dict[str, int]) -> dict[str, np.ndarray]:
    """Make the first n output channels of each named group produce exact zeros (kernel, bias,
    and the BatchNorm after it), so removing them cannot change the model's output."""
    zeroed = {}
    for name, n in removable.items():
        group = name.split("+")
        channels = np.arange(n)
        for member in group:
            layer = model.get_layer(member)
            weights = layer.get_weights()
            kind = type(layer).__name__
            if kind == "SeparableConv2D":
                weights[1][..., channels] = 0
                if len(weights) > 2:
                    weights[2][channels] = 0
            else:
                weights[0][..., channels] = 0
                if len(weights) > 1:
                    weights[1][channels] = 0
            layer.set_weights(weights)
            try:
                bn = model.get_layer(member + "_bn")
            except ValueError:
                continue
            gamma, beta, mean, var = bn.get_weights()
            beta[channels], mean[channels] = 0, 0
            bn.set_weights([gamma, beta, mean, var])
        zeroed[name] = channels
    return zeroed


def _randomise_bn(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.1, beta.shape),
                               rng.normal(0, 0.1, mean.shape), rng.uniform(0.5, 1.5, var.shape)])


def test_parse_prune():
    assert parse_prune(["magnitude:0.5,structured:0.25", "magnitude:0.75"]) == [
        PruneRequest("magnitude", 0.5), PruneRequest("structured", 0.25), PruneRequest("magnitude", 0.75)]
    assert [r.tag for r in parse_prune("magnitude:0.5,structured:0.25")] == ["pruned50", "structured25"]
    for bad in ("magnitude:1.5", "magnitude", "magnitude:0.5,magnitude:0.5", "svd:0.3"):
        with pytest.raises(ValueError, match="--prune"):
            parse_prune(bad)


def test_structured_pruning_of_a_residual_network_keeps_its_function():
    model = user_model(classes=5, size=32)
    _randomise_bn(model)
    _, _, keep, notes = choose_channels(model, 0.25)
    assert any(note.startswith("stem+sep1: 16 -> 12 channels (one residual group") for note in notes), notes
    assert any("predictions" in note and "model output" in note for note in notes), notes
    _zero_channels(model, {"stem+sep1": 4, "sep2": 8, "fc": 6})
    pruned, _ = structured_prune(model, 0.25)
    assert pruned.get_layer("stem").filters == 12 and pruned.get_layer("sep1").filters == 12
    assert pruned.get_layer("sep2").filters == 24 and pruned.get_layer("fc").units == 18
    assert pruned.output_shape == model.output_shape
    assert count_macs(pruned) < 0.75 * count_macs(model)
    assert pruned.count_params() < model.count_params()
    x = np.random.default_rng(0).random((6, 32, 32, 3), np.float32)
    np.testing.assert_allclose(pruned.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


def test_structured_pruning_through_flatten_keeps_its_function():
    keras.utils.set_random_seed(3)
    model = keras.Sequential([
        keras.Input((20, 20, 1)),
        layers.Conv2D(8, 3, activation="relu", name="conv1"),
        layers.MaxPooling2D(),
        layers.Conv2D(8, 3, activation="relu", name="conv2"),
        layers.Flatten(),
        layers.Dense(16, activation="relu", name="fc"),
        layers.Dropout(0.3),
        layers.Dense(7, activation="softmax", name="out"),
    ])
    _zero_channels(model, {"conv1": 2, "conv2": 2, "fc": 4})
    pruned, _ = structured_prune(model, 0.25)
    assert [pruned.get_layer(n).output_shape[-1] for n in ("conv1", "conv2", "fc", "out")] == [6, 6, 12, 7]
    x = np.random.default_rng(1).random((5, 20, 20, 1), np.float32)
    np.testing.assert_allclose(pruned.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    unchanged, _ = structured_prune(model, 0.0001)  # removes nothing: the same network back
    assert unchanged.count_params() == model.count_params()
    np.testing.assert_allclose(unchanged.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_fine_tuning_with_a_teacher_learns_its_distribution():
    """Against a teacher that is sure of nothing (uniform output), half of every target is
    uniform, so the student ends far less confident than after plain fine-tuning on the same faces."""
    from conftest import synthetic_faces
    from feredge.edge.preprocess import PreprocessSpec, preprocess
    from feredge.export.pruning import fine_tune

    images, labels = synthetic_faces(12, seed=3)
    spec = PreprocessSpec()

    def student():
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((48, 48, 1)), keras.layers.AveragePooling2D(4), keras.layers.Flatten(),
                                 keras.layers.Dense(7, activation="softmax")])  # the classes differ by place

    teacher = keras.Sequential([keras.Input((48, 48, 1)), keras.layers.Flatten(),
                                keras.layers.Dense(7, activation="softmax", kernel_initializer="zeros")])
    confidence = {}
    for name, kw in (("plain", {}), ("taught", {"teacher": teacher})):
        model = student()
        fine_tune(model, _Faces(images, labels), spec, epochs=25, lr=1e-2, batch_size=16, **kw)
        confidence[name] = float(model.predict(preprocess(images, spec), verbose=0).max(axis=1).mean())
    assert confidence["plain"] > 0.7 and confidence["taught"] < 0.6, confidence  # taught targets peak at 4/7


class _Faces:
    """What fine_tune reads of a labelled set: uint8 images, class indices, a length."""

    def __init__(self, images, y):
        self.images, self.y = images, y

    def __len__(self):
        return len(self.y)


def test_channels_feeding_a_concatenate_are_left_alone():
    inputs = keras.Input((16, 16, 1))
    a = layers.Conv2D(8, 3, padding="same", name="a")(inputs)
    b = layers.Conv2D(8, 3, padding="same", name="b")(inputs)
    x = layers.Concatenate(name="cat")([a, b])
    x = layers.Conv2D(8, 3, name="c")(x)
    x = layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, layers.Dense(3, activation="softmax")(x))
    pruned, notes = structured_prune(model, 0.5)
    assert pruned.get_layer("a").filters == 8 and pruned.get_layer("c").filters == 4
    assert any(note.startswith("kept all 8 channels of a: feeds cat") for note in notes), notes


# --- through the export ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pruned_bundle(synthetic_dataset, tmp_path_factory):
    from feredge.export import export_model
    from feredge.models.train import TrainConfig, train

    run = tmp_path_factory.mktemp("prune-run") / "run"
    train(TrainConfig(data=str(synthetic_dataset), arch="seed001", out=str(run), epochs=3, batch_size=16, lr=3e-3,
                      augment="none", patience=0, seed=7), verbose=0)
    out = tmp_path_factory.mktemp("prune-bundle") / "bundle"
    return export_model(run, out, formats="tflite", precisions="fp32,int8", calib=synthetic_dataset, calib_count=32,
                        data=synthetic_dataset, prune="magnitude:0.5,structured:0.25", finetune_epochs=3,
                        allow_drop=True, progress=False)


def _tflite_kernel_sparsity(path) -> float:
    """Zeros among the float kernels stored in a .tflite file (TFLite kernels are (out, ...))."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    zeros = total = 0
    for detail in interp.get_tensor_details():
        if len(detail["shape"]) not in (2, 4) or detail["shape"][0] < 2 or detail["dtype"] != np.float32:
            continue
        try:
            w = interp.get_tensor(detail["index"])
        except ValueError:  # not a constant
            continue
        zeros += int((w == 0).sum())
        total += w.size
    return zeros / max(total, 1)


def test_magnitude_pruning_reaches_the_asked_sparsity(pruned_bundle):
    report = next(p for p in pruned_bundle.manifest["pruning"] if p["method"] == "magnitude")
    assert report["measured_sparsity"] >= 0.495
    art = pruned_bundle.find(id="tflite-fp32-pruned50")
    assert art.files == ("model.pruned50.fp32.tflite",)
    assert art.pruning["method"] == "magnitude" and art.pruning["sparsity"] == 0.5
    assert art.pruning["measured_sparsity"] == report["measured_sparsity"]
    assert _tflite_kernel_sparsity(pruned_bundle.path(art)) > 0.4  # the zeros are in the file itself
    assert _tflite_kernel_sparsity(pruned_bundle.path(pruned_bundle.find(id="tflite-fp32"))) < 0.05
    sizes = report["gzip_bytes"]["tflite-fp32-pruned50"]
    assert sizes["pruned"] < 0.8 * sizes["unpruned"]
    assert art.verification.agreement >= 0.995  # against the pruned Keras model it came from
    assert art.verification.reference_accuracy == pruned_bundle.manifest["verification_data"]["keras_accuracy"]
    assert art.verification.source_accuracy == report["keras_accuracy"]["pruned"]


def test_structured_pruning_has_fewer_macs_and_still_runs(pruned_bundle):
    art = pruned_bundle.find(id="tflite-int8-structured25")
    p = art.pruning
    assert p["method"] == "structured" and p["fraction"] == 0.25
    assert p["parameters_after"] < p["parameters_before"] and p["macs_after"] < 0.8 * p["macs_before"]
    report = next(r for r in pruned_bundle.manifest["pruning"] if r["method"] == "structured")
    assert report["latency_ms_after"] > 0 and report["notes"]
    fp32 = pruned_bundle.find(id="tflite-fp32-structured25")
    assert fp32.verification.agreement >= 0.995
    assert fp32.bytes < pruned_bundle.find(id="tflite-fp32").bytes
    x = np.random.default_rng(0).random((3, 48, 48, 1), np.float32)
    with pruned_bundle.open(art) as backend:
        assert backend.predict(x).shape == (3, 7)
    summary = (pruned_bundle.root / "summary.txt").read_text()
    assert "structured 25%" in summary and "magnitude 50%" in summary and "MACs" in summary
    from feredge.benchmarks.family import bundle_entries

    entries, _ = bundle_entries([f"p={pruned_bundle.root}"], {"tflite"})
    sizes = {e.artifact: (e.parameters, e.macs) for e in entries}  # the family plot places a network by its size
    assert sizes["tflite-int8-structured25"] == (p["parameters_after"], p["macs_after"])
    model = pruned_bundle.manifest["model"]
    assert sizes["tflite-fp32"] == (model["parameters"], model["macs"])
