"""Clips from labelled videos, for the temporal model (seed004): a labels CSV beside the videos.

Labels file: CSV with the header `video,label,start,end` (`start` and `end` may be left out, as
columns or as values; keep `video` first: evaluation.clip_sources tells this format by it):

    video,label,start,end
    people/ann.mp4,happy,0,2.5
    people/ann.mp4,neutral,2.5,
    bob.mp4,surprise,,

- video: the video's path, relative to the CSV's folder (or absolute); anything cv2.VideoCapture opens.
- label: one of the classes (default: the 7 FER classes angry, disgust, fear, happy, neutral, sad,
  surprise; matched ignoring case).
- start, end: the labelled segment in seconds, [start, end); an empty start is the beginning, an
  empty end the end of the video. Frame i is at i / fps (the video's own frame rate).

Each segment's frames go through the runtime's face path: grayscale, the detector (default YuNet,
fitted to the FER framing), the largest face of the frame, the runtime's crop
(edge.pipeline.face_crop) and its resize to size x size (edge.preprocess.prepare_uint8). A frame
where no face is found carries the previous crop, as the runtime's tracker would; frames before
the segment's first face are skipped. The crops
are cut into clips of `frames` consecutive crops: non-overlapping windows by default, or windows
every `stride` frames; a remainder shorter than a clip is dropped. A segment with no face at all,
or with fewer than `frames` frames, is an error naming the CSV line and the video. Clip names are
`LABEL/VIDEOSTEM-FFFFFF`, FFFFFF the video frame index of the clip's first frame.

    python -m feredge.evaluation.video_clips labels.csv --frames 16 --out clips/video [--stride 8]

writes the clips in the folder format of evaluation.clips (CLASS/CLIP/NNN.png); `load_clips` reads
either that folder or the CSV itself.
"""
from __future__ import annotations

import argparse
import collections
import csv
import logging
import math
from pathlib import Path

import cv2
import numpy as np

from feredge.edge.detect import Detector, parse_detector
from feredge.edge.pipeline import face_crop
from feredge.edge.preprocess import PreprocessSpec, prepare_uint8, to_gray
from feredge.evaluation.clips import ClipSet, write_clip_folders

log = logging.getLogger("feredge.data")

FER_CLASSES = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
REQUIRED_COLUMNS = ("video", "label")
OPTIONAL_COLUMNS = ("start", "end")


def _time(value: str | None, column: str, where: str) -> float | None:
    text = (value or "").strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        raise ValueError(f"{where}: {column} {text!r} is not a number of seconds") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{where}: {column} {text!r} must be a finite number of seconds >= 0")
    return seconds


def _largest(detections):
    return max(detections, key=lambda d: d.box[2] * d.box[3]) if detections else None


def _segment_crops(path: Path, start: float | None, end: float | None, detector: Detector, spec: PreprocessSpec,
                   margin: float, align: bool, where: str) -> tuple[list[np.ndarray], int, int]:
    """(face crops from the first frame with a face on, index of that frame, frames read) for [start, end)."""
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise ValueError(f"{where}: OpenCV cannot open the video {path}")
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        if (start or end) and not fps > 0:
            raise ValueError(f"{where}: the video {path} reports no frame rate, so start/end cannot be used")
        first = math.ceil(start * fps - 1e-6) if start else 0
        stop = math.ceil(end * fps - 1e-6) if end is not None else None
        detector.reset()
        crops: list[np.ndarray] = []
        first_face, index, read = None, 0, 0
        while stop is None or index < stop:
            if index < first:  # before the segment: grab without decoding (seeking is inexact in many codecs)
                if not capture.grab():
                    break
                index += 1
                continue
            ok, frame = capture.read()
            if not ok or frame is None:
                break
            read += 1
            gray = to_gray(frame)
            face = _largest(detector.detect(gray))
            if face is not None:
                try:
                    crop = prepare_uint8(face_crop(gray, face, face.box, margin, align), spec)
                except ValueError:
                    crop = None  # a box outside the frame: counts as a miss
                if crop is not None:
                    if first_face is None:
                        first_face = index
                    crops.append(crop)
                    index += 1
                    continue
            if crops:
                crops.append(crops[-1])  # a miss: the runtime's tracker carries the previous crop
            index += 1
    finally:
        capture.release()
    if index == 0 and read == 0:
        raise ValueError(f"{where}: no frame could be read from the video {path} (empty or unreadable)")
    if read == 0:
        raise ValueError(f"{where}: the video {path} ends before the segment starts (it has {index} frames at "
                         f"{fps:g} fps)")
    if end is not None and index < stop:
        log.warning("%s: the video %s ends at frame %d, before the segment's end at %gs", where, path, index, end)
    return crops, (first_face if first_face is not None else first), read


