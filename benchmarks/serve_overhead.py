"""What watching costs the device: `feredge run` FPS with --serve and 0, 1, 5 viewers, and without --serve.

Two measurements, both on `feredge run --source VIDEO --loop --headless --output /dev/null`:

- viewers (paired, in one process): one `--serve 127.0.0.1:0` run per repeat, in which viewers come
  and go in time slices (0, 1, 5 viewers, ...; the order rotated each cycle). A slice's FPS is the
  server's own frame counter (/healthz) over the slice, after a settling second; its CPU is the
  process's user + system time (/proc). Each slice is compared with the 0-viewer slice of its own
  cycle, seconds apart, so the drift of two shared cores cancels out instead of swamping the cost.
- --serve itself (across processes): whole runs with and without `--serve` and no viewer,
  interleaved, FPS from their --stats line.

A viewer is what the live page opens: one connection reading /stream (MJPEG) and one reading /events
(server-sent events), from threads of this process that only read the bytes, as a browser on another
machine costs the device nothing but the sending.

    python -m feredge.benchmarks.serve_overhead --video one.mp4 --viewers 0,1,5 --out DIR
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from feredge.edge.device import describe_host, host_record

NO_SERVE = "no --serve"
STATS_FPS = re.compile(r"stats: (\d+) frames in ([\d.]+) s = ([\d.]+) FPS")


class Viewer:
    """A page's two connections, /stream and /events, each read in a thread until stop() or the run ends."""

    def __init__(self, host: str, port: int):
        self.parts = self.events = 0
        self._socks: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._read, args=(host, port, path), daemon=True)
                         for path in ("/stream", "/events")]
        for thread in self._threads:
            thread.start()

    def _read(self, host: str, port: int, path: str) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        try:
            conn.request("GET", path)
            self._socks.append(conn.sock)
            reply = conn.getresponse()
            while line := reply.fp.readline():
                if path == "/events":
                    self.events += line.startswith(b"data: ")
                elif line.lower().startswith(b"content-length:"):
                    reply.fp.readline()  # the blank line before the JPEG
                    reply.fp.read(int(line.split(b":")[1]))
                    self.parts += 1
        except (OSError, ValueError, http.client.HTTPException):
            pass  # stopped, or the run ended
        finally:
            conn.close()

    def stop(self) -> None:
        for sock in list(self._socks):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self._threads:
            thread.join(10.0)


def _command(video: Path, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "feredge.edge.cli", "run", "--source", str(video), "--loop", "--headless",
            "--output", os.devnull, *extra]


def _wait_for_url(proc: subprocess.Popen, log: Path, timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        match = re.search(r"serving the live view at (\S+)", log.read_text())
        if match:
            return match.group(1)
        time.sleep(0.05)
    raise RuntimeError(f"feredge run did not start serving: {log.read_text()[-1500:]}")


def _frames(host: str, port: int) -> int:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", "/healthz")
        return json.loads(conn.getresponse().read())["frames"]
    finally:
        conn.close()


def _cpu_s(pid: int) -> tuple[float, float]:
    """User + system seconds so far of a process's main thread (the pipeline's) and of all its other
    threads together (the server's, the runtimes' workers), from Linux /proc."""
    main = others = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # a thread that just ended
            continue
        seconds = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        if task.name == str(pid):
            main += seconds
        else:
            others += seconds
    return main, others


def sliced_run(video: Path, counts: list[int], cycles: int, slice_s: float, settle_s: float, work: Path,
               extra: list[str], log=print) -> list[dict]:
    """One served run in which `counts` viewers take turns, `cycles` times: one record per slice."""
    run_log = work / f"sliced-{time.monotonic_ns()}.log"
    seconds = cycles * len(counts) * (slice_s + settle_s) + 60
    with run_log.open("w") as err:
        proc = subprocess.Popen(_command(video, [*extra, "--serve", "127.0.0.1:0", "--duration", f"{seconds}s"]),
                                stdout=subprocess.DEVNULL, stderr=err)
    slices = []
    try:
        host, port = _wait_for_url(proc, run_log).split("//")[1].rstrip("/").rsplit(":", 1)
        port = int(port)
        time.sleep(2 * settle_s + 2)  # past the model's and the detector's first frames
        for cycle in range(cycles):
            shift = cycle % len(counts)
            for n in counts[shift:] + counts[:shift]:
                viewers = [Viewer(host, port) for _ in range(n)]
                time.sleep(settle_s)
                frames0, cpu0, t0 = _frames(host, port), _cpu_s(proc.pid), time.monotonic()
                parts0 = [v.parts for v in viewers]
                time.sleep(slice_s)
                frames1, cpu1, t1 = _frames(host, port), _cpu_s(proc.pid), time.monotonic()
                parts = [(v.parts - p) / (t1 - t0) for v, p in zip(viewers, parts0)]
                for viewer in viewers:
                    viewer.stop()
                wall, frames = t1 - t0, frames1 - frames0
                record = {"cycle": cycle, "viewers": n, "fps": round(frames / wall, 2),
                          "pipeline_cpu_ms_per_frame": round(1000 * (cpu1[0] - cpu0[0]) / max(frames, 1), 3),
                          "other_threads_cpu_per_s": round((cpu1[1] - cpu0[1]) / wall, 3),
                          "stream_fps_per_viewer": round(statistics.median(parts), 2) if parts else None}
                slices.append(record)
                log(f"cycle {cycle + 1}/{cycles}: {n} viewer(s): {record['fps']:.1f} FPS, pipeline thread "
                    f"{record['pipeline_cpu_ms_per_frame']:.2f} ms CPU a frame, other threads "
                    f"{record['other_threads_cpu_per_s']:.3f} s/s")
    finally:  # SIGTERM: a SIGINT would be ignored when this runs in the background (`cmd &`)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    run_log.unlink(missing_ok=True)
    return slices


def whole_run(video: Path, serve: bool, seconds: float, work: Path, extra: list[str]) -> dict:
    """One unwatched `feredge run`, with or without --serve: FPS from its --stats line, and CPU time."""
    run_log = work / f"run-{time.monotonic_ns()}.log"
    flags = [*extra, "--stats", "--duration", f"{seconds}s"] + (["--serve", "127.0.0.1:0"] if serve else [])
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with run_log.open("w") as err:
        code = subprocess.run(_command(video, flags), stdout=subprocess.DEVNULL, stderr=err,
                              timeout=seconds + 300).returncode
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    text = run_log.read_text()
    match = STATS_FPS.search(text)
    if code != 0 or not match:
        raise RuntimeError(f"feredge run failed (exit {code}): {text[-1500:]}")
    run_log.unlink()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"serve": serve, "fps": float(match.group(3)), "frames": int(match.group(1)),
            "seconds": float(match.group(2)), "cpu_s": round(cpu, 2)}


