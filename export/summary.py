"""The table printed at the end of an export and saved as summary.txt, and toolchain versions."""
from __future__ import annotations

import importlib.metadata

from feredge.edge import formats
from feredge.edge.bundle import Artifact, Verification
from feredge.edge.formats import PRECISIONS

# manifest key -> distribution (or module) that carries the version
TOOLCHAIN = {
    "tensorflow": "tensorflow", "tf_keras": "tf-keras",
    "tensorflow_model_optimization": "tensorflow-model-optimization", "tf2onnx": "tf2onnx", "onnx": "onnx",
    "onnxruntime": "onnxruntime", "openvino": "openvino", "nncf": "nncf", "ai_edge_litert": "ai-edge-litert",
    "numpy": "numpy", "cv2": None,
}


def toolchain_versions() -> dict:
    versions = {}
    for key, dist in TOOLCHAIN.items():
        if dist is None:
            try:
                import cv2
                versions[key] = cv2.__version__
            except ImportError:
                versions[key] = None
            continue
        try:
            versions[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[key] = None
    return versions


def human_bytes(n: int) -> str:
    if n >= 1 << 20:
        return f"{n / (1 << 20):.2f} MB"
    return f"{n / 1024:.1f} kB"


def _pct(x) -> str:
    return "-" if x is None else f"{x * 100:.2f} %"


def _points(x) -> str:
    """An accuracy drop in points: positive = lost, negative = gained."""
    if x is None:
        return "-"
    return "0.00" if abs(x) < 5e-5 else f"{x * 100:.2f}"


def _pruning(p) -> str:
    if not p:
        return "-"
    if p["method"] == "magnitude":
        return f"magnitude {p['measured_sparsity']:.0%}"
    return f"structured {p['fraction']:.0%}"


def format_table(artifacts: list[tuple[Artifact, bool]]) -> str:
    """format, precision, pruning, size, agreement, accuracy, drop (points vs the unpruned source), ran;
    one row per (artifact, rejected)."""
    head = ["format", "precision", "pruning", "size", "agreement", "max|diff|", "accuracy", "drop (pts)", "ran",
            "check"]
    rows = []
    for a, rejected in artifacts:
        v = a.verification or Verification()
        check = "REJECTED" if rejected else ("ok" if v.passed else "FAILED (allowed)")
        rows.append([a.format, a.precision, _pruning(a.pruning), human_bytes(a.bytes), _pct(v.agreement),
                     "-" if v.max_abs_diff is None else f"{v.max_abs_diff:.2g}", _pct(v.accuracy),
                     _points(v.accuracy_drop), str(v.ran_precision), check])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    right = {3, 4, 5, 6, 7}

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [line(head), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    return "\n".join(out)


def format_summary(manifest: dict) -> str:
    model = manifest["model"]
    ver = manifest["verification_data"]
    lines = [f"{model['name']} ({model['source']}): {model['parameters']:,} parameters, "
             f"{model['macs'] / 1e6:.2f} M MACs, output {model['output']}",
             f"verification: {ver['count']} {ver.get('unit', 'faces')} from {ver['source']}; Keras accuracy "
             f"{_pct(ver.get('keras_accuracy'))}; calibration: {manifest['calibration']['count']} "
             f"{manifest['calibration'].get('unit', 'faces')} from "
             f"{manifest['calibration']['source']}"
             + ("; every figure is flip-averaged (face and mirror image)"
                if manifest.get("preprocess", {}).get("flip_average") else ""),
             _target_line(manifest),
             "", format_table(_in_export_order(
                 [(Artifact.from_dict(a), False) for a in manifest["artifacts"]]
                 + [(Artifact.from_dict(a), True) for a in manifest.get("rejected", [])])), ""]
    for a in manifest.get("rejected", []):
        lines.append(f"rejected {a['id']} (not in the bundle): {a['reason']}")
    for a in map(Artifact.from_dict, manifest["artifacts"]):
        d = a.verification.device_default if a.verification else None
        if d and d["ran_precision"] != a.verification.ran_precision:
            lines.append(f"{a.id}: verified with an {a.verification.precision_hint} hint; this device's "
                         f"default runs {d['ran_precision']}: agreement {_pct(d['agreement'])}, accuracy "
                         f"{_pct(d['accuracy'])}")
    if manifest.get("skipped"):
        lines += [f"skipped {s['format']} {s['precision']}: {s['reason']}" for s in manifest["skipped"]]
    for p in manifest.get("pruning", []):
        lines += ["", _pruning_lines(p)]
    lines += ["", "drop: accuracy points lost against the unpruned Keras model (negative: gained); agreement and "
                  "max|diff|: against the artifact's own Keras source (the pruned Keras model for pruned artifacts)"]
    return "\n".join(lines) + "\n"


def _in_export_order(rows: list[tuple[Artifact, bool]]) -> list[tuple[Artifact, bool]]:
    order = formats.names()
    return sorted(rows, key=lambda row: ((row[0].pruning or {}).get("tag") or "",
                                         order.index(row[0].format) if row[0].format in order else 99,
                                         PRECISIONS.index(row[0].precision) if row[0].precision in PRECISIONS else 9))


def _target_line(manifest: dict) -> str:
    from feredge.edge.device import describe_host

    target, host = manifest.get("target") or {}, manifest.get("verified_on")
    where = describe_host(host) if host else "an unrecorded CPU"
    caps = ", ".join(f"{k}={v}" for k, v in (host or {}).get("isa_cap", {}).items())
    schemes = ", ".join(f"{key[:-len('_scheme')]} {value}" for key, value in target.items()
                        if key.endswith("_scheme")) or "-"
    return (f"target {target.get('name', '-')}: int8 schemes {schemes}; verified on {where}"
            + (f" capped to {caps}" if caps else ""))


def _pruning_lines(p: dict) -> str:
    acc = p.get("keras_accuracy", {})
    text = [f"pruning {p['tag']} ({p['method']} {p['amount']:g}), fine-tuned {p['finetune_epochs']} epoch(s) on "
            f"{p['finetune_images']} faces in {p['seconds']:.0f} s:"]
    if p["method"] == "magnitude":  # tfmot prunes during fine-tuning: there is no "before" model
        text.append(f"  Keras accuracy: source {_pct(acc.get('source'))}, pruned and fine-tuned "
                    f"{_pct(acc.get('pruned'))}")
    else:
        text.append(f"  Keras accuracy: source {_pct(acc.get('source'))}, pruned before fine-tuning "
                    f"{_pct(acc.get('pruned_before_finetune'))}, after {_pct(acc.get('pruned'))}")
    if p["method"] == "magnitude":
        text.append(f"  sparsity {p['measured_sparsity']:.2%} of {p['pruned_weights']:,} prunable weights "
                    f"(asked {p['amount']:.0%})")
    else:
        text.append(f"  parameters {p['parameters_before']:,} -> {p['parameters_after']:,}; MACs "
                    f"{p['macs_before'] / 1e6:.2f} M -> {p['macs_after'] / 1e6:.2f} M; Keras batch-1 latency "
                    f"{p['latency_ms_before']:.2f} -> {p['latency_ms_after']:.2f} ms")
        lat = p.get("tflite_latency_ms") or {}
        if lat:
            text.append(f"  LiteRT fp32 single-face latency (1 thread): {lat['before']:.3f} -> {lat['after']:.3f} ms")
        text += [f"  {note}" for note in p.get("notes", [])]
    for name, sizes in sorted(p.get("gzip_bytes", {}).items()):
        text.append(f"  gzip {name}: {human_bytes(sizes['unpruned'])} unpruned -> {human_bytes(sizes['pruned'])} "
                    f"pruned" if sizes.get("unpruned") else f"  gzip {name}: {human_bytes(sizes['pruned'])}")
    return "\n".join(text)
