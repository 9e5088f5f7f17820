"""The runtime pipeline: capture -> detect -> crop with margin -> shared preprocessing -> one batched
inference for all faces of the frame -> per-face smoothing -> results with per-stage timings.

`Pipeline.process(frame)` turns one Frame into a FrameResult; `Pipeline.run(source, sinks)` loops
over a source, times the capture and the drawing too, and hands every result to the sinks (JSON
lines, window, MJPEG server, recorder). The demo (`feredge run`) and the benchmarks use this same
object, so the FPS a benchmark reports is the FPS the demo gets. Stage times are wall-clock
milliseconds from time.perf_counter:

    capture     source.read() (decode, camera wait)
    detect      grayscale view of the frame (free for picamera2's Y plane) + face detection
    preprocess  crops with margin + edge.preprocess (resize, equalise, normalise) into one batch
    infer       one backend.predict call for all faces of the frame (0 when there is no face)
    smooth      track matching and per-face smoothing
    draw        the overlay (only when a sink shows or records the image)
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence

import numpy as np

from feredge.edge.detect import Detector, WholeFrameDetector
from feredge.edge.preprocess import PreprocessSpec, aligned_crop, crop_face, preprocess, to_gray
from feredge.edge.smoothing import FaceTracker, NoSmoother
from feredge.edge.sources import Frame, FrameSource

log = logging.getLogger("feredge.run")

STAGES = ("capture", "detect", "preprocess", "infer", "smooth", "draw")


@dataclasses.dataclass
class FaceResult:
    box: tuple[int, int, int, int]  # x, y, w, h in the frame image's pixels
    label: str
    probabilities: np.ndarray  # (classes,) in the bundle's label order
    smoothed_label: str
    smoothed_probabilities: np.ndarray
    track: int
    score: float | None = None  # the detector's own score (Haar: neighbours; YuNet: confidence)
    temporal_probabilities: np.ndarray | None = None  # seed004's head over the track's last T frames
    temporal_label: str | None = None  # None until the track has T frames (or without --temporal)
    temporal_frames: int | None = None  # frames in the track's buffer (None: no temporal head)

    @property
    def confidence(self) -> float:
        return float(self.probabilities.max())

    def to_dict(self) -> dict:
        out = {"box": [int(v) for v in self.box], "track": self.track, "label": self.label,
               "confidence": round(self.confidence, 4),
               "probabilities": [round(float(p), 4) for p in self.probabilities],
               "smoothed_label": self.smoothed_label}
        if self.score is not None:
            out["score"] = round(float(self.score), 4)
        if self.temporal_frames is not None:  # null until the track has its T frames
            out["temporal_label"] = self.temporal_label
            out["temporal_frames"] = self.temporal_frames
        if self.temporal_probabilities is not None:
            out["temporal_probabilities"] = [round(float(p), 4) for p in self.temporal_probabilities]
        return out


@dataclasses.dataclass
class FrameResult:
    index: int
    timestamp: float
    faces: list[FaceResult]
    stage_ms: dict[str, float]
    name: str | None = None  # the image file the frame came from, for image sources
    image: np.ndarray | None = None  # the annotated frame, when a sink needed one

    @property
    def total_ms(self) -> float:
        return float(sum(self.stage_ms.values()))

    def to_dict(self) -> dict:
        out = {"frame": self.index, "timestamp": round(float(self.timestamp), 6)}
        if self.name is not None:
            out["source"] = self.name
        out["faces"] = [f.to_dict() for f in self.faces]
        out["stage_ms"] = {k: round(v, 3) for k, v in self.stage_ms.items()}
        return out


@dataclasses.dataclass
class RunSummary:
    frames: int = 0
    faces: int = 0
    seconds: float = 0.0  # wall time of the loop
    first_result_s: float | None = None  # from the start of run() to the first result
    stage_ms_total: dict[str, float] = dataclasses.field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    ended: str = ""  # "end of stream", "max frames", "stopped by a sink"

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def stage_ms_mean(self) -> dict[str, float]:
        return {k: (v / self.frames if self.frames else 0.0) for k, v in self.stage_ms_total.items()}

    def to_dict(self) -> dict:
        return {"frames": self.frames, "faces": self.faces, "seconds": round(self.seconds, 4),
                "fps": round(self.fps, 3), "first_result_s": self.first_result_s,
                "stage_ms_mean": {k: round(v, 3) for k, v in self.stage_ms_mean.items()}, "ended": self.ended}


class Pipeline:
    """One model, one detector, one smoother: Frame -> FrameResult.

    backend: an edge.backends Backend (predict(float32 NHWC) -> probabilities); spec and labels from
    the bundle; detector: edge.detect (default: whole frame); smoother: EmaSmoother / MajoritySmoother
    / NoSmoother or a ready FaceTracker; margin: crop margin as a fraction of the box (default: the
    spec's margin, which is what the model was trained with); temporal: an edge.temporal.TemporalHead
    run over each track's last T frames (a "temporal" stage).
    """

    def __init__(self, backend, spec: PreprocessSpec, labels: Sequence[str], detector: Detector | None = None,
                 smoother=None, margin: float | None = None, temporal=None):
        self.backend, self.spec, self.labels = backend, spec, tuple(labels)
        self.last_summary: RunSummary | None = None
        self.detector = detector or WholeFrameDetector()
        self.tracker = smoother if isinstance(smoother, FaceTracker) else FaceTracker(smoother or NoSmoother())
        self.margin = spec.margin if margin is None else float(margin)
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0, not {self.margin}")
        classes = getattr(backend, "num_classes", len(self.labels))
        if classes != len(self.labels):
            raise ValueError(f"the model predicts {classes} classes but the bundle names {len(self.labels)} labels")
        shape = getattr(backend, "input_shape", None)
        if shape is not None and tuple(shape) != spec.input_shape:  # a temporal head, or another image size
            raise ValueError(f"{getattr(backend, 'path', 'the model')}: the model takes input {tuple(shape)} but the "
                             f"preprocessing spec makes (H, W, C) faces of {spec.input_shape}")

        self.temporal, self.buffers = temporal, None
        if temporal is not None:
            from feredge.edge.temporal import TrackBuffers

            temporal.check_labels(self.labels)
            self.buffers = TrackBuffers(temporal.frames)

    def reset(self) -> None:
        """Forget tracks and carried boxes (a new video, say)."""
        self.tracker.reset()
        self.detector.reset()
        if self.buffers is not None:
            self.buffers.reset()

    def _crop(self, source: np.ndarray, detection, box, to_source: tuple[float, float]) -> np.ndarray:
        return face_crop(source, detection, box, self.margin, self.spec.align, to_source)

    def process(self, frame: Frame, capture_ms: float = 0.0) -> FrameResult:
        clock = time.perf_counter
        t0 = clock()
        gray = frame.gray if frame.gray is not None else to_gray(frame.image)
        detections = self.detector.detect(gray)
        t1 = clock()
        # boxes come in the gray image's pixels; picamera2's lores Y plane is smaller than `image`
        sx = frame.image.shape[1] / gray.shape[1]
        sy = frame.image.shape[0] / gray.shape[0]
        if self.spec.channels == 1:
            source, boxes_src = gray, [d.box for d in detections]
        else:
            source = frame.image if frame.image.ndim == 3 else gray
            boxes_src = [_scale_box(d.box, sx, sy) for d in detections]
        to_source = (1.0, 1.0) if self.spec.channels == 1 else (sx, sy)
        crops = [self._crop(source, d, box, to_source) for d, box in zip(detections, boxes_src)]
        batch = preprocess(crops, self.spec)
        t2 = clock()
        probs = self.backend.predict(batch) if len(batch) else np.zeros((0, len(self.labels)), np.float32)
        t3 = clock()
        boxes = [_scale_box(d.box, sx, sy) for d in detections]
        ids, smoothed = self.tracker.update(boxes, probs)
        faces = [FaceResult(box, self.labels[int(np.argmax(p))], p, self.labels[int(np.argmax(s))], s, track, d.score)
                 for box, p, s, track, d in zip(boxes, probs, smoothed, ids, detections)]
        t4 = clock()
        stage_ms = {"capture": capture_ms, "detect": 1000 * (t1 - t0), "preprocess": 1000 * (t2 - t1),
                    "infer": 1000 * (t3 - t2), "smooth": 1000 * (t4 - t3), "draw": 0.0}
        if self.temporal is not None:
            self._temporal(faces)
            stage_ms["temporal"] = 1000 * (clock() - t4)
        return FrameResult(frame.index, frame.timestamp, faces, stage_ms, frame.name)

    def _temporal(self, faces: list[FaceResult]) -> None:
        """Each face's frame joins its track's ring buffer; a full buffer runs the head."""
        ready = []
        for face in faces:
            self.buffers.push(face.track, face.probabilities)
            face.temporal_frames = self.buffers.count(face.track)
            if self.buffers.full(face.track):
                ready.append(face)
        if ready:  # one call for every face that has T frames: the head's batch
            out = self.temporal.predict(np.stack([self.buffers.sequence(f.track) for f in ready]))
            for face, p in zip(ready, out):
                face.temporal_probabilities, face.temporal_label = p, self.labels[int(np.argmax(p))]
        self.buffers.tick()

    def run(self, source: FrameSource, sinks: Sequence = (), *, max_frames: int | None = None,
            on_result=None) -> RunSummary:
        """Read, process, draw (when a sink needs the picture) and hand to every sink until the source
        ends, `max_frames` results were made, or a sink asks to stop (write() returning False).

        Sinks have write(result) and `needs_image`; the caller opens and closes them and the source.
        """
        from feredge.edge.render import annotate

        need_image = any(getattr(s, "needs_image", False) for s in sinks)
        summary = self.last_summary = RunSummary()  # read after an interrupt: what ran until then
        started = last = time.perf_counter()
        fps = interval = None
        try:
            while max_frames is None or summary.frames < max_frames:
                t0 = time.perf_counter()
                frame = source.read()
                t1 = time.perf_counter()
                if frame is None:
                    summary.ended = "end of stream"
                    break
                result = self.process(frame, 1000 * (t1 - t0))
                if need_image:
                    t2 = time.perf_counter()
                    result.image = annotate(frame.image, result, self.labels, fps)
                    result.stage_ms["draw"] = 1000 * (time.perf_counter() - t2)
                if summary.first_result_s is None:
                    summary.first_result_s = time.perf_counter() - started
                summary.frames += 1
                summary.faces += len(result.faces)
                for key, value in result.stage_ms.items():
                    summary.stage_ms_total[key] = summary.stage_ms_total.get(key, 0.0) + value
                keep_going = True
                for sink in sinks:
                    if sink.write(result) is False:
                        keep_going = False
                if on_result is not None and on_result(result) is False:
                    keep_going = False
                now = time.perf_counter()
                # an average of intervals, not of 1/interval: one fast frame must not read as 1000 FPS
                interval = now - last if interval is None else 0.9 * interval + 0.1 * (now - last)
                fps = 1.0 / max(interval, 1e-6)
                last = now
                if not keep_going:
                    summary.ended = "stopped by a sink"
                    break
            else:
                summary.ended = "max frames"
        finally:
            summary.seconds = time.perf_counter() - started
        return summary


def face_crop(source: np.ndarray, detection, box, margin: float, align: bool,
              to_source: tuple[float, float] = (1.0, 1.0)) -> np.ndarray:
    """The runtime's face crop: turned upright by the eyes when `align` and the detector gave them,
    else `box` grown by `margin`. to_source scales detection pixels to the source image's."""
    if align and detection.landmarks and detection.eye_ref:
        eyes = [(x * to_source[0], y * to_source[1]) for x, y in detection.landmarks[:2]]
        try:
            return aligned_crop(source, eyes, detection.eye_ref, margin)
        except ValueError:
            pass  # eyes that make no face (a profile, a bad landmark): the box crop instead
    return crop_face(source, box, margin)


def _scale_box(box, sx: float, sy: float) -> tuple[int, int, int, int]:
    if sx == 1.0 and sy == 1.0:
        return tuple(int(v) for v in box)
    x, y, w, h = box
    return int(round(x * sx)), int(round(y * sy)), int(round(w * sx)), int(round(h * sy))
