"""Camera-path perturbations: each does what it says to a crop, deterministically."""
from __future__ import annotations

import numpy as np
import pytest

from feredge.evaluation.perturb import DEFAULT_CONDITIONS, KINDS, Condition, parse_conditions


@pytest.fixture
def faces():
    rng = np.random.default_rng(3)
    smooth = rng.integers(40, 200, (4, 12, 12)).astype(np.uint8)
    import cv2
    return np.stack([cv2.resize(f, (48, 48), interpolation=cv2.INTER_CUBIC) for f in smooth])


@pytest.mark.parametrize("kind,value", [("scale", 24), ("jpeg", 40), ("shift", 3), ("box", 1.15),
                                        ("box", 0.87), ("noise", 8), ("gamma", 1.6)])
def test_each_kind_keeps_shape_and_dtype_and_changes_the_crop(faces, kind, value):
    for images in (faces, np.repeat(faces[..., None], 3, axis=-1)):
        out = Condition(kind, value).apply(images)
        assert out.shape == images.shape and out.dtype == np.uint8
        assert np.abs(out.astype(int) - images).mean() > 0.5, kind


@pytest.mark.parametrize("kind,value", [("scale", 48), ("shift", 0), ("noise", 0), ("gamma", 1)])
def test_neutral_values_leave_the_crop_alone(faces, kind, value):
    np.testing.assert_array_equal(Condition(kind, value).apply(faces), faces)


def test_noise_is_seeded_and_has_the_asked_spread(faces):
    a = Condition("noise", 8).apply(faces, seed=1)
    np.testing.assert_array_equal(a, Condition("noise", 8).apply(faces, seed=1))
    assert not np.array_equal(a, Condition("noise", 8).apply(faces, seed=2))
    assert 7.0 < np.std(a.astype(float) - faces) < 9.0


def test_shift_moves_the_content_up_and_left():
    im = np.zeros((1, 48, 48), np.uint8)
    im[0, 20, 30] = 255
    out = Condition("shift", 3).apply(im)
    assert out[0, 17, 27] == 255 and out[0, 20, 30] == 0


def test_looser_box_makes_the_face_smaller_and_tighter_box_larger():
    im = np.zeros((1, 48, 48), np.uint8)
    im[0, 12:36, 12:36] = 255  # a 24 px face in the middle
    area = {f: int((Condition("box", f).apply(im)[0] > 127).sum()) for f in (0.8, 1.0, 1.25)}
    assert area[0.8] > area[1.0] > area[1.25]
    assert abs(area[1.0] - 24 * 24) < 50


def test_lower_jpeg_quality_loses_more(faces):
    err = {q: np.abs(Condition("jpeg", q).apply(faces).astype(int) - faces).mean() for q in (20, 90)}
    assert err[20] > err[90]


def test_parse_default_and_lists():
    assert [c.name for c in parse_conditions("default")] == DEFAULT_CONDITIONS.split(",")
    assert parse_conditions(" noise:8 , jpeg:40") == [Condition("noise", 8.0), Condition("jpeg", 40.0)]
    assert set(c.kind for c in parse_conditions("default")) == set(KINDS)


@pytest.mark.parametrize("text,message", [("blur:3", "unknown kind 'blur'"), ("noise", "expected noise:NUMBER"),
                                          ("noise:abc", "expected noise:NUMBER"), ("jpeg:0", "out of range"),
                                          ("noise:8,box:9", "'box:9'")])
def test_parse_errors_name_the_item(text, message):
    with pytest.raises(ValueError, match=message):
        parse_conditions(text)