def summarise_slices(slices: list[dict]) -> list[dict]:
    """Per viewer count: median FPS and CPU, and the median change from the 0-viewer slice of each cycle."""
    base = {(s["run"], s["cycle"]): s for s in slices if s["viewers"] == 0}
    rows = []
    for n in sorted({s["viewers"] for s in slices}):
        mine = [s for s in slices if s["viewers"] == n]
        paired = [(s, base[(s["run"], s["cycle"])]) for s in mine if (s["run"], s["cycle"]) in base]
        streams = [s["stream_fps_per_viewer"] for s in mine if s["stream_fps_per_viewer"] is not None]
        rows.append({"viewers": n, "slices": len(mine),
                     "fps_median": round(statistics.median(s["fps"] for s in mine), 1),
                     "fps_change_pct": round(100 * statistics.median(s["fps"] / b["fps"] - 1 for s, b in paired), 1),
                     "fps_change_pct_quartiles": _quartiles([100 * (s["fps"] / b["fps"] - 1) for s, b in paired]),
                     "pipeline_cpu_ms_per_frame": round(statistics.median(s["pipeline_cpu_ms_per_frame"]
                                                                          for s in mine), 2),
                     "other_threads_cpu_per_s": round(statistics.median(s["other_threads_cpu_per_s"]
                                                                        for s in mine), 3),
                     "stream_fps_per_viewer": round(statistics.median(streams), 1) if streams else None})
    return rows


def _quartiles(values: list[float]) -> list[float] | None:
    if len(values) < 2:
        return None
    q = statistics.quantiles(values, n=4)
    return [round(q[0], 1), round(q[2], 1)]


