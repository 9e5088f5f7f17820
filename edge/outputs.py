"""Where results go: JSON lines, a window, an MJPEG page for browsers, an MP4 recording.

Each sink has `needs_image` (whether the pipeline must draw the overlay for it), `write(result)`
(returning False asks the run to stop) and `close()`, and is a context manager.
"""
from __future__ import annotations

import html
import http.server
import json
import logging
import os
import socket
import sys
import threading
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


# ---------------------------------------------------------------------------------------------

IDLE_TIMEOUT_S = 20.0
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{background:#111;color:#ddd;font-family:sans-serif;margin:1em}}img{{max-width:100%;height:auto}}</style>
</head><body><h3>{title}</h3><img src="/stream" alt="live view"><p>{note}</p></body></html>
"""


class MjpegServer(Sink):
    """An MJPEG page: "/" is a page with the live view, "/stream" the multipart/x-mixed-replace JPEG
    stream (any number of viewers at once), "/healthz" a JSON status. Binds to loopback by default;
    give --serve 0.0.0.0:8080 to let other machines on the network watch.

    Frames are JPEG-encoded only while somebody watches.
    """

    needs_image = True

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, quality: int = 80, title: str = "feredge"):
        self.quality, self.title = int(quality), title
        self._cond = threading.Condition()
        self._jpeg: bytes | None = None
        self._seq = 0
        self._closed = False
        self.clients = 0
        self.frames = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = IDLE_TIMEOUT_S  # an idle or stalled connection gives its thread back

            def handle(self):
                try:
                    super().handle()
                except (ConnectionError, TimeoutError):  # the viewer left mid-reply: nothing to report
                    pass

            def log_message(self, fmt, *args):  # quiet: one line per request would flood a Pi's log
                log.debug("mjpeg %s " + fmt, self.client_address[0], *args)

            def do_GET(self):
                route = self.path.split("?", 1)[0]
                if route in ("/", "/index.html"):
                    body = PAGE.format(title=html.escape(server.title),
                                       note="MJPEG from feredge run --serve").encode()
                    self._reply(200, "text/html; charset=utf-8", body)
                elif route == "/healthz":
                    body = json.dumps({"ok": True, "frames": server.frames, "viewers": server.clients}).encode()
                    self._reply(200, "application/json", body)
                elif route == "/stream":
                    server._stream(self)
                else:
                    self._reply(404, "text/plain", b"not found\n")

            def _reply(self, code, ctype, body):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

        class Server(http.server.ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in str(host) else socket.AF_INET
            request_queue_size = 64  # the default 5 drops viewers that arrive together

            def handle_error(self, request, client_address):
                log.debug("mjpeg: connection from %s ended with an error", client_address[0], exc_info=True)

        try:
            self._httpd = Server((host, int(port)), Handler)
        except OSError as exc:
            raise ValueError(f"cannot serve on {host}:{port} ({exc.strerror or exc})") from None
        self._httpd.daemon_threads = True
        self.host, self.port = self._httpd.server_address[:2]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="feredge-mjpeg", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in str(self.host) else self.host
        return f"http://{host}:{self.port}/"

    def publish(self, image) -> None:
        """Make `image` (BGR or gray) the current frame for every viewer."""
        self.frames += 1
        if self.clients == 0:
            return
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            return
        with self._cond:
            self._jpeg = data.tobytes()
            self._seq += 1
            self._cond.notify_all()

    def write(self, result) -> None:
        self.publish(result.image)

    def _stream(self, handler) -> None:
        boundary = "feredgeframe"
        handler.send_response(200)
        handler.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={boundary}")
        handler.send_header("Cache-Control", "no-store")
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.close_connection = True
        with self._cond:
            self.clients += 1
        seen = -1
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._closed or (self._jpeg is not None and self._seq != seen),
                                        timeout=1.0)
                    if self._closed:
                        return
                    if self._jpeg is None or self._seq == seen:
                        continue
                    jpeg, seen = self._jpeg, self._seq
                handler.wfile.write(f"--{boundary}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}"
                                    "\r\n\r\n".encode() + jpeg + b"\r\n")
                handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, TimeoutError, OSError):
            pass  # the viewer went away
        finally:
            with self._cond:
                self.clients -= 1

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=2.0)


def parse_host_port(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """"8080", ":8080", "HOST:8080" or "[::1]:8080" -> (host, port); loopback when no host is given."""
    text = text.strip()
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    elif text.isdigit():
        host, port = "", text
    else:
        raise ValueError(f"--serve takes HOST:PORT or PORT, not {text!r}")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--serve: bad port in {text!r}")
    return host or default_host, int(port)
