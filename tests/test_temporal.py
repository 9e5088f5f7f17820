"""models.temporal: seed004's head and the per-frame features it reads."""
from __future__ import annotations

import numpy as np
import pytest

tf_env = pytest.importorskip("feredge.models.tf_env")

from feredge.models.architectures import build_model  # noqa: E402
from feredge.models.temporal import (build_head, clip_features, frame_extractor, head_macs,  # noqa: E402
                                     logprobs_from_features)


def test_the_head_reads_t_frames_and_gives_one_distribution_per_clip():
    head = build_head(frames=16, feature_dim=7, classes=7, units=32, dense=32)
    out = head.predict(np.random.default_rng(0).normal(size=(5, 16, 7)).astype(np.float32), verbose=0)
    assert out.shape == (5, 7) and np.allclose(out.sum(1), 1, atol=1e-5)
    assert head.get_layer("bilstm") is not None
    uni = build_head(frames=16, feature_dim=7, classes=7, bidirectional=False)
    assert uni.count_params() < head.count_params() and "bilstm" not in [layer.name for layer in uni.layers]


def test_head_macs_count_both_directions_and_every_step():
    # one LSTM step: 4 gates x units x (input + units); two directions, 16 steps; then the dense layers
    assert head_macs(16, 7, 32, 32, 7) == 4 * 32 * (7 + 32) * 16 * 2 + 64 * 32 + 32 * 7
    assert head_macs(16, 7, 32, 32, 7, bidirectional=False) == 4 * 32 * (7 + 32) * 16 + 32 * 32 + 32 * 7


def test_log_probabilities_from_the_features_equal_the_full_model():
    from feredge.edge.preprocess import PreprocessSpec

    model = build_model("edge")
    clips = np.random.default_rng(1).integers(0, 255, (2, 3, 48, 48), dtype=np.uint8)
    features = clip_features(frame_extractor(model), clips, PreprocessSpec())
    assert features.shape == (2, 3, 256)
    from feredge.edge.preprocess import preprocess

    direct = model.predict(preprocess(clips.reshape(6, 48, 48), PreprocessSpec()), verbose=0).reshape(2, 3, 7)
    assert np.allclose(np.exp(logprobs_from_features(model, features)), direct, atol=1e-5)
