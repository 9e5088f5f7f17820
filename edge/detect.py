"""Face detectors: `detect(gray) -> [Detection]` with boxes (x, y, w, h) in the given image's pixels.

- HaarDetector: the frontal-face Haar cascade that ships with OpenCV 4 (the seeds' choice), run on
  a downscaled grayscale frame with a minimum face size, boxes mapped back to full size.
- YuNetDetector: OpenCV's cv2.FaceDetectorYN with YuNet (face_detection_yunet_2023mar.onnx from the
  OpenCV Zoo, shipped in edge/detectors/): boxes, scores and five landmarks.
- BlazeFaceDetector: MediaPipe's BlazeFace short-range (128x128 TFLite, shipped in edge/detectors/),
  run by LiteRT when installed, else by cv2.dnn: boxes, scores and six landmarks.
- WholeFrameDetector: the whole image is one face (folders of pre-cropped faces like models/sample).
- EveryN: runs a detector on every n-th frame and follows its faces in between (tracking mode).
- PrecroppedOr: small images (pre-cropped faces) are whole faces, anything bigger goes to a detector.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import cv2
import numpy as np

from feredge.edge.paths import BLAZEFACE_MODEL, YUNET_MODEL

HAAR_CASCADE = "haarcascade_frontalface_default.xml"
AUTO_WIDTH = 320  # scale="auto": detect on an image about this wide


@dataclasses.dataclass(frozen=True)
class Detection:
    box: tuple[int, int, int, int]  # x, y, w, h
    score: float | None = None  # Haar: neighbours supporting the box; YuNet, BlazeFace: confidence 0..1
    # (x, y) in frame pixels; the first two are always the subject's right eye (image left), then
    # the left eye; then YuNet: nose, right and left mouth corner; BlazeFace: nose, mouth, ears
    landmarks: tuple[tuple[float, float], ...] | None = None
    # where this detector's eyes sit in the FER crop on average: (midpoint x, y, eye distance) in crop
    # sides, for aligned crops (edge.preprocess.aligned_crop)
    eye_ref: tuple[float, float, float] | None = None


class Detector:
    name = "detector"

    def detect(self, gray: np.ndarray) -> list[Detection]:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget any state carried between frames (EveryN)."""


def _downscale(image: np.ndarray, scale: float) -> np.ndarray:
    if scale >= 1.0:
        return image
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _resolve_scale(scale: float | str, width: int, auto_width: int = AUTO_WIDTH) -> float:
    if scale == "auto":
        return min(1.0, auto_width / width)
    return float(scale)


@dataclasses.dataclass(frozen=True)
class BoxFit:
    """How a detector frames a face against the FER-2013 crop the classifier learned from: its box's
    width and height as fractions of the crop's side, and its centre's offset in crop sides.
    `to_crop` turns such a box into the square crop, so every detector hands the classifier the
    framing it was trained on. Measured by `python -m feredge.benchmarks.detectors` (columns side
    ratio and centre) on faces from the shipped sample pasted at known boxes."""
    width: float = 1.0
    height: float = 1.0
    dx: float = 0.0
    dy: float = 0.0

    def to_crop(self, box, shape) -> tuple[int, int, int, int]:
        x, y, w, h = box
        side = (w / self.width + h / self.height) / 2
        cx, cy = x + w / 2 - self.dx * side, y + h / 2 - self.dy * side
        x0, y0 = max(0, int(round(cx - side / 2))), max(0, int(round(cy - side / 2)))
        x1, y1 = min(shape[1], int(round(cx + side / 2))), min(shape[0], int(round(cy + side / 2)))
        return x0, y0, max(0, x1 - x0), max(0, y1 - y0)


# median over 109 (YuNet) and 27 (BlazeFace) faces of 48 px and more, 2-core AMD EPYC, seed 2
YUNET_FIT = BoxFit(width=0.862, height=1.151, dx=0.012, dy=0.009)
BLAZEFACE_FIT = BoxFit(width=1.013, height=1.013, dx=-0.004, dy=0.110)
YUNET_EYES = (0.507, 0.371, 0.378)  # eye midpoint x, y and eye distance in FER crop sides, same faces
BLAZEFACE_EYES = (0.487, 0.363, 0.428)


