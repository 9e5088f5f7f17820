"""Frame sources: picamera2, an OpenCV camera (index or /dev/videoN), a GStreamer pipeline, a video
file, an image or a folder of images. Every source yields `Frame`s with a timestamp and can be closed.

`open_source(text)` picks the source from what the user typed. Live sources (cameras, GStreamer)
treat a failed or stalled read as a lost camera: they reconnect with exponential backoff, log each
attempt, and raise `SourceLost` (one line) when the retries run out, so a run never hangs on a dead
camera and never ends in a traceback. A video's end (or an image folder's) is a clean end: `read()`
returns None.
"""
from __future__ import annotations

import dataclasses
import logging
import queue
import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from feredge.edge.fileio import read_image

log = logging.getLogger("feredge.source")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv", ".h264", ".mjpeg")

# A Jetson CSI camera (IMX219/IMX477 ...) through the Argus daemon, converted to BGR for OpenCV.
# `drop=1 max-buffers=1` keeps only the newest frame, so a slow pipeline never lags behind the camera.
# Needs an OpenCV built with GStreamer: the system python3-opencv of JetPack has it, PyPI wheels do not.
JETSON_CSI_PIPELINE = (
    "nvarguscamerasrc sensor-id=0 ! "
    "video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1 ! "
    "nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
    "appsink drop=1 max-buffers=1"
)


def jetson_csi_pipeline(sensor_id: int = 0, width: int = 1280, height: int = 720, fps: int = 30,
                        flip_method: int = 0) -> str:
    """JETSON_CSI_PIPELINE with another sensor, size, frame rate or flip (nvvidconv flip-method 0-7)."""
    return (f"nvarguscamerasrc sensor-id={sensor_id} ! "
            f"video/x-raw(memory:NVMM),width={width},height={height},framerate={fps}/1 ! "
            f"nvvidconv flip-method={flip_method} ! video/x-raw,format=BGRx ! videoconvert ! "
            "video/x-raw,format=BGR ! appsink drop=1 max-buffers=1")


class SourceLost(RuntimeError):
    """A live source stopped delivering and did not come back after the retries (one-line message)."""


