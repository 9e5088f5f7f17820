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

from feredge.edge.outputs import JsonLinesSink, MjpegServer, Recorder, display_problem, parse_host_port
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

    import feredge.edge.outputs as edge_outputs

    monkeypatch.setattr(edge_outputs, "IDLE_TIMEOUT_S", 0.5)
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
