"""Outputs: the MJPEG page fetched by real HTTP clients, the recorder, JSON lines, the overlay."""
from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.request

import cv2
import numpy as np
import pytest

from feredge.edge.live_server import MjpegServer, parse_host_port
from feredge.edge.outputs import JsonLinesSink, Recorder, display_problem
from feredge.edge.pipeline import FaceResult, FrameResult
from feredge.edge.render import annotate

LABELS = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")


def _result(index=0, image=None):
    p = np.array([0.05, 0.0, 0.1, 0.7, 0.1, 0.05, 0.0], np.float32)
    face = FaceResult((100, 80, 120, 120), "happy", p, "happy", p, 1, 12.0)
    return FrameResult(index, index / 10, [face], dict.fromkeys(("capture", "detect", "preprocess", "infer",
                                                                 "smooth", "draw"), 1.0), None, image)


def _read_parts(url: str, count: int, out: list, errors: list) -> None:
    """Read `count` JPEG parts from a multipart/x-mixed-replace stream with http.client."""
    try:
        host, port = url.split("//")[1].split("/")[0].rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        conn.request("GET", "/stream")
        response = conn.getresponse()
        assert response.status == 200
        ctype = response.getheader("Content-Type")
        assert ctype.startswith("multipart/x-mixed-replace") and "boundary=" in ctype
        boundary = b"--" + ctype.split("boundary=")[1].encode()
        for _ in range(count):
            line = response.fp.readline().strip()
            while not line:
                line = response.fp.readline().strip()
            assert line == boundary, line
            headers = {}
            while (line := response.fp.readline().strip()):
                key, _, value = line.decode().partition(":")
                headers[key.strip().lower()] = value.strip()
            assert headers["content-type"] == "image/jpeg"
            out.append(response.fp.read(int(headers["content-length"])))
        conn.close()
    except Exception as exc:  # reported to the test thread
        errors.append(exc)


def test_mjpeg_server_serves_the_page_and_two_viewers_at_once():
    image = np.zeros((240, 320, 3), np.uint8)
    with MjpegServer("127.0.0.1", 0) as server:
        assert server.host == "127.0.0.1" and server.port > 0
        page = urllib.request.urlopen(server.url, timeout=10).read().decode()
        assert '<img src="/stream"' in page
        health = json.loads(urllib.request.urlopen(server.url + "healthz", timeout=10).read())
        assert health["ok"] is True
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(server.url + "nope", timeout=10)
        assert info.value.code == 404

        parts = [[], []]
        errors: list = []
        viewers = [threading.Thread(target=_read_parts, args=(server.url, 3, parts[i], errors)) for i in range(2)]
        for v in viewers:
            v.start()
        deadline = time.monotonic() + 20
        frame = 0
        while any(v.is_alive() for v in viewers) and time.monotonic() < deadline:
            image[:] = frame % 255
            cv2.putText(image, str(frame), (20, 120), cv2.FONT_HERSHEY_SIMPLEX, 2, (255, 255, 255), 3)
            server.write(_result(frame, image))
            frame += 1
            time.sleep(0.02)
        for v in viewers:
            v.join(timeout=5)
        assert not errors, errors
        for got in parts:
            assert len(got) == 3
            for jpeg in got:
                assert jpeg[:2] == b"\xff\xd8" and jpeg[-2:] == b"\xff\xd9"
                assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (240, 320, 3)
    # closed: the port no longer answers
    with pytest.raises(OSError):
        urllib.request.urlopen(server.url, timeout=2)


def test_mjpeg_server_binds_loopback_by_default_and_reports_a_busy_port():
    assert parse_host_port("8080") == ("127.0.0.1", 8080)
    assert parse_host_port(":9000") == ("127.0.0.1", 9000)
    assert parse_host_port("0.0.0.0:80") == ("0.0.0.0", 80)
    assert parse_host_port("[::1]:8080") == ("::1", 8080)
    for bad in ("host", "a:b", "1:2:3", "localhost:70000"):
        with pytest.raises(ValueError):
            parse_host_port(bad)
    with MjpegServer("127.0.0.1", 0) as first:
        with pytest.raises(ValueError, match="cannot serve"):
            MjpegServer("127.0.0.1", first.port)


def test_recorder_writes_atomically_and_all_frames(tmp_path):
    out = tmp_path / "rec.mp4"
    recorder = Recorder(out, fps=10)
    image = np.zeros((120, 160, 3), np.uint8)
    for i in range(7):
        image[:] = i * 30
        recorder.write(_result(i, image))
    assert not out.exists()  # still under its temporary name
    recorder.close()
    assert out.is_file() and not list(tmp_path.glob(".*partial*"))
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 7 and cap.get(cv2.CAP_PROP_FRAME_WIDTH) == 160
    with pytest.raises(FileNotFoundError):
        Recorder(tmp_path / "missing" / "x.mp4")


