"""Device facts for benchmark records: edge.device's identity plus what bears on timing."""
from __future__ import annotations

import platform
from importlib import metadata

from feredge.edge.device import _read, device_facts as edge_device_facts

PACKAGES = ("ai-edge-litert", "tflite-runtime", "onnxruntime", "onnxruntime-gpu", "openvino",
            "numpy", "opencv-python-headless", "opencv-python", "tensorflow")


def cpu_frequency_mhz() -> float | None:
    khz = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq")
    if khz and khz.isdigit():
        return int(khz) / 1000
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.startswith("cpu MHz"):
            return float(line.split(":")[1])
    return None


def package_versions(names=PACKAGES) -> dict[str, str]:
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def device_facts() -> dict:
    """machine/cpu/system (the key a recommendation is matched on), board, cores, OS, governor,
    frequency and the versions of the packages that do the work."""
    return {
        **edge_device_facts(),
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "frequency_mhz": cpu_frequency_mhz(),
        "packages": package_versions(),
        "hostname": platform.node(),
    }
