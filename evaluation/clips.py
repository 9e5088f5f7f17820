"""Clips of one face over time, for the temporal model (seed004): a folder format and a recipe.

Format on disk: class folders, one folder per clip inside, the clip's frames inside that, in name
order (any image type `read_image` opens):

    clips/happy/clip-00012/000.png, 001.png, ...

`load_clips` reads such a tree into a `ClipSet` of uint8 face crops (N, T, H, W); every clip
must have the same number of frames.

When no labelled videos are at hand, `synthesize_clips` makes clips from still labelled faces as
a camera would show them over time, by one seeded recipe: head motion (a slow random walk in
position, scale and roll), box jitter, exposure drift, sensor noise, JPEG compression and
occasional detector misses (the previous crop repeated, as the runtime's tracker would carry it).
Such clips teach a temporal model to be steady under camera noise; they cannot teach real onset
and offset dynamics, since the expression itself never changes within a clip.

    python -m feredge.evaluation.clips --data DATA --split test --frames 16 --out clips/test
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import cv2
import numpy as np

from feredge.edge.fileio import read_image

log = logging.getLogger("feredge.data")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


@dataclasses.dataclass
class ClipSet:
    clips: np.ndarray  # (N, T, H, W) uint8 face crops
    labels: np.ndarray  # (N,) int index into classes
    classes: tuple[str, ...]
    names: list[str]  # "class/clip" per clip
    source: str = ""

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def frames(self) -> int:
        return int(self.clips.shape[1]) if len(self.clips) else 0


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How a still face becomes a clip; every amount is per clip, drawn once from the seed."""
    frames: int = 16
    size: int = 48  # side of the output crops
    walk_px: float = 1.5  # head motion: std of the per-frame step of the crop centre, in output px
    walk_scale: float = 0.015  # std of the per-frame step of the crop's scale
    walk_roll_deg: float = 1.0  # std of the per-frame step of the roll angle
    jitter_px: float = 1.0  # detector box jitter on top of the motion, output px
    exposure: float = 0.25  # exposure drift: the gain moves linearly by up to this much over the clip
    noise: tuple[float, float] = (0.0, 8.0)  # sensor noise std range, grey levels
    jpeg: tuple[int, int] = (40, 95)  # JPEG quality range of the camera stream
    miss_rate: float = 0.05  # share of frames where the detector missed and the last crop is repeated


