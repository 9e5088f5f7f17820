"""Load labelled face images (FER-2013 CSV, split folders, class folders such as CK+48) as arrays.

Labels are mapped by class *name* (edge.labels), never by position, because datasets order their
classes differently. Nothing is dropped silently: bad input raises a one-line DatasetError naming
the file or CSV row, or with skip_bad=True is counted in `LabelledImages.skipped` and logged.
Decoded arrays are cached as .npz keyed by every file's name, size and mtime, so reloading ~30k
images takes well under a second. Only numpy, OpenCV and the standard library are used.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import hashlib
import json
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np

from feredge.edge.fileio import read_image
from feredge.edge.labels import FER2013_CSV_ORDER, FER2013_LABELS, NON_FER_CLASSES, canonical_label

log = logging.getLogger("feredge.data")

_CACHE_VERSION = 1
_PROGRESS_MIN = 2000  # show a progress bar from this many images on
_SPLIT_FOLDERS = {"train": "train", "training": "train", "test": "test", "testing": "test",
                  "val": "val", "valid": "val", "validation": "val"}
_CSV_SPLITS = {"train": "Training", "training": "Training", "test": "PublicTest",
               "publictest": "PublicTest", "privatetest": "PrivateTest"}
_CSV_USAGES = {"training": "Training", "publictest": "PublicTest", "privatetest": "PrivateTest"}
_CSV_ROW = re.compile(r"^(.*):row (\d+)$")
_WRITABLE = {".png", ".jpg", ".jpeg", ".bmp"}


class DatasetError(ValueError):
    """Bad dataset input; the one-line message is '<file or file:row N>: what is wrong'."""


@dataclasses.dataclass
class LabelledImages:
    """Decoded images with labels indexing `classes`.

    images: uint8, (N,H,W) grayscale or (N,H,W,3) BGR. labels: int64, (N,).
    sources: per image its file path, or '<name>.csv:row N' where N is the 1-based data row
    (the header is not counted, so row N is line N+1 of the file).
    skipped: reason -> number of items left out (bad input with skip_bad, non-FER classes).
    """

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    sources: list[str]
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not len(self.images) == len(self.labels) == len(self.sources):
            raise ValueError(f"{len(self.images)} images, {len(self.labels)} labels and "
                             f"{len(self.sources)} sources differ in number")

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {name: int(n) for name, n in zip(self.classes, counts)}

    def subset(self, indices) -> LabelledImages:
        idx = np.asarray(indices)
        idx = np.flatnonzero(idx) if idx.dtype == bool else idx.astype(np.int64, copy=False)
        return LabelledImages(self.images[idx], self.labels[idx], self.classes,
                              [self.sources[i] for i in idx], dict(self.skipped))


class _Skips:
    """Raises on bad input, or with skip_bad counts it by reason."""

    def __init__(self, skip_bad: bool):
        self.skip_bad = skip_bad
        self.counts: collections.Counter[str] = collections.Counter()

    def bad(self, reason: str, where: object, problem: str, n: int = 1) -> None:
        if not self.skip_bad:
            raise DatasetError(f"{where}: {problem}")
        self.counts[reason] += n


def load_dataset(source, split: str | None = None, *, keep_native_classes: bool = False,
                 skip_bad: bool = False, color: bool = False, size: Sequence[int] | None = None,
                 cache_dir=None, use_cache: bool = True, progress: bool = True) -> LabelledImages:
    """Load a FER-2013 CSV, a root of split folders, or a folder of class folders.

    split: CSV "train"/"test"/"privatetest" (Training/PublicTest/PrivateTest; Usage values are
    accepted too; None = all rows); split root "train"/"test"/"val" (required); class folders None.
    keep_native_classes: keep the dataset's own folder names (sorted) instead of mapping them to
    FER-2013 names; otherwise non-FER classes such as contempt are skipped, counted and logged.
    size: (height, width) every image must have; default the first image's (48x48 for the CSV).
    Images are not resized: a wrong size is bad input, as resizing belongs to preprocessing.
    cache_dir: default $FEREDGE_CACHE or ~/.cache/feredge/datasets; use_cache=False neither
    reads nor writes it.
    """
    path = Path(source).expanduser()
    if not path.exists():
        raise DatasetError(f"{path}: no such file or directory")
    path = path.resolve()
    if size is not None:
        size = tuple(int(v) for v in size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"size must be (height, width), not {size}")
    skips = _Skips(skip_bad)
    if path.is_dir():
        folder = _pick_split_folder(path, split)
        split = None if folder == path else _SPLIT_FOLDERS[folder.name.lower()]
        class_dirs, loose = _scan_class_folders(folder)
        fingerprint = _fingerprint(folder, class_dirs, loose)
    else:
        split = _csv_split(path, split)
        stat = path.stat()
        fingerprint = [[path.name, stat.st_size, stat.st_mtime_ns]]
        folder = path

    options = {"keep_native_classes": keep_native_classes, "skip_bad": skip_bad, "color": color,
               "size": size}
    cache_file = None
    if use_cache:
        cache_file = _cache_file(Path(cache_dir or _default_cache_dir()).expanduser(), path, split,
                                 options, fingerprint)
        data = _read_cache(cache_file)
        if data is not None:
            log.info("%s: %d images from cache %s", folder, len(data), cache_file)
            _log_skipped(folder, data.skipped)
            return data

    if path.is_dir():
        data = _load_folders(folder, class_dirs, loose, skips, keep_native_classes, color, size,
                             progress)
    else:
        data = _load_csv(path, split, skips, color, size, progress)
    if not len(data):
        extra = f" (skipped: {_describe(data.skipped)})" if data.skipped else ""
        raise DatasetError(f"{folder}: no images found{extra}")
    _log_skipped(folder, data.skipped)
    if cache_file is not None:
        _write_cache(cache_file, data)
    return data


@dataclasses.dataclass
class DatasetListing:
    """Every item `load_dataset` would load, listed but not decoded: a worker of a distributed
    run lists the whole set (labels are cheap: folder names, a CSV's emotion column), then decodes
    only its own shard with `decode`. Problems found by listing (non-FER classes, malformed CSV
    rows...) are in `skipped`; problems inside an image surface when it is decoded."""

    source: Path  # the class-folder root or the CSV
    classes: tuple[str, ...]
    labels: np.ndarray  # int64, (N,)
    sources: list[str]  # file paths, or '<name>.csv:row N'
    skipped: dict[str, int]
    skip_bad: bool = False
    color: bool = False
    size: tuple[int, int] | None = None
    usage: str | None = None  # the CSV's Usage filter

    def __len__(self) -> int:
        return len(self.labels)

    def decode(self, indices=None, *, progress: bool = True) -> tuple[LabelledImages, np.ndarray]:
        """The listed items at `indices` (default all), decoded in that order, and the positions in
        `indices` that decoded (all of them unless skip_bad dropped a bad image)."""
        idx = np.arange(len(self)) if indices is None else np.asarray(indices, np.int64).ravel()
        skips = _Skips(self.skip_bad)
        skips.counts.update(self.skipped)
        if self.source.is_dir():
            if self.size is None and len(self):
                self.size = self._first_size()  # once, so that every decoded part (and worker) agrees
            size = self.size
            jobs = [(self.sources[i], int(self.labels[i])) for i in idx]
            images, labels, sources, kept = _decode_files(jobs, self.source.name, skips, self.color, size, progress)
            shape = (0, *(size or (0, 0))) + ((3,) if self.color else ())
            data = LabelledImages(np.stack(images) if images else np.zeros(shape, np.uint8),
                                  np.array(labels, np.int64), self.classes, sources, dict(skips.counts))
            return data, np.array(kept, np.int64)
        h, w = self.size or (48, 48)
        rows = {int(_CSV_ROW.match(self.sources[i])[2]): k for k, i in enumerate(idx)}
        found: dict[int, np.ndarray] = {}
        for n, _, text in _csv_rows(self.source, self.usage, _Skips(True), progress):  # rows were checked when listed
            if n in rows:
                pixels = _parse_pixels(text, h, w)
                if isinstance(pixels, tuple):
                    skips.bad(pixels[0], f"{self.source.name}:row {n}", pixels[1])
                else:
                    found[rows[n]] = pixels
        kept = np.array(sorted(found), np.int64)
        data = _csv_images([found[k] for k in kept], [int(self.labels[idx[k]]) for k in kept],
                           [self.sources[idx[k]] for k in kept], h, w, self.color, skips)
        return data, kept

    def _first_size(self) -> tuple[int, int] | None:
        """The size every image must have, from the first readable listed image (as load_dataset
        does), so that all workers' shards agree on it."""
        flag = cv2.IMREAD_COLOR if self.color else cv2.IMREAD_GRAYSCALE
        for path in self.sources:
            img = read_image(path, flag)
            if img is not None:
                return img.shape[:2]
        return None


def list_dataset(source, split: str | None = None, *, keep_native_classes: bool = False,
                 skip_bad: bool = False, color: bool = False,
                 size: Sequence[int] | None = None) -> DatasetListing:
    """List what `load_dataset(source, split, ...)` would load, in the same order, without
    decoding any image (and without the cache: a listing is fast)."""
    path = Path(source).expanduser()
    if not path.exists():
        raise DatasetError(f"{path}: no such file or directory")
    path = path.resolve()
    size = tuple(int(v) for v in size) if size is not None else None
    skips = _Skips(skip_bad)
    if path.is_dir():
        folder = _pick_split_folder(path, split)
        class_dirs, loose = _scan_class_folders(folder)
        classes, jobs = _folder_jobs(folder, class_dirs, loose, skips, keep_native_classes)
        listing = DatasetListing(folder, classes, np.array([label for _, label in jobs], np.int64),
                                 [f for f, _ in jobs], dict(skips.counts), skip_bad, color, size)
    else:
        usage = _csv_split(path, split)
        rows = [(n, label) for n, label, _ in _csv_rows(path, usage, skips, progress=False)]
        listing = DatasetListing(path, FER2013_LABELS, np.array([label for _, label in rows], np.int64),
                                 [f"{path.name}:row {n}" for n, _ in rows], dict(skips.counts), skip_bad,
                                 color, size, usage)
    if not len(listing):
        raise DatasetError(f"{listing.source}: no images found")
    return listing


# --- folders -------------------------------------------------------------------------------

def _visible(name: str) -> bool:
    """Hidden files and Windows thumbnail databases are never data; everything else is."""
    return not name.startswith(".") and name.lower() != "thumbs.db"


def _pick_split_folder(root: Path, split: str | None) -> Path:
    splits: dict[str, list[Path]] = {}
    for entry in sorted(root.iterdir()):
        if entry.is_dir() and _visible(entry.name) and entry.name.lower() in _SPLIT_FOLDERS:
            splits.setdefault(_SPLIT_FOLDERS[entry.name.lower()], []).append(entry)
    if not splits:
        if split is not None:
            raise DatasetError(f"{root}: no split folders (train/test/val) here, so split must be "
                               f"None, not {split!r}")
        return root
    if split is None:
        raise DatasetError(f"{root}: holds split folders {', '.join(sorted(splits))}; "
                           f"choose one with split=")
    want = _SPLIT_FOLDERS.get(str(split).lower())
    if want is None:
        raise DatasetError(f"{root}: unknown split {split!r} (expected train, test or val)")
    if want not in splits:
        raise DatasetError(f"{root}: no {want!r} split folder (found {', '.join(sorted(splits))})")
    if len(splits[want]) > 1:
        names = ", ".join(p.name for p in splits[want])
        raise DatasetError(f"{root}: ambiguous split folders {names}")
    return splits[want][0]


def _scan_class_folders(folder: Path) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """(class folder name, its files recursively, sorted) per class folder, and loose files."""
    class_dirs, loose = [], []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not _visible(entry.name):
            continue
        if entry.is_dir():
            files = []
            for dirpath, dirnames, filenames in os.walk(entry.path, followlinks=True):
                dirnames[:] = sorted(d for d in dirnames if _visible(d))
                files += [os.path.join(dirpath, f) for f in sorted(filenames) if _visible(f)]
            class_dirs.append((entry.name, files))
        elif not _is_documentation(entry.name):
            loose.append(entry.path)
    return class_dirs, loose


_DOC_SUFFIXES = (".md", ".txt", ".rst", ".json", ".yaml", ".yml", ".csv", ".html", ".pdf")


def _is_documentation(name: str) -> bool:
    """A README, licence or attribution file beside the class folders describes the data set."""
    lower = name.lower()
    return lower.endswith(_DOC_SUFFIXES) or lower.startswith(("readme", "license", "licence", "attribution"))


def _fingerprint(folder: Path, class_dirs, loose) -> list:
    """Every folder and (relative path, size, mtime) that the result depends on."""
    items = []
    for name, files in class_dirs:
        items.append([name + "/", -1, 0])
        for f in files:
            st = os.stat(f)
            items.append([os.path.relpath(f, folder), st.st_size, st.st_mtime_ns])
    for f in loose:
        st = os.stat(f)
        items.append([os.path.basename(f), st.st_size, st.st_mtime_ns])
    return items


def _load_folders(folder: Path, class_dirs, loose, skips: _Skips, keep_native: bool, color: bool,
                  size, progress: bool) -> LabelledImages:
    classes, jobs = _folder_jobs(folder, class_dirs, loose, skips, keep_native)
    images, labels, sources, _ = _decode_files(jobs, folder.name, skips, color, size, progress)
    shape = (0, *(size or (0, 0))) + ((3,) if color else ())
    return LabelledImages(np.stack(images) if images else np.zeros(shape, np.uint8),
                          np.array(labels, np.int64), classes, sources, dict(skips.counts))


def _folder_jobs(folder: Path, class_dirs, loose, skips: _Skips, keep_native: bool):
    """(classes, [(file, label index)...]) in load order; class-level problems go to `skips`."""
    if not class_dirs:
        raise DatasetError(f"{folder}: no class folders (expected one folder per class, "
                           f"e.g. angry/ happy/ ...)")
    if keep_native:
        classes = tuple(sorted(name for name, _ in class_dirs))
    else:
        classes = FER2013_LABELS
    if loose:
        skips.counts["file outside class folders"] += len(loose)
    jobs = []
    for name, files in class_dirs:
        label = name if keep_native else canonical_label(name)
        if label is None:
            if name.lower() in NON_FER_CLASSES:
                skips.counts[f"class {name} (not a FER-2013 class)"] += len(files)
            else:
                skips.bad(f"unknown class folder {name!r}", folder / name,
                          f"unknown class folder {name!r} (expected one of "
                          f"{', '.join(FER2013_LABELS)} or an alias such as anger, sadness; "
                          f"or rename the folder to one of them)", len(files))
            continue
        if not files:
            skips.bad("empty class folder", folder / name, "empty class folder")
        jobs += [(f, classes.index(label)) for f in files]
    return classes, jobs


def _decode_files(jobs, desc: str, skips: _Skips, color: bool, size, progress: bool):
    """Decode (file, label) jobs: images, labels, sources and the positions in `jobs` that decoded."""
    flag = cv2.IMREAD_COLOR if color else cv2.IMREAD_GRAYSCALE
    images, labels, sources, kept = [], [], [], []
    for i, (path, label) in enumerate(_progress(jobs, progress and len(jobs) >= _PROGRESS_MIN, desc, len(jobs))):
        img = read_image(path, flag)
        if img is None:
            skips.bad("unreadable image", path, "not a readable image (corrupt, or not an image file)")
            continue
        if size is None:
            size = img.shape[:2]
        elif img.shape[:2] != size:
            skips.bad("wrong image size", path, f"image is {img.shape[0]}x{img.shape[1]}, expected "
                      f"{size[0]}x{size[1]} (height x width) like the rest of the dataset")
            continue
        images.append(img)
        labels.append(label)
        sources.append(path)
        kept.append(i)
    return images, labels, sources, kept


# --- FER-2013 CSV ----------------------------------------------------------------------------

def _csv_split(path: Path, split: str | None) -> str | None:
    if split is None:
        return None
    usage = _CSV_SPLITS.get(str(split).lower())
    if usage is None:
        raise DatasetError(f"{path}: unknown split {split!r} for a FER-2013 CSV (expected train, "
                           f"test, privatetest or a Usage value Training/PublicTest/PrivateTest)")
    return usage


def _load_csv(path: Path, usage: str | None, skips: _Skips, color: bool, size,
              progress: bool) -> LabelledImages:
    h, w = size or (48, 48)
    images, labels, sources = [], [], []
    for n, label, text in _csv_rows(path, usage, skips, progress):
        pixels = _parse_pixels(text, h, w)
        if isinstance(pixels, tuple):
            skips.bad(pixels[0], f"{path.name}:row {n}", pixels[1])
            continue
        images.append(pixels)
        labels.append(label)
        sources.append(f"{path.name}:row {n}")
    return _csv_images(images, labels, sources, h, w, color, skips)


def _csv_images(images, labels, sources, h: int, w: int, color: bool, skips: _Skips) -> LabelledImages:
    arr = np.stack(images) if images else np.zeros((0, h, w), np.uint8)
    if color:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    return LabelledImages(arr, np.array(labels, np.int64), FER2013_LABELS, sources,
                          dict(skips.counts))


def _csv_rows(path: Path, usage: str | None, skips: _Skips, progress: bool):
    """(1-based data row number, label index, pixel text) of every row of `usage` whose fields are
    sound; the pixels are not parsed. Row-level problems go to `skips`."""
    csv_to_label = [FER2013_LABELS.index(name) for name in FER2013_CSV_ORDER]
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh)
        header = [c.strip().lower() for c in next(reader, [])]
        missing = [c for c in ("emotion", "pixels") if c not in header]
        if missing:
            raise DatasetError(f"{path.name}: header has no {' or '.join(missing)} column "
                               f"(expected emotion,pixels,Usage)")
        i_emotion, i_pixels = header.index("emotion"), header.index("pixels")
        i_usage = header.index("usage") if "usage" in header else None
        if usage is not None and i_usage is None:
            raise DatasetError(f"{path.name}: no Usage column, so split must be None")
        big = progress and path.stat().st_size > 2_000_000
        for n, row in enumerate(_progress(reader, big, path.name, None, "rows"), 1):
            if not row:
                continue  # blank line
            where = f"{path.name}:row {n}"
            if len(row) != len(header):
                skips.bad("malformed row", where, f"{len(row)} fields, expected {len(header)}")
                continue
            if i_usage is not None:
                row_usage = _CSV_USAGES.get(row[i_usage].strip().lower())
                if row_usage is None:
                    skips.bad("unknown Usage", where, f"unknown Usage {row[i_usage]!r} "
                              f"(expected Training, PublicTest or PrivateTest)")
                    continue
                if usage is not None and row_usage != usage:
                    continue
            emotion = row[i_emotion].strip()
            if not (emotion.isascii() and emotion.isdigit() and int(emotion) < len(csv_to_label)):
                skips.bad("unknown emotion index", where, f"unknown emotion index "
                          f"{row[i_emotion]!r} (expected 0..{len(csv_to_label) - 1})")
                continue
            yield n, csv_to_label[int(emotion)], row[i_pixels]


