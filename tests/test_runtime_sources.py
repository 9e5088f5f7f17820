"""Frame sources: files, folders, a camera that fails and comes back (or not), picamera2, GStreamer."""
from __future__ import annotations

import sys
import time
import types

import cv2
import numpy as np
import pytest

from feredge.edge.sources import (JETSON_CSI_PIPELINE, CaptureSource, ImageSource, OpenCVDevice, SourceLost,
                          VideoFileSource, open_source, opencv_build_facts)
from runtime_support import SAMPLE_DIR, build_test_video


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return build_test_video(tmp_path_factory.mktemp("videos"), 1)


def test_image_folder_yields_every_face_once_then_ends():
    with open_source(str(SAMPLE_DIR)) as source:
        assert isinstance(source, ImageSource)
        frames = list(source)
    assert len(frames) == 350
    assert [f.index for f in frames] == list(range(350))
    assert frames[0].name.startswith("angry/") and frames[0].image.shape == (48, 48)
    assert all(b.timestamp >= a.timestamp for a, b in zip(frames, frames[1:]))


def test_single_image_and_loop(tmp_path):
    path = tmp_path / "face.png"
    cv2.imwrite(str(path), np.full((60, 50, 3), 128, np.uint8))
    with open_source(str(path)) as source:
        assert source.read().image.shape == (60, 50, 3)
        assert source.read() is None
    with open_source(str(path), loop=True) as source:
        assert [source.read().index for _ in range(3)] == [0, 1, 2]


def test_unreadable_images_are_skipped_and_an_all_bad_folder_is_an_error(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((10, 10), np.uint8))
    (tmp_path / "b.jpg").write_bytes(b"not a jpeg")
    with open_source(str(tmp_path)) as source:
        assert len(list(source)) == 1
    (tmp_path / "a.png").unlink()
    with pytest.raises(ValueError, match="none of its 1 image"):
        open_source(str(tmp_path)).read()


def test_video_file_ends_cleanly_and_loops_with_growing_timestamps(video):
    path, truth = video
    with open_source(str(path)) as source:
        assert isinstance(source, VideoFileSource) and source.fps == pytest.approx(10.0)
        frames = list(source)
    assert len(frames) == len(truth["frames"])
    assert frames[0].image.shape == (480, 640, 3)
    assert frames[1].timestamp == pytest.approx(0.1, abs=1e-3)
    with open_source(str(path), loop=True) as source:
        looped = [source.read() for _ in range(len(truth["frames"]) + 5)]
    assert all(f is not None for f in looped)
    stamps = [f.timestamp for f in looped]
    assert all(b > a for a, b in zip(stamps, stamps[1:]))


