"""evaluation.video_clips: clips of face crops from labelled videos (a labels CSV beside the videos)."""
from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest

from feredge.edge.detect import Detection, Detector
from feredge.edge.paths import SAMPLE_DIR
from feredge.edge.testvideo import make_test_video
from feredge.evaluation.clips import load_clips
from feredge.evaluation.video_clips import FER_CLASSES, load_video_clips, main

FPS = 15.0


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """A real 4 s video of sample faces and a labels CSV of its first two held faces of 16+ frames."""
    root = tmp_path_factory.mktemp("videos")
    truth = make_test_video(root / "talk.mp4", 1, seconds=4, fps=FPS, seed=0)
    segments, frame = [], 0
    for file, run in itertools.groupby(f[0]["file"] for f in truth["frames"]):
        n = len(list(run))
        if n >= 16:
            segments.append({"file": file, "label": file.split("/")[0], "first": frame, "frames": n})
        frame += n
    assert len(segments) >= 2 and segments[0]["label"] != segments[1]["label"]
    segments = segments[:2]
    rows = [f"talk.mp4,{s['label']},{s['first'] / FPS:.6f},{(s['first'] + s['frames']) / FPS:.6f}" for s in segments]
    csv = root / "labels.csv"
    csv.write_text("video,label,start,end\n" + "\n".join(rows) + "\n")
    return root, csv, segments, load_video_clips(csv, frames=16)


def _corr(a, b) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(np.corrcoef(a, b)[0, 1])


def test_segments_become_clips_of_the_held_face(labelled):
    _, csv, segments, clips = labelled
    assert clips.classes == FER_CLASSES
    assert clips.clips.shape == (2, 16, 48, 48) and clips.clips.dtype == np.uint8
    assert [clips.classes[y] for y in clips.labels] == [s["label"] for s in segments]
    assert clips.names == [f"{s['label']}/talk-{s['first']:06d}" for s in segments]
    assert clips.source == str(csv)
    stills = [cv2.resize(cv2.imread(str(SAMPLE_DIR / s["file"]), cv2.IMREAD_GRAYSCALE), (48, 48),
                         interpolation=cv2.INTER_AREA) for s in segments]
    for i, clip in enumerate(clips.clips):
        # the detector found the face in (nearly) every frame: the crops move with the face, few repeats
        repeats = sum(np.array_equal(clip[t], clip[t - 1]) for t in range(1, 16))
        assert repeats <= 3
        # and each crop is the held face, framed as FER frames it: it matches that face, not the other one
        own = [_corr(frame, stills[i]) for frame in clip]
        other = [_corr(frame, stills[1 - i]) for frame in clip]
        # (about 0.7 and 0.45 for the two faces here, against about -0.1 for the other face)
        assert np.median(own) > 0.3, own
        assert np.median(own) > np.median(other) + 0.25, (own, other)


def test_a_stride_makes_overlapping_windows(labelled):
    _, csv, segments, clips = labelled
    strided = load_video_clips(csv, frames=16, stride=4)
    expected = [f"{s['label']}/talk-{s['first'] + k:06d}" for s in segments for k in range(0, s["frames"] - 15, 4)]
    assert strided.names == expected
    # windows of one segment are the same crops shifted: the first window is the default clip
    assert np.array_equal(strided.clips[0], clips.clips[0])
    assert np.array_equal(strided.clips[1][:12], strided.clips[0][4:])


def test_load_clips_reads_the_csv_too(labelled):
    _, csv, _, clips = labelled
    back = load_clips(csv)
    assert back.names == clips.names and np.array_equal(back.clips, clips.clips)
    assert np.array_equal(back.labels, clips.labels) and back.classes == clips.classes


def test_the_cli_writes_folders_that_load_clips_reads_back(labelled, tmp_path, caplog):
    _, csv, _, clips = labelled
    caplog.set_level("INFO", logger="feredge.data")
    assert main([str(csv), "--frames", "16", "--out", str(tmp_path / "clips")]) == 0
    assert any("1 clips" in r.getMessage() and clips.classes[clips.labels[0]] in r.getMessage()
               for r in caplog.records)
    back = load_clips(tmp_path / "clips")
    assert sorted(back.names) == sorted(clips.names)
    for name, clip, label in zip(back.names, back.clips, back.labels):
        i = clips.names.index(name)
        assert np.array_equal(clip, clips.clips[i])
        assert back.classes[label] == clips.classes[clips.labels[i]]


