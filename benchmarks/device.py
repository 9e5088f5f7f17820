"""Facts about the device a benchmark ran on, read where the OS exposes them."""
from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path

RUNTIME_PACKAGES = ("ai-edge-litert", "tflite-runtime", "onnxruntime", "onnxruntime-gpu", "openvino",
                    "numpy", "opencv-python-headless", "opencv-python", "tensorflow")


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
    """Raspberry Pi / Jetson model string, from the device tree or the L4T release file."""
    model = _read("/proc/device-tree/model")
    if model:
        return model
    tegra = _read("/etc/nv_tegra_release")
    return f"NVIDIA Jetson ({tegra.splitlines()[0]})" if tegra else None


def cpu_frequency_mhz() -> float | None:
    khz = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq")
    if khz and khz.isdigit():
        return int(khz) / 1000
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.startswith("cpu MHz"):
            return float(line.split(":")[1])
    return None


def package_versions(names=RUNTIME_PACKAGES) -> dict[str, str]:
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def device_facts() -> dict:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "system": f"{platform.system()} {platform.release()}",
        "board": board(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "frequency_mhz": cpu_frequency_mhz(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "packages": package_versions(),
        "hostname": platform.node(),
    }


def same_device(a: dict, b: dict) -> bool:
    """Records are comparable when architecture, CPU model and system agree."""
    return all(a.get(k) == b.get(k) for k in ("machine", "cpu", "system"))