@pytest.mark.parametrize("text, message", [
    ("/nonexistent/clip.mp4", "no such file"),
    ("/dev/video99", "no such camera device"),
    ("", "empty"),
])
def test_bad_sources_are_one_line_errors(text, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        open_source(text)


def test_a_file_opencv_cannot_decode(tmp_path):
    bad = tmp_path / "clip.mp4"
    bad.write_bytes(b"\x00" * 1000)
    with pytest.raises(ValueError, match="clip.mp4"):
        open_source(str(bad)).read()


# --- a live source that fails mid-stream ---------------------------------------------------------


class FlakyCapture:
    """A real cv2.VideoCapture of the test video whose reads start failing after `good` frames,
    as a USB camera does when it is unplugged; `recover` says whether reopening brings it back."""

    opened = 0

    def __init__(self, path, good: int, recover: bool, stall: float = 0.0):
        FlakyCapture.opened += 1
        self.cap = cv2.VideoCapture(str(path))
        self.good, self.stall = good, stall
        self.reads = 0
        self.broken = FlakyCapture.opened > 1 and not recover

    def isOpened(self):
        return not self.broken and self.cap.isOpened()

    def read(self):
        self.reads += 1
        if self.reads > self.good:
            if self.stall:
                time.sleep(self.stall)  # a driver that blocks instead of failing
            return False, None
        return self.cap.read()

    def release(self):
        self.cap.release()


def test_camera_that_fails_mid_stream_reconnects_and_continues(video, caplog):
    path, _ = video
    FlakyCapture.opened = 0
    source = CaptureSource("test camera", lambda: OpenCVDevice(FlakyCapture(path, 5, recover=True), "test camera"),
                           retries=3, backoff=0.01)
    with source, caplog.at_level("WARNING", logger="feredge.source"):
        frames = [source.read() for _ in range(12)]
    assert [f.index for f in frames] == list(range(12))
    assert FlakyCapture.opened == 3  # the first device died after 5 frames, the second too
    assert source.reconnects == 2
    assert "reconnecting" in caplog.text and "reconnected" in caplog.text


def test_camera_that_never_comes_back_is_lost_within_bounded_time(video):
    path, _ = video
    FlakyCapture.opened = 0
    source = CaptureSource("test camera", lambda: OpenCVDevice(FlakyCapture(path, 2, recover=False), "test camera"),
                           retries=3, backoff=0.02)
    with source:
        assert source.read() is not None and source.read() is not None
        started = time.monotonic()
        with pytest.raises(SourceLost) as info:
            source.read()
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert "\n" not in message and "test camera" in message and "3 reconnection attempts" in message


def test_a_stalled_read_times_out_instead_of_hanging(video):
    path, _ = video
    FlakyCapture.opened = 0
    source = CaptureSource("stalling camera",
                           lambda: OpenCVDevice(FlakyCapture(path, 1, recover=False, stall=30), "x"),
                           retries=1, backoff=0.01, read_timeout=0.3)
    with source:
        source.read()
        started = time.monotonic()
        with pytest.raises(SourceLost, match="no frame within 0.3 s|cannot open"):
            source.read()
    assert time.monotonic() - started < 5


def test_a_camera_that_cannot_be_opened_is_a_clear_error():
    def opener():
        raise OSError("camera 7: OpenCV cannot open it")

    with pytest.raises(ValueError, match="camera 7"):
        CaptureSource("camera 7", opener)


# --- GStreamer and picamera2 ---------------------------------------------------------------------


def test_gstreamer_pipeline_without_gstreamer_support_is_a_clear_error():
    if opencv_build_facts()["gstreamer"]:
        pytest.skip("this OpenCV has GStreamer; the error path is for pip wheels")
    for text in (f"gst:{JETSON_CSI_PIPELINE}", "videotestsrc ! videoconvert ! appsink"):
        with pytest.raises(ValueError, match="GStreamer: NO") as info:
            open_source(text)
        assert "\n" not in str(info.value)


class FakePicamera2:
    """The part of picamera2's API the source uses, with its real shapes: `RGB888` main arrays are
    (h, w, 3) in B, G, R order; `YUV420` arrays are (h * 3 // 2, stride), stride padded to 64 bytes,
    the first h rows being the Y plane; capture_arrays returns (arrays, metadata)."""

    instances: list = []

    def __init__(self, camera_num=0):
        self.camera_num = camera_num
        self.config = None
        self.started = self.closed = False
        self.frame = 0
        FakePicamera2.instances.append(self)

    def create_video_configuration(self, main=None, lores=None, raw=None, controls=None, **kwargs):
        assert lores is None or lores["format"] in ("YUV420", "YVU420"), "lores must be YUV on a Pi 4"
        return {"main": dict(main or {}), "lores": dict(lores) if lores else None, "controls": dict(controls or {})}

    def configure(self, config):
        for stream in ("main", "lores"):
            if config[stream]:
                w = config[stream]["size"][0]
                config[stream]["stride"] = (w * (3 if stream == "main" else 1) + 63) // 64 * 64
        self.config = config

    def start(self):
        assert self.config is not None
        self.started = True

    def _array(self, name):
        cfg = self.config[name]
        w, h = cfg["size"]
        if cfg["format"] == "RGB888":
            img = np.zeros((h, w, 3), np.uint8)
            img[:, :, 0] = 200  # blue first in memory
            img[h // 4:h // 2, w // 4:w // 2] = 90 + self.frame
            return img
        arr = np.full((h * 3 // 2, cfg["stride"]), 128, np.uint8)  # chroma rows and padding: 128
        arr[:h, :w] = 60
        arr[h // 4:h // 2, w // 4:w // 2] = 90 + self.frame  # the same square as main, in luma
        return arr

    def capture_arrays(self, names=("main",)):
        assert self.started
        self.frame += 1
        return [self._array(n) for n in names], {"SensorTimestamp": 5_000_000_000 + self.frame * 33_000_000}

    def capture_array(self, name="main"):
        return self.capture_arrays([name])[0][0]

    def stop(self):
        self.started = False

    def close(self):
        self.closed = True


@pytest.fixture
def fake_picamera2(monkeypatch):
    module = types.ModuleType("picamera2")
    module.Picamera2 = FakePicamera2
    FakePicamera2.instances = []
    monkeypatch.setitem(sys.modules, "picamera2", module)
    return module


def test_picamera2_gives_main_for_display_and_the_lores_y_plane_as_gray(fake_picamera2):
    with open_source("picamera", width=640, height=480, fps=20) as source:
        frame = source.read()
        second = source.read()
    cam = FakePicamera2.instances[0]
    assert cam.config["main"] == {"size": (640, 480), "format": "RGB888", "stride": 1920}
    assert cam.config["lores"]["size"] == (320, 240) and cam.config["lores"]["format"] == "YUV420"
    assert cam.config["controls"] == {"FrameRate": 20.0}
    assert frame.image.shape == (480, 640, 3)
    assert frame.gray.shape == (240, 320)  # the padded stride (320 -> 320) and chroma rows cut off
    assert frame.gray.dtype == np.uint8 and int(frame.gray[0, 0]) == 60 and int(frame.gray[100, 100]) == 91
    assert frame.timestamp == pytest.approx(5.033) and second.timestamp == pytest.approx(5.066)
    assert cam.closed


def test_picamera2_strips_row_padding_from_odd_lores_widths(fake_picamera2):
    with open_source("picamera2:1", width=400, height=300) as source:
        frame = source.read()
    cam = FakePicamera2.instances[0]
    assert cam.camera_num == 1 and cam.config["lores"]["stride"] == 256  # 200 px padded to 256
    assert frame.gray.shape == (150, 200) and (frame.gray == 128).sum() == 0


def test_picamera2_missing_is_a_setup_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import fails as on a PC
    with pytest.raises(ValueError, match="python3-picamera2") as info:
        open_source("picamera")
    assert "\n" not in str(info.value)


def test_pipeline_uses_the_picamera2_gray_plane_and_maps_boxes_to_main(fake_picamera2):
    from feredge.edge.detect import Detection, Detector
    from feredge.edge.pipeline import Pipeline
    from feredge.edge.preprocess import PreprocessSpec

    class SquareFinder(Detector):
        def detect(self, gray):
            self.seen = gray.shape
            return [Detection((80, 60, 80, 60))]  # the bright square in lores pixels

    class Echo:
        num_classes = 2

        def predict(self, batch):
            self.batch = batch
            return np.tile([[0.25, 0.75]], (len(batch), 1)).astype(np.float32)

    detector, backend = SquareFinder(), Echo()
    pipeline = Pipeline(backend, PreprocessSpec(), ("a", "b"), detector)
    with open_source("picamera") as source:
        result = pipeline.process(source.read())
    assert detector.seen == (240, 320)
    assert result.faces[0].box == (160, 120, 160, 120)  # in main-stream pixels
    assert np.allclose(backend.batch, 91 / 255)  # the crop came from the Y plane, no colour conversion


def test_testvideo_hold_sets_how_many_distinct_faces_a_video_shows(tmp_path, capsys):
    from feredge.edge.testvideo import load_truth, main

    distinct = {}
    for hold in (0.5, 2.0):
        out = tmp_path / f"hold{hold}.mp4"
        assert main([str(out), "--seconds", "2", "--fps", "10", "--size", "320x240", "--seed", "4",
                     "--hold", str(hold)]) == 0
        distinct[hold] = len({face["file"] for frame in load_truth(out)["frames"] for face in frame})
        assert f"{distinct[hold]} distinct faces" in capsys.readouterr().out
    assert distinct[0.5] >= 4 > distinct[2.0]
    with pytest.raises(SystemExit):
        main([str(tmp_path / "bad.mp4"), "--hold", "0"])


def test_picamera2_that_fails_inside_its_import_is_one_line_with_the_fix(tmp_path, monkeypatch):
    """Pi OS Bookworm's picamera2 in a venv with numpy 2: found, then broken by a binary built for numpy 1."""
    fake = tmp_path / "site" / "picamera2"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ValueError("numpy.dtype size changed, may indicate binary '
                                      'incompatibility. Expected 96 from C header, got 88 from PyObject")\n')
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "picamera2", raising=False)
    with pytest.raises(ValueError) as info:
        open_source("picamera")
    message = str(info.value)
    assert "\n" not in message and "does not import (ValueError: numpy.dtype size changed" in message
    assert "constraints/pi-bookworm.txt" in message and "--system-site-packages" in message
    from feredge.edge.info_cli import format_info, gather  # in process: the emulated ARM runs have no binfmt for children

    shown = format_info(gather())
    assert "picamera2 no" in shown and "constraints/pi-bookworm.txt" in shown
