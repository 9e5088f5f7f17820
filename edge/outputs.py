"""Where results go: JSON lines, a window, an MP4 recording (the live page for browsers is
edge/live_server.py).

Each sink has `needs_image` (whether the pipeline must draw the overlay for it), `write(result)`
(returning False asks the run to stop) and `close()`, and is a context manager.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import cv2

log = logging.getLogger("feredge.output")


class Sink:
    needs_image = False

    def write(self, result) -> bool | None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
            return
        try:  # the run already failed: report that, not a second failure while closing
            self.close()
        except Exception as second:
            log.warning("%s: also failed while closing (%s)", type(self).__name__, second)


def _write_error(target, exc: OSError, what: str) -> OSError:
    """One line naming the file: a full disk, a read-only file system, a file that takes no writes."""
    return OSError(exc.errno, f"cannot write {what} ({exc.strerror or exc})", str(target))


class JsonLinesSink(Sink):
    """One JSON object per frame (see FrameResult.to_dict), to stdout ("-") or a file, flushed per line."""

    def __init__(self, target: str | Path = "-", labels=None):
        self.target = str(target)
        self._fh, self._own = (sys.stdout, False) if self.target == "-" else (None, True)
        if self._own:  # checked now, opened at the first result: a run that fails to start truncates nothing
            path = Path(self.target)
            if path.parent and not path.parent.is_dir():
                raise FileNotFoundError(f"{path.parent}: no such folder for the JSON lines output")
            if path.is_dir():
                raise IsADirectoryError(f"{path}: is a folder, not a file for the JSON lines output")
            if (path.exists() and not os.access(path, os.W_OK)) or not os.access(path.parent, os.W_OK):
                raise PermissionError(f"{path}: not writable for the JSON lines output")
        self.lines = 0

    def write(self, result) -> None:
        try:
            if self._fh is None:
                self._fh = open(self.target, "w", encoding="utf-8")
            self._fh.write(json.dumps(result.to_dict(), separators=(",", ":")) + "\n")
            self._fh.flush()
        except OSError as exc:
            raise _write_error(self.target, exc, "the JSON lines output") from None
        self.lines += 1

    def close(self) -> None:
        if self._own and self._fh is not None and not self._fh.closed:
            try:
                self._fh.close()
            except OSError as exc:
                raise _write_error(self.target, exc, "the JSON lines output") from None


# ---------------------------------------------------------------------------------------------


def display_problem() -> str | None:
    """Why a window cannot be shown here, or None when it can."""
    from feredge.edge.sources import opencv_build_facts

    if not opencv_build_facts()["gui"]:
        return (f"this OpenCV {cv2.__version__} has no GUI (a headless build), so it cannot open a window; "
                "use --headless (JSON lines) or --serve HOST:PORT (watch in a browser)")
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display (DISPLAY is not set); use --headless (JSON lines) or --serve HOST:PORT (watch in a browser)"
    return None


class WindowSink(Sink):
    """cv2.imshow of the annotated frame; q or Esc (or closing the window) ends the run."""

    needs_image = True

    def __init__(self, title: str = "feredge"):
        problem = display_problem()
        if problem:
            raise ValueError(problem)
        self.title = title
        cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        self._shown = False

    def write(self, result) -> bool:
        cv2.imshow(self.title, result.image)
        key = cv2.waitKey(1) & 0xFF
        if self._shown and cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1:
            return False
        self._shown = True
        return key not in (ord("q"), 27)

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
            cv2.waitKey(1)
        except cv2.error:
            pass


# ---------------------------------------------------------------------------------------------


class Recorder(Sink):
    """The annotated frames into an MP4 (mp4v), written under a temporary name and renamed at close,
    so an interrupted run leaves either a playable file or nothing under the final name."""

    needs_image = True

    def __init__(self, path: str | Path, fps: float = 15.0, fourcc: str = "mp4v"):
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"{self.path.parent}: no such folder for the recording")
        if self.path.suffix.lower() not in (".mp4", ".m4v", ".mov", ".avi", ".mkv"):
            raise ValueError(f"{self.path}: record to an .mp4 file")
        self.tmp = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self.fps, self.fourcc = float(fps), fourcc
        self._writer = None
        self._size = None
        self.frames = 0

    def write(self, result) -> None:
        image = result.image
        if self._writer is None:
            self._size = (image.shape[1], image.shape[0])
            self._writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, self._size)
            if not self._writer.isOpened():
                raise ValueError(f"{self.path}: OpenCV cannot write {self.fourcc} video here")
        if (image.shape[1], image.shape[0]) != self._size:
            image = cv2.resize(image, self._size)
        self._writer.write(image)
        self.frames += 1

    def close(self) -> None:
        if self._writer is None:
            return
        self._writer.release()
        self._writer = None
        if not self.frames:
            self.tmp.unlink(missing_ok=True)
            return
        # VideoWriter reports no write errors: a full disk leaves a file without its index (moov atom),
        # so the recording counts as saved only if it plays back
        readable = _frames_in(self.tmp)
        if readable < 1:
            self.tmp.unlink(missing_ok=True)
            raise OSError(28, f"the recording of {self.frames} frames could not be written completely (disk full "
                              f"or read-only?); nothing was kept", str(self.path))
        os.replace(self.tmp, self.path)
        log.info("recorded %d frames to %s", self.frames, self.path)


def _frames_in(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return 0
        ok, _ = cap.read()
        return int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if ok else 0
    finally:
        cap.release()