def test_json_lines_sink(tmp_path):
    path = tmp_path / "out.jsonl"
    with JsonLinesSink(path) as sink:
        sink.write(_result(0))
        sink.write(_result(1))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["frame"] for line in lines] == [0, 1]
    assert lines[0]["faces"][0]["box"] == [100, 80, 120, 120] and lines[0]["faces"][0]["label"] == "happy"


def test_overlay_draws_without_touching_the_input():
    image = np.full((240, 320), 90, np.uint8)
    before = image.copy()
    out = annotate(image, _result(0), LABELS, fps=12.3)
    assert out.shape == (240, 320, 3) and np.array_equal(image, before)
    assert (out != 90).any()


def test_no_window_on_a_headless_build():
    problem = display_problem()
    if problem is None:
        pytest.skip("this machine can show windows")
    assert "--headless" in problem and "--serve" in problem


def test_mjpeg_serves_ipv6_loopback_and_drops_idle_connections(monkeypatch, capsys):
    import socket

    import feredge.edge.live_server as live_server

    monkeypatch.setattr(live_server, "IDLE_TIMEOUT_S", 0.5)
    try:
        server = MjpegServer("::1", 0)
    except ValueError as exc:
        pytest.skip(f"no IPv6 loopback here ({exc})")
    try:
        assert server.url.startswith("http://[::1]:")
        assert json.loads(urllib.request.urlopen(server.url + "healthz", timeout=10).read())["ok"] is True
        idle = socket.create_connection(("::1", server.port), timeout=10)
        assert idle.recv(1) == b""  # closed by the server after the idle timeout, not held forever
        idle.close()
        gone = socket.create_connection(("::1", server.port))  # a viewer that leaves mid-reply
        gone.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        gone.close()
        assert json.loads(urllib.request.urlopen(server.url + "healthz", timeout=10).read())["ok"] is True
    finally:
        server.close()
    assert "Traceback" not in capsys.readouterr().err  # a viewer leaving is not an error


# --- the live page's endpoints (feredge run --serve) ------------------------------------------------


def _get(url: str, timeout: float = 10):
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return reply.status, reply.headers, reply.read()


def _feed(server, frames: int, image=None, hz: float = 100.0, start: int = 0) -> None:
    """The pipeline's side: `frames` results at about `hz` a second."""
    image = np.zeros((240, 320, 3), np.uint8) if image is None else image
    for i in range(start, start + frames):
        server.write(_result(i, image))
        time.sleep(1 / hz)


def _read_events(server, count: int, out: list, errors: list) -> None:
    """Read `count` server-sent events (data: lines) from /events with http.client."""
    try:
        conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
        conn.request("GET", "/events")
        response = conn.getresponse()
        assert response.status == 200 and response.getheader("Content-Type") == "text/event-stream"
        while len(out) < count:
            line = response.fp.readline()
            assert line, "the event stream ended"
            if line.startswith(b"data: "):
                out.append((time.monotonic(), json.loads(line[6:])))
        conn.close()
    except Exception as exc:  # reported to the test thread
        errors.append(exc)


def test_state_json_is_the_frames_own_record_with_fps_and_the_run_info():
    info = {"backend": "ai-edge-litert 2.3.0", "artifact": "tflite-fp32", "precision": "fp32", "threads": 2,
            "labels": list(LABELS)}
    with MjpegServer("127.0.0.1", 0, run_info=info) as server:
        state = json.loads(_get(server.url + "state.json")[2])
        assert state["result"] is None and state["frames"] == 0 and state["run"] == info
        _feed(server, 80, hz=100)
        status, headers, body = _get(server.url + "state.json")
        state = json.loads(body)
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert state["result"] == json.loads(json.dumps(_result(79).to_dict()))  # what the JSON lines print
    assert state["frames"] == 80 and state["image"] == [320, 240] and state["run"] == info
    assert 20 < state["fps"] < 150 and state["stage_ms"]["infer"] == pytest.approx(1.0)  # ~100 written a second
    assert state["stream"] == {"quality": 80, "max_fps": 15.0}