def _parse_pixels(text: str, h: int, w: int) -> np.ndarray | tuple[str, str]:
    """(h,w) uint8 image, or (reason, problem). Fast path: only ASCII digits and spaces."""
    raw = text.encode("utf-8")
    if not raw.translate(None, b"0123456789 "):
        values = np.fromstring(raw, dtype=np.int64, sep=" ")
    else:
        parts = text.split()
        for part in parts:
            try:
                int(part)
            except ValueError:
                return "bad pixel value", f"pixel value {part!r} is not an integer"
        values = np.array([int(p) for p in parts], np.int64)
    if values.size != h * w:
        return ("wrong number of pixel values",
                f"{values.size} pixel values, expected {h * w} ({h}x{w})")
    out_of_range = (values < 0) | (values > 255)
    if out_of_range.any():
        return "bad pixel value", f"pixel value {values[out_of_range][0]} outside 0..255"
    return values.astype(np.uint8).reshape(h, w)


# --- progress, logging, cache ----------------------------------------------------------------

def _progress(items: Iterable, enabled: bool, desc: str, total: int | None, unit: str = "img"):
    """tqdm on stderr when wanted and installed; the plain iterable otherwise."""
    if not enabled:
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, total=total, unit=unit, file=sys.stderr, leave=False)


def _describe(skipped: dict[str, int]) -> str:
    return "; ".join(f"{reason}: {n}" for reason, n in sorted(skipped.items()))


