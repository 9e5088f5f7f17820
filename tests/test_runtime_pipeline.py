"""The whole pipeline on test videos of real faces, on every installed backend; detectors; smoothing."""
from __future__ import annotations

import numpy as np
import pytest

from feredge.edge.backends import installed_formats
from feredge.edge.bundle import Bundle
from feredge.edge.detect import (Detection, Detector, EveryN, HaarDetector, PrecroppedOr, WholeFrameDetector, YuNetDetector,
                         iou, parse_detector)
from feredge.edge.pipeline import STAGES, Pipeline
from feredge.edge.preprocess import crop_face, preprocess, to_gray
from feredge.edge.smoothing import EmaSmoother, FaceTracker, MajoritySmoother, NoSmoother, parse_smoother
from feredge.edge.sources import Frame, open_source
from feredge.edge.testvideo import load_truth, score_run
from runtime_support import build_test_bundle, build_test_video, sample_faces

INSTALLED = [f for f in ("tflite", "onnx", "openvino") if f in installed_formats()]


@pytest.fixture(scope="module")
def bundle(request):
    return Bundle.load(build_test_bundle(request.config.cache.mkdir("feredge-runtime")))


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


def test_yunet_maps_boxes_back_and_filters(monkeypatch, tmp_path):
    """cv2.FaceDetectorYN with a stand-in model object (OpenCV does not ship the YuNet ONNX file)."""
    import cv2

    model_file = tmp_path / "yunet.onnx"
    model_file.write_bytes(b"stand-in")

    class FakeYN:
        def setInputSize(self, size):
            self.size = size

        def detect(self, image):
            assert image.ndim == 3 and image.shape[2] == 3 and (image.shape[1], image.shape[0]) == self.size
            return 1, np.array([[10, 20, 30, 40] + [0] * 10 + [0.9], [0, 0, 5, 5] + [0] * 10 + [0.8]], np.float32)

    monkeypatch.setattr(cv2.FaceDetectorYN, "create", staticmethod(lambda *a, **k: FakeYN()))
    detector = YuNetDetector(model_file, scale=0.5, min_face=20)
    found = detector.detect(np.zeros((480, 640), np.uint8))
    assert [(d.box, round(d.score, 2)) for d in found] == [((20, 40, 60, 80), 0.9)]
    with pytest.raises(FileNotFoundError, match="YuNet model"):
        YuNetDetector(tmp_path / "missing.onnx")


@pytest.mark.parametrize("text, kind", [("haar", HaarDetector), ("none", WholeFrameDetector)])
def test_parse_detector(text, kind):
    assert isinstance(parse_detector(text), kind)
    assert isinstance(parse_detector(text if text != "none" else "haar", every=3), EveryN)


@pytest.mark.parametrize("text", ["yunet", "mtcnn", "yunet:/no/such.onnx"])
def test_parse_detector_errors(text):
    with pytest.raises((ValueError, FileNotFoundError)):
        parse_detector(text)


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