def summarise_whole(runs: list[dict]) -> dict:
    without = statistics.median(r["fps"] for r in runs if not r["serve"])
    served = statistics.median(r["fps"] for r in runs if r["serve"])
    return {"no_serve_fps": round(without, 1), "serve_fps": round(served, 1),
            "change_pct": round(100 * (served / without - 1), 1),
            "no_serve_all": [r["fps"] for r in runs if not r["serve"]],
            "serve_all": [r["fps"] for r in runs if r["serve"]]}


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [f"# The cost of watching `feredge run --serve` ({report['host_text']}, {report['cores']} cores)", "",
             f"`{report['command']}`", "",
             f"Video: `{s['video']}` (640x480, one face), looped, default bundle and detector; stream JPEG "
             f"quality {s['serve_quality']}, at most {s['serve_fps']:g} fps (0: every frame). A viewer reads "
             "/stream and /events as the page does, without decoding. Run on "
             f"{report['date']}, on two cores shared with other work: single runs vary by 10-20 %, hence the "
             "paired slices.", "",
             f"## Viewers, paired in time ({s['runs']} runs x {s['cycles']} cycles of {s['slice_s']:g} s slices)", "",
             "| viewers | slices | median FPS | FPS change vs 0 viewers, same cycle (median; quartiles) "
             "| pipeline thread: CPU ms a frame | other threads: CPU s per s | stream fps per viewer |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for row in report["viewers"]:
        q = row["fps_change_pct_quartiles"]
        spread = f"; {q[0]:+.1f} to {q[1]:+.1f}" if q and row["viewers"] else ""
        lines.append(f"| {row['viewers']} | {row['slices']} | {row['fps_median']:.1f} | "
                     f"{row['fps_change_pct']:+.1f} %{spread} | {row['pipeline_cpu_ms_per_frame']:.2f} | "
                     f"{row['other_threads_cpu_per_s']:.3f} | "
                     f"{'' if row['stream_fps_per_viewer'] is None else row['stream_fps_per_viewer']} |")
    whole = report["serve_itself"]
    lines += ["", f"## --serve with nobody watching ({len(whole['serve_all'])} + {len(whole['no_serve_all'])} "
                  f"interleaved runs of {s['seconds']:g} s)", "",
              "| | median FPS | FPS of each run |", "|---|---:|---|",
              f"| no --serve | {whole['no_serve_fps']:.1f} | {', '.join(f'{v:.1f}' for v in whole['no_serve_all'])} |",
              f"| --serve, no viewer | {whole['serve_fps']:.1f} ({whole['change_pct']:+.1f} %) | "
              f"{', '.join(f'{v:.1f}' for v in whole['serve_all'])} |",
              "", "CPU is user + system time from /proc: the pipeline runs in the main thread; the other "
              "threads are the server's (encoder, one per connection) and the runtimes' workers. 1.000 s per s "
              "is one core."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m feredge.benchmarks.serve_overhead",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", required=True, help="the video to loop (python -m feredge.edge.testvideo)")
    parser.add_argument("--viewers", default="0,1,5", help="viewer counts, comma-separated (0 is always added)")
    parser.add_argument("--out", required=True, help="folder for serve_overhead.json and serve_overhead.md")
    parser.add_argument("--runs", type=int, default=2, help="served runs in which viewers take turns")
    parser.add_argument("--cycles", type=int, default=6, help="turns of every viewer count per run")
    parser.add_argument("--slice", type=float, default=5.0, dest="slice_s", help="seconds measured per turn")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds after viewers come, not measured")
    parser.add_argument("--repeats", type=int, default=3, help="unwatched runs with and without --serve")
    parser.add_argument("--seconds", type=float, default=12.0, help="length of each unwatched run")
    parser.add_argument("--bundle", default=None)
    parser.add_argument("--serve-fps", type=float, default=15.0)
    parser.add_argument("--serve-quality", type=int, default=80)
    args = parser.parse_args(argv)
    video = Path(args.video)
    if not video.is_file():
        parser.error(f"{video}: no such video")
    try:
        counts = sorted({0} | {int(v) for v in args.viewers.split(",") if v.strip()})
    except ValueError:
        parser.error(f"--viewers takes counts such as 0,1,5, not {args.viewers!r}")
    if counts[0] < 0 or min(args.runs, args.cycles, args.repeats) < 1 or min(args.slice_s, args.seconds) <= 0:
        parser.error("--viewers must be >= 0; --runs, --cycles, --repeats >= 1; --slice and --seconds > 0")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    extra = ["--serve-fps", str(args.serve_fps), "--serve-quality", str(args.serve_quality)]
    if args.bundle:
        extra += ["--bundle", args.bundle]

    def note(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    slices = []
    for run in range(args.runs):
        for record in sliced_run(video, counts, args.cycles, args.slice_s, args.settle, out, extra, note):
            slices.append({"run": run, **record})
    whole = []
    for r in range(args.repeats):
        for serve in ((False, True) if r % 2 == 0 else (True, False)):
            whole.append(whole_run(video, serve, args.seconds, out, extra))
            note(f"repeat {r + 1}/{args.repeats}: {'--serve' if serve else NO_SERVE}: {whole[-1]['fps']:.1f} FPS")
    host = host_record()
    report = {"host": host, "host_text": describe_host(host), "cores": os.cpu_count(),
              "date": time.strftime("%Y-%m-%d"),
              "command": "python -m feredge.benchmarks.serve_overhead " + " ".join(argv or sys.argv[1:]),
              "settings": {"video": video.name, "runs": args.runs, "cycles": args.cycles, "slice_s": args.slice_s,
                           "settle_s": args.settle, "repeats": args.repeats, "seconds": args.seconds,
                           "serve_fps": args.serve_fps, "serve_quality": args.serve_quality},
              "viewers": summarise_slices(slices), "serve_itself": summarise_whole(whole),
              "slices": slices, "whole_runs": whole}
    (out / "serve_overhead.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "serve_overhead.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
