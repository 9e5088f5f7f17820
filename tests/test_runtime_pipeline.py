"""The whole pipeline on test videos of real faces, on every installed backend; detectors; smoothing."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from feredge.edge.backends import installed_formats
from feredge.edge.bundle import Bundle
from feredge.edge.detect import (BlazeFaceDetector, BoxFit, Detection, Detector, EveryN, HaarDetector, PrecroppedOr,
                                 WholeFrameDetector, YuNetDetector, iou, parse_detector)
from feredge.edge.pipeline import STAGES, Pipeline
from feredge.edge.preprocess import crop_face, preprocess, to_gray
from feredge.edge.smoothing import EmaSmoother, FaceTracker, MajoritySmoother, NoSmoother, parse_smoother
from feredge.edge.sources import Frame, open_source
from feredge.edge.testvideo import load_truth, score_run
from runtime_support import build_test_bundle, build_test_video, sample_faces

INSTALLED = [f for f in ("tflite", "onnx", "openvino") if f in installed_formats()]


@pytest.fixture(scope="module")
def bundle(bundle_cache):
    return Bundle.load(build_test_bundle(bundle_cache))


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    return {n: build_test_video(folder, n) for n in (1, 3)}


@pytest.mark.parametrize("faces", [1, 3])
@pytest.mark.parametrize("fmt", INSTALLED)
def test_whole_pipeline_on_a_test_video(bundle, videos, fmt, faces):
    path, truth = videos[faces]
    assert load_truth(path) == truth
    backend = bundle.open(format=fmt, precision="fp32", threads=1)
    pipeline = Pipeline(backend, bundle.spec, bundle.labels, HaarDetector(), EmaSmoother(0.5))
    results, frames = [], {}

    def keep(result):
        results.append(result)

    with open_source(str(path)) as source:
        summary = pipeline.run(source, on_result=keep)
    assert summary.ended == "end of stream" and summary.frames == len(truth["frames"])
    assert summary.first_result_s is not None and summary.fps > 0
    for result in results:
        assert set(result.stage_ms) == set(STAGES) and all(v >= 0 for v in result.stage_ms.values())

    # detections against the ground truth
    images, labels, names = sample_faces()
    direct = backend.predict(preprocess(images, bundle.spec)).argmax(1)
    reference = {name: bundle.labels[i] for name, i in zip(names, direct)}
    score = score_run(results, truth, iou_threshold=0.3, reference=reference)
    assert score["detection_rate"] >= 0.6, score
    assert score["false_per_frame"] <= 0.3, score
    p10, median, p90 = score["box_scale"]  # boxes in full-frame pixels, framing the face as the truth does
    assert p10 <= median <= p90 and 0.8 <= median <= 1.25, score
    # the label of a face found in the video equals what the same backend says on the original 48x48
    # crop for most faces (the video's crop is re-sampled, noisy and compressed, so not for all)
    assert score["reference_agreement"] >= 0.6, score

    # and exactly what the backend says on the pipeline's own crops of the decoded frames
    with open_source(str(path)) as source:
        for frame in source:
            frames[frame.index] = frame
    checked = 0
    for result in results[::5]:
        if not result.faces:
            continue
        gray = to_gray(frames[result.index].image)
        crops = [crop_face(gray, face.box, pipeline.margin) for face in result.faces]
        probs = backend.predict(preprocess(crops, bundle.spec))
        np.testing.assert_allclose(np.stack([f.probabilities for f in result.faces]), probs, atol=1e-5)
        assert [f.label for f in result.faces] == [bundle.labels[i] for i in probs.argmax(1)]
        checked += 1
    assert checked >= 3


def test_reference_agreement_catches_a_misplaced_crop(bundle, videos):
    """The control for the agreement check above: crop each face with a margin of 0.8 of its size
    instead of the spec's, and the labels stop matching the original crops'."""
    path, truth = videos[3]
    backend = bundle.open(format=INSTALLED[0], precision="fp32", threads=1)
    images, _, names = sample_faces()
    reference = {name: bundle.labels[i] for name, i in zip(names, backend.predict(preprocess(images, bundle.spec)).argmax(1))}
    scores = {}
    for margin in (None, 0.8):
        results = []
        with open_source(str(path)) as source:
            Pipeline(backend, bundle.spec, bundle.labels, HaarDetector(), margin=margin).run(source, on_result=results.append)
        scores[margin] = score_run(results, truth, iou_threshold=0.3, reference=reference)["reference_agreement"]
    assert scores[0.8] < 0.4 < 0.6 <= scores[None], scores


def test_one_batched_inference_per_frame(bundle, videos):
    path, truth = videos[3]

    class Counting:
        def __init__(self, backend):
            self.backend, self.calls, self.sizes = backend, 0, []
            self.num_classes = backend.num_classes

        def predict(self, batch):
            self.calls += 1
            self.sizes.append(len(batch))
            return self.backend.predict(batch)

    counting = Counting(bundle.open(format=INSTALLED[0], precision="fp32"))
    pipeline = Pipeline(counting, bundle.spec, bundle.labels, HaarDetector())
    with open_source(str(path)) as source:
        results = [pipeline.process(source.read()) for _ in range(8)]
    with_faces = [r for r in results if r.faces]
    assert counting.calls == len(with_faces)
    assert counting.sizes == [len(r.faces) for r in with_faces] and max(counting.sizes) >= 2
    assert all(r.stage_ms["infer"] == pytest.approx(0, abs=0.05) for r in results if not r.faces)


def test_result_json_shape(bundle, videos):
    path, _ = videos[1]
    pipeline = Pipeline(bundle.open(format=INSTALLED[0], precision="fp32"), bundle.spec, bundle.labels,
                        HaarDetector(), MajoritySmoother(3))
    with open_source(str(path)) as source:
        data = pipeline.process(source.read()).to_dict()
    assert set(data) == {"frame", "timestamp", "faces", "stage_ms"}
    face = data["faces"][0]
    assert set(face) >= {"box", "label", "probabilities", "smoothed_label", "track", "confidence"}
    assert len(face["probabilities"]) == len(bundle.labels) and face["label"] in bundle.labels


def test_whole_frame_detector_on_sample_folder_matches_direct_prediction(bundle):
    from runtime_support import SAMPLE_DIR

    backend = bundle.open(format=INSTALLED[0], precision="fp32")
    pipeline = Pipeline(backend, bundle.spec, bundle.labels, WholeFrameDetector(), NoSmoother())
    images, labels, names = sample_faces(per_class=3)
    direct = backend.predict(preprocess(images, bundle.spec)).argmax(1)
    expected = {name: bundle.labels[i] for name, i in zip(names, direct)}
    with open_source(str(SAMPLE_DIR)) as source:
        got = {r.name: r.faces[0].label for r in (pipeline.process(f) for f in source) if r.name in expected}
    assert got == expected


def test_no_face_no_inference():
    class Never:
        num_classes = 7

        def predict(self, batch):
            raise AssertionError("no face, no inference")

    class Nothing(Detector):
        def detect(self, gray):
            return []

    from feredge.edge.preprocess import PreprocessSpec

    pipeline = Pipeline(Never(), PreprocessSpec(), tuple("abcdefg"), Nothing())
    result = pipeline.process(Frame(np.zeros((120, 160, 3), np.uint8), None, 1.5, 4))
    assert result.faces == [] and result.index == 4 and result.timestamp == 1.5


def test_label_count_mismatch_is_refused():
    class Seven:
        num_classes = 7

    from feredge.edge.preprocess import PreprocessSpec

    with pytest.raises(ValueError, match="7 classes"):
        Pipeline(Seven(), PreprocessSpec(), ("a", "b"))


# --- detectors -----------------------------------------------------------------------------------


def test_haar_boxes_come_back_in_full_frame_pixels(videos):
    path, truth = videos[1]
    with open_source(str(path)) as source:
        frames = [source.read() for _ in range(10)]
    for scale in (1.0, 0.5, "auto"):
        detector = HaarDetector(scale=scale, min_face=60)
        hits = 0
        for frame, expected in zip(frames, truth["frames"]):
            boxes = [d.box for d in detector.detect(to_gray(frame.image))]
            hits += any(iou(b, expected[0]["box"]) >= 0.5 for b in boxes)
        assert hits >= 7, scale


def test_haar_minimum_face_size(videos):
    path, truth = videos[1]
    with open_source(str(path)) as source:
        gray = to_gray(source.read().image)
    assert HaarDetector(min_face=60).detect(gray)
    assert HaarDetector(min_face=400).detect(gray) == []


def test_every_n_carries_boxes_between_detections():
    class Counter(Detector):
        calls = 0

        def detect(self, gray):
            Counter.calls += 1
            return [Detection((Counter.calls, 0, 10, 10))]

    every = EveryN(Counter(), 3)
    boxes = [every.detect(np.zeros((20, 20), np.uint8))[0].box[0] for _ in range(7)]
    assert boxes == [1, 1, 1, 2, 2, 2, 3] and Counter.calls == 3


def test_precropped_images_are_whole_faces():
    class Boom(Detector):
        name = "boom"

        def detect(self, gray):
            return [Detection((1, 2, 3, 4))]

    detector = PrecroppedOr(Boom(), 128)
    assert detector.detect(np.zeros((48, 48), np.uint8))[0].box == (0, 0, 48, 48)
    assert detector.detect(np.zeros((480, 640), np.uint8))[0].box == (1, 2, 3, 4)


@pytest.mark.parametrize("name", ["yunet", "blazeface"])
def test_learned_detectors_find_faces_with_landmarks(videos, name):
    """The shipped YuNet and BlazeFace models on the test video: boxes framed like the FER crop
    the classifier learned from (BoxFit), and the eyes where eyes are."""
    path, truth = videos[1]
    with open_source(str(path)) as source:
        frames = [source.read() for _ in range(10)]
    detector = parse_detector(name)
    hits = 0
    for frame, expected in zip(frames, truth["frames"]):
        found = detector.detect(to_gray(frame.image))
        match = [d for d in found if iou(d.box, expected[0]["box"]) >= 0.5]
        hits += bool(match)
        for d in match:
            x, y, w, h = d.box
            (rx, ry), (lx, ly) = d.landmarks[:2]
            assert x < rx < lx < x + w, d  # the subject's right eye is on the image's left
            assert y < min(ry, ly) and max(ry, ly) < y + h / 2 + 0.1 * h, d  # in the upper half
            assert 0 < d.score <= 1
    assert hits >= {"yunet": 8, "blazeface": 6}[name], (name, hits)  # BlazeFace short-range: selfie distance


def test_blazeface_runs_on_opencv_alone_with_the_same_answer(videos, monkeypatch):
    """A device without LiteRT runs BlazeFace through cv2.dnn; the faces found are the same."""
    import feredge.edge.backends.tflite as tflite_backend

    path, _ = videos[1]
    with open_source(str(path)) as source:
        gray = to_gray(source.read().image)
    with_litert = BlazeFaceDetector().detect(gray)

    def no_litert():
        raise ImportError("no LiteRT here")

    monkeypatch.setattr(tflite_backend, "_interpreter_class", no_litert)
    with_opencv = BlazeFaceDetector().detect(gray)
    assert with_litert and len(with_opencv) == len(with_litert)
    for a, b in zip(with_opencv, with_litert):
        assert np.abs(np.subtract(a.box, b.box)).max() <= 1 and abs(a.score - b.score) < 1e-3


def test_the_pipeline_labels_the_aligned_crop_when_the_spec_says_align():
    """A tilted pair of eyes from the detector: with align the network sees them level."""
    from feredge.edge.preprocess import PreprocessSpec

    frame = np.full((240, 320), 60, np.uint8)
    cv2.circle(frame, (130, 100), 4, 250, -1)  # the subject's right eye, higher
    cv2.circle(frame, (170, 124), 4, 250, -1)

    class TiltedFace(Detector):
        def detect(self, gray):
            return [Detection((110, 70, 80, 80), 0.9, ((130.0, 100.0), (170.0, 124.0)), (0.5, 0.37, 0.4))]

    class Seen:
        num_classes = 2

        def predict(self, batch):
            self.batch = batch
            return np.full((len(batch), 2), 0.5, np.float32)

    for align in (False, True):
        seen = Seen()
        spec = PreprocessSpec(height=64, width=64, align=align)
        Pipeline(seen, spec, ("a", "b"), TiltedFace()).process(Frame(frame))
        rows = np.where(seen.batch[0, :, :, 0] > 0.8)[0]
        spread = rows.max() - rows.min()
        assert (spread <= 10) if align else (spread >= 15), (align, spread)  # level eyes: one band of rows


def test_box_fit_turns_a_detector_box_into_the_square_crop():
    fit = BoxFit(width=0.8, height=1.2, dx=0.1, dy=0.0)
    # a 100 px crop at (100, 100): the detector saw it as 80 wide, 120 high, centre 10 px right
    assert fit.to_crop((100 + 10 + 10, 100 - 10, 80, 120), (480, 640)) == (100, 100, 100, 100)
    assert fit.to_crop((0, 0, 80, 120), (50, 50)) == (0, 10, 50, 40)  # clipped to the frame


def test_tracking_follows_a_moving_face_between_detections():
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 255, (64, 64), dtype=np.uint8)
    texture = cv2.resize(cv2.resize(texture, (16, 16)), (64, 64), interpolation=cv2.INTER_CUBIC)

    def frame_at(x):
        frame = np.full((240, 320), 90, np.uint8)
        frame[80:144, x:x + 64] = texture
        return frame

    class SeesFirstFrameOnly(Detector):
        def detect(self, gray):
            return [Detection((40, 80, 64, 64), 0.9, ((56.0, 100.0), (88.0, 100.0)))]

    every = EveryN(SeesFirstFrameOnly(), 5)
    for i, x in enumerate(range(40, 80, 8)):
        (found,) = every.detect(frame_at(x))
        assert abs(found.box[0] - x) <= 4 and found.box[1:] == (80, 64, 64), (i, found.box)
        assert abs(found.landmarks[0][0] - (x + 16)) <= 4
    # another face in its place: the match fails, so the next frame is a detection frame again
    calls = []

    class Counting(SeesFirstFrameOnly):
        def detect(self, gray):
            calls.append(len(calls))
            return super().detect(gray)

    other = cv2.resize(rng.integers(0, 255, (16, 16), dtype=np.uint8), (64, 64), interpolation=cv2.INTER_CUBIC)
    swapped = frame_at(40)
    swapped[80:144, 40:104] = other
    every = EveryN(Counting(), 30)
    for frame in (frame_at(40), frame_at(40), swapped, swapped, swapped):
        every.detect(frame)
    assert len(calls) == 2  # the first frame, and the frame after the swap was noticed
    still = EveryN(SeesFirstFrameOnly(), 5, track=False)
    assert [still.detect(frame_at(x))[0].box[0] for x in range(40, 80, 8)] == [40] * 5


@pytest.mark.parametrize("text, kind", [("haar", HaarDetector), ("none", WholeFrameDetector),
                                        ("yunet", YuNetDetector), ("blazeface", BlazeFaceDetector)])
def test_parse_detector(text, kind):
    assert isinstance(parse_detector(text), kind)
    assert isinstance(parse_detector(text if text != "none" else "haar", every=3), EveryN)


@pytest.mark.parametrize("text", ["mtcnn", "yunet:/no/such.onnx", "blazeface:/no/such.tflite", "haar:x"])
def test_parse_detector_errors(text):
    with pytest.raises((ValueError, FileNotFoundError)):
        parse_detector(text)


@pytest.mark.parametrize("name, suffix", [("yunet", ".onnx"), ("blazeface", ".tflite")])
def test_a_corrupt_detector_model_is_one_line_naming_the_file(tmp_path, name, suffix):
    bad = tmp_path / f"broken{suffix}"
    bad.write_bytes(b"\x00not a model" * 10)
    with pytest.raises(ValueError, match=str(bad)):
        parse_detector(f"{name}:{bad}")


# --- smoothing -----------------------------------------------------------------------------------


def _p(i, n=3, value=0.8):
    p = np.full(n, (1 - value) / (n - 1), np.float32)
    p[i] = value
    return p


def test_ema_steadies_a_flicker_and_follows_a_lasting_change():
    tracker = FaceTracker(EmaSmoother(0.3))
    box = (10, 10, 50, 50)
    labels = []
    for i in [0, 0, 0, 1, 0, 0, 2, 2, 2, 2, 2]:
        _, smoothed = tracker.update([box], _p(i)[None])
        labels.append(int(smoothed[0].argmax()))
    assert labels[3] == 0  # one odd frame does not flip the label
    assert labels[-1] == 2  # a lasting change wins


def test_majority_window():
    tracker = FaceTracker(MajoritySmoother(4))
    box = (0, 0, 20, 20)
    out = [int(tracker.update([box], _p(i)[None])[1][0].argmax()) for i in [1, 1, 2, 2, 0, 0]]
    assert out == [1, 1, 1, 2, 2, 0]  # 1,1,2,2 and 2,2,0,0 are ties: the most recent label wins


def test_tracks_follow_faces_by_overlap_and_drop_stale_ones():
    tracker = FaceTracker(EmaSmoother(0.5), max_missed=1)
    a, b = (0, 0, 40, 40), (200, 0, 40, 40)
    ids1, _ = tracker.update([a, b], np.stack([_p(0), _p(1)]))
    ids2, smoothed = tracker.update([(203, 2, 40, 40), (2, 1, 40, 40)], np.stack([_p(1), _p(0)]))
    assert ids2 == [ids1[1], ids1[0]]  # matched by IoU, whatever the detector's order
    assert [int(s.argmax()) for s in smoothed] == [1, 0]
    tracker.update([], np.zeros((0, 3)))
    tracker.update([], np.zeros((0, 3)))
    ids3, _ = tracker.update([a], _p(2)[None])
    assert ids3[0] not in ids1  # stale tracks were dropped: a new face gets a new track


def test_parse_smoother():
    assert isinstance(parse_smoother("ema:0.2"), EmaSmoother) and parse_smoother("ema:0.2").alpha == 0.2
    assert parse_smoother("window:7").window == 7
    assert isinstance(parse_smoother("none"), NoSmoother)
    for bad in ("ema:2", "window:0", "kalman", "ema:x"):
        with pytest.raises(ValueError):
            parse_smoother(bad)