def _frame(face: np.ndarray, centre, scale: float, roll: float, gain: float, size: int) -> np.ndarray:
    """The face seen through a moved, scaled, turned box: a crop of the padded still."""
    h, w = face.shape
    pad = max(h, w) // 2
    big = cv2.copyMakeBorder(face, pad, pad, pad, pad, cv2.BORDER_REFLECT)
    cx, cy = centre[0] + pad + w / 2, centre[1] + pad + h / 2
    turn = cv2.getRotationMatrix2D((cx, cy), roll, size / (scale * w))
    turn[0, 2] += size / 2 - cx
    turn[1, 2] += size / 2 - cy
    out = cv2.warpAffine(big, turn, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return np.clip(out.astype(np.float32) * gain, 0, 255)


def synthesize_clip(face: np.ndarray, rng: np.random.Generator, recipe: Recipe = Recipe()) -> np.ndarray:
    """(T, size, size) uint8: one still face as a camera shows it over `recipe.frames` frames."""
    if face.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale face, got shape {face.shape}")
    t, unit = recipe.frames, face.shape[1] / recipe.size  # output px -> still px
    steps = rng.normal(0, 1, (t, 4)) * [recipe.walk_px * unit, recipe.walk_px * unit, recipe.walk_scale,
                                        recipe.walk_roll_deg]
    path = np.cumsum(steps, axis=0) - steps[0]  # the first frame is the still itself
    gain_end = 1.0 + rng.uniform(-recipe.exposure, recipe.exposure)
    noise = rng.uniform(*recipe.noise)
    quality = int(rng.integers(recipe.jpeg[0], recipe.jpeg[1] + 1))
    frames, last = [], None
    for i in range(t):
        if last is not None and rng.random() < recipe.miss_rate:
            frames.append(last)  # the detector missed: the runtime carries the previous crop
            continue
        jitter = rng.normal(0, recipe.jitter_px * unit, 2)
        gain = 1.0 + (gain_end - 1.0) * i / max(1, t - 1)
        image = _frame(face, path[i, :2] + jitter, float(np.exp(path[i, 2])), float(path[i, 3]), gain, recipe.size)
        image = np.clip(image + rng.normal(0, noise, image.shape), 0, 255).astype(np.uint8)
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        last = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if ok else image
        frames.append(last)
    return np.stack(frames)


def synthesize_clips(images: np.ndarray, labels: np.ndarray, classes, *, seed: int, recipe: Recipe = Recipe(),
                     names=None, source: str = "") -> ClipSet:
    """One clip per still face, each from its own stream of the seed (clip i is the same whatever the set)."""
    clips = np.stack([synthesize_clip(face, np.random.default_rng([seed, i]), recipe)
                      for i, face in enumerate(images)]) if len(images) else \
        np.zeros((0, recipe.frames, recipe.size, recipe.size), np.uint8)
    names = list(names) if names is not None else [f"{classes[int(y)]}/clip-{i:05d}" for i, y in enumerate(labels)]
    return ClipSet(clips, np.asarray(labels, np.int64), tuple(classes), names, source)


def write_clip_folders(clipset: ClipSet, root: str | Path) -> list[Path]:
    """The clip set as class/clip/NNN.png folders under root; returns the clip folders."""
    root = Path(root)
    out = []
    for clip, name in zip(clipset.clips, clipset.names):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i, frame in enumerate(clip):
            if not cv2.imwrite(str(folder / f"{i:03d}.png"), frame):
                raise OSError(f"{folder / f'{i:03d}.png'}: cannot write the frame")
        out.append(folder)
    return out


def load_clips(root: str | Path) -> ClipSet:
    """A class/clip/frames tree, or a video labels .csv (video_clips), as a ClipSet; one-line errors naming the file."""
    if Path(root).suffix.lower() == ".csv":
        from feredge.evaluation.video_clips import load_video_clips  # imports this module: no top-level import

        return load_video_clips(root)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such clip folder")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise ValueError(f"{root}: no class folders (expected CLASS/CLIP/FRAME images)")
    clips, labels, names, length = [], [], [], None
    for label, class_dir in enumerate(class_dirs):
        for clip_dir in sorted(p for p in class_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            files = sorted(p for p in clip_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise ValueError(f"{clip_dir}: a clip folder with no frames")
            frames = [read_image(path, cv2.IMREAD_GRAYSCALE) for path in files]
            broken = next((path for path, f in zip(files, frames) if f is None), None)
            if broken is not None:
                raise ValueError(f"{broken}: not a readable image (corrupt or empty)")
            shapes = {f.shape for f in frames}
            if len(shapes) != 1:
                raise ValueError(f"{clip_dir}: frames of different sizes {sorted(shapes)}")
            if length is None:
                length = len(frames)
            elif len(frames) != length:
                raise ValueError(f"{clip_dir}: {len(frames)} frames, but the first clip has {length}")
            clips.append(np.stack(frames))
            labels.append(label)
            names.append(f"{class_dir.name}/{clip_dir.name}")
    if not clips:
        raise ValueError(f"{root}: no clip folders inside the class folders")
    sizes = {c.shape[1:] for c in clips}
    if len(sizes) != 1:
        raise ValueError(f"{root}: clips of different frame sizes {sorted(sizes)}")
    return ClipSet(np.stack(clips), np.asarray(labels, np.int64), tuple(d.name for d in class_dirs), names, str(root))


def main(argv=None) -> int:
    from feredge.evaluation.datasets import load_dataset

    parser = argparse.ArgumentParser(description="Clips from still labelled faces, as a camera shows them")
    parser.add_argument("--data", required=True, help="labelled faces (class folders or the FER-2013 CSV)")
    parser.add_argument("--split", default=None, help="split of --data (train, test)")
    parser.add_argument("--frames", type=int, default=Recipe.frames)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=0, help="faces, spread evenly over the set (0: all)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.frames < 2:
        raise SystemExit("--frames must be at least 2")
    data = load_dataset(args.data, split=args.split)
    if args.limit and args.limit < len(data):
        data = data.subset(np.unique(np.linspace(0, len(data) - 1, args.limit).round().astype(int)))
    clips = synthesize_clips(data.images, data.labels, data.classes, seed=args.seed,
                             recipe=Recipe(frames=args.frames), source=f"{args.data} [{args.split}]")
    folders = write_clip_folders(clips, args.out)
    log.info("%d clips of %d frames in %s", len(folders), args.frames, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
