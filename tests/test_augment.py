"""models.augment: training-only augmentation on uint8 crops."""
from __future__ import annotations

import numpy as np
import pytest

from feredge.models.augment import PRESETS, AugmentSpec, augment_batch

RNG = np.random.default_rng(3)


def test_identity_returns_input_unchanged():
    batch = RNG.integers(0, 256, (4, 48, 48), dtype=np.uint8)
    assert augment_batch(batch, PRESETS["none"], np.random.default_rng(0)) is batch


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_keep_shape_and_dtype_and_leave_input_alone(name):
    batch = RNG.integers(0, 256, (8, 48, 48), dtype=np.uint8)
    before = batch.copy()
    out = augment_batch(batch, PRESETS[name], np.random.default_rng(1))
    assert out.shape == batch.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(batch, before)


def test_flip_only_mirrors():
    img = RNG.integers(0, 256, (1, 48, 48), dtype=np.uint8)
    spec = AugmentSpec(flip=True, rotation=0, zoom=0, shift=0)
    outs = {augment_batch(img, spec, np.random.default_rng(s))[0].tobytes() for s in range(20)}
    assert outs == {img[0].tobytes(), img[0, :, ::-1].tobytes()}


def test_same_seed_same_result_and_different_seed_differs():
    batch = RNG.integers(0, 256, (6, 48, 48), dtype=np.uint8)
    a = augment_batch(batch, PRESETS["strong"], np.random.default_rng(5))
    b = augment_batch(batch, PRESETS["strong"], np.random.default_rng(5))
    c = augment_batch(batch, PRESETS["strong"], np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_lowlight_changes_brightness():
    batch = np.full((50, 48, 48), 128, np.uint8)
    out = augment_batch(batch, AugmentSpec(flip=False, rotation=0, zoom=0, shift=0, brightness=0.35),
                        np.random.default_rng(0))
    means = out.reshape(50, -1).mean(axis=1)
    assert means.min() < 100 and means.max() > 156


def test_spec_round_trip():
    spec = PRESETS["strong"]
    assert AugmentSpec.from_dict(spec.to_dict()) == spec


def test_noise_adds_zero_mean_noise_up_to_its_std():
    batch = np.full((200, 48, 48), 128, np.uint8)
    spec = AugmentSpec(flip=False, rotation=0, zoom=0, shift=0, noise=12)
    stds = augment_batch(batch, spec, np.random.default_rng(0)).reshape(200, -1).astype(float)
    per_image = stds.std(axis=1)
    assert abs(stds.mean() - 128) < 0.5  # no brightness bias
    assert per_image.max() <= 12 * 1.1 and per_image.min() < 2 and np.median(per_image) > 4
    assert PRESETS["camera"].noise and not PRESETS["strong"].noise  # the older recipes are unchanged
