"""evaluation.clips: the clip folder format and the seeded recipe that makes clips from stills."""
from __future__ import annotations

import numpy as np
import pytest

from feredge.evaluation.clips import Recipe, load_clips, synthesize_clip, synthesize_clips, write_clip_folders
from runtime_support import sample_faces


def test_a_clip_moves_drifts_and_is_the_same_for_the_same_seed():
    faces, _, _ = sample_faces(per_class=1)
    recipe = Recipe(frames=12, miss_rate=0.0)
    clip = synthesize_clip(faces[0], np.random.default_rng(5), recipe)
    assert clip.shape == (12, 48, 48) and clip.dtype == np.uint8
    assert np.array_equal(clip, synthesize_clip(faces[0], np.random.default_rng(5), recipe))
    steps = [np.abs(clip[i + 1].astype(int) - clip[i]).mean() for i in range(11)]
    assert min(steps) > 0.5  # every frame differs from the one before: motion, noise, compression
    # but it stays the same face: the first frame is close to the still
    assert np.abs(clip[0].astype(int) - faces[0]).mean() < 20


def test_detector_misses_repeat_the_last_crop():
    faces, _, _ = sample_faces(per_class=1)
    clip = synthesize_clip(faces[1], np.random.default_rng(0), Recipe(frames=40, miss_rate=0.5))
    repeats = sum(np.array_equal(clip[i], clip[i - 1]) for i in range(1, 40))
    assert 8 <= repeats <= 32


def test_clips_round_trip_through_the_folder_format(tmp_path):
    faces, labels, _ = sample_faces(per_class=2)
    classes = tuple(sorted(set(labels)))
    y = np.array([classes.index(name) for name in labels])
    clips = synthesize_clips(faces[:6], y[:6], classes, seed=3, recipe=Recipe(frames=5))
    write_clip_folders(clips, tmp_path / "clips")
    back = load_clips(tmp_path / "clips")
    order = [clips.names.index(name) for name in back.names]
    assert back.clips.shape == (6, 5, 48, 48) and np.array_equal(back.clips, clips.clips[order])
    assert [back.classes[i] for i in back.labels] == [clips.classes[clips.labels[i]] for i in order]
    # clip i depends on the seed and i only: a subset makes the same clips
    again = synthesize_clips(faces[:3], y[:3], classes, seed=3, recipe=Recipe(frames=5))
    assert np.array_equal(again.clips, clips.clips[:3])


@pytest.mark.parametrize("damage, needle", [
    ("empty", "a clip folder with no frames"),
    ("short", "2 frames, but the first clip has 3"),
    ("corrupt", "not a readable image"),
])
def test_malformed_clip_folders_are_one_line(tmp_path, damage, needle):
    faces, _, _ = sample_faces(per_class=1)
    clips = synthesize_clips(faces[:2], np.array([0, 0]), ("angry",), seed=0, recipe=Recipe(frames=3))
    folders = write_clip_folders(clips, tmp_path)
    if damage == "empty":
        (tmp_path / "angry" / "clip-99999").mkdir()
    elif damage == "short":
        (folders[1] / "002.png").unlink()
    else:
        (folders[0] / "001.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=needle):
        load_clips(tmp_path)