def test_events_stream_the_state_at_a_capped_rate_and_pages_that_leave_free_their_thread():
    with MjpegServer("127.0.0.1", 0, run_info={"labels": list(LABELS)}) as server:
        got, errors = [], []
        reader = threading.Thread(target=_read_events, args=(server, 6, got, errors))
        reader.start()
        _feed(server, 150, hz=200)  # faster than EVENTS_HZ: the page gets at most 10 a second
        reader.join(timeout=10)
        assert not errors, errors
        frames = [state["result"]["frame"] for _, state in got if state["result"]]
        assert frames == sorted(frames) and len(set(frames)) == len(frames) and len(frames) >= 4
        gaps = [b[0] - a[0] for a, b in zip(got[1:], got[2:])]
        assert min(gaps) > 0.06, gaps  # 1 / EVENTS_HZ, less some scheduling slack
        assert got[-1][1]["result"]["faces"][0]["label"] == "happy" and got[-1][1]["run"]["labels"] == list(LABELS)
        deadline = time.monotonic() + 5  # the page left: its thread ends at the next write to it
        while server.listeners and time.monotonic() < deadline:
            _feed(server, 5, start=1000)
        assert server.listeners == 0


def test_snapshot_is_the_current_annotated_frame():
    with MjpegServer("127.0.0.1", 0) as server:
        with pytest.raises(urllib.error.HTTPError) as info:
            _get(server.url + "snapshot.jpg")
        assert info.value.code == 503  # no frame yet
        image = np.full((240, 320, 3), 30, np.uint8)
        server.write(_result(0, image))
        image = annotate(np.full((240, 320, 3), 200, np.uint8), _result(7), LABELS, fps=9.0)
        server.write(_result(7, image))
        status, headers, body = _get(server.url + "snapshot.jpg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and "feredge-frame-7.jpg" in headers[
        "Content-Disposition"]
    decoded = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (240, 320, 3) and abs(float(decoded.mean()) - float(image.mean())) < 3


def test_a_48_pixel_frame_is_drawn_enlarged_so_its_overlay_can_be_read():
    from feredge.edge.render import ENLARGE_BELOW, ENLARGE_TO, enlargement

    assert enlargement(48, 48) == 8 and enlargement(480, 640) == 1 and enlargement(120, 160) == 3
    assert enlargement(ENLARGE_BELOW, 400) == 1 and all(
        enlargement(s, s) * s >= ENLARGE_TO for s in range(1, ENLARGE_BELOW))
    face = np.full((48, 48), 90, np.uint8)
    p = np.array([0.05, 0.0, 0.1, 0.7, 0.1, 0.05, 0.0], np.float32)
    result = FrameResult(0, 0.0, [FaceResult((0, 0, 48, 48), "happy", p, "happy", p, 1)], {}, None)
    out = annotate(face, result, LABELS, fps=30.0)
    assert out.shape == (384, 384, 3) and face.shape == (48, 48)  # the input is untouched
    happy = np.abs(out.astype(int) - [40, 200, 240]).sum(axis=2) < 30  # the label's colour
    assert happy[-40:].sum() > 500  # its tag: inside the frame, at the foot of a face that fills it
    assert happy[:-40].sum() > 1000  # and its bar among the others


def test_the_stream_is_encoded_once_for_all_viewers_at_most_serve_fps_times_a_second():
    with MjpegServer("127.0.0.1", 0, max_fps=5) as server:
        _feed(server, 50)
        assert server.encoded == 0  # nobody watches: nothing is encoded
        parts, errors = [[], [], []], []
        viewers = [threading.Thread(target=_read_parts, args=(server.url, 4, parts[i], errors)) for i in range(3)]
        for v in viewers:
            v.start()
        started = time.monotonic()
        frame = 100
        while any(v.is_alive() for v in viewers) and time.monotonic() - started < 20:
            _feed(server, 10, start=frame)
            frame += 10
        elapsed = time.monotonic() - started
        for v in viewers:
            v.join(timeout=5)
        assert not errors, errors
        assert all(len(got) == 4 for got in parts)
        # 4 parts each for 3 viewers from about 4 encodes (5 a second), not 12, nor one per frame written
        assert server.encoded <= 5 * elapsed + 2 and server.encoded < (frame - 100) / 3, (server.encoded, elapsed)
    with MjpegServer("127.0.0.1", 0, max_fps=0) as uncapped:  # 0: every frame, while watched
        got: list = []
        viewer = threading.Thread(target=_read_parts, args=(uncapped.url, 20, got, errors))
        viewer.start()
        for i in range(400):
            if not viewer.is_alive():
                break
            _feed(uncapped, 1, hz=50, start=i)
        viewer.join(timeout=5)
        assert not errors and len(got) == 20 and uncapped.encoded >= 20


