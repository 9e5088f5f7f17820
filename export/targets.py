"""Export targets (`feredge export --target NAME`): what to build for one kind of device.

A target picks the formats, precisions, int8 schemes and the default thread count that
`feredge run` uses there. Every target but `x86-vnni` uses the portable schemes (no CPU class
saturates, export/onnx.py), so the verification done on the export machine predicts what the
device computes. `x86-vnni` trades that for speed: its full 8-bit schemes are exact only on
CPUs with VNNI/AMX, so exporting it elsewhere verifies on a CPU that saturates, and it says so.
What was not measured on the device is not claimed: `feredge bench` on the device is the judge.
"""
from __future__ import annotations

import dataclasses

from feredge.edge import formats
from feredge.export import onnx as onnx_export
from feredge.export import openvino as ov_export


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    device: str
    formats: tuple[str, ...]
    precisions: tuple[str, ...] | None  # None: every precision a format offers
    onnx_scheme: str
    openvino_scheme: str
    threads: int | None  # default inference threads on the device (None: the runtime's own)
    needs_isa: tuple[str, ...] = ()  # verification is representative only on a host with one of these
    note: str = ""

    def scheme_for(self, fmt: str) -> str | None:
        """The int8 scheme this target picks for a format (None: the format has one scheme)."""
        return getattr(self, f"{fmt}_scheme", None)

    def to_dict(self) -> dict:
        return {"name": self.name, "device": self.device, "formats": list(self.formats),
                "precisions": None if self.precisions is None else list(self.precisions),
                "onnx_scheme": self.onnx_scheme, "openvino_scheme": self.openvino_scheme, "threads": self.threads,
                "note": self.note}


PORTABLE = {"onnx_scheme": onnx_export.DEFAULT_SCHEME, "openvino_scheme": ov_export.DEFAULT_SCHEME}
ARM = {**PORTABLE, "onnx_scheme": "s8s8-r7"}  # ONNX Runtime's signed kernels are the native ones on ARM
ALL = formats.names()

TARGETS = {t.name: t for t in (
    Target("generic", "any CPU, x86 or ARM", ALL, None, **PORTABLE, threads=None,
           note="portable int8 schemes: the same results on every CPU"),
    Target("x86-avx2", "x86 without VNNI (AVX2 only)", ALL, ("fp32", "int8"), **PORTABLE, threads=None),
    Target("x86-vnni", "x86 with AVX512-VNNI, AVX-VNNI or AMX", ALL, ("fp32", "int8"), onnx_scheme="u8s8",
           openvino_scheme="no-fix", threads=None, needs_isa=("avx512_vnni", "avx_vnni", "amx_int8"),
           note="full 8-bit int8: wrong on CPUs without VNNI, where it saturates"),
    Target("pi4", "Raspberry Pi 4 (Cortex-A72, 4 cores)", ("tflite", "onnx"), ("fp32", "int8"), **ARM,
           threads=4, note="no OpenVINO: its int8 IR fails to compile on Cortex-A72"),
    Target("pi5", "Raspberry Pi 5 (Cortex-A76, 4 cores)", ("tflite", "onnx"), ("fp32", "int8"), **ARM,
           threads=4),
    Target("jetson-orin", "NVIDIA Jetson Orin (Cortex-A78AE CPU; ONNX for TensorRT/CUDA)", ("onnx", "tflite"),
           ("fp32", "fp16", "int8"), **ARM, threads=6,
           note="symmetric 7-bit int8 weights; TensorRT was not run here"),
)}
DEFAULT_TARGET = "generic"


def get_target(name: str | None) -> Target:
    name = DEFAULT_TARGET if name is None else str(name).strip().lower()
    if name not in TARGETS:
        raise ValueError(f"unknown --target {name!r} (choose from {', '.join(TARGETS)})")
    return TARGETS[name]


def host_warning(target: Target, host: dict) -> str | None:
    """One line when this host cannot verify the target's artifacts as the device will run them."""
    if target.needs_isa and not set(target.needs_isa) & set(host.get("isa") or []):
        return (f"target {target.name}: this CPU ({host.get('cpu')}) has none of {', '.join(target.needs_isa)}, so "
                f"its int8 verification here saturates and understates the device; verify on the device "
                f"('feredge bench --data DIR') or export --target generic")
    return None