@pytest.mark.parametrize("text, error, words", [
    ("video,label\ntalk.mp4,joy\n", ValueError, ["labels.csv:2", "unknown label 'joy'"]),
    ("video,label\n\ntalk.mp4,happy\nlost.mp4,happy\n", FileNotFoundError, ["labels.csv:4", "lost.mp4"]),
    ("video,label,start,end\ntalk.mp4,happy,2,1.5\n", ValueError, ["labels.csv:2", "not before end"]),
    ("video,label,start,end\ntalk.mp4,happy,1,1\n", ValueError, ["labels.csv:2", "not before end"]),
    ("video,label,start,end\ntalk.mp4,happy,soon,2\n", ValueError, ["labels.csv:2", "'soon'", "not a number"]),
    ("video,emotion\ntalk.mp4,happy\n", ValueError, ["labels.csv:1", "label"]),
    ("video,label,start,end\ntalk.mp4,happy,0,0.5\n", ValueError, ["labels.csv:2", "talk.mp4", "fewer than"]),
])
def test_bad_rows_are_one_line_errors_naming_the_csv_line(labelled, tmp_path, text, error, words):
    root = labelled[0]
    csv = root / "bad" / "labels.csv"
    csv.parent.mkdir(exist_ok=True)
    csv.write_text(text.replace("talk.mp4", "../talk.mp4"))
    with pytest.raises(error) as caught:
        load_video_clips(csv, frames=16)
    message = str(caught.value)
    assert "\n" not in message and str(csv) in message
    for word in words:
        assert word in message


def test_a_segment_without_any_face_is_an_error(tmp_path):
    video = tmp_path / "wall.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (320, 240))
    assert writer.isOpened()
    wall = cv2.resize(np.arange(0, 240, 10, dtype=np.uint8)[:, None].repeat(32, 1), (320, 240))
    for _ in range(20):
        writer.write(cv2.cvtColor(wall, cv2.COLOR_GRAY2BGR))
    writer.release()
    (tmp_path / "labels.csv").write_text("video,label\nwall.mp4,neutral\n")
    with pytest.raises(ValueError, match=r"labels\.csv:2: no face found in any of the 20 frames .*wall\.mp4"):
        load_video_clips(tmp_path / "labels.csv", frames=16)


def test_an_unreadable_video_is_an_error(tmp_path):
    (tmp_path / "broken.mp4").write_bytes(b"not a video at all")
    (tmp_path / "labels.csv").write_text("video,label\nbroken.mp4,neutral\n")
    with pytest.raises(ValueError, match=r"labels\.csv:2: .*broken\.mp4"):
        load_video_clips(tmp_path / "labels.csv")


class _Flaky(Detector):
    """Two faces of a fixed box from the third frame of a segment on, none on every fourth frame."""

    def __init__(self):
        self.count = 0

    def reset(self):
        self.count = 0

    def detect(self, gray):
        self.count += 1
        if self.count < 3 or self.count % 4 == 0:
            return []
        return [Detection((10, 10, 40, 40), 0.9), Detection((100, 100, 120, 120), 0.8)]


def test_misses_carry_the_last_crop_and_frames_before_the_first_face_are_skipped(labelled):
    _, csv, segments, _ = labelled
    clips = load_video_clips(csv, frames=16, detector=_Flaky())
    assert clips.names == [f"{s['label']}/talk-{s['first'] + 2:06d}" for s in segments]
    for clip in clips.clips:
        repeats = [t for t in range(1, 16) if np.array_equal(clip[t], clip[t - 1])]
        assert repeats == [1, 5, 9, 13]  # segment frames 4, 8, 12, 16 (counted from 1) were misses
    # the largest face, cropped and resized as the runtime does (a plain box crop, INTER_AREA down to 48)
    video = cv2.VideoCapture(str(csv.parent / "talk.mp4"))
    for _ in range(segments[0]["first"] + 2):
        video.grab()
    ok, frame = video.read()
    video.release()
    assert ok
    gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    assert np.array_equal(clips.clips[0][0], cv2.resize(gray[100:220, 100:220], (48, 48), interpolation=cv2.INTER_AREA))
