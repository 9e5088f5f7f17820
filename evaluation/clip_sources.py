"""Clips for seed004 from whatever labelled data the user points at, by one rule.

`clip_source(data, split, frames)` accepts:
- a clip tree (CLASS/CLIP/FRAME images) or a video labels CSV (`evaluation.video_clips`): read as is;
- labelled still faces (the FER-2013 CSV, a folder with train/ and test/, class folders): turned
  into clips by `evaluation.clips`' recipe, each split with its own seed (train: seed,
  test: seed + 1000, privatetest: seed + 2000), so PublicTest clips never share a stream with training.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from feredge.evaluation.clips import ClipSet, Recipe, load_clips, synthesize_clips

SPLIT_SEED_OFFSET = {None: 0, "train": 0, "test": 1000, "privatetest": 2000}


def is_clip_data(data) -> bool:
    """A clip tree (class folders holding clip folders) or a video labels CSV (header starts 'video')."""
    path = Path(data)
    if path.suffix.lower() == ".csv":
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                return fh.readline().strip().lower().startswith("video")
        except OSError:
            return False
    if not path.is_dir() or (path / "train").is_dir() or (path / "test").is_dir():
        return False
    classes = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return any(child.is_dir() and not child.name.startswith(".") for c in classes for child in c.iterdir())


def clip_source(data, split: str | None, frames: int, *, seed: int = 0, limit: int | None = None,
                stratified: bool = False, progress: bool = True) -> ClipSet:
    """Clips of `frames` frames from `data` (see the module doc). limit: that many clips, a stratified
    sample (training) or spread evenly over the set (evaluation)."""
    from feredge.evaluation.datasets import load_dataset, stratified_split

    if is_clip_data(data):
        clips = load_clips(data)
        if clips.frames != frames:
            raise ValueError(f"{data}: clips of {clips.frames} frames, but the temporal model reads {frames}")
        return _limited(clips, limit, stratified, seed)
    faces = load_dataset(data, split=split, progress=progress)
    if limit and limit < len(faces):
        keep = stratified_split(faces.labels, limit / len(faces), seed=seed)[1] if stratified else \
            np.unique(np.linspace(0, len(faces) - 1, limit).round().astype(int))
        faces = faces.subset(keep)
    if split not in SPLIT_SEED_OFFSET:
        raise ValueError(f"{data}: no clip seed for split {split!r} (choose from train, test, privatetest)")
    stems = [f"{faces.classes[int(y)]}/{Path(str(s)).stem}" for y, s in zip(faces.labels, faces.sources)]
    clip_seed = seed + SPLIT_SEED_OFFSET[split]
    return synthesize_clips(faces.images, faces.labels, faces.classes, seed=clip_seed, recipe=Recipe(frames=frames),
                            names=stems, source=f"{data} [{split or 'all'}] as synthetic clips (seed {clip_seed})")


def _limited(clips: ClipSet, limit: int | None, stratified: bool, seed: int) -> ClipSet:
    if not limit or limit >= len(clips):
        return clips
    from feredge.evaluation.datasets import stratified_split

    keep = stratified_split(clips.labels, limit / len(clips), seed=seed)[1] if stratified else \
        np.unique(np.linspace(0, len(clips) - 1, limit).round().astype(int))
    return ClipSet(clips.clips[keep], clips.labels[keep], clips.classes, [clips.names[i] for i in keep], clips.source)