def _map_back(x, y, w, h, scale: float, shape) -> tuple[int, int, int, int]:
    inv = 1.0 / scale
    x0, y0 = max(0, int(round(x * inv))), max(0, int(round(y * inv)))
    x1, y1 = min(shape[1], int(round((x + w) * inv))), min(shape[0], int(round((y + h) * inv)))
    return x0, y0, max(0, x1 - x0), max(0, y1 - y0)


class HaarDetector(Detector):
    """OpenCV 4's Haar cascade on a downscaled frame.

    scale: the detection image's size relative to the frame (0.5: a quarter of the pixels, about 4x
    faster), or "auto" for about 320 px wide; min_face: the smallest face to find, in frame pixels
    (never below the cascade's 24 px window at the detection scale).
    """

    name = "haar"

    def __init__(self, scale: float | str = "auto", min_face: int = 60, scale_factor: float = 1.1,
                 min_neighbors: int = 5, cascade: str | Path | None = None):
        if scale != "auto" and not 0 < float(scale) <= 1:
            raise ValueError(f"detection scale must be in (0, 1] or 'auto', not {scale}")
        if scale_factor <= 1.0:
            raise ValueError(f"scale_factor must be above 1, not {scale_factor}")
        path = Path(cascade) if cascade else _haar_file()
        self.classifier = cv2.CascadeClassifier(str(path))
        if self.classifier.empty():
            raise ValueError(f"{path}: not a readable Haar cascade")
        self.scale, self.min_face = scale, int(min_face)
        self.scale_factor, self.min_neighbors = float(scale_factor), int(min_neighbors)

    def detect(self, gray: np.ndarray) -> list[Detection]:
        scale = _resolve_scale(self.scale, gray.shape[1])
        small = _downscale(gray, scale)
        side = max(24, int(math.ceil(self.min_face * scale)))
        if small.shape[0] < side or small.shape[1] < side:
            return []
        boxes, neighbours = self.classifier.detectMultiScale2(
            small, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(side, side))
        return [Detection(_map_back(*box, scale, gray.shape), float(n))
                for box, n in zip(np.asarray(boxes).reshape(-1, 4), np.asarray(neighbours).reshape(-1))]


def _haar_file() -> Path:
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if not folder or not (Path(folder) / HAAR_CASCADE).is_file():
        raise ValueError(f"this OpenCV {cv2.__version__} ships no {HAAR_CASCADE} (OpenCV 5 wheels dropped the "
                         "cascades: install opencv-python-headless<5), or use --detector yunet:MODEL.onnx")
    if not hasattr(cv2, "CascadeClassifier"):
        raise ValueError(f"this OpenCV {cv2.__version__} has no CascadeClassifier (install opencv-python-headless<5)")
    return Path(folder) / HAAR_CASCADE


class YuNetDetector(Detector):
    """cv2.FaceDetectorYN (YuNet); runs on a downscaled 3-channel frame. The model finds faces of
    about 10 to 300 px at the detection scale."""

    name = "yunet"
    AUTO_WIDTH = 640  # a 640x480 frame as it is: small faces are what YuNet misses first when scaled down

    # score 0.45 rather than OpenCV Zoo's 0.6: on the scenes, 83 against 77 % of faces of 40 px and
    # more, for 0.03 false detections per empty frame (0 at 0.6)
    def __init__(self, model_path: str | Path | None = None, score_threshold: float = 0.45,
                 nms_threshold: float = 0.3, top_k: int = 50, scale: float | str = "auto", min_face: int = 0,
                 fit: BoxFit = YUNET_FIT):
        path = Path(model_path) if model_path else YUNET_MODEL
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such YuNet model file (face_detection_yunet_2023mar.onnx from the "
                                    "OpenCV Zoo)")
        if not hasattr(cv2, "FaceDetectorYN"):
            raise ValueError(f"this OpenCV {cv2.__version__} has no cv2.FaceDetectorYN (YuNet needs OpenCV >= 4.5.4)")
        try:
            self.model = cv2.FaceDetectorYN.create(str(path), "", (320, 240), float(score_threshold),
                                                   float(nms_threshold), int(top_k))
        except cv2.error as exc:
            raise ValueError(f"{path}: OpenCV cannot load this YuNet model ({str(exc).strip().splitlines()[-1]})") \
                from None
        self.path, self.scale, self.min_face, self.fit = path, scale, int(min_face), fit
        self._size: tuple[int, int] | None = None

    def detect(self, gray: np.ndarray) -> list[Detection]:
        scale = _resolve_scale(self.scale, gray.shape[1], self.AUTO_WIDTH)
        small = _downscale(gray, scale)
        image = cv2.cvtColor(small, cv2.COLOR_GRAY2BGR) if small.ndim == 2 else small
        size = (image.shape[1], image.shape[0])
        if size != self._size:
            self.model.setInputSize(size)
            self._size = size
        _, faces = self.model.detect(image)
        found = []
        for row in (faces if faces is not None else []):
            x, y, w, h = (float(v) for v in row[:4])
            box = self.fit.to_crop((x / scale, y / scale, w / scale, h / scale), gray.shape)
            if box[2] > 0 and box[3] > 0 and min(box[2], box[3]) >= self.min_face:
                points = tuple((float(px) / scale, float(py) / scale) for px, py in row[4:14].reshape(5, 2))
                found.append(Detection(box, float(row[-1]), points, YUNET_EYES))
        return found


