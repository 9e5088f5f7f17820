"""models.architectures: each seed network as its paper gives it, and the edge budget."""
from __future__ import annotations

import pytest

pytest.importorskip("tf_keras")

from feredge.models.architectures import ARCHITECTURES, build_model, count_macs  # noqa: E402


@pytest.mark.parametrize("name, params", [("seed001", 106_503), ("seed003", 1_375_175), ("seed002", 3_692_390)])
def test_seed_parameter_counts_match_the_papers(name, params):
    assert build_model(name).count_params() == params


def test_seed_inputs_and_outputs():
    assert build_model("seed002").input_shape == (None, 128, 128, 3)
    assert build_model("seed002").output_shape == (None, 6)
    assert build_model("seed001", num_classes=5).output_shape == (None, 5)


def test_seed001_macs_hand_computed():
    # conv1 44*44*25*16 + conv2 18*18*25*16*32 + conv3 7*7*9*32*64 + fc 576*128 + 128*7
    expected = 44 * 44 * 25 * 16 + 18 * 18 * 25 * 16 * 32 + 7 * 7 * 9 * 32 * 64 + 576 * 128 + 128 * 7
    assert count_macs(build_model("seed001")) == expected


def test_seed000_is_vgg_style_with_batch_norm():
    model = build_model("seed000")
    kinds = {type(layer).__name__ for layer in model.layers}
    assert {"Conv2D", "BatchNormalization", "MaxPooling2D", "Dense", "Dropout"} <= kinds
    assert sum(type(layer).__name__ == "Conv2D" for layer in model.layers) == 8
    assert model.output_shape == (None, 7)


@pytest.mark.parametrize("name", ["edge", "edge_wide", "edge_nano"])
def test_edge_networks_fit_the_device_budget(name):
    model = build_model(name)
    assert model.count_params() <= 1_500_000
    assert count_macs(model) <= 60_000_000
    assert any(type(layer).__name__ == "SeparableConv2D" for layer in model.layers)


def test_edge_keeps_the_shipped_layout():
    # the shipped weights, teachers in git and --init-from all rely on these names and counts
    model = build_model("edge")
    assert model.count_params() == 613_639
    assert type(model.get_layer("s2_conv")).__name__ == "Conv2D"
    assert type(build_model("edge_wide").get_layer("s2_conv")).__name__ == "SeparableConv2D"


def test_edge_nano_is_a_quarter_of_edge_in_macs():
    nano, edge = build_model("edge_nano"), build_model("edge")
    assert nano.count_params() == 153_799 and count_macs(nano) == 13_912_960
    assert count_macs(nano) < count_macs(edge) / 4
    # the same head names as edge, so the kit's features, distillation and export read it alike
    assert nano.get_layer("head_fc").output_shape == (None, 128) and nano.get_layer("predictions")


def test_mini_xception_has_the_size_of_the_fer_packages_network():
    # 58,423 parameters and 10,163,392 MACs are what the kit's export reads from fer's emotion_model.hdf5;
    # with that file's weights copied in layer by layer, the outputs agree exactly (docs/experiments.md)
    model = build_model("mini_xception")
    assert model.input_shape == (None, 64, 64, 1) and model.output_shape == (None, 7)
    assert model.count_params() == 58_423 and count_macs(model) == 10_163_392
    assert sum(type(layer).__name__ == "Add" for layer in model.layers) == 4
    assert sum(type(layer).__name__ == "SeparableConv2D" for layer in model.layers) == 8


def test_every_architecture_builds_at_another_input_size():
    for name in ARCHITECTURES:
        if name == "seed002":
            continue  # its Dense layer is sized for 128x128
        other = (48, 48, 1) if name == "mini_xception" else (64, 64, 1)
        assert build_model(name, input_shape=other).output_shape[-1] == 7


def test_unknown_architecture():
    with pytest.raises(ValueError, match="unknown architecture 'vgg99'"):
        build_model("vgg99")
