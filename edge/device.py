"""This device: what `feredge info` prints and what a benchmark recommendation is matched against.

`device_key()` is the identity a recommendation.json is valid for: machine (architecture), cpu
(model name) and system ("Linux 6.1.0-rpi7-rpi-v8"); the benchmarks record the same three fields.
Only the standard library, numpy and OpenCV are needed; runtimes are imported only by
`runtime_facts()` (for their versions, providers and devices).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import sys
from importlib import metadata
from pathlib import Path


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip().strip("\x00") or None
    except OSError:
        return None


def cpu_model() -> str:
    info = _read("/proc/cpuinfo") or ""
    for key in ("model name", "Model", "Hardware", "cpu model"):
        for line in info.splitlines():
            if line.split(":")[0].strip() == key:
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def board() -> str | None:
    """"Raspberry Pi 4 Model B Rev 1.4", "NVIDIA Jetson Orin Nano ..." or None on a PC."""
    model = _read("/proc/device-tree/model")
    if model:
        return model
    tegra = _read("/etc/nv_tegra_release")
    return f"NVIDIA Jetson ({tegra.splitlines()[0]})" if tegra else None


def os_name() -> str:
    release = _read("/etc/os-release") or ""
    for line in release.splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip().strip('"')
    return platform.platform()


# CPU features that decide how int8 arithmetic runs (export/onnx.py, export/openvino.py), as
# /proc/cpuinfo spells them: x86 "flags", ARM "Features" (asimddp = dot product, i8mm = int8 matmul).
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16", "avx512_bf16",
             "asimd", "asimddp", "i8mm", "sve")


def isa_flags() -> list[str]:
    """The int8-relevant ISA extensions this CPU reports, in ISA_FLAGS order."""
    info = _read("/proc/cpuinfo") or ""
    present: set[str] = set()
    for line in info.splitlines():
        key = line.split(":")[0].strip().lower()
        if key in ("flags", "features"):
            present.update(line.split(":", 1)[1].split())
    return [f for f in ISA_FLAGS if f in present]


ISA_CAPS = ("ONEDNN_MAX_CPU_ISA", "OV_CPU_MAX_ISA")


def align_isa_caps() -> None:
    """One ISA cap for both halves of the CPU plugin, which read them when it first loads.
    ONEDNN_MAX_CPU_ISA caps oneDNN's kernels, OV_CPU_MAX_ISA what the plugin itself chooses by
    the CPU's flags. Set one alone on an AVX512-BF16 CPU and the plugin picks bf16, which oneDNN
    capped at AVX2 has no kernels for: compiling an fp32 IR fails ("Supported primitive
    descriptors list is empty for node: MaxPool...")."""
    cap = next((os.environ[name] for name in ISA_CAPS if os.environ.get(name)), None)
    if cap:
        for name in ISA_CAPS:
            os.environ.setdefault(name, cap)


def isa_caps() -> dict:
    """The ISA caps set in this process ({} when none): a figure measured under one names it."""
    return {name: os.environ[name] for name in ISA_CAPS if os.environ.get(name)}


def host_record() -> dict:
    """Where something was measured: architecture, CPU model and its int8-relevant ISA flags."""
    return {"machine": platform.machine(), "cpu": cpu_model(), "isa": isa_flags()}


def describe_host(record: dict) -> str:
    """'AMD EPYC (x86_64; avx2)': how a figure names the CPU it came from."""
    isa = ", ".join(record.get("isa") or []) or "no int8 extensions"
    return f"{record.get('cpu', '?')} ({record.get('machine', '?')}; {isa})"


def host_difference(verified_on: dict | None, here: dict | None = None) -> str | None:
    """One line when this CPU may compute a bundle's artifacts differently from where they were verified."""
    if not verified_on:
        return None
    here = here or host_record()
    if verified_on.get("machine") == here["machine"] and verified_on.get("cpu") == here["cpu"] \
            and sorted(verified_on.get("isa") or []) == sorted(here["isa"]):
        return None
    return (f"note: this bundle was verified on {describe_host(verified_on)}; this device is {describe_host(here)}: "
            f"accuracy here is what 'feredge bench --data DIR' measures")


def device_key() -> dict:
    return {"machine": platform.machine(), "cpu": cpu_model(), "system": f"{platform.system()} {platform.release()}"}


def device_facts() -> dict:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {**device_key(), "board": board(), "cores": os.cpu_count(), "usable_cores": usable, "os": os_name(),
            "python": sys.version.split()[0], "isa": isa_flags()}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def runtime_facts() -> dict:
    """Installed inference runtimes with their versions, ONNX providers and OpenVINO devices."""
    out: dict = {}
    for module, dists in (("ai_edge_litert", ("ai-edge-litert",)), ("tflite_runtime", ("tflite-runtime",)),
                          ("onnxruntime", ("onnxruntime", "onnxruntime-gpu")), ("openvino", ("openvino",))):
        if importlib.util.find_spec(module) is None:
            continue
        version = next((v for v in (_version(d) for d in dists) if v), None)
        entry: dict = {"version": version}
        try:
            if module == "onnxruntime":
                import onnxruntime

                entry["providers"] = list(onnxruntime.get_available_providers())
                entry["version"] = entry["version"] or onnxruntime.__version__
            elif module == "openvino":
                align_isa_caps()
                import openvino

                entry["devices"] = list(openvino.Core().available_devices)
        except Exception as exc:  # a runtime that is installed but broken is worth reporting, not a crash
            entry["error"] = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        out[module] = entry
    return out


def opencv_facts() -> dict:
    import cv2

    from feredge.edge.sources import opencv_build_facts

    facts = {"version": cv2.__version__, **opencv_build_facts()}
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    facts["haar_cascades"] = bool(folder) and (Path(folder) / "haarcascade_frontalface_default.xml").is_file()
    facts["yunet_class"] = hasattr(cv2, "FaceDetectorYN")
    facts["threads"] = cv2.getNumThreads()
    return facts


PI_FIX = ("on Raspberry Pi OS: sudo apt install python3-picamera2, make the venv with --system-site-packages, "
          "and install feredge with -c constraints/pi-bookworm.txt (the system numpy 1.x that picamera2 was "
          "built for; README, 'Devices')")


def picamera2_problem() -> str | None:
    """None when picamera2 really imports here; else what failed and the fix, in one line.

    Finding the package is not enough: on Pi OS Bookworm a venv with numpy 2 finds the system
    picamera2 and then fails inside it ('numpy.dtype size changed') while simplejpeg loads."""
    try:
        found = importlib.util.find_spec("picamera2") is not None
    except ValueError:  # already in sys.modules without a spec (None: blocked)
        found = sys.modules.get("picamera2") is not None
    if not found:
        return f"picamera2 is not installed here; {PI_FIX}"
    try:
        import picamera2  # noqa: F401
    except Exception as exc:  # ImportError, or ValueError/RuntimeError from binaries built for another numpy
        text = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        cause = text[0][:200]
        if "numpy" in cause.lower():
            import numpy

            cause += f" (this environment has numpy {numpy.__version__})"
        return f"picamera2 is installed but does not import ({type(exc).__name__}: {cause}); {PI_FIX}"
    return None


def camera_facts() -> dict:
    devices = sorted(str(p) for p in Path("/dev").glob("video*")) if Path("/dev").is_dir() else []
    problem = picamera2_problem()
    return {"v4l2_devices": devices,
            "picamera2": problem is None,
            "picamera2_problem": problem,
            "display": bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))}


def memory_mb(field: str = "VmHWM") -> float:
    """This process's memory from /proc/self/status: VmHWM (peak resident) or VmRSS (now).

    Not getrusage's ru_maxrss for the peak: Linux carries that across fork+exec, so a process
    started by a large parent (a test runner holding TensorFlow, the benchmark harness) would
    report the parent's peak. Elsewhere, ru_maxrss is the best the OS offers.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    if field != "VmHWM":
        return float("nan")
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024