def _blazeface_anchors() -> np.ndarray:
    """(896, 2) anchor centres of BlazeFace short-range, in [0, 1]: MediaPipe's SSD anchors with
    strides 8 (2 per cell) and 16 (6 per cell) on a 128x128 input, fixed size 1."""
    centres = []
    for stride, per_cell in ((8, 2), (16, 6)):
        cells = 128 // stride
        for y in range(cells):
            for x in range(cells):
                centres += [((x + 0.5) / cells, (y + 0.5) / cells)] * per_cell
    return np.asarray(centres, np.float32)


class BlazeFaceDetector(Detector):
    """MediaPipe BlazeFace short-range on the whole frame, letterboxed to 128x128.

    Made for faces that fill a good part of the image (a selfie, a webcam at arm's length):
    in a 640x480 frame a face must be several tens of pixels wide. Decoding follows MediaPipe's
    face_detection_short_range graph: sigmoid scores, boxes and six keypoints relative to the
    anchors, weighted non-maximum suppression.
    """

    name = "blazeface"
    SIZE = 128

    def __init__(self, model_path: str | Path | None = None, score_threshold: float = 0.5,
                 nms_threshold: float = 0.3, min_face: int = 0, threads: int | None = 1, fit: BoxFit = BLAZEFACE_FIT):
        path = Path(model_path) if model_path else BLAZEFACE_MODEL
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such BlazeFace model file (face_detection_short_range.tflite)")
        self.path, self.score_threshold, self.nms_threshold = path, float(score_threshold), float(nms_threshold)
        self.min_face, self.fit = int(min_face), fit
        self._anchors = _blazeface_anchors()
        self._run = self._open(path, threads)

    @staticmethod
    def _open(path: Path, threads: int | None):
        """batch (1, 128, 128, 3) in [-1, 1] -> (regressors (896, 16), scores (896,)), by LiteRT or cv2.dnn."""
        try:
            from feredge.edge.backends.tflite import _interpreter_class
            from feredge.edge.native_log import banners_filtered

            interpreter_class, _ = _interpreter_class()
            with banners_filtered():
                interp = interpreter_class(model_path=str(path), num_threads=threads)
                interp.allocate_tensors()
            index = interp.get_input_details()[0]["index"]
            outputs = {o["name"]: o["index"] for o in interp.get_output_details()}

            def run(x):
                interp.set_tensor(index, x)
                interp.invoke()
                return interp.get_tensor(outputs["regressors"])[0], interp.get_tensor(outputs["classificators"])[0, :, 0]
            return run
        except ImportError:
            pass
        except (ValueError, RuntimeError) as exc:
            raise ValueError(f"{path}: cannot load this BlazeFace model ({str(exc).splitlines()[0]})") from None
        try:
            net = cv2.dnn.readNetFromTFLite(str(path))
        except (cv2.error, AttributeError) as exc:
            raise ValueError(f"{path}: neither LiteRT nor this OpenCV {cv2.__version__} can run BlazeFace ({exc})") \
                from None
        names = net.getUnconnectedOutLayersNames()

        def run(x):
            net.setInput(x.transpose(0, 3, 1, 2))
            out = dict(zip(names, net.forward(names)))
            return out["regressors"].reshape(-1, 16), out["classificators"].reshape(-1)
        return run

    def detect(self, gray: np.ndarray) -> list[Detection]:
        h, w = gray.shape[:2]
        side = max(h, w)  # letterbox: the frame centred on a square, so the model sees true proportions
        scale = self.SIZE / side
        small = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        canvas = np.zeros((self.SIZE, self.SIZE), np.uint8)
        top, left = (self.SIZE - small.shape[0]) // 2, (self.SIZE - small.shape[1]) // 2
        canvas[top:top + small.shape[0], left:left + small.shape[1]] = small
        x = cv2.cvtColor(canvas, cv2.COLOR_GRAY2RGB).astype(np.float32)[None] / 127.5 - 1.0
        regressors, logits = self._run(x)
        scores = 1.0 / (1.0 + np.exp(-np.clip(logits, -100, 100)))
        keep = np.flatnonzero(scores >= self.score_threshold)
        if not len(keep):
            return []
        raw, anchors = regressors[keep] / self.SIZE, self._anchors[keep]
        centre = raw[:, :2] + anchors
        size = raw[:, 2:4]
        points = raw[:, 4:16].reshape(-1, 6, 2) + anchors[:, None, :]
        boxes = np.concatenate([centre - size / 2, size], axis=1)  # x, y, w, h in [0, 1] of the canvas
        found = []
        for members, score in _weighted_nms(boxes, scores[keep], self.nms_threshold):
            weights = scores[keep][members][:, None]
            box = (boxes[members] * weights).sum(0) / weights.sum()
            pts = (points[members] * weights[:, :, None]).sum(0) / weights.sum()
            to_frame = lambda px, py: ((px * self.SIZE - left) / scale, (py * self.SIZE - top) / scale)  # noqa: E731
            x0, y0 = to_frame(box[0], box[1])
            x1, y1 = to_frame(box[0] + box[2], box[1] + box[3])
            crop = self.fit.to_crop((x0, y0, x1 - x0, y1 - y0), gray.shape)
            if crop[2] > 0 and crop[3] > 0 and min(crop[2], crop[3]) >= self.min_face:
                found.append(Detection(crop, float(score),
                                       tuple(tuple(float(v) for v in to_frame(px, py)) for px, py in pts),
                                       BLAZEFACE_EYES))
        return found


