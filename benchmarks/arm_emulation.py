"""The edge runtime on an emulated Raspberry Pi 4 (Cortex-A72) and Pi 5 (Cortex-A76), in one command.

    python -m feredge.benchmarks.arm_emulation --data DATA --out benchmarks/results/aarch64-qemu-DATE

Needs root and apt (not part of .ci/run). It builds once, under --work (default /opt/feredge-arm):
qemu 10 from bookworm-backports (Debian 12's qemu 7.2 crashes in LiteRT and ONNX Runtime), an
arm64 Debian bookworm root made by mmdebstrap (Python 3.11, as Raspberry Pi OS Bookworm), and
the device extras' aarch64 wheels laid out by the host's pip. Then, under `qemu-aarch64 -cpu
cortex-a72` and `-cpu cortex-a76`, it runs the runtime tests that need no TensorFlow, `feredge
info`, `feredge run --headless` on a test video, and `feredge eval` of every artifact of the
shipped bundle on the labelled faces (--data; --limit for a fixed subset). It writes pass/fail,
accuracy per artifact and the host/emulated CPU to results.json and results.md. Emulated timings
mean nothing and are not reported as speeds.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from feredge.edge import formats

REPO = Path(__file__).resolve().parents[1]
CPUS = {"cortex-a72": "Raspberry Pi 4", "cortex-a76": "Raspberry Pi 5"}
WHEELS = ["numpy>=1.23,<2.5", "opencv-python-headless>=4.8,<5", "tqdm>=4.60", "ai-edge-litert", "onnxruntime",
          "openvino", "pytest"]
# manylinux tags up to bookworm's glibc 2.36: pip takes only the tags it is given, and without 2_27
# and 2_35 it silently picks ai-edge-litert 1.4 and openvino 2023.1
PLATFORMS = ["manylinux2014_aarch64"] + [f"manylinux_2_{v}_aarch64" for v in (17, 24, 26, 27, 28, 31, 34, 35, 36)]
# Raspberry Pi OS Bookworm's own numpy (python3-numpy), which picamera2 and simplejpeg are built for:
# the install path of constraints/pi-bookworm.txt
PI_OS_NUMPY = "numpy==1.24.2"
RUNTIME_TESTS = ["tests/test_preprocess.py", "tests/test_runtime_outputs.py", "tests/test_runtime_sources.py",
                 "tests/test_portability.py"]  # the runtime's tests that need no TensorFlow
BACKPORTS = "deb http://deb.debian.org/debian bookworm-backports main\n"
MIRROR = "http://deb.debian.org/debian"


def sh(cmd, **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(map(str, cmd)), flush=True)
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


# --- building the emulated device -------------------------------------------------------------

def ensure_qemu(work: Path) -> Path:
    qemu = work / "qemu" / "usr" / "bin" / "qemu-aarch64"
    if qemu.is_file():
        return qemu
    listing = Path("/etc/apt/sources.list.d/feredge-backports.list")
    listing.write_text(BACKPORTS)
    try:
        sh(["apt-get", "update", "-qq"])
        with tempfile.TemporaryDirectory() as tmp:
            sh(["apt-get", "download", "-qq", "qemu-user/bookworm-backports"], cwd=tmp)
            deb = next(Path(tmp).glob("qemu-user_*.deb"))
            sh(["dpkg", "-x", deb, work / "qemu"])
    finally:
        listing.unlink(missing_ok=True)
        subprocess.run(["apt-get", "update", "-qq"], check=False)
    return qemu


def ensure_root(work: Path) -> Path:
    root = work / "bookworm"
    if (root / "usr" / "bin" / "python3").exists():
        return root
    if shutil.which("mmdebstrap") is None:
        sh(["apt-get", "install", "-y", "-qq", "mmdebstrap"])
    sh(["mmdebstrap", "--arch=arm64", "--variant=extract", "--include=python3,python3-venv,libstdc++6,libgomp1",
        "bookworm", root, MIRROR])
    return root


def wheel_command(site: Path, python_version: str = "3.11", pi_os: bool = False) -> list[str]:
    """pi_os: Pi OS Bookworm's numpy 1.24 and constraints/pi-bookworm.txt, as the picamera2 install has."""
    abi = "cp" + python_version.replace(".", "")
    platforms = [x for p in PLATFORMS for x in ("--platform", p)]
    pins = ["-c", str(REPO / "constraints" / "pi-bookworm.txt"), PI_OS_NUMPY] if pi_os else []
    return [sys.executable, "-m", "pip", "install", "--quiet", "--upgrade", "--target", str(site),
            "--only-binary=:all:", *platforms, "--python-version", python_version, "--implementation", "cp",
            "--abi", abi, *pins, *WHEELS]