def _log_skipped(where, skipped: dict[str, int]) -> None:
    if skipped:
        log.warning("%s: skipped %d items (%s)", where, sum(skipped.values()), _describe(skipped))


def _default_cache_dir() -> Path:
    return Path(os.environ.get("FEREDGE_CACHE") or Path.home() / ".cache" / "feredge" / "datasets")


def _cache_file(cache_dir: Path, source: Path, split, options: dict, fingerprint: list) -> Path:
    """'<name>-<split>-<options hash>-<files hash>.npz': same prefix = same load, older files."""
    head = json.dumps([_CACHE_VERSION, str(source), split, options], sort_keys=True)
    prefix = f"{source.name}-{split or 'all'}-{hashlib.sha256(head.encode()).hexdigest()[:12]}-"
    files = hashlib.sha256((head + json.dumps(fingerprint)).encode()).hexdigest()[:20]
    return cache_dir / f"{prefix}{files}.npz"


def _read_cache(path: Path) -> LabelledImages | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            return LabelledImages(z["images"], z["labels"].astype(np.int64),
                                  tuple(z["classes"].tolist()), z["sources"].tolist(),
                                  json.loads(str(z["skipped"])))
    except Exception as exc:  # a stale or torn cache is only a cache: rebuild it
        log.warning("ignoring unreadable dataset cache %s (%s)", path, exc)
        return None


