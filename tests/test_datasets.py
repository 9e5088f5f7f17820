"""evaluation.datasets on small generated data: every layout, every kind of bad input, the cache."""
from __future__ import annotations

import logging
import os

import cv2
import numpy as np
import pytest

import feredge.evaluation.datasets as ds
from feredge.edge.labels import FER2013_CSV_ORDER, FER2013_LABELS
from feredge.evaluation.datasets import DatasetError, LabelledImages, load_dataset, stratified_split, write_image_folder

RNG = np.random.default_rng(0)


def _image(shape=(48, 48)) -> np.ndarray:
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def make_folders(root, counts: dict[str, int], ext=".png", shape=(48, 48)) -> dict[str, np.ndarray]:
    """root/<class>/<class>_<i><ext>; returns file name -> pixels written."""
    written = {}
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = _image(shape)
            assert cv2.imwrite(str(root / cls / f"{cls}_{i}{ext}"), img)
            written[f"{cls}_{i}{ext}"] = img
    return written


def write_csv(path, rows, header="emotion,pixels,Usage"):
    """rows: (emotion, pixels array or raw string, usage or None)."""
    lines = [header]
    for emotion, pixels, usage in rows:
        text = pixels if isinstance(pixels, str) else " ".join(map(str, pixels.ravel()))
        lines.append(",".join([str(emotion), text] + ([usage] if usage is not None else [])))
    path.write_text("\n".join(lines) + "\n")
    return path


def load(source, split=None, **kw):
    kw.setdefault("progress", False)
    return load_dataset(source, split, **kw)


