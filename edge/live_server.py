"""The live view for browsers: `feredge run --serve` (see MjpegServer).

A page (edge/live_page.py) with the annotated stream, a card per face, the run's facts and a
timing chart, fed by MJPEG, server-sent events and JSON from the device itself, with the
standard library's http.server and nothing else.
"""
from __future__ import annotations

import http.server
import json
import logging
import socket
import threading
import time

import cv2

from feredge.edge.outputs import Sink
from feredge.edge.render import annotate, enlargement

log = logging.getLogger("feredge.output")

IDLE_TIMEOUT_S = 20.0
DEFAULT_QUALITY = 80
DEFAULT_SERVE_FPS = 15.0  # a viewer sees motion; a 200 FPS pipeline is not slowed by 200 encodes a second
EVENTS_HZ = 10.0  # the page's cards and chart: faster reads no better and costs the device more
KEEPALIVE_S = 15.0  # an idle event stream sends a comment this often, which also finds pages that left
SNAPSHOT_QUALITY = 95  # one still, encoded on request: no reason to skimp
WINDOW_S = 0.5  # FPS and mean stage times are taken over this much of the run
BOUNDARY = "feredgeframe"


def check_serve_options(quality, max_fps) -> None:
    """Refuse a bad --serve-quality or --serve-fps in one line, before the model loads."""
    if not 1 <= quality <= 100:  # also refuses NaN
        raise ValueError(f"--serve-quality must be a JPEG quality from 1 to 100, not {quality}")
    if not 0 <= max_fps <= 1000:
        raise ValueError(f"--serve-fps must be from 0 (no cap) to 1000 frames a second, not {max_fps}")


class _RateWindow:
    """FPS and mean stage milliseconds over the last WINDOW_S of frames, for the page's chart.

    Only the pipeline thread calls add(); readers take `latest`, a dict replaced whole, never changed.
    """

    def __init__(self, span: float = WINDOW_S):
        self.span = span
        self.latest: dict | None = None
        self._start: float | None = None
        self._frames = 0
        self._sums: dict[str, float] = {}
        self._count = 0

    def add(self, stage_ms: dict, now: float) -> None:
        if self._start is None:  # the first frame opens the window: FPS counts the gaps after it
            self._start = now
            return
        self._frames += 1
        for key, value in stage_ms.items():
            self._sums[key] = self._sums.get(key, 0.0) + value
        elapsed = now - self._start
        if elapsed >= self.span:
            self._count += 1
            self.latest = {"window": self._count, "fps": round(self._frames / elapsed, 2),
                           "stage_ms": {k: round(v / self._frames, 3) for k, v in self._sums.items()}}
            self._start, self._frames, self._sums = now, 0, {}


def _reply(handler, code: int, ctype: str, body: bytes, headers: dict | None = None) -> None:
    handler.send_response(code)
    handler.send_header("Content-Type", ctype)
    handler.send_header("Content-Length", str(len(body)))
    handler.send_header("Cache-Control", "no-store")
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.end_headers()
    handler.wfile.write(body)


class _Tapped:
    """A frame source read through MjpegServer.tap: each frame read is also the server's to draw."""

    def __init__(self, source, server: MjpegServer):
        self.source, self._server = source, server
        self.name, self.fps, self.live = source.name, source.fps, getattr(source, "live", False)

    def read(self):
        frame = self.source.read()
        if frame is not None:
            self._server._tapped = frame.image
        return frame

    def close(self) -> None:
        self.source.close()


