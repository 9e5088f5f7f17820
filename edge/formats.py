"""The table of artifact formats: one `Format` per format, read by every layer.

A format's row says what its files are called, which precisions its exporter offers, which edge
backend runs it and with which runtime options, and which module exports it. The exporter is
named as a string, so this device-side table never imports the workstation's converters.

Adding a format is one exporter module with

    convert(model, path, precision, *, calib, scratch, scheme) -> settings (dict for the manifest)

(and one backend module with `open(path, threads=None, **options)` unless an existing backend
runs it) plus one `register(Format(...))`; tests/test_formats.py does exactly that.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

PRECISIONS = ("fp32", "fp16", "dynamic", "int8")


@dataclasses.dataclass(frozen=True)
class Format:
    name: str
    suffix: str  # of the file a backend opens (the artifact's first file)
    precisions: tuple[str, ...]  # what the exporter offers, in export order
    backend: str  # module with open(path, threads=None, **options) -> edge Backend
    runtimes: tuple[str, ...]  # Python packages that can run it, by preference
    exporter: str  # module with convert(model, path, precision, *, calib, scratch, scheme) -> dict
    options: tuple[str, ...] = ()  # runtime options the backend takes (see runtime_options)
    sidecars: tuple[str, ...] = ()  # suffixes of further files beside the first (OpenVINO's weights)
    folder: str = ""  # subfolder of the bundle its files go to
    not_offered: Mapping[str, str] = dataclasses.field(default_factory=dict)  # precision -> why the exporter does not offer it
    verify_options: Mapping[str, Mapping] = dataclasses.field(default_factory=dict)  # precision -> options to verify it with
    auto_rank: int = 100  # order of preference for `run --backend auto` on a CPU (lower first)

    def files(self, stem: str) -> list[str]:
        """The bundle-relative files of an artifact named `stem` ("model.int8")."""
        prefix = f"{self.folder}/" if self.folder else ""
        return [f"{prefix}{stem}{suffix}" for suffix in (self.suffix, *self.sidecars)]

    def why_not(self, precision: str) -> str:
        return self.not_offered.get(precision, "not offered")


_TABLE: dict[str, Format] = {}


def register(fmt: Format) -> Format:
    """Add (or replace) a format; returns it. Its suffix must be its own."""
    if fmt.suffix.lower() in {f.suffix.lower() for f in _TABLE.values() if f.name != fmt.name}:
        raise ValueError(f"format {fmt.name}: suffix {fmt.suffix} already belongs to another format")
    unknown = set(fmt.precisions) - set(PRECISIONS)
    if unknown:
        raise ValueError(f"format {fmt.name}: unknown precision(s) {', '.join(sorted(unknown))}")
    _TABLE[fmt.name] = fmt
    return fmt


def unregister(name: str) -> None:
    _TABLE.pop(name, None)


def names() -> tuple[str, ...]:
    return tuple(_TABLE)


def get(name: str) -> Format:
    try:
        return _TABLE[name]
    except KeyError:
        raise ValueError(f"unknown format {name!r} (choose from {', '.join(_TABLE)})") from None


def of_path(path: str | Path) -> Format | None:
    """The format whose suffix the file has, or None."""
    suffix = Path(path).suffix.lower()
    return next((f for f in _TABLE.values() if f.suffix.lower() == suffix), None)


def runtime_options(name: str, **given) -> dict:
    """The options among `given` that the format's backend takes and that are set (not None), so a
    caller can pass every option it has (device, providers, precision_hint) for any format."""
    fmt = get(name)
    return {key: value for key, value in given.items() if key in fmt.options and value is not None}


register(Format(
    "tflite", ".tflite", ("fp32", "fp16", "dynamic", "int8"), "feredge.edge.backends.tflite",
    ("ai_edge_litert", "tflite_runtime"), "feredge.export.tflite", auto_rank=0))
register(Format(
    "onnx", ".onnx", ("fp32", "int8"), "feredge.edge.backends.onnxrt", ("onnxruntime",), "feredge.export.onnx",
    options=("providers",), auto_rank=2,
    not_offered=({
        "fp16": "not offered: ONNX Runtime's CPU provider runs fp16 graphs slower than fp32; use int8",
        "dynamic": "not offered: use the static int8 (QDQ) artifact, which also runs on TensorRT"})))
register(Format(
    "openvino", ".xml", ("fp32", "fp16", "int8"), "feredge.edge.backends.openvino", ("openvino",),
    "feredge.export.openvino", options=("device", "precision_hint"), sidecars=(".bin",), folder="openvino",
    auto_rank=1,
    not_offered=({
        "dynamic": "not offered: OpenVINO's CPU plugin has no dynamic-range mode; use int8 (NNCF)"}),
    # fp32/fp16 are verified at full precision: OpenVINO would otherwise run them in bf16 on CPUs with AMX
    verify_options=({"fp32": {"precision_hint": "f32"}, "fp16": {"precision_hint": "f32"}})))