def _write_cache(path: Path, data: LabelledImages) -> None:
    """Atomic write (temp file + os.replace), then drop caches of older versions of the files."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, images=data.images, labels=data.labels,
                         classes=np.array(data.classes), sources=np.array(data.sources),
                         skipped=np.array(json.dumps(data.skipped)))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        prefix = path.name[: path.name.rindex("-") + 1]
        for name in os.listdir(path.parent):
            if name.startswith(prefix) and name.endswith(".npz") and name != path.name:
                (path.parent / name).unlink(missing_ok=True)
    except OSError as exc:
        log.warning("could not write dataset cache %s (%s)", path, exc)


# --- splitting and writing -------------------------------------------------------------------

def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx), sorted: `fraction` of each class goes to validation.

    Every class with >= 2 samples gets at least one validation and one training sample, so
    per-class validation metrics exist for rare classes (FER-2013 disgust). Same seed, same split.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be between 0 and 1, not {fraction}")
    labels = np.asarray(labels).ravel()
    rng = np.random.default_rng(seed)
    train, val = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = 0 if len(idx) < 2 else min(max(round(fraction * len(idx)), 1), len(idx) - 1)
        val.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def write_image_folder(data: LabelledImages, root, indices=None) -> list[Path]:
    """Write images as root/<class>/<name>, a layout load_dataset reads back (test data, samples).

    File sources keep their file name (a JPEG is re-encoded, so slightly lossy); CSV rows become
    lossless '<csv stem>_row<N>.png'. Clashing names get a '_2', '_3'... suffix.
    """
    root = Path(root)
    idx = np.arange(len(data)) if indices is None else np.asarray(indices).ravel()
    if idx.dtype == bool:
        idx = np.flatnonzero(idx)
    written, used = [], set()
    for i in idx:
        match = _CSV_ROW.match(data.sources[i])
        name = Path(f"{Path(match[1]).stem}_row{match[2]}.png" if match else Path(data.sources[i]).name)
        if name.suffix.lower() not in _WRITABLE:
            name = name.with_suffix(".png")
        folder = root / data.classes[data.labels[i]]
        target, n = folder / name, 1
        while target in used:
            n += 1
            target = folder / f"{name.stem}_{n}{name.suffix}"
        used.add(target)
        folder.mkdir(parents=True, exist_ok=True)
        ok, buf = cv2.imencode(target.suffix, data.images[i])
        if not ok:
            raise OSError(f"{target}: OpenCV could not encode the image")
        buf.tofile(target)
        written.append(target)
    return written
