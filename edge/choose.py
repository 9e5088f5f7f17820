"""Which artifact of a bundle to run here (`feredge run --backend auto`).

1. The bundle's benchmark recommendation, `recommendation.json`, when it was measured on this
   device (same machine, cpu and system as edge.device.device_key()) and its runtime is installed.
   Minimal shape (the benchmarks write more fields, which are ignored here):

       {"device": {"machine": "aarch64", "cpu": "Cortex-A72", "system": "Linux 6.6.31+rpt-rpi-v8"},
        "artifact": "tflite-int8", "threads": 4}

2. Otherwise a fixed order among the installed runtimes: ONNX Runtime first when it has a TensorRT
   or CUDA execution provider (a Jetson with onnxruntime-gpu), else tflite, openvino, onnx; fp32
   unless a precision is asked for. The thread count is then the export target's (manifest
   "target": {"threads": 4} for a Pi), capped at this device's usable cores.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from feredge.edge import formats
from feredge.edge.backends import installed_formats
from feredge.edge.bundle import Artifact, Bundle

log = logging.getLogger("feredge.run")

RECOMMENDATION_FILE = "recommendation.json"
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


@dataclasses.dataclass
class Choice:
    artifact: Artifact
    threads: int | None
    reason: str


def read_recommendation(bundle: Bundle) -> dict | None:
    path = Path(bundle.root) / RECOMMENDATION_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("device"), dict) or "artifact" not in data:
            raise ValueError("missing device or artifact")
    except (OSError, ValueError) as exc:
        log.warning("%s: ignored (%s)", path, exc)
        return None
    return data


def _onnx_has_gpu() -> bool:
    if "onnx" not in installed_formats():
        return False
    try:
        import onnxruntime
    except ImportError:
        return False
    return any(p in onnxruntime.get_available_providers() for p in GPU_PROVIDERS)


def choose(bundle: Bundle, backend: str = "auto", precision: str | None = None, threads: int | None = None,
           device_key: dict | None = None, exclude: frozenset[str] = frozenset()) -> Choice:
    """The artifact to run, the thread count (None: the runtime's default) and why (one line).

    exclude: artifact ids that failed to open here (an OpenVINO IR that does not compile on a
    Cortex-A72), so that auto moves on to the next choice."""
    installed = installed_formats()
    if backend != "auto":
        if backend not in formats.names():
            raise ValueError(f"unknown backend {backend!r} (expected auto, {', '.join(formats.names())})")
        if backend not in installed:
            raise ValueError(f"backend {backend} is not installed here (pip install \"feredge[{backend}]\")")
        artifact = _pick(bundle, backend, precision)
        return Choice(artifact, threads or target_threads(bundle), f"--backend {backend}")

    rec = read_recommendation(bundle)
    if rec is not None:
        from feredge.edge.device import device_key as this_device

        here = device_key or this_device()
        wanted = {k: rec["device"].get(k) for k in ("machine", "cpu", "system")}
        try:
            artifact = bundle.find(id=rec["artifact"])
        except ValueError:
            artifact = None
        if artifact is not None and artifact.id in exclude:
            artifact = None
        if wanted != {k: here.get(k) for k in wanted}:
            log.info("recommendation.json was measured on another device (%s), not used", _describe(wanted))
        elif artifact is None:
            log.info("recommendation.json names %s, which this bundle does not have; not used", rec["artifact"])
        elif artifact.format not in installed:
            log.info("recommendation.json names %s, but its runtime is not installed; not used", artifact.id)
        elif precision and artifact.precision != precision:
            log.info("recommendation.json names %s, but --precision %s was asked for; not used", artifact.id,
                     precision)
        else:
            rec_threads = rec.get("threads")
            return Choice(artifact, threads if threads else (int(rec_threads) if rec_threads else None),
                          f"the bundle's benchmark recommendation for this device ({RECOMMENDATION_FILE})")

    available = [f for f in formats.names() if f in installed
                 and any(a.format == f and a.id not in exclude for a in bundle.artifacts)]
    if not available and exclude:
        raise ValueError(f"{bundle.root}: no artifact opens here ({', '.join(sorted(exclude))} failed)")
    if not available:
        have = ", ".join(sorted({a.format for a in bundle.artifacts})) or "none"
        runtimes = ", ".join(installed) or "none"
        raise ValueError(f"{bundle.root}: no installed runtime can run this bundle (artifacts: {have}; "
                         f"runtimes installed: {runtimes})")
    if "onnx" in available and _onnx_has_gpu():
        order, why = ("onnx",), "ONNX Runtime has a GPU execution provider"
    else:
        order = cpu_order()
        why = f"default order {', '.join(order)} among the installed runtimes"
    threads = threads or target_threads(bundle)
    for fmt in order:
        if fmt not in available:
            continue
        try:
            return Choice(_pick(bundle, fmt, precision, exclude), threads, why)
        except ValueError:
            continue
    raise ValueError(f"{bundle.root}: no {precision} artifact for any installed runtime "
                     f"(this bundle has: {', '.join(a.id for a in bundle.artifacts)})")


def cpu_order() -> tuple[str, ...]:
    """Formats by preference on a CPU (the format table's auto_rank)."""
    return tuple(sorted(formats.names(), key=lambda name: formats.get(name).auto_rank))


def target_threads(bundle: Bundle) -> int | None:
    """The export target's thread default, at most this device's usable cores (None: the runtime's)."""
    import os

    wanted = (bundle.manifest.get("target") or {}).get("threads")
    if not wanted:
        return None
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(int(wanted), usable))


def _pick(bundle: Bundle, fmt: str, precision: str | None, exclude: frozenset[str] = frozenset()) -> Artifact:
    candidates = [a for a in bundle.artifacts if a.format == fmt and a.id not in exclude
                  and (precision is None or a.precision == precision)]
    if not candidates:
        if any(a.format == fmt and a.id in exclude for a in bundle.artifacts):
            raise ValueError(f"{bundle.root}: no {fmt} artifact left that opens here")
        return bundle.find(fmt, precision or None)  # raises, naming what the bundle has
    preferred = [a for a in candidates if a.precision == "fp32"] if precision is None else []
    return sorted(preferred or candidates, key=lambda a: a.pruning is not None)[0]


def _describe(device: dict) -> str:
    return ", ".join(str(v) for v in device.values() if v)
