"""edge.preprocess: the one preprocessing path, its spec and its round trip."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from feredge.edge.preprocess import PreprocessSpec, aligned_crop, crop_face, fit_zscore, prepare_uint8, preprocess

RNG = np.random.default_rng(7)


def test_spec_round_trip(tmp_path):
    spec = PreprocessSpec(height=64, width=56, channels=3, equalize="clahe", clahe_clip=3.0,
                          normalize="zscore", mean=0.5, std=0.25, margin=0.2)
    spec.save(tmp_path / "preprocess.json")
    assert PreprocessSpec.load(tmp_path / "preprocess.json") == spec
    assert json.loads((tmp_path / "preprocess.json").read_text())["equalize"] == "clahe"


@pytest.mark.parametrize("fields, needle", [
    ({"equalize": "local"}, "equalize"),
    ({"normalize": "zscore"}, "zscore"),
    ({"channels": 2}, "channels"),
    ({"height": 4}, "below 8x8"),
    ({"margin": -0.1}, "margin"),
])
def test_invalid_spec_rejected(fields, needle):
    with pytest.raises(ValueError, match=needle):
        PreprocessSpec(**fields)


def test_load_names_file_and_problem(tmp_path):
    bad = tmp_path / "spec.json"
    bad.write_text('{"height": 48, "colour": "red"}')
    with pytest.raises(ValueError, match=r"spec\.json.*colour"):
        PreprocessSpec.load(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"spec\.json: not valid JSON"):
        PreprocessSpec.load(bad)


@pytest.mark.parametrize("mode, low, high", [("unit", 0.0, 1.0), ("symmetric", -1.0, 1.0)])
def test_normalisation_ranges(mode, low, high):
    img = np.zeros((48, 48), np.uint8)
    img[0, 0], img[0, 1] = 0, 255
    x = preprocess(img, PreprocessSpec(normalize=mode))
    assert x.shape == (1, 48, 48, 1) and x.dtype == np.float32
    assert x.min() == pytest.approx(low) and x.max() == pytest.approx(high)


def test_gray_bgr_and_bgra_inputs_agree():
    gray = RNG.integers(0, 256, (60, 60), dtype=np.uint8)
    bgr = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    bgra = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGRA)
    spec = PreprocessSpec(equalize="global")
    out = [preprocess([img], spec) for img in (gray, bgr, bgra, gray[:, :, None])]
    for other in out[1:]:
        np.testing.assert_array_equal(out[0], other)


def test_resize_and_batch_shapes():
    spec = PreprocessSpec(height=32, width=40)
    crops = [RNG.integers(0, 256, shape, dtype=np.uint8) for shape in ((100, 80), (20, 20), (48, 48, 3))]
    assert preprocess(crops, spec).shape == (3, 32, 40, 1)
    assert preprocess(np.zeros((5, 48, 48), np.uint8), PreprocessSpec()).shape == (5, 48, 48, 1)
    assert preprocess([], spec).shape == (0, 32, 40, 1)


def test_rgb_model_gets_rgb_order():
    bgr = np.zeros((48, 48, 3), np.uint8)
    bgr[..., 0] = 255  # pure blue in OpenCV's BGR
    x = preprocess([bgr], PreprocessSpec(channels=3))
    assert x[0, ..., 2].min() == 1.0 and x[0, ..., 0].max() == 0.0


@pytest.mark.parametrize("mode", ["global", "clahe"])
def test_equalisation_spreads_a_dim_image(mode):
    dim = RNG.integers(20, 60, (48, 48), dtype=np.uint8)
    plain = prepare_uint8(dim, PreprocessSpec())
    equalized = prepare_uint8(dim, PreprocessSpec(equalize=mode))
    np.testing.assert_array_equal(plain, dim)
    assert equalized.std() > 2 * dim.std()


def test_global_equalisation_matches_opencv():
    img = RNG.integers(0, 120, (48, 48), dtype=np.uint8)
    np.testing.assert_array_equal(prepare_uint8(img, PreprocessSpec(equalize="global")), cv2.equalizeHist(img))


def test_zscore_fit_standardises_training_data():
    images = RNG.integers(40, 200, (50, 48, 48), dtype=np.uint8)
    spec = fit_zscore(images, PreprocessSpec())
    x = preprocess(images, spec)
    assert spec.normalize == "zscore"
    assert abs(float(x.mean())) < 1e-3 and float(x.std()) == pytest.approx(1.0, abs=1e-3)


def test_non_uint8_rejected():
    with pytest.raises(ValueError, match="uint8"):
        preprocess(np.zeros((48, 48), np.float32), PreprocessSpec())


def test_crop_face_margin_and_clipping():
    frame = np.arange(100 * 120, dtype=np.int32).reshape(100, 120)
    assert crop_face(frame, (40, 30, 20, 20)).shape == (20, 20)
    assert crop_face(frame, (40, 30, 20, 20), margin=0.25).shape == (30, 30)
    edge = crop_face(frame, (0, 0, 20, 20), margin=0.5)
    assert edge.shape == (30, 30) and edge[0, 0] == 0
    with pytest.raises(ValueError, match="outside"):
        crop_face(frame, (200, 200, 10, 10))


def _two_eyes(right, left, shape=(300, 300)):
    image = np.full(shape, 60, np.uint8)
    cv2.circle(image, tuple(map(int, right)), 3, 250, -1)
    cv2.circle(image, tuple(map(int, left)), 3, 160, -1)
    return image


def _dot(image, low, high):
    ys, xs = np.where((image >= low) & (image <= high))
    return xs.mean(), ys.mean()


@pytest.mark.parametrize("left", [(140, 100), (140, 120), (135, 80)])  # level, tilted down, tilted up
def test_aligned_crop_levels_the_eyes_where_the_crop_expects_them(left):
    right, ref = (100, 100), (0.5, 0.37, 0.4)
    crop = aligned_crop(_two_eyes(right, left), (right, left), ref)
    side = np.hypot(left[0] - right[0], left[1] - right[1]) / ref[2]
    assert crop.shape == (round(side), round(side))
    rx, ry = _dot(crop, 230, 255)
    lx, ly = _dot(crop, 150, 170)
    assert abs(ry - ly) <= 1.0 and abs(ry - 0.37 * side) <= 1.0  # level, at the reference height
    assert abs(rx - (0.5 * side - 0.2 * side)) <= 1.0 and lx > rx


def test_aligned_crop_refuses_eyes_that_make_no_face():
    with pytest.raises(ValueError, match="eye landmarks"):
        aligned_crop(np.zeros((100, 100), np.uint8), ((60, 50), (40, 50)), (0.5, 0.37, 0.4))


def test_align_is_part_of_the_spec_and_old_specs_load():
    assert PreprocessSpec.from_dict({"height": 48, "width": 48}).align is PreprocessSpec().align
    assert PreprocessSpec.from_dict({**PreprocessSpec().to_dict(), "align": True}).align is True
    with pytest.raises(ValueError, match="align must be true or false"):
        PreprocessSpec(align="yes")