def test_a_stalled_viewer_never_slows_the_pipeline_and_close_ends_every_thread():
    import socket

    before = threading.active_count()
    server = MjpegServer("127.0.0.1", 0, max_fps=0)
    stalled = socket.create_connection((server.host, server.port), timeout=10)  # asks, then never reads
    stalled.sendall(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
    listener = socket.create_connection((server.host, server.port), timeout=10)
    listener.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
    big = np.random.default_rng(0).integers(0, 255, (720, 1280, 3), dtype=np.uint8)  # ~1 MB JPEGs: buffers fill
    slowest, i, started = 0.0, 0, time.monotonic()
    while time.monotonic() - started < 2:  # ~30 encodes of ~1 MB: more than the socket buffers hold
        began = time.perf_counter()
        server.write(_result(i, big))
        slowest = max(slowest, time.perf_counter() - began)
        i += 1
        time.sleep(0.005)
    assert slowest < 0.05, slowest  # write() hands over a reference; it never waits on a viewer
    assert server.clients == 1 and server.listeners == 1 and server.encoded > 0
    started = time.perf_counter()
    server.close()
    assert time.perf_counter() - started < 5  # the stalled send is cut, not waited out (IDLE_TIMEOUT_S)
    assert server.clients == 0 and server.listeners == 0
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == before, [t.name for t in threading.enumerate()]
    stalled.close()
    listener.close()


def test_the_page_loads_nothing_from_other_sites():
    import re

    from feredge.edge.live_page import render_page

    page = render_page("<script>x</script>").decode()
    assert "<script>x</script>" not in page and "&lt;script&gt;x" in page  # the title is escaped
    assert '<img src="/stream"' in page and 'EventSource("/events")' in page and "/snapshot.jpg" in page
    assert not re.search(r"https?:|@import|<link|integrity=", page, re.IGNORECASE) and "url(" not in page
    for url in re.findall(r"""(?:src|href|action)\s*=\s*["']([^"']*)""", page, re.IGNORECASE):
        assert url.startswith("/") and not url.startswith("//"), url
    for url in re.findall(r"""(?:fetch|EventSource)\(\s*["']([^"']*)""", page):
        assert url.startswith("/") and not url.startswith("//"), url
    with MjpegServer("127.0.0.1", 0) as server:
        status, headers, body = _get(server.url)
    assert status == 200 and headers["Content-Type"].startswith("text/html") and b"<canvas" in body


def test_serve_options_are_checked_in_one_line():
    from feredge.edge.live_server import check_serve_options

    check_serve_options(80, 15)
    check_serve_options(1, 0)
    for quality, fps, flag in ((0, 15, "--serve-quality"), (101, 15, "--serve-quality"), (80, -1, "--serve-fps"),
                               (80, float("nan"), "--serve-fps")):
        with pytest.raises(ValueError, match=flag):
            check_serve_options(quality, fps)
    with pytest.raises(ValueError, match="--serve-fps"):
        MjpegServer("127.0.0.1", 0, max_fps=-2)


def test_a_tapped_source_lets_the_server_draw_only_what_it_sends_enlarged_when_small():
    from feredge.edge.sources import Frame, FrameSource

    class Faces(FrameSource):
        name, fps = "faces", None

        def __init__(self):
            self.count = 0

        def read(self):
            self.count += 1
            return Frame(np.full((48, 48), 90, np.uint8), None, 0.0, self.count - 1)

    with pytest.raises(ValueError, match="labels"):
        MjpegServer("127.0.0.1", 0).tap(Faces())
    with MjpegServer("127.0.0.1", 0, run_info={"labels": list(LABELS)}) as server:
        assert server.needs_image
        source = server.tap(Faces())
        assert not server.needs_image and source.name == "faces"  # the pipeline will draw nothing for it
        for _ in range(3):
            frame = source.read()
            p = np.array([0.05, 0.0, 0.1, 0.7, 0.1, 0.05, 0.0], np.float32)
            server.write(FrameResult(frame.index, 0.0, [FaceResult((0, 0, 48, 48), "happy", p, "happy", p, 1)],
                                     {"draw": 0.0}, None, None))
        state = json.loads(_get(server.url + "state.json")[2])
        jpeg = _get(server.url + "snapshot.jpg")[2]
        assert server.encoded == 0  # nobody watched: nothing was drawn or encoded
    assert state["image"] == [384, 384] and state["result"]["frame"] == 2
    picture = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert picture.shape == (384, 384, 3) and (np.abs(picture.astype(int) - [40, 200, 240]).sum(axis=2) < 40).sum() > 500