@pytest.fixture(autouse=True)
def default_cache(tmp_path_factory, monkeypatch):
    """The default cache dir, outside tmp_path so it never looks like a class folder."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("FEREDGE_CACHE", str(cache))
    return cache


# --- layouts -------------------------------------------------------------------------------

def test_split_root_loads_chosen_split_with_exact_pixels(tmp_path):
    pixels = make_folders(tmp_path / "data" / "train", {"angry": 2, "happy": 3})
    make_folders(tmp_path / "data" / "test", {"sad": 1})
    data = load(tmp_path / "data", "train")
    assert data.classes == FER2013_LABELS
    assert data.class_counts() == {**dict.fromkeys(FER2013_LABELS, 0), "angry": 2, "happy": 3}
    assert data.images.shape == (5, 48, 48) and data.images.dtype == np.uint8
    assert data.labels.dtype == np.int64
    for img, label, src in zip(data.images, data.labels, data.sources):
        name = os.path.basename(src)
        assert name.startswith(FER2013_LABELS[label])
        np.testing.assert_array_equal(img, pixels[name])
    test = load(tmp_path / "data", "TEST")
    assert len(test) == 1 and test.class_counts()["sad"] == 1
    with pytest.raises(DatasetError, match="choose one with split"):
        load(tmp_path / "data")
    with pytest.raises(DatasetError, match="no 'val' split folder"):
        load(tmp_path / "data", "val")


def test_validation_folder_is_val_split(tmp_path):
    make_folders(tmp_path / "train", {"fear": 1})
    make_folders(tmp_path / "validation", {"fear": 2})
    assert len(load(tmp_path, "val")) == 2


def test_class_folders_color_and_split_rejected(tmp_path):
    make_folders(tmp_path, {"neutral": 2, "surprise": 1}, ext=".jpg", shape=(32, 40))
    data = load(tmp_path, color=True)
    assert data.images.shape == (3, 32, 40, 3)
    assert list(data.labels) == [FER2013_LABELS.index("neutral")] * 2 + [FER2013_LABELS.index("surprise")]
    with pytest.raises(DatasetError, match="split must be None"):
        load(tmp_path, "train")


def test_ck_names_map_by_name_and_contempt_is_counted(tmp_path, caplog):
    ck = {"anger": 2, "contempt": 3, "disgust": 1, "fear": 1, "happy": 1, "sadness": 2, "surprise": 1}
    make_folders(tmp_path, ck)
    with caplog.at_level(logging.WARNING, logger="feredge.data"):
        data = load(tmp_path)
    assert data.classes == FER2013_LABELS
    counts = data.class_counts()
    assert counts["angry"] == 2 and counts["sad"] == 2 and counts["neutral"] == 0
    assert len(data) == 8
    assert data.skipped == {"class contempt (not a FER-2013 class)": 3}
    assert "contempt" in caplog.text and "skipped 3" in caplog.text
    assert not any("contempt" in s for s in data.sources)

    native = load(tmp_path, keep_native_classes=True)
    assert native.classes == tuple(sorted(ck))
    assert native.class_counts() == ck and native.skipped == {}


def test_csv_usage_splits_and_labels_by_name(tmp_path):
    rows = [(e, _image(), usage) for usage in ("Training", "PublicTest", "PrivateTest") for e in range(7)]
    rows += [(6, _image(), "Training"), (4, _image(), "Training")]
    path = write_csv(tmp_path / "fer2013.csv", rows)
    data = load(path, "train")
    assert len(data) == 9 and data.images.shape == (9, 48, 48)
    names = [data.classes[i] for i in data.labels]
    assert names[:7] == list(FER2013_CSV_ORDER)
    assert names[7:] == ["neutral", "sad"]  # emotion 6 and 4 mapped by name, not position
    np.testing.assert_array_equal(data.images[7], rows[21][1])
    assert data.sources[0] == "fer2013.csv:row 1" and data.sources[7] == "fer2013.csv:row 22"
    assert len(load(path, "test")) == 7 and load(path, "test").sources[0] == "fer2013.csv:row 8"
    assert len(load(path, "PrivateTest")) == 7
    assert len(load(path)) == 23
    assert load(path, "test", color=True).images.shape == (7, 48, 48, 3)
    with pytest.raises(DatasetError, match="unknown split 'val'"):
        load(path, "val")


def test_csv_without_usage_column(tmp_path):
    path = write_csv(tmp_path / "nousage.csv", [(3, _image(), None), (0, _image(), None)],
                     header="emotion,pixels")
    data = load(path)
    assert [data.classes[i] for i in data.labels] == ["happy", "angry"]
    with pytest.raises(DatasetError, match="no Usage column"):
        load(path, "train")


# --- bad input -------------------------------------------------------------------------------

def _corrupt_jpeg(root):
    (root / "happy" / "broken.jpg").write_bytes(RNG.integers(0, 256, 500, dtype=np.uint8).tobytes())
    return "broken.jpg", "unreadable image"


def _text_file(root):
    (root / "happy" / "notes.txt").write_text("not an image\n")
    return "notes.txt", "unreadable image"


def _wrong_size(root):
    cv2.imwrite(str(root / "sad" / "big.png"), _image((64, 64)))
    return "big.png", "wrong image size"


def _unknown_folder(root):
    make_folders(root, {"bored": 2})
    return "unknown class folder 'bored'", "unknown class folder 'bored'"


def _empty_folder(root):
    (root / "fear").mkdir()
    return "fear: empty class folder", "empty class folder"


@pytest.mark.parametrize("corrupt", [_corrupt_jpeg, _text_file, _wrong_size, _unknown_folder, _empty_folder])
def test_bad_folder_input_raises_or_is_counted(tmp_path, corrupt):
    make_folders(tmp_path, {"happy": 2, "sad": 2})
    needle, reason = corrupt(tmp_path)
    with pytest.raises(DatasetError) as err:
        load(tmp_path)
    message = str(err.value)
    assert needle in message and "\n" not in message
    data = load(tmp_path, skip_bad=True)
    assert len(data) == 4
    assert data.skipped == {reason: 2 if reason.startswith("unknown class") else 1}


def test_hidden_files_and_thumbs_db_are_ignored(tmp_path):
    make_folders(tmp_path, {"happy": 1})
    (tmp_path / "happy" / ".DS_Store").write_bytes(b"\0junk")
    (tmp_path / "happy" / "Thumbs.db").write_bytes(b"\0junk")
    (tmp_path / ".hidden").mkdir()
    data = load(tmp_path)
    assert len(data) == 1 and data.skipped == {}


def test_skip_bad_logs_one_summary_line(tmp_path, caplog):
    make_folders(tmp_path, {"happy": 2})
    _corrupt_jpeg(tmp_path)
    _text_file(tmp_path)
    with caplog.at_level(logging.WARNING, logger="feredge.data"):
        data = load(tmp_path, skip_bad=True)
    assert data.skipped == {"unreadable image": 2}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "skipped 2" in lines[0] and "unreadable image: 2" in lines[0]


def test_size_option_checks_every_image(tmp_path):
    make_folders(tmp_path, {"happy": 2}, shape=(40, 40))
    with pytest.raises(DatasetError, match="happy_0.png: image is 40x40, expected 48x48"):
        load(tmp_path, size=(48, 48))
    assert load(tmp_path, size=(40, 40)).images.shape == (2, 40, 40)


def test_no_images_at_all_is_always_an_error(tmp_path):
    (tmp_path / "happy").mkdir()
    with pytest.raises(DatasetError, match="empty class folder"):
        load(tmp_path)
    with pytest.raises(DatasetError, match="no images found"):
        load(tmp_path, skip_bad=True)
    (tmp_path / "happy").rmdir()
    with pytest.raises(DatasetError, match="no class folders"):
        load(tmp_path, skip_bad=True)
    make_folders(tmp_path, {"contempt": 2})
    with pytest.raises(DatasetError, match="no images found.*contempt"):
        load(tmp_path, skip_bad=True)


def test_missing_path(tmp_path):
    with pytest.raises(DatasetError, match="nowhere.csv: no such file"):
        load(tmp_path / "nowhere.csv", skip_bad=True)


GOOD = " ".join(["7"] * 2304)


@pytest.mark.parametrize("row, reason, needle", [
    ("3," + " ".join(["7"] * 2303) + ",Training", "wrong number of pixel values", "2303 pixel values"),
    ("3," + GOOD.replace("7", "x", 1) + ",Training", "bad pixel value", "'x' is not an integer"),
    ("3," + GOOD.replace("7", "2.5", 1) + ",Training", "bad pixel value", "'2.5' is not an integer"),
    ("3," + GOOD.replace("7", "256", 1) + ",Training", "bad pixel value", "256 outside 0..255"),
    ("3," + GOOD.replace("7", "-1", 1) + ",Training", "bad pixel value", "-1 outside 0..255"),
    ("7," + GOOD + ",Training", "unknown emotion index", "unknown emotion index '7'"),
    ("happy," + GOOD + ",Training", "unknown emotion index", "unknown emotion index 'happy'"),
    ("3," + GOOD + ",Validation", "unknown Usage", "unknown Usage 'Validation'"),
    ("3," + GOOD, "malformed row", "2 fields, expected 3"),
])
def test_bad_csv_row_names_the_row(tmp_path, row, reason, needle):
    good = write_csv(tmp_path / "x.csv", [(0, _image(), "Training"), (1, _image(), "Training")])
    path = tmp_path / "fer.csv"
    lines = good.read_text().splitlines()
    path.write_text("\n".join(lines[:2] + [row] + lines[2:]) + "\n")
    with pytest.raises(DatasetError) as err:
        load(path)
    assert str(err.value).startswith("fer.csv:row 2: ") and needle in str(err.value)
    data = load(path, skip_bad=True)
    assert len(data) == 2 and data.skipped == {reason: 1}
    assert data.sources == ["fer.csv:row 1", "fer.csv:row 3"]


def test_csv_header_without_pixels_column(tmp_path):
    path = tmp_path / "faces.csv"
    path.write_text("emotion,image,Usage\n0,1 2 3,Training\n")
    with pytest.raises(DatasetError, match="faces.csv: header has no pixels column"):
        load(path, skip_bad=True)


# --- cache ---------------------------------------------------------------------------------

def _counting_decoder(monkeypatch):
    calls = []
    real = cv2.imdecode

    def imdecode(buf, flag):
        calls.append(1)
        return real(buf, flag)
    monkeypatch.setattr(ds.cv2, "imdecode", imdecode)
    return calls


def test_cache_is_used_and_invalidated(tmp_path, monkeypatch):
    root, cache = tmp_path / "data", tmp_path / "cache"
    make_folders(root, {"angry": 2, "happy": 2})
    calls = _counting_decoder(monkeypatch)
    first = load(root, cache_dir=cache)
    assert len(calls) == 4 and len(list(cache.glob("*.npz"))) == 1

    second = load(root, cache_dir=cache)
    assert len(calls) == 4  # nothing decoded again
    np.testing.assert_array_equal(second.images, first.images)
    np.testing.assert_array_equal(second.labels, first.labels)
    assert (second.classes, second.sources, second.skipped) == (first.classes, first.sources, first.skipped)

    new = _image()
    cv2.imwrite(str(root / "happy" / "happy_0.png"), new)
    os.utime(root / "happy" / "happy_0.png", ns=(1, 1))  # a different mtime, whatever the clock
    changed = load(root, cache_dir=cache)
    assert len(calls) == 8
    np.testing.assert_array_equal(changed.images[2], new)
    assert len(list(cache.glob("*.npz"))) == 1  # the stale cache was replaced

    make_folders(root, {"sad": 1})
    assert len(load(root, cache_dir=cache)) == 5 and len(calls) == 13


def test_options_get_their_own_cache(tmp_path, monkeypatch):
    make_folders(tmp_path / "d", {"anger": 1, "contempt": 1})
    calls = _counting_decoder(monkeypatch)
    assert len(load(tmp_path / "d", cache_dir=tmp_path / "c")) == 1
    assert len(load(tmp_path / "d", cache_dir=tmp_path / "c", keep_native_classes=True)) == 2
    assert load(tmp_path / "d", cache_dir=tmp_path / "c", color=True).images.ndim == 4
    assert len(calls) == 1 + 2 + 1


def test_corrupt_cache_is_rebuilt_and_use_cache_false_skips_it(tmp_path, monkeypatch):
    make_folders(tmp_path / "d", {"happy": 2})
    cache = tmp_path / "c"
    load(tmp_path / "d", cache_dir=cache)
    (cache_file,) = cache.glob("*.npz")
    cache_file.write_bytes(b"torn")
    calls = _counting_decoder(monkeypatch)
    assert len(load(tmp_path / "d", cache_dir=cache)) == 2 and len(calls) == 2
    assert cache_file.stat().st_size > 1000
    load(tmp_path / "d", cache_dir=cache, use_cache=False)
    assert len(calls) == 4


def test_csv_cache_and_default_cache_dir(tmp_path, monkeypatch, default_cache):
    path = write_csv(tmp_path / "f.csv", [(0, _image(), "Training")])
    first = load(path)
    assert [p.name[:10] for p in default_cache.glob("*.npz")] == ["f.csv-all-"]
    monkeypatch.setattr(ds, "_parse_pixels", lambda *a: pytest.fail("CSV parsed again"))
    np.testing.assert_array_equal(load(path).images, first.images)


# --- helpers -------------------------------------------------------------------------------

def test_stratified_split_properties():
    labels = np.array([0] * 50 + [1] * 7 + [2] * 2 + [3] * 1 + [4] * 20)
    train, val = stratified_split(labels, 0.2, seed=3)
    assert len(np.intersect1d(train, val)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(len(labels)))
    assert set(labels[val]) == {0, 1, 2, 4}  # every class with >= 2 samples, never the singleton
    assert set(labels[train]) == {0, 1, 2, 3, 4}
    assert np.sum(labels[val] == 0) == 10 and np.sum(labels[val] == 4) == 4
    again = stratified_split(labels, 0.2, seed=3)
    np.testing.assert_array_equal(again[1], val)
    assert not np.array_equal(stratified_split(labels, 0.2, seed=4)[1], val)
    with pytest.raises(ValueError):
        stratified_split(labels, 1.0, seed=0)


def test_subset_and_class_counts():
    data = LabelledImages(np.zeros((4, 2, 2), np.uint8), np.array([0, 1, 1, 2]), ("a", "b", "c"),
                          ["w", "x", "y", "z"], {"r": 1})
    part = data.subset([1, 3])
    assert part.sources == ["x", "z"] and part.class_counts() == {"a": 0, "b": 1, "c": 1}
    assert len(data.subset(np.array([True, False, False, True]))) == 2
    assert part.skipped == {"r": 1} and part.skipped is not data.skipped


def test_write_image_folder_round_trip(tmp_path):
    path = write_csv(tmp_path / "fer.csv", [(e, _image(), "Training") for e in (4, 6, 6)])
    data = load(path)
    written = write_image_folder(data, tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in written) == [
        "neutral/fer_row2.png", "neutral/fer_row3.png", "sad/fer_row1.png"]
    back = load(tmp_path / "out")
    assert back.class_counts() == data.class_counts()
    order = np.argsort(data.sources)
    np.testing.assert_array_equal(back.images[[2, 0, 1]], data.images[order])

    files = load(tmp_path / "out")
    written = write_image_folder(files, tmp_path / "again", indices=[0])
    assert [p.name for p in written] == ["fer_row2.png"]