def _weighted_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float):
    """MediaPipe's weighted NMS: [(indices of the boxes merged into one, best score)], best first."""
    order = list(np.argsort(-scores))
    while order:
        best = order[0]
        overlaps = np.array([iou(boxes[best], boxes[i]) for i in order])
        members = [i for i, o in zip(order, overlaps) if o > threshold]
        yield np.asarray(members), float(scores[best])
        order = [i for i, o in zip(order, overlaps) if o <= threshold]


class WholeFrameDetector(Detector):
    """The whole image is one face: for folders of pre-cropped faces (models/sample, FER, CK+48)."""

    name = "none"

    def detect(self, gray: np.ndarray) -> list[Detection]:
        return [Detection((0, 0, int(gray.shape[1]), int(gray.shape[0])), None)]


class PrecroppedOr(Detector):
    """Images no larger than `max_side` are pre-cropped faces (whole frame); larger ones go to `detector`."""

    def __init__(self, detector: Detector, max_side: int = 128):
        self.detector, self.max_side = detector, int(max_side)
        self.name = f"auto ({detector.name}; images up to {max_side} px are whole faces)"

    def detect(self, gray: np.ndarray) -> list[Detection]:
        if max(gray.shape[:2]) <= self.max_side:
            return WholeFrameDetector().detect(gray)
        return self.detector.detect(gray)

    def reset(self) -> None:
        self.detector.reset()