def site_dir(work: Path, pi_os: bool) -> Path:
    return work / ("site-cp311-pi-os-numpy1" if pi_os else "site-cp311")


def ensure_site(work: Path, pi_os: bool = False) -> Path:
    site = site_dir(work, pi_os)
    marker = site / ".feredge-wheels.json"
    command = wheel_command(site, pi_os=pi_os)
    if marker.is_file() and json.loads(marker.read_text()) == command[4:]:
        return site
    sh(command)
    marker.write_text(json.dumps(command[4:]))
    return site


# --- running under emulation --------------------------------------------------------------------

def emulated(work: Path, cpu: str, pi_os: bool = False) -> tuple[list[str], dict]:
    """The command prefix and environment that run the arm64 Python under qemu as `cpu`."""
    root, site = work / "bookworm", site_dir(work, pi_os)
    prefix = [str(work / "qemu" / "usr" / "bin" / "qemu-aarch64"), "-cpu", cpu, "-L", str(root),
              str(root / "usr" / "bin" / "python3")]
    return prefix, environment(site)


def environment(site: Path | None) -> dict:
    scratch = Path(tempfile.gettempdir()) / "feredge-arm"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update({"PYTHONPATH": os.pathsep.join(str(p) for p in (site, REPO) if p), "HOME": str(scratch / "home"),
                "FEREDGE_CACHE": str(scratch / "cache"), "PYTHONDONTWRITEBYTECODE": "1"})
    return env


def steps(bundle: Path, video: Path, data: str | None, limit: int | None) -> list[tuple[str, list[str]]]:
    """(name, python arguments) of everything the emulated device runs."""
    cache = Path(tempfile.gettempdir()) / "feredge-arm" / "pytest-cache"  # never inside the repository
    out = [("tests", ["-m", "pytest", "-q", "-o", "addopts=", "-o", f"cache_dir={cache}", *RUNTIME_TESTS]),
           ("info", ["-m", "feredge.edge.cli", "info"])]
    for backend in formats.names():
        out.append((f"run {backend}", ["-m", "feredge.edge.cli", "run", "--bundle", str(bundle), "--source", str(video),
                                       "--headless", "--output", os.devnull, "--backend", backend,
                                       "--max-frames", "30", "--stats"]))
    manifest = json.loads((bundle / "manifest.json").read_text())
    for artifact in manifest["artifacts"]:
        args = ["-m", "feredge.edge.cli", "eval", "--model", str(bundle / artifact["files"][0]), "--json"]
        if data:
            args += ["--data", data]
        if limit:
            args += ["--limit", str(limit)]
        out.append((f"eval {artifact['id']}", args))
    return out


