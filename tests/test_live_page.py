"""The --serve page in a real browser: headless Chromium loads it from `feredge run --serve` on a test
video, and the face cards and the picture it shows are checked against the run's own JSON lines.

Chromium is driven over the DevTools protocol on a pipe (--remote-debugging-pipe: no websocket, no
driver, no new Python package), because the page never finishes loading: its MJPEG and event streams
stay open, so --dump-dom and --virtual-time-budget either dump at the first frame or wait forever.
Skipped, with the reason, where no Chromium is installed (Debian: apt-get install chromium).
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from feredge.edge.paths import DEFAULT_BUNDLE
from runtime_support import REPO

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# waits in the page until a face card and a decoded picture are there, then reports what it shows
SHOWN = """new Promise((resolve, reject) => {
  const started = Date.now();
  (function look() {
    const cards = [...document.querySelectorAll("#faces .card")].map((c) => ({...c.dataset}));
    const img = document.getElementById("view");
    if (cards.length && img.naturalWidth > 0 && Number(img.dataset.naturalWidth) > 0
        && document.getElementById("info").children.length) {
      resolve({cards, width: img.naturalWidth, height: img.naturalHeight,
               imgWidthAttr: img.dataset.naturalWidth, html: document.documentElement.outerHTML});
    } else if (Date.now() - started > %d) {
      reject(new Error("no face card or picture after %d ms: " + document.getElementById("faces").innerText));
    } else {
      setTimeout(look, 100);
    }
  })();
})"""


def browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


class Chromium:
    """Headless Chromium driven over the DevTools protocol on fds 3 (commands in) and 4 (replies out)."""

    def __init__(self, binary: str, width: int = 1280, height: int = 800):
        self._profile = tempfile.mkdtemp(prefix="feredge-chromium-")
        to_browser, from_us = os.pipe()
        to_us, from_browser = os.pipe()
        # above any fd the child might be handed, so moving them to 3 and 4 clobbers nothing
        keep = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in (to_browser, from_browser)]
        os.close(to_browser)
        os.close(from_browser)

        def onto_3_and_4():
            for fd, target in zip(keep, (3, 4)):
                os.dup2(fd, target)
                os.set_inheritable(target, True)

        self.proc = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--hide-scrollbars", f"--window-size={width},{height}", f"--user-data-dir={self._profile}",
             "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=False,
            preexec_fn=onto_3_and_4)
        for fd in keep:
            os.close(fd)
        self._out, self._in = from_us, to_us
        self._buffer, self._id = b"", 0
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def call(self, method: str, session: str | None = None, timeout: float = 30.0, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:  # events arrive between the replies: skip them
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def _read(self, deadline: float) -> dict:
        import select

        while b"\0" not in self._buffer:
            if not select.select([self._in], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._in, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def page(self, method: str, timeout: float = 30.0, **params) -> dict:
        return self.call(method, self.session, timeout, **params)

    def evaluate(self, expression: str, timeout: float = 30.0):
        reply = self.page("Runtime.evaluate", timeout, expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in reply:
            raise AssertionError(reply["exceptionDetails"].get("exception", {}).get("description", reply))
        return reply["result"]["value"]

    def screenshot(self, path: Path) -> None:
        Path(path).write_bytes(base64.b64decode(self.page("Page.captureScreenshot", format="png")["data"]))

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._out)
        os.close(self._in)
        shutil.rmtree(self._profile, ignore_errors=True)


def _restore_sigint():
    # CI runs the suite in the background (`.ci/run &`), where SIGINT is ignored, and an ignored
    # signal is inherited: the run would never see the Ctrl-C this test sends. Give it a terminal's.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_run(video: Path, jsonl: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """`feredge run --serve` on the video, JSON lines to a file; returns it and the page's URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "feredge.edge.cli", "run", "--bundle", str(DEFAULT_BUNDLE), "--source", str(video),
         "--headless", "--loop", "--output", str(jsonl), "--serve", "127.0.0.1:0"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL, stderr=log.open("w"),
        preexec_fn=_restore_sigint)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        for line in log.read_text().splitlines():
            if "serving the live view at " in line:
                return proc, line.split(" at ")[-1].strip()
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"feredge run did not start serving: {log.read_text()[-2000:]}")