class EveryN(Detector):
    """Runs `detector` on every n-th frame; in between, carries its boxes (n=1: every frame).

    track=True moves each carried box with its face: the face as last seen, at a quarter of the
    resolution, is matched (normalised cross-correlation) within a window around its last place,
    about 0.3 ms a face. A face whose match falls below `min_match` (it turned, left, or another
    face took its place) makes the next frame a detection frame, so the cycle of n restarts there.
    """

    TRACK_SCALE = 0.25

    def __init__(self, detector: Detector, n: int, track: bool = True, min_match: float = 0.5):
        if int(n) < 1:
            raise ValueError(f"detect every N frames needs N >= 1, not {n}")
        self.detector, self.n, self.track, self.min_match = detector, int(n), bool(track), float(min_match)
        self.name = detector.name if self.n == 1 else \
            f"{detector.name} every {self.n} frames{', tracked between' if self.track else ''}"
        self._count = 0
        self._last: list[Detection] = []
        self._templates: list[np.ndarray | None] = []
        self._lost = False  # a followed face no longer matched: detect on the next frame
        self.ran = False  # whether the last call ran the detector (timings tell detection from carrying)

    def detect(self, gray: np.ndarray) -> list[Detection]:
        if self._lost:
            self._count, self._lost = 0, False
        self.ran = self._count % self.n == 0
        self._count += 1
        if self.ran:
            self._last = self.detector.detect(gray)
            if self.track and self.n > 1:
                small = _downscale(gray, self.TRACK_SCALE)
                self._templates = [self._crop(small, d.box) for d in self._last]
        elif self.track and self._last:
            small = _downscale(gray, self.TRACK_SCALE)
            self._last = [self._follow(small, d, tpl) for d, tpl in zip(self._last, self._templates)]
        return list(self._last)

    def _crop(self, small: np.ndarray, box) -> np.ndarray | None:
        x, y, w, h = (int(round(v * self.TRACK_SCALE)) for v in box)
        patch = small[max(0, y):y + h, max(0, x):x + w]
        return patch.copy() if min(patch.shape[:2], default=0) >= 6 else None

    def _follow(self, small: np.ndarray, det: Detection, template: np.ndarray | None) -> Detection:
        if template is None:
            return det
        s = self.TRACK_SCALE
        th, tw = template.shape[:2]
        x, y = int(round(det.box[0] * s)), int(round(det.box[1] * s))
        reach = max(4, tw // 2)
        x0, y0 = max(0, x - reach), max(0, y - reach)
        window = small[y0:y + th + reach, x0:x + tw + reach]
        if window.shape[0] < th or window.shape[1] < tw:
            return det
        scores = cv2.matchTemplate(window, template, cv2.TM_CCOEFF_NORMED)
        _, best, _, (bx, by) = cv2.minMaxLoc(scores)
        if best < self.min_match:
            self._lost = True
            return det
        dx, dy = (x0 + bx - x) / s, (y0 + by - y) / s
        moved = (int(round(det.box[0] + dx)), int(round(det.box[1] + dy)), det.box[2], det.box[3])
        points = None if det.landmarks is None else tuple((px + dx, py + dy) for px, py in det.landmarks)
        return dataclasses.replace(det, box=moved, landmarks=points)

    def reset(self) -> None:
        self._count, self._lost = 0, False
        self._last, self._templates = [], []
        self.detector.reset()


DETECTORS = ("yunet", "blazeface", "haar", "none")
DEFAULT_DETECTOR = "yunet"  # found more faces than Haar at a quarter of its time (benchmarks/detectors.py)
# smallest face each finds reliably, in frame pixels: Haar's false detections grow below 60
MIN_FACE = {"haar": 60, "yunet": 40, "blazeface": 40}


def parse_detector(text: str, *, scale: float | str = "auto", min_face: int | None = None, every: int = 1,
                   precropped_max: int | None = None, track: bool = True) -> Detector:
    """yunet[:MODEL.onnx] | blazeface[:MODEL.tflite] | haar | none (whole frame), wrapped in EveryN
    when every > 1. The learned detectors use their shipped model unless given a file.

    min_face: None takes the detector's own (MIN_FACE). precropped_max: with a detector, images up
    to this size are treated as whole faces.
    """
    text = (text or DEFAULT_DETECTOR).strip()
    name, _, model = text.partition(":")
    min_face = MIN_FACE.get(name, 0) if min_face is None else min_face
    if name == "haar" and not model:
        detector: Detector = HaarDetector(scale=scale, min_face=min_face)
    elif name == "yunet":
        detector = YuNetDetector(model or None, scale=scale, min_face=min_face)
    elif name == "blazeface":
        detector = BlazeFaceDetector(model or None, min_face=min_face)
    elif text in ("none", "whole", "whole-frame"):
        return WholeFrameDetector()
    else:
        raise ValueError(f"unknown detector {text!r} (expected yunet[:MODEL.onnx], blazeface[:MODEL.tflite], haar "
                         f"or none)")
    if precropped_max:
        detector = PrecroppedOr(detector, precropped_max)
    return EveryN(detector, every, track=track) if every > 1 else detector


def iou(a, b) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    union = aw * ah + bw * bh - inter
    return float(inter / union) if union > 0 else 0.0