class MjpegServer(Sink):
    """The live view for browsers, served from the device itself (stdlib http.server, no other dependency):

        /             the page (edge/live_page.py): the stream, a card per face, run facts, a timing chart
        /stream       multipart/x-mixed-replace JPEGs, any number of viewers
        /events       server-sent events: the state below, at most EVENTS_HZ a second
        /state.json   the newest frame's record (FrameResult.to_dict, as the JSON lines print it), FPS and
                      mean stage times over the last WINDOW_S, and `run_info` (backend, artifact, ...)
        /snapshot.jpg the newest annotated frame
        /healthz      a JSON status

    Binds to loopback by default; give --serve 0.0.0.0:8080 to let other machines on the network watch.
    The pipeline thread only hands over the newest result (write() never waits on a viewer). One encoder
    thread makes the JPEG once for all viewers, only while somebody watches, and at most `max_fps`
    times a second (0: every frame); each viewer's thread sends the newest JPEG when it can, so a slow
    viewer skips frames instead of holding anyone up. Read the source through `tap(source)` and the
    pipeline draws nothing for the page: the encoder draws the overlay on just the frames it sends.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, quality: int = DEFAULT_QUALITY,
                 title: str = "feredge", *, max_fps: float = DEFAULT_SERVE_FPS, run_info: dict | None = None):
        from feredge.edge.live_page import render_page

        check_serve_options(quality, max_fps)
        self.quality, self.title, self.max_fps = int(quality), title, float(max_fps)
        self.run_info = dict(run_info or {})
        self.labels = tuple(self.run_info.get("labels") or ())  # for drawing the overlay on tapped frames
        self.needs_image = True  # until tap(): then the server draws what it sends
        self._page = render_page(title)
        # one lock, two wake-ups: a new frame wakes the encoder only while someone watches the stream,
        # and the event streams only while a page listens, so an unwatched run pays no thread switch
        self._lock = threading.Lock()
        self._frame_cond = threading.Condition(self._lock)  # the newest frame -> the event streams
        self._encode_cond = threading.Condition(self._lock)  # the newest frame -> the encoder
        self._jpeg_cond = threading.Condition()  # the newest JPEG part -> the MJPEG viewers
        self._stop = threading.Event()  # set by close(): ends the rate-limit sleeps at once
        self._closed = False
        self._image = self._raw = self._result = None  # the newest frame: drawn by the pipeline, or raw
        self._tapped = None  # the raw image tap() saw the pipeline read last
        self._frame_seq = self._encoded_seq = 0
        self._part, self._part_seq = b"", 0
        self._shown: tuple[int, object] = (0, None)  # (frame seq, result) of the JPEG the viewers get
        self._state_cache: tuple[tuple, bytes] = ((), b"")
        self._rate = _RateWindow()
        self._open: set = set()  # sockets of the streams being sent, shut by close()
        self.clients = 0  # MJPEG viewers
        self.listeners = 0  # pages on /events
        self.frames = self.encoded = 0
        self._httpd = self._make_httpd(host, port)
        self.host, self.port = self._httpd.server_address[:2]
        self._threads = [threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                          name="feredge-mjpeg", daemon=True),
                         threading.Thread(target=self._encode_loop, name="feredge-mjpeg-encode", daemon=True)]
        for thread in self._threads:
            thread.start()

    def _make_httpd(self, host: str, port: int):
        routes = {"/": self._send_page, "/index.html": self._send_page, "/healthz": self._send_health,
                  "/state.json": self._send_state, "/snapshot.jpg": self._send_snapshot,
                  "/stream": self._stream, "/events": self._events}

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
                route = routes.get(self.path.split("?", 1)[0])
                if route is None:
                    _reply(self, 404, "text/plain", b"not found\n")
                else:
                    route(self)

        class Server(http.server.ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in str(host) else socket.AF_INET
            request_queue_size = 64  # the default 5 drops viewers that arrive together

            def handle_error(self, request, client_address):
                log.debug("mjpeg: connection from %s ended with an error", client_address[0], exc_info=True)

        try:
            httpd = Server((host, int(port)), Handler)
        except OSError as exc:
            raise ValueError(f"cannot serve on {host}:{port} ({exc.strerror or exc})") from None
        httpd.daemon_threads = True
        return httpd

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in str(self.host) else self.host
        return f"http://{host}:{self.port}/"

    # -- the pipeline's side: never waits on a viewer ------------------------------------------

    def tap(self, source):
        """`source`, read through so that the server holds each raw frame: the pipeline then draws no
        overlay for the page (at 200 FPS that is most of what serving costs), and the encoder draws
        it on the frames it sends. Call before the run starts; a window or recording still draws."""
        if not self.labels:
            raise ValueError("the live view draws the overlay itself only with the bundle's labels (run_info)")
        self.needs_image = False
        return _Tapped(source, self)

    def write(self, result) -> None:
        self._post(result.image, result)

    def publish(self, image) -> None:
        """Make `image` (BGR or gray) the current frame for every viewer, with no result to describe it."""
        self._post(image, None)

    def _post(self, image, result) -> None:
        raw = None
        if result is not None:
            self._rate.add(result.stage_ms, time.perf_counter())
            if image is None:  # the pipeline drew nothing: keep the frame it just read, to draw if sent
                raw, self._tapped = self._tapped, None
        with self._frame_cond:
            self._image, self._raw, self._result = image, raw, result
            self._frame_seq += 1
            self.frames += 1
            if self.clients:
                self._encode_cond.notify()
            if self.listeners:
                self._frame_cond.notify_all()

    # -- what the endpoints send ---------------------------------------------------------------

    def state(self, result=None) -> dict:
        """What the page shows: a frame's record (the newest unless given), FPS and stage times over the
        last WINDOW_S, and the run's facts."""
        with self._frame_cond:
            size, frames = self._picture_size(), self.frames
            result = self._result if result is None else result
        window = self._rate.latest or {}
        return {"run": self.run_info, "frames": frames, "viewers": self.clients, "pages": self.listeners,
                "stream": {"quality": self.quality, "max_fps": self.max_fps}, "image": size,
                "window": window.get("window"), "fps": window.get("fps"), "stage_ms": window.get("stage_ms"),
                "result": None if result is None else result.to_dict()}

    def _state_json(self, shown: bool = False) -> bytes:
        """state() as JSON, made once per frame however many pages ask. shown: of the frame the MJPEG
        viewers get rather than the newest, so that the cards describe the picture beside them (an
        image folder shows another face every frame)."""
        seq, result = self._shown if shown and self._shown[1] is not None else (self._frame_seq, None)
        key = (seq, (self._rate.latest or {}).get("window"))
        cached = self._state_cache
        if cached[0] == key:
            return cached[1]
        body = json.dumps(self.state(result), separators=(",", ":")).encode()
        self._state_cache = (key, body)
        return body

    def _picture_size(self) -> list[int] | None:
        """[width, height] of the newest annotated frame, drawn or not yet."""
        if self._image is not None:
            return [int(self._image.shape[1]), int(self._image.shape[0])]
        if self._raw is not None:
            h, w = self._raw.shape[:2]
            k = enlargement(h, w)
            return [w * k, h * k]
        return None

    def _draw(self, image, raw, result):
        """The annotated frame: the pipeline's drawing, or drawn here from the tapped frame."""
        if image is None and raw is not None:
            image = annotate(raw, result, self.labels, (self._rate.latest or {}).get("fps"))
        return image

    def snapshot(self) -> tuple[bytes, object] | None:
        """(JPEG, its FrameResult or None) of the newest annotated frame, or None before the first frame."""
        with self._frame_cond:
            image, raw, result = self._image, self._raw, self._result
        image = self._draw(image, raw, result)
        if image is None:
            return None
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, SNAPSHOT_QUALITY])
        return (data.tobytes(), result) if ok else None

    def _send_page(self, handler) -> None:
        _reply(handler, 200, "text/html; charset=utf-8", self._page)

    def _send_health(self, handler) -> None:
        body = json.dumps({"ok": True, "frames": self.frames, "viewers": self.clients, "pages": self.listeners,
                           "encoded": self.encoded}).encode()
        _reply(handler, 200, "application/json", body)

    def _send_state(self, handler) -> None:
        _reply(handler, 200, "application/json", self._state_json())

    def _send_snapshot(self, handler) -> None:
        still = self.snapshot()
        if still is None:
            _reply(handler, 503, "text/plain", b"no frame yet\n", {"Retry-After": "1"})
            return
        jpeg, result = still
        name = f"feredge-frame-{result.index}.jpg" if result is not None else "feredge-frame.jpg"
        _reply(handler, 200, "image/jpeg", jpeg, {"Content-Disposition": f'inline; filename="{name}"'})

    # -- the threads that encode and send -------------------------------------------------------

    def _encode_loop(self) -> None:
        """The one JPEG encoder: the newest frame, while someone watches, at most max_fps times a second."""
        gap = 1.0 / self.max_fps if self.max_fps else 0.0

        def due() -> bool:
            return self._closed or (self.clients > 0 and (self._image is not None or self._raw is not None)
                                    and self._frame_seq != self._encoded_seq)

        while True:
            with self._encode_cond:
                self._encode_cond.wait_for(due)
                if self._closed:
                    return
                image, raw, result = self._image, self._raw, self._result
                seq = self._encoded_seq = self._frame_seq
            started = time.perf_counter()
            picture = self._draw(image, raw, result)
            ok, data = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
            if ok:
                jpeg = data.tobytes()
                part = (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                        .encode() + jpeg + b"\r\n")
                with self._jpeg_cond:
                    self._part, self._part_seq = part, self._part_seq + 1
                    self._shown = (seq, result)
                    self.encoded += 1
                    self._jpeg_cond.notify_all()
            if gap and self._stop.wait(gap - (time.perf_counter() - started)):
                return

    def _open_stream(self, handler, ctype: str, counter: str) -> None:
        """Headers of an endless reply; the connection is counted and kept for close() to shut."""
        handler.send_response(200)
        handler.send_header("Content-Type", ctype)
        handler.send_header("Cache-Control", "no-store")
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.close_connection = True
        with self._frame_cond:
            self._open.add(handler.connection)
            setattr(self, counter, getattr(self, counter) + 1)
            self._encode_cond.notify()  # the encoder starts when the first viewer comes

    def _close_stream(self, handler, counter: str) -> None:
        with self._frame_cond:
            self._open.discard(handler.connection)
            setattr(self, counter, getattr(self, counter) - 1)
            self._frame_cond.notify_all()  # close() waits for the last one

    def _stream(self, handler) -> None:
        """One MJPEG viewer: the newest JPEG part each time there is a new one."""
        self._open_stream(handler, f"multipart/x-mixed-replace; boundary={BOUNDARY}", "clients")
        seen = 0
        try:
            while True:
                with self._jpeg_cond:
                    self._jpeg_cond.wait_for(lambda seen=seen: self._closed or self._part_seq != seen,
                                             timeout=KEEPALIVE_S)
                    if self._closed:
                        return
                    if self._part_seq == seen:
                        continue
                    part, seen = self._part, self._part_seq
                handler.wfile.write(part)
        except OSError:
            pass  # the viewer went away
        finally:
            self._close_stream(handler, "clients")

    def _events(self, handler) -> None:
        """One page's server-sent events: state() on each new frame, at most EVENTS_HZ a second."""
        self._open_stream(handler, "text/event-stream", "listeners")
        gap = 1.0 / min(EVENTS_HZ, self.max_fps or EVENTS_HZ)
        seen = -1
        try:
            handler.wfile.write(b"retry: 2000\n\n")  # the browser's reconnection delay
            while True:
                with self._frame_cond:
                    self._frame_cond.wait_for(lambda seen=seen: self._closed or self._frame_seq != seen,
                                              timeout=KEEPALIVE_S)
                    if self._closed:
                        return
                    fresh = self._frame_seq != seen
                    seen = self._frame_seq
                body = self._state_json(shown=self.clients > 0) if fresh else None
                handler.wfile.write(b"data: " + body + b"\n\n" if fresh else b": idle\n\n")
                if self._stop.wait(gap):
                    return
        except OSError:
            pass  # the page went away
        finally:
            self._close_stream(handler, "listeners")

    def close(self) -> None:
        """Stop serving: wake and end every viewer's thread and the encoder, shut their connections."""
        with self._frame_cond:
            if self._closed:
                return
            self._closed = True
            self._frame_cond.notify_all()
            self._encode_cond.notify()
            open_now = list(self._open)
        self._stop.set()
        with self._jpeg_cond:
            self._jpeg_cond.notify_all()
        for conn in open_now:  # a viewer's thread blocked in a send to a stalled client returns at once
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._httpd.shutdown()
        self._httpd.server_close()
        for thread in self._threads:
            thread.join(timeout=2.0)
        with self._frame_cond:
            self._frame_cond.wait_for(lambda: not self._open, timeout=2.0)


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