def run_step(prefix: list[str], env: dict, args: list[str], timeout: float) -> dict:
    started = time.perf_counter()
    try:
        done = subprocess.run([*prefix, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        code, out, err = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as exc:
        code, out, err = "timeout", exc.stdout or "", exc.stderr or ""
        out, err = (x.decode() if isinstance(x, bytes) else x for x in (out, err))
    record = {"exit": code, "passed": code == 0, "seconds": round(time.perf_counter() - started, 1)}
    record.update(summarize(args, out, err))
    return record


def summarize(args: list[str], out: str, err: str) -> dict:
    """What a step's output says: accuracy for eval, the closing line for pytest, the last error."""
    found: dict = {}
    if "eval" in args and "--json" in args:
        try:
            report = json.loads(out)
            found.update(accuracy=report["accuracy"], faces=report["num_samples"])
        except (ValueError, KeyError):
            pass
    closing = re.findall(r"^=*\s*(\d+ passed.*?|\d+ failed.*?)\s*=*$", out, re.M)
    if closing:
        found["tests"] = closing[-1]
    frames = re.search(r"stats: (\d+) frames", err)
    if frames:
        found["frames"] = int(frames.group(1))
    if "info" in args:
        found["can_run"] = next((line.split(None, 2)[-1] for line in out.splitlines()
                                 if line.startswith("can run")), None)
    errors = [line for line in (err + out).splitlines() if "error" in line.lower() or "Error" in line]
    if errors:
        found["last_error"] = errors[-1].strip()[:300]
    return found


# --- reporting ----------------------------------------------------------------------------------

def to_markdown(results: dict) -> str:
    cpus = list(results["cpus"])
    lines = [f"# The edge runtime under qemu-aarch64 ({results['qemu']}) on {results['host']}", "",
             f"{results['note']} Wheels: {results.get('wheels', '?')}.", "",
             "| step | " + " | ".join(f"{c} ({CPUS.get(c, c)})" for c in cpus) + " |",
             "|---|" + "---|" * len(cpus)]
    names = list(next(iter(results["cpus"].values())))
    for name in names:
        cells = []
        for cpu in cpus:
            r = results["cpus"][cpu][name]
            text = "pass" if r["passed"] else f"FAIL ({r.get('last_error') or r['exit']})"
            if "accuracy" in r:
                text += f", {r['accuracy'] * 100:.2f} % of {r['faces']}"
            if "tests" in r:
                text += f", {r['tests']}"
            if "frames" in r:
                text += f", {r['frames']} frames"
            cells.append(text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m feredge.benchmarks.arm_emulation", description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="/opt/feredge-arm", help="where qemu, the arm64 root and the wheels live")
    p.add_argument("--bundle", default=str(REPO / "models" / "pretrained" / "bundle"))
    p.add_argument("--data", help="labelled faces for eval (default: the shipped 350-face sample)")
    p.add_argument("--limit", type=int, help="evaluate only the first N faces of --data (a fixed subset)")
    p.add_argument("--cpus", default=",".join(CPUS), help="qemu CPU models (default: cortex-a72,cortex-a76)")
    p.add_argument("--pi-os-numpy", action="store_true",
                   help="install as constraints/pi-bookworm.txt does, with Pi OS Bookworm's numpy 1.24.2 "
                        "(the picamera2 path) instead of PyPI's newest")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per step")
    p.add_argument("--out", required=True, help="folder for results.json and results.md")
    args = p.parse_args(argv)
    from feredge.edge.device import describe_host, host_record
    from feredge.edge.fileio import write_text_atomic
    from feredge.edge.testvideo import make_test_video

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    qemu = ensure_qemu(work)
    ensure_root(work)
    ensure_site(work, args.pi_os_numpy)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    video = work / "one-face.mp4"
    if not video.is_file():
        make_test_video(video, 1, seconds=3.0, fps=10.0, seed=1)
    version = subprocess.run([str(qemu), "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    results = {"host": describe_host(host_record()), "qemu": version.strip(), "data": args.data or "shipped sample",
               "wheels": "Pi OS Bookworm numpy 1.24.2 + constraints/pi-bookworm.txt" if args.pi_os_numpy
               else "PyPI's newest aarch64 wheels",
               "note": "Emulated: pass/fail and accuracy only; emulated timings mean nothing.", "cpus": {}}
    for cpu in args.cpus.split(","):
        prefix, env = emulated(work, cpu, args.pi_os_numpy)
        results["cpus"][cpu] = {}
        for name, step_args in steps(Path(args.bundle), video, args.data, args.limit):
            record = run_step(prefix, env, step_args, args.timeout)
            results["cpus"][cpu][name] = record
            print(f"{cpu} {name}: {'pass' if record['passed'] else 'FAIL'} "
                  f"{record.get('accuracy', '')} {record.get('last_error', '')}", flush=True)
    write_text_atomic(out / "results.json", json.dumps(results, indent=2) + "\n")
    write_text_atomic(out / "results.md", to_markdown(results))
    print(to_markdown(results))
    return 0 if all(r["passed"] for cpu in results["cpus"].values() for r in cpu.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
