"""`feredge run` and `feredge info` as a user runs them, in subprocesses."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import cv2
import numpy as np
import pytest

from feredge.edge.paths import DEFAULT_BUNDLE
from runtime_support import REPO, build_test_bundle, build_test_video, feredge

FACE_FIELDS = {"box", "label", "probabilities", "smoothed_label", "track", "confidence"}


@pytest.fixture(scope="module")
def bundle(bundle_cache):
    return build_test_bundle(bundle_cache)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return build_test_video(tmp_path_factory.mktemp("videos"), 3)


def _json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def test_headless_json_lines_from_a_video(bundle, video):
    path, truth = video
    result = feredge("run", "--bundle", bundle, "--source", path, "--headless", "--max-frames", 10)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = _json_lines(result.stdout)
    assert [line["frame"] for line in lines] == list(range(10))
    for line in lines:
        assert set(line) == {"frame", "timestamp", "faces", "stage_ms"}
        assert set(line["stage_ms"]) == {"capture", "detect", "preprocess", "infer", "smooth", "draw"}
        for face in line["faces"]:
            assert FACE_FIELDS <= set(face) and len(face["probabilities"]) == 7 and len(face["box"]) == 4
    assert sum(len(line["faces"]) for line in lines) >= 15  # three faces a frame, most of them found
    assert lines[3]["timestamp"] == pytest.approx(0.3, abs=1e-3)
    assert "chosen by" in result.stderr  # which backend ran, and why


def test_whole_video_to_a_file_and_a_recording(bundle, video, tmp_path):
    path, truth = video
    out, rec = tmp_path / "out.jsonl", tmp_path / "rec.mp4"
    result = feredge("run", "--bundle", bundle, "--source", path, "--headless", "--output", out, "--record", rec,
                     "--backend", "onnx", "--detect-every", 2, "--smooth", "window:3")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout == ""  # JSON went to the file
    assert len(out.read_text().splitlines()) == len(truth["frames"])  # the video's end is a clean end
    cap = cv2.VideoCapture(str(rec))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == len(truth["frames"])
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (640, 480)
    assert "onnx-fp32" in result.stderr and "end of stream" in result.stderr


def test_default_source_is_the_shipped_sample_with_whole_frame_faces(bundle):
    result = feredge("run", "--bundle", bundle, "--headless", "--max-frames", 5, "--backend", "openvino")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = _json_lines(result.stdout)
    assert len(lines) == 5 and all(line["source"].startswith("angry/") for line in lines)
    assert all(line["faces"][0]["box"] == [0, 0, 48, 48] for line in lines)
    assert "smoothing: none" in result.stderr  # consecutive images are different people


def test_stats_and_that_tensorflow_is_never_imported(bundle, video):
    path, _ = video
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "feredge.edge.cli", "run", "--bundle", str(bundle),
                             "--source", str(path), "--headless", "--max-frames", "3", "--stats"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    modules = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    imported = {name.split(".")[0] for name in modules}
    assert "feredge.edge.pipeline" in modules and "cv2" in imported
    # the device runtime is the bottom layer: nothing of the workstation packages is loaded either
    assert not {name for name in modules if name.split(".")[:2] in (["feredge", "models"], ["feredge", "export"],
                                                                    ["feredge", "benchmarks"])}
    assert not imported & {"tensorflow", "tf_keras", "keras", "tensorflow_model_optimization", "tf2onnx"}
    assert "time to first result" in result.stderr and "peak memory" in result.stderr
    assert len(_json_lines(result.stdout)) == 3


@pytest.mark.parametrize("args, needles", [
    (["--bundle", "/no/such/bundle"], ["/no/such/bundle", "no such bundle"]),
    (["--source", "/no/such/video.mp4"], ["video.mp4", "no such file"]),
    (["--source", "/dev/video99"], ["/dev/video99", "camera"]),
    (["--backend", "tensorrt"], ["unknown backend"]),
    (["--precision", "fp16"], ["no fp16 artifact"]),
    (["--smooth", "kalman"], ["kalman"]),
    (["--detector", "yunet:/no/such.onnx"], ["/no/such.onnx", "YuNet model"]),
    (["--detect-scale", "2"], ["--detect-scale"]),
    (["--serve", "nonsense"], ["--serve"]),
    (["--source", "gst:videotestsrc ! appsink"], ["GStreamer"]),
    (["--source", "picamera"], ["picamera2"]),
])
def test_bad_input_is_one_line_and_exit_2(bundle, args, needles):
    if "--bundle" not in args:
        args = ["--bundle", bundle, *args]
    result = feredge("run", "--headless", "--max-frames", 2, *args)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    errors = [line for line in result.stderr.splitlines() if line.startswith("feredge run: error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


def test_no_display_without_headless_says_what_to_do(bundle):
    from feredge.edge.outputs import display_problem

    if display_problem() is None:
        pytest.skip("this machine has a display")
    result = feredge("run", "--bundle", bundle, "--max-frames", 2)
    assert result.returncode == 2 and "--headless" in result.stderr and "--serve" in result.stderr


def test_no_arguments_but_headless_runs_the_shipped_bundle_on_the_sample():
    if not (DEFAULT_BUNDLE / "manifest.json").is_file():
        pytest.skip("no shipped bundle in this checkout")
    result = feredge("run", "--headless", "--max-frames", 3)
    assert result.returncode == 0, result.stderr[-2000:]
    assert [line["frame"] for line in _json_lines(result.stdout)] == [0, 1, 2]


def test_missing_shipped_bundle_points_to_export(monkeypatch, tmp_path, capsys):
    from feredge.edge import paths
    from feredge.edge.cli import main

    for name in ("edge", "nano"):
        monkeypatch.setitem(paths.SHIPPED_RUNS, name, tmp_path / name)
        args = ["run", "--headless", "--max-frames", "1"] + (["--bundle", name] if name != "edge" else [])
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"feredge export --model {name}" in err[0] and str(tmp_path / name / "bundle") in err[0]
    (tmp_path / "edge" / "bundle").mkdir(parents=True)  # there, but not a bundle
    assert main(["run", "--headless", "--max-frames", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "feredge export" in err[0] and str(tmp_path / "edge" / "bundle") in err[0]


def test_camera_lost_after_retries_is_exit_2(bundle, monkeypatch, capsys):
    """In process, with a camera that delivers two frames and then is gone for good."""
    import feredge.edge.sources as edge_sources
    from feredge.edge.cli import main

    class Gone(edge_sources.Device):
        reads = 0

        def read(self):
            Gone.reads += 1
            return (np.zeros((48, 48, 3), np.uint8), None, None) if Gone.reads <= 2 else None

    def fake_open_source(text, **kwargs):
        opened = []

        def opener():
            if opened:
                raise OSError("camera 0: OpenCV cannot open it")
            opened.append(1)
            return Gone()

        return edge_sources.CaptureSource("camera 0", opener, retries=2, backoff=0.01)

    monkeypatch.setattr(edge_sources, "open_source", fake_open_source)
    code = main(["run", "--bundle", str(bundle), "--source", "0", "--headless", "--detector", "none"])
    captured = capsys.readouterr()
    assert code == 2
    assert "feredge run: error: camera 0: no frames after 2 reconnection attempts" in captured.err
    assert len(_json_lines(captured.out)) == 2


def _restore_sigint():
    # A shell running pytest in the background (`pytest &`) ignores SIGINT, and an ignored signal is
    # inherited: the run under test would never see Ctrl-C. Give it the disposition a terminal gives.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(bundle, *args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "feredge.edge.cli", "run", "--bundle", str(bundle), *map(str, args)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_restore_sigint)


def _wait_for(proc, needle: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return line
    proc.kill()
    raise AssertionError(f"{needle!r} not seen; stderr: {''.join(seen)[-2000:]}")


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_ends_cleanly_and_keeps_the_recording(bundle, video, tmp_path, sig, code):
    path, _ = video
    rec = tmp_path / "rec.mp4"
    proc = _start(bundle, "--source", path, "--loop", "--headless", "--output", tmp_path / "o.jsonl",
                  "--record", rec, "--detector", "none", "--stats")
    try:
        _wait_for(proc, "source:")
        out, deadline = tmp_path / "o.jsonl", time.monotonic() + 60
        while time.monotonic() < deadline and not (out.is_file() and len(out.read_text().splitlines()) >= 5):
            time.sleep(0.1)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code, err[-2000:]
    assert "Traceback" not in err and "recording kept" in err
    frames = int(cv2.VideoCapture(str(rec)).get(cv2.CAP_PROP_FRAME_COUNT))
    assert frames >= 5
    # --stats reports the run that was interrupted, not only the backend and memory
    counted = re.search(r"stats: (\d+) frames in [\d.]+ s = [\d.]+ FPS; mean ms per frame: capture", err)
    assert counted and int(counted.group(1)) >= 5, err[-2000:]
    assert f"ended by {'interrupted' if code == 130 else 'terminated'}" in err
    assert re.search(r"resident at start [\d.]+ MB(, after 100 frames [\d.]+ MB)?, at end [\d.]+ MB", err)
    assert "open files" in err and "time to first result" in err


def test_duration_ends_a_soak_with_its_summary(bundle, video):
    path, _ = video
    result = feredge("run", "--bundle", bundle, "--source", path, "--loop", "--headless", "--output", os.devnull,
                     "--detector", "none", "--stats", "--duration", "2s")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ended by --duration 2s" in result.stderr
    seconds = float(re.search(r"frames in ([\d.]+) s", result.stderr).group(1))
    assert 1.9 <= seconds < 10


def test_serve_lets_a_browser_watch_a_headless_run(bundle, video):
    path, _ = video
    proc = _start(bundle, "--source", path, "--loop", "--serve", "127.0.0.1:0", "--detector", "none", "--fps", 10)
    try:
        line = _wait_for(proc, "serving the live view at")
        url = line.strip().split(" at ")[-1]
        assert url.startswith("http://127.0.0.1:")
        assert b'src="/stream"' in urllib.request.urlopen(url, timeout=30).read()
        with urllib.request.urlopen(url + "stream", timeout=30) as stream:
            head = stream.read(4096)
        assert b"Content-Type: image/jpeg" in head and b"\xff\xd8" in head
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130


def test_info_reports_runtimes_and_opencv_build():
    result = feredge("info", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    info = json.loads(result.stdout)
    assert info["device"]["machine"] and info["device"]["cores"] >= 1
    assert set(info["formats"]) >= {"tflite"}
    assert {"gui", "gstreamer", "v4l2", "ffmpeg", "haar_cascades"} <= set(info["opencv"])
    from feredge.edge.bundle import Bundle

    listed = {m["name"]: m for m in info["models"]}
    assert set(listed) == {"edge", "nano"} and listed["edge"]["default"] and not listed["nano"]["default"]
    for name, entry in listed.items():
        manifest = Bundle.load(entry["bundle"]).manifest
        assert entry["accuracy"] == manifest["verification_data"]["keras_accuracy"]
        assert entry["parameters"] == manifest["model"]["parameters"] and entry["run_picks"] in entry["artifacts"]
    assert listed["nano"]["macs"] < listed["edge"]["macs"]
    text = feredge("info")
    assert text.returncode == 0 and "GStreamer" in text.stdout and "runtimes" in text.stdout
    assert re.search(r"^models +edge \(default\): 613,639 parameters, .*run picks \S+ here$", text.stdout, re.M)


def test_info_reports_a_missing_or_broken_shipped_bundle_and_goes_on(tmp_path, monkeypatch):
    from feredge.edge import info_cli, paths

    broken = tmp_path / "broken" / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, broken, ignore=shutil.ignore_patterns("*.tflite", "*.onnx", "openvino"))
    (broken / "manifest.json").write_text('{"schema": 1, "artifacts": [')  # truncated by a failed copy
    monkeypatch.setattr(paths, "SHIPPED_RUNS", {"edge": DEFAULT_BUNDLE.parent, "gone": tmp_path / "gone",
                                                "broken": tmp_path / "broken"})
    models = {m["name"]: m for m in info_cli.shipped_models()}
    assert "problem" not in models["edge"] and models["edge"]["run_picks"]
    assert "no such bundle directory" in models["gone"]["problem"]
    assert "not valid JSON" in models["broken"]["problem"] and "manifest.json" in models["broken"]["problem"]
    lines = info_cli._model_lines(list(models.values()))
    assert len(lines) == 3 and lines[2].startswith("           broken: ")


def test_run_says_in_one_line_when_this_cpu_is_not_the_one_that_verified_the_bundle(bundle, tmp_path):
    from feredge.edge.device import host_record

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    (copy / "recommendation.json").unlink(missing_ok=True)  # the thread count must come from the target
    manifest = json.loads((copy / "manifest.json").read_text())
    assert manifest["verified_on"]["isa"] == host_record()["isa"]  # built here: no note expected
    same = feredge("run", "--bundle", copy, "--headless", "--max-frames", 1)
    assert same.returncode == 0 and "verified on" not in same.stderr, same.stderr[-2000:]
    manifest["verified_on"] = {"machine": "aarch64", "cpu": "Cortex-A76", "isa": ["asimd", "asimddp"]}
    manifest["target"] = {**manifest["target"], "threads": 64}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    other = feredge("run", "--bundle", copy, "--headless", "--max-frames", 1)
    assert other.returncode == 0, other.stderr[-2000:]
    notes = [line for line in other.stderr.splitlines() if "verified on Cortex-A76 (aarch64; asimd, asimddp)" in line]
    assert len(notes) == 1 and "feredge bench" in notes[0]
    usable = len(os.sched_getaffinity(0))
    assert f"threads {usable};" in other.stderr  # the target's 64, capped at this machine's cores


def test_videos_are_tracked_and_image_folders_are_not(bundle, video, tmp_path):
    """Consecutive images are different pictures: each is searched; a video is tracked between detections."""
    from feredge.benchmarks.detectors import make_scenes

    path, _ = video
    tracked = feredge("run", "--bundle", bundle, "--source", path, "--headless", "--max-frames", 5)
    assert tracked.returncode == 0, tracked.stderr[-2000:]
    assert "detector: auto (yunet; images up to 128 px are whole faces) every 30 frames, tracked between" \
        in tracked.stderr
    folder = tmp_path / "photos"
    folder.mkdir()
    scenes, _ = make_scenes(per_bin=1, empty=0, seed=4)
    for i, (frame, _) in enumerate(scenes[:3]):
        cv2.imwrite(str(folder / f"{i}.png"), frame)
    searched = feredge("run", "--bundle", bundle, "--source", folder, "--headless")
    assert searched.returncode == 0, searched.stderr[-2000:]
    assert "detector: auto (yunet; images up to 128 px are whole faces);" in searched.stderr
    assert len(_json_lines(searched.stdout)) == 3