def load_video_clips(csv_path: str | Path, frames: int = 16, classes=None, detector: str | Detector = "yunet",
                     size: int = 48, stride: int | None = None, *, margin: float = 0.0,
                     align: bool = False) -> ClipSet:
    """The labelled segments of a labels CSV (see the module docstring) as a ClipSet of face-crop clips.

    classes: the class names labels index into (default: the 7 FER classes, alphabetical);
    detector: a parse_detector text or a ready Detector; margin, align: the crop as the model's
    preprocessing spec says (a bundle's spec.margin / spec.align; FER models use 0 and False).
    """
    csv_path = Path(csv_path)
    if int(frames) < 1:
        raise ValueError(f"frames must be at least 1, not {frames}")
    frames = int(frames)
    stride = frames if stride is None else int(stride)
    if stride < 1:
        raise ValueError(f"stride must be at least 1, not {stride}")
    classes = tuple(classes) if classes is not None else FER_CLASSES
    by_name = {c.lower(): i for i, c in enumerate(classes)}
    if not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path}: no such labels file")
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [(name or "").strip().lower() for name in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{csv_path}:1: the header lacks column(s) {', '.join(missing)} (expected "
                             f"{','.join(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)}; start and end are optional)")
        reader.fieldnames = header
        rows = []
        for row in reader:
            rows.append((reader.line_num, row))
    if not rows:
        raise ValueError(f"{csv_path}: no rows below the header")
    segments = []  # every row checked before any video is decoded: a typo on the last line fails at once
    for line, row in rows:
        where = f"{csv_path}:{line}"
        if None in row:
            raise ValueError(f"{where}: more fields than the header has")
        video_text = (row.get("video") or "").strip()
        label_text = (row.get("label") or "").strip()
        if not video_text:
            raise ValueError(f"{where}: no video")
        if label_text.lower() not in by_name:
            raise ValueError(f"{where}: unknown label {label_text!r} (expected one of {', '.join(classes)})")
        start, end = _time(row.get("start"), "start", where), _time(row.get("end"), "end", where)
        if end is not None and end <= (start or 0.0):
            raise ValueError(f"{where}: start {start or 0:g}s is not before end {end:g}s")
        video = Path(video_text)
        video = video if video.is_absolute() else csv_path.parent / video
        if not video.is_file():
            raise FileNotFoundError(f"{where}: no such video {video}")
        segments.append((line, where, video, by_name[label_text.lower()], start, end))
    spec = PreprocessSpec(height=size, width=size, channels=1)
    detector = parse_detector(detector) if isinstance(detector, str) else detector
    clips, labels, names = [], [], []
    made: dict[str, int] = {}
    for line, where, video, label, start, end in segments:
        crops, first_frame, read = _segment_crops(video, start, end, detector, spec, margin, align, where)
        if not crops:
            raise ValueError(f"{where}: no face found in any of the {read} frames of the segment of {video}")
        if len(crops) < frames:
            short = f"{read} frames" if len(crops) == read else f"{len(crops)} frames from its first face on"
            raise ValueError(f"{where}: the segment of {video} has {short}, fewer than a clip of {frames}")
        starts = range(0, len(crops) - frames + 1, stride)
        for s in starts:
            name = f"{classes[label]}/{video.stem}-{first_frame + s:06d}"
            if name in made:
                raise ValueError(f"{where}: clip {name} was already made by line {made[name]} (overlapping segments, "
                                 "or two videos with the same name)")
            made[name] = line
            clips.append(np.stack(crops[s:s + frames]))
            labels.append(label)
            names.append(name)
        log.info("%s: %s %s: %d clips (%d so far)", where, video.name, classes[label], len(starts), len(clips))
    return ClipSet(np.stack(clips), np.asarray(labels, np.int64), classes, names, str(csv_path))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m feredge.evaluation.video_clips",
                                     description="Face-crop clips from labelled videos (a labels CSV), as clip folders")
    parser.add_argument("labels", help="the labels CSV: video,label,start,end (video paths relative to it)")
    parser.add_argument("--frames", type=int, default=16, help="frames per clip")
    parser.add_argument("--stride", type=int, default=None, help="frames between clip starts (default: --frames)")
    parser.add_argument("--detector", default="yunet", help="yunet[:MODEL.onnx] | blazeface | haar | none")
    parser.add_argument("--size", type=int, default=48, help="side of the face crops")
    parser.add_argument("--out", required=True, help="folder for the CLASS/CLIP/NNN.png clips")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        clips = load_video_clips(args.labels, args.frames, detector=args.detector, size=args.size, stride=args.stride)
        counts = collections.Counter(clips.classes[int(y)] for y in clips.labels)
        for name in clips.classes:
            if counts[name]:
                log.info("%-10s %d clips", name, counts[name])
        folders = write_clip_folders(clips, args.out)
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise SystemExit(f"error: {exc}") from None
    log.info("%d clips of %d frames in %s", len(folders), args.frames, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