def show(url: str, screenshot: Path | None = None, settle_s: float = 0.0, binary: str | None = None) -> dict:
    """What the page shows once it has a face card and a picture (after `settle_s` more, for the chart)."""
    chrome = Chromium(binary or browser())
    try:
        chrome.page("Page.navigate", url=url)
        shown = chrome.evaluate(SHOWN % (15000, 15000), timeout=30)
        if settle_s:
            time.sleep(settle_s)
            shown = chrome.evaluate(SHOWN % (5000, 5000), timeout=30)
        if screenshot is not None:
            chrome.screenshot(screenshot)
        return shown
    finally:
        chrome.close()


@pytest.fixture(scope="module")
def held_face_video(tmp_path_factory):
    """One face held for the whole 6 s video: its label settles, and every frame has a face to card."""
    from feredge.edge.testvideo import make_test_video

    path = tmp_path_factory.mktemp("live") / "held.mp4"
    make_test_video(path, 1, seconds=6.0, fps=15.0, seed=1, hold_s=10.0)
    return path


PAUSE = """new Promise((resolve, reject) => {
  document.getElementById("pause").click();
  const started = Date.now();
  (function look() {
    const img = document.getElementById("view"), save = document.getElementById("save");
    if (img.src.startsWith("blob:") && img.complete && img.naturalWidth > 0) {
      resolve({width: img.naturalWidth, save: save.href, download: save.download,
               status: document.getElementById("status").textContent});
    } else if (Date.now() - started > 10000) {
      reject(new Error("pause froze no picture: " + img.src));
    } else {
      setTimeout(look, 50);
    }
  })();
})"""


def _health(url: str) -> dict:
    import urllib.request

    return json.loads(urllib.request.urlopen(url + "healthz", timeout=10).read())


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(browser() is None, reason=f"no browser: none of {', '.join(BROWSERS)} is on PATH "
                                              "(Debian: apt-get install chromium)")
def test_the_page_shows_cards_that_match_the_json_lines_a_picture_and_pauses(held_face_video, tmp_path):
    jsonl, shot = tmp_path / "run.jsonl", tmp_path / "page.png"
    proc, url = start_run(held_face_video, jsonl, tmp_path / "run.log")
    chrome = None
    try:
        chrome = Chromium(browser())
        chrome.page("Page.navigate", url=url)
        shown = chrome.evaluate(SHOWN % (15000, 15000), timeout=30)
        chrome.screenshot(shot)
        assert _health(url)["viewers"] == 1
        paused = chrome.evaluate(PAUSE, timeout=30)
        deadline = time.monotonic() + 10  # the frozen page let go of the stream: nothing is encoded for it
        while _health(url)["viewers"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _health(url)["viewers"] == 0
    finally:
        if chrome is not None:
            chrome.close()
        _stop(proc)
    assert proc.returncode == 130
    lines = {line["frame"]: line for line in map(json.loads, jsonl.read_text().splitlines()) if line}
    assert shown["width"] >= 160 and shown["height"] >= 120, shown  # the stream decoded in the browser
    assert int(shown["imgWidthAttr"]) == shown["width"]
    for card in shown["cards"]:  # each card is the run's own record of that frame, as the JSON lines say
        faces = {face["track"]: face for face in lines[int(card["frame"])]["faces"]}
        face = faces[int(card["track"])]
        assert (card["label"], card["smoothed"]) == (face["label"], face["smoothed_label"])
    artifact = re.search(r"backend: (\S+) \(", (tmp_path / "run.log").read_text()).group(1)
    assert f"<dd>{artifact} (" in shown["html"]  # the run facts panel names what the run logged
    assert paused["width"] == shown["width"] and paused["status"] == "paused"
    assert paused["save"].startswith("blob:") and paused["download"].startswith("feredge-frame-")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
