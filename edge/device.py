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


def device_key() -> dict:
    return {"machine": platform.machine(), "cpu": cpu_model(), "system": f"{platform.system()} {platform.release()}"}


def device_facts() -> dict:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {**device_key(), "board": board(), "cores": os.cpu_count(), "usable_cores": usable, "os": os_name(),
            "python": sys.version.split()[0]}


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
                import openvino

                entry["devices"] = list(openvino.Core().available_devices)
        except Exception as exc:  # a runtime that is installed but broken is worth reporting, not a crash
            entry["error"] = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        out[module] = entry
    return out


def opencv_facts() -> dict:
    import cv2

    from edge.sources import opencv_build_facts

    facts = {"version": cv2.__version__, **opencv_build_facts()}
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    facts["haar_cascades"] = bool(folder) and (Path(folder) / "haarcascade_frontalface_default.xml").is_file()
    facts["yunet_class"] = hasattr(cv2, "FaceDetectorYN")
    facts["threads"] = cv2.getNumThreads()
    return facts


def camera_facts() -> dict:
    devices = sorted(str(p) for p in Path("/dev").glob("video*")) if Path("/dev").is_dir() else []
    return {"v4l2_devices": devices,
            "picamera2": importlib.util.find_spec("picamera2") is not None,
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