@dataclasses.dataclass
class Frame:
    """One captured frame.

    image: what is shown and recorded (BGR, or 2-D grayscale); gray: a ready grayscale view of the
    same scene when the source has one for free (picamera2's lores Y plane), possibly smaller than
    `image`; timestamp: seconds (live sources: time.monotonic() at capture, or the camera's own
    monotonic sensor time; video files: the position in the video); index: 0, 1, 2, ... per source;
    name: the file an image frame came from.
    """

    image: np.ndarray
    gray: np.ndarray | None = None
    timestamp: float = 0.0
    index: int = 0
    name: str | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of `image`."""
        return self.image.shape[1], self.image.shape[0]


class FrameSource:
    """read() -> Frame, or None at a clean end of stream; close(); usable as a context manager."""

    name: str = "source"
    fps: float | None = None  # the source's nominal frame rate, when it has one
    live: bool = False  # a camera (frames keep coming; failures are retried) rather than a file

    def read(self) -> Frame | None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __iter__(self):
        while (frame := self.read()) is not None:
            yield frame


# ---------------------------------------------------------------------------------------------
# Files


def _as_uint8_image(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    if img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    return img


class ImageSource(FrameSource):
    """One image file, or every image under a folder (recursively, sorted by path).

    An unreadable file is skipped with a warning; a folder without a single readable image is an
    error at open. `loop` starts over at the end.
    """

    def __init__(self, path: str | Path, loop: bool = False):
        self.path = Path(path)
        self.name = str(self.path)
        self.loop = loop
        if self.path.is_dir():
            self.files = sorted(p for p in self.path.rglob("*")
                                if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                                and not any(part.startswith(".") for part in p.relative_to(self.path).parts))
            if not self.files:
                raise ValueError(f"{self.path}: no image files in this folder ({', '.join(IMAGE_SUFFIXES[:4])}, ...)")
        elif self.path.is_file():
            self.files = [self.path]
        else:
            raise FileNotFoundError(f"{self.path}: no such image file or folder")
        self._next = 0
        self._index = 0
        self._delivered_any = False

    def read(self) -> Frame | None:
        for _ in range(len(self.files)):  # at most one pass over the files looking for a readable one
            if self._next >= len(self.files):
                if not self.loop:
                    break
                self._next = 0
            path = self.files[self._next]
            self._next += 1
            img = read_image(path)
            if img is None or img.size == 0:
                log.warning("%s: not a readable image, skipped", path)
                continue
            self._delivered_any = True
            name = path.relative_to(self.path).as_posix() if self.path.is_dir() else path.name
            frame = Frame(_as_uint8_image(img), None, time.monotonic(), self._index, name)
            self._index += 1
            return frame
        if not self._delivered_any:
            raise ValueError(f"{self.path}: none of its {len(self.files)} image file(s) could be read")
        return None


class VideoFileSource(FrameSource):
    """A video file through OpenCV (FFmpeg). Its end is a clean end of stream, or a restart with `loop`."""

    def __init__(self, path: str | Path, loop: bool = False):
        self.path = Path(path)
        self.name = str(self.path)
        self.loop = loop
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such video file")
        self._cap = cv2.VideoCapture(str(self.path))
        if not self._cap.isOpened():
            raise ValueError(f"{self.path}: OpenCV cannot open this video (unknown format or damaged file)")
        self.fps = self._cap.get(cv2.CAP_PROP_FPS) or None
        self.frame_count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self._index = 0
        self._in_pass = 0  # frames read in the current pass through the file
        self._offset = 0.0  # media time of the passes before this one (looping)
        self._last_ts = 0.0

    def read(self) -> Frame | None:
        ok, img = self._cap.read()
        if not ok:
            if self._index == 0:
                raise ValueError(f"{self.path}: the video has no readable frame")
            if not self.loop or self._in_pass == 0:
                return None
            self._offset = self._last_ts + (1.0 / self.fps if self.fps else 0.0)
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            self._in_pass = 0
            ok, img = self._cap.read()
            if not ok:
                return None
        position = self._cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
        if position <= 0 and self.fps:
            position = self._in_pass / self.fps
        self._last_ts = self._offset + position
        frame = Frame(img, None, self._last_ts, self._index)
        self._index += 1
        self._in_pass += 1
        return frame

    def close(self) -> None:
        self._cap.release()


# ---------------------------------------------------------------------------------------------
# Live sources: a device that can fail, wrapped with reconnection and a read timeout


class Device:
    """What a live source reads from: read() -> (image, gray | None, timestamp | None), or None when
    the read failed; close(). Opening it (the source's `opener`) raises OSError/RuntimeError when the
    camera is not there."""

    def read(self):
        raise NotImplementedError

    def close(self) -> None:
        pass


class OpenCVDevice(Device):
    """A cv2.VideoCapture (or anything with read() -> (ok, image) and release())."""

    def __init__(self, capture, description: str):
        self.capture = capture
        if hasattr(capture, "isOpened") and not capture.isOpened():
            capture.release()
            raise OSError(f"{description}: OpenCV cannot open it")

    def read(self):
        ok, img = self.capture.read()
        if not ok or img is None:
            return None
        return img, None, time.monotonic()

    def close(self) -> None:
        self.capture.release()


class _TimedReader:
    """Runs a device's blocking read() on a worker thread, so a stalled driver costs a timeout, not a hang.

    A read that overruns is abandoned: the worker finishes it (and closes that device) on its own,
    while the source opens a fresh device.
    """

    def __init__(self, device: Device):
        self.device = device
        self._requests: queue.Queue = queue.Queue()
        self._results: queue.Queue = queue.Queue()
        self._abandoned = False
        self._thread = threading.Thread(target=self._work, name="feredge-capture", daemon=True)
        self._thread.start()

    def _work(self):
        while True:
            job = self._requests.get()
            if job is None:
                break
            try:
                self._results.put(("ok", self.device.read()))
            except Exception as exc:  # a driver error is a failed read, reported by the source
                self._results.put(("error", exc))
            if self._abandoned:
                break
        _close_quietly(self.device)

    def read(self, timeout: float | None):
        self._requests.put("read")
        try:
            status, value = self._results.get(timeout=timeout)
        except queue.Empty:
            self._abandoned = True
            self._requests.put(None)
            raise TimeoutError(f"no frame within {timeout:g} s") from None
        if status == "error":
            raise value
        return value

    def close(self):
        self._requests.put(None)
        self._thread.join(timeout=2.0)


def _close_quietly(device: Device) -> None:
    try:
        device.close()
    except Exception as exc:  # closing a device that is already gone
        log.debug("closing the device failed: %s", exc)


class CaptureSource(FrameSource):
    """A live source: frames from `opener()`'s device; failed or stalled reads are retried.

    After a failed read the device is closed and reopened after backoff, 2*backoff, 4*backoff, ...
    seconds (at most `retries` attempts, each logged); a success resets the count, and the run goes
    on. When every attempt fails, read() raises SourceLost with one line. `read_timeout` bounds
    each read (None: no bound, the device's own timeout applies).
    """

    live = True

    def __init__(self, name: str, opener: Callable[[], Device], *, retries: int = 5, backoff: float = 0.5,
                 read_timeout: float | None = 10.0, fps: float | None = None, max_backoff: float = 8.0):
        self.name = name
        self.fps = fps
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.read_timeout = read_timeout
        self._opener = opener
        self._index = 0
        self.reconnects = 0  # successful reconnections, for reports
        try:
            self._reader: _TimedReader | None = _TimedReader(opener())
        except (OSError, RuntimeError, ValueError) as exc:
            raise ValueError(f"{name}: cannot open the camera ({_first_line(exc)})") from None

    def _read_once(self):
        if self._reader is None:
            raise OSError("not connected")
        result = self._reader.read(self.read_timeout)
        if result is None:
            raise OSError("read failed")
        return result

    def read(self) -> Frame | None:
        try:
            result = self._read_once()
        except (OSError, RuntimeError, TimeoutError, cv2.error) as exc:
            result = self._reconnect(exc)
        image, gray, timestamp = result
        frame = Frame(image, gray, time.monotonic() if timestamp is None else timestamp, self._index)
        self._index += 1
        return frame

    def _reconnect(self, first_error: BaseException):
        started = time.monotonic()
        error = first_error
        for attempt in range(1, self.retries + 1):
            delay = min(self.backoff * 2 ** (attempt - 1), self.max_backoff)
            log.warning("%s: %s; reconnecting in %.1f s (attempt %d/%d)", self.name, _first_line(error), delay,
                        attempt, self.retries)
            self._drop_reader()
            time.sleep(delay)
            try:
                self._reader = _TimedReader(self._opener())
                result = self._read_once()
            except (OSError, RuntimeError, TimeoutError, ValueError, cv2.error) as exc:
                error = exc
                continue
            self.reconnects += 1
            log.warning("%s: reconnected (attempt %d, %.1f s without frames)", self.name, attempt,
                        time.monotonic() - started)
            return result
        self._drop_reader()
        raise SourceLost(f"{self.name}: no frames after {self.retries} reconnection attempts over "
                         f"{time.monotonic() - started:.1f} s (last error: {_first_line(error)}); "
                         "is the camera unplugged or used by another program?")

    def _drop_reader(self):
        if self._reader is not None:
            reader, self._reader = self._reader, None
            if not reader._abandoned:
                reader.close()

    def close(self) -> None:
        self._drop_reader()


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


# ---------------------------------------------------------------------------------------------
# OpenCV cameras and GStreamer


def opencv_build_facts() -> dict[str, bool]:
    """Which video and GUI back-ends this OpenCV was built with."""
    info = cv2.getBuildInformation()

    def has(name: str) -> bool:
        match = re.search(rf"^\s*{re.escape(name)}:\s*(\S+)", info, re.MULTILINE)
        return bool(match) and match.group(1).upper() not in ("NO", "NONE")

    gui = re.search(r"^\s*GUI:\s*(\S+)", info, re.MULTILINE)
    return {
        "gui": bool(gui) and gui.group(1).upper() != "NONE",
        "gstreamer": has("GStreamer"),
        "v4l2": has("v4l/v4l2"),
        "ffmpeg": has("FFMPEG"),
    }


def _camera_opener(target: int | str, api: int, width, height, fps) -> Callable[[], Device]:
    description = f"camera {target}"

    def open_device() -> Device:
        capture = cv2.VideoCapture(target, api)
        if capture.isOpened() and api != cv2.CAP_GSTREAMER:
            if width:
                capture.set(cv2.CAP_PROP_FRAME_WIDTH, width)
            if height:
                capture.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
            if fps:
                capture.set(cv2.CAP_PROP_FPS, fps)
            capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the newest frame, not a queue of stale ones
        return OpenCVDevice(capture, description)

    return open_device


def open_camera(target: int | str, *, width=None, height=None, fps=None, retries=5, backoff=0.5,
                read_timeout: float | None = 10.0) -> CaptureSource:
    """An OpenCV camera: a device index (0) or a V4L2 device path (/dev/video0)."""
    api = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
    name = f"camera {target}"
    return CaptureSource(name, _camera_opener(target, api, width, height, fps), retries=retries, backoff=backoff,
                         read_timeout=read_timeout, fps=fps)


def open_gstreamer(pipeline: str, *, retries=5, backoff=0.5, read_timeout: float | None = 10.0,
                   fps=None) -> CaptureSource:
    """A GStreamer pipeline ending in appsink (see JETSON_CSI_PIPELINE); needs OpenCV with GStreamer."""
    if not opencv_build_facts()["gstreamer"]:
        raise ValueError(f"a GStreamer pipeline needs OpenCV built with GStreamer, and this OpenCV {cv2.__version__} "
                         "is not (cv2.getBuildInformation() says GStreamer: NO; pip wheels never are): on a Jetson "
                         "use JetPack's python3-opencv in a venv made with --system-site-packages")
    if "appsink" not in pipeline:
        raise ValueError(f"GStreamer pipeline {pipeline!r} must end in an appsink (... ! appsink drop=1 max-buffers=1)")
    return CaptureSource("gstreamer pipeline", _camera_opener(pipeline, cv2.CAP_GSTREAMER, None, None, None),
                         retries=retries, backoff=backoff, read_timeout=read_timeout, fps=fps)


# ---------------------------------------------------------------------------------------------
# picamera2 (Raspberry Pi cameras through libcamera)


class PiCameraDevice(Device):
    """picamera2 with two streams: `main` (RGB888, which is B,G,R in memory: OpenCV's BGR) for display
    and recording, and `lores` (YUV420) whose first `height` rows are the Y plane: grayscale for face
    detection and a grayscale model without any colour conversion.

    The YUV420 array is (lores_h * 3 // 2, stride) with stride >= lores_w (row padding), so the Y plane
    is `lores[:lores_h, :lores_w]`. Frames are timestamped with the sensor's `SensorTimestamp`
    (nanoseconds, monotonic clock) when the metadata has one.
    """

    def __init__(self, main_size=(640, 480), lores_size=(320, 240), fps: float | None = None, camera_num: int = 0):
        Picamera2 = _picamera2_class()
        self.main_size = tuple(int(v) for v in main_size)
        self.lores_size = tuple(int(v) for v in lores_size)
        if self.lores_size[0] > self.main_size[0] or self.lores_size[1] > self.main_size[1]:
            raise ValueError(f"picamera2: the lores stream {self.lores_size} cannot be larger than main {self.main_size}")
        self.camera = Picamera2(camera_num)
        try:
            controls = {"FrameRate": float(fps)} if fps else {}
            config = self.camera.create_video_configuration(
                main={"size": self.main_size, "format": "RGB888"},
                lores={"size": self.lores_size, "format": "YUV420"},
                controls=controls)
            self.camera.configure(config)
            self.camera.start()
        except Exception:
            self.close()
            raise

    def read(self):
        (main, lores), metadata = self.camera.capture_arrays(["main", "lores"])
        w, h = self.lores_size
        y_plane = lores[:h, :w]
        stamp = (metadata or {}).get("SensorTimestamp")
        return main, y_plane, (stamp / 1e9 if stamp else None)

    def close(self) -> None:
        for method in ("stop", "close"):
            try:
                getattr(self.camera, method)()
            except Exception as exc:
                log.debug("picamera2 %s failed: %s", method, exc)


def _picamera2_class():
    from feredge.edge.device import picamera2_problem

    problem = picamera2_problem()  # not only ImportError: a numpy mismatch fails inside the import
    if problem:
        raise ValueError(problem)
    from picamera2 import Picamera2

    return Picamera2


def open_picamera(*, width=None, height=None, fps=None, lores=None, retries=5, backoff=0.5,
                  read_timeout: float | None = 10.0, camera_num: int = 0) -> CaptureSource:
    """A Raspberry Pi camera: main stream width x height (default 640x480), lores half of it (or `lores`)."""
    main = (int(width or 640), int(height or 480))
    lores_size = tuple(lores) if lores else (max(64, main[0] // 2) // 2 * 2, max(48, main[1] // 2) // 2 * 2)
    _picamera2_class()  # a missing picamera2 is a setup problem, not a camera to retry
    return CaptureSource(f"picamera2 camera {camera_num}", lambda: PiCameraDevice(main, lores_size, fps, camera_num),
                         retries=retries, backoff=backoff, read_timeout=read_timeout, fps=fps)


# ---------------------------------------------------------------------------------------------


def open_source(text: str | int | Path, *, loop: bool = False, width=None, height=None, fps=None,
                retries: int = 5, backoff: float = 0.5, read_timeout: float | None = 10.0) -> FrameSource:
    """The source the user means by `text`:

    "picamera" / "picamera2" (optionally ":N" for camera N): a Raspberry Pi camera;
    "0", "1", ...: an OpenCV camera index; "/dev/videoN": a V4L2 device;
    "gst:PIPELINE" or any text with " ! ": a GStreamer pipeline;
    a video file (loop restarts it); an image file; a folder of images (recursively).
    """
    text = str(text).strip()
    if not text:
        raise ValueError("empty --source")
    live = dict(retries=retries, backoff=backoff, read_timeout=read_timeout)
    low = text.lower()
    if low in ("picamera", "picamera2") or re.fullmatch(r"picamera2?:\d+", low):
        num = int(low.split(":")[1]) if ":" in low else 0
        return open_picamera(width=width, height=height, fps=fps, camera_num=num, **live)
    if low.startswith("gst:") or "!" in text:
        return open_gstreamer(text[4:].strip() if low.startswith("gst:") else text, fps=fps, **live)
    if re.fullmatch(r"\d+", text):
        return open_camera(int(text), width=width, height=height, fps=fps, **live)
    path = Path(text).expanduser()
    if text.startswith("/dev/video") or (path.exists() and path.is_char_device()):
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such camera device (is it plugged in? see `ls /dev/video*`)")
        return open_camera(str(path), width=width, height=height, fps=fps, **live)
    if path.is_dir():
        return ImageSource(path, loop=loop)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file, folder or camera")
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return ImageSource(path, loop=loop)
    return VideoFileSource(path, loop=loop)  # anything else: let FFmpeg try (it says so if it cannot)
