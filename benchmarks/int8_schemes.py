"""Measure every int8 quantization scheme of every format on this CPU: accuracy, drop, agreement, latency.

    python -m feredge.benchmarks.int8_schemes --data DATA --calib DATA/train --out benchmarks/results/int8-schemes-HOST

Each scheme in export.onnx.SCHEMES and export.openvino.SCHEMES (and LiteRT's one int8 scheme) is
quantized from the same model with the same calibration faces, run through the edge backend on
the labelled faces, and timed on one face with one thread, the candidates of a format in
alternation (export.latency) so that a change in load hits them alike. The table names the CPU
and its ISA flags: the point of the table is that the answer depends on them. Needs the export
toolchain (TensorFlow); writes schemes.md, schemes.json and schemes.csv.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("feredge.schemes")


def measure(model_path, data, calib_dir, calib_count: int = 300, runs: int = 300, progress: bool = True) -> dict:
    import contextlib

    from feredge.edge import formats
    from feredge.edge.device import host_record, isa_caps
    from feredge.export import onnx as onnx_export
    from feredge.export import openvino as ov_export
    from feredge.export import tflite as tflite_export
    from feredge.export.calibration import labelled_sets, load_calibration
    from feredge.export.latency import artifact_latency_ms
    from feredge.export.pipeline import _quiet
    from feredge.evaluation.predict import predict
    from feredge.export.source import load_source
    from feredge.export.verify import Reference, accuracy, verify

    started = time.perf_counter()
    source = load_source(model_path)
    spec, model = source.spec, source.model
    calib = load_calibration(calib_dir, spec, calib_count, progress=progress)
    faces, _ = labelled_sets(data, spec, source.labels, need_training=False, progress=progress)
    ref_probs = predict(model, faces.x, spec, prepared=True)
    ref = Reference(ref_probs, accuracy(ref_probs, faces.y), accuracy(ref_probs, faces.y))
    log.info("Keras: %.2f %% on %d faces from %s", ref.accuracy * 100, len(faces), faces.source)
    rows = []
    with tempfile.TemporaryDirectory(prefix="feredge-schemes-") as tmp:
        tmp = Path(tmp)
        jobs = []  # (format, scheme, portable, path, options)
        with _quiet(), contextlib.redirect_stdout(sys.stderr):
            for fmt, module, schemes in (("tflite", tflite_export, {"xnnpack": None}),
                                         ("onnx", onnx_export, onnx_export.SCHEMES),
                                         ("openvino", ov_export, ov_export.SCHEMES)):
                path = tmp / fmt / formats.get(fmt).files("fp32")[0]
                path.parent.mkdir(parents=True, exist_ok=True)
                module.convert(model, path, "fp32", scratch=tmp)
                jobs.append((fmt, "fp32", None, path, dict(formats.get(fmt).verify_options.get("fp32", {}))))
                for name in schemes:
                    log.info("%s int8 %s: quantizing", fmt, name)
                    path = tmp / fmt / formats.get(fmt).files(name)[0]
                    settings = module.convert(model, path, "int8", calib=calib.x, scratch=tmp,
                                              scheme=None if fmt == "tflite" else name)
                    jobs.append((fmt, name, settings.get("portable", True), path, {}))
        for fmt, name, portable, path, options in jobs:
            precision = "fp32" if name == "fp32" else "int8"
            check = verify(path, fmt, precision, faces.x, faces.y, ref, spec)
            rows.append({"format": fmt, "scheme": name, "precision": precision, "portable": portable,
                         "accuracy": check["accuracy"], "drop_points": round(check["source_accuracy_drop"] * 100, 2),
                         "agreement": check["agreement"], "ran_precision": check["ran_precision"],
                         "runtime": check["runtime"], "path": path, "options": options})
            log.info("%s %s: %.2f %% (drop %.2f), agreement %.2f %%", fmt, name, check["accuracy"] * 100,
                     rows[-1]["drop_points"], check["agreement"] * 100)
        for fmt in ("tflite", "onnx", "openvino"):
            mine = [r for r in rows if r["format"] == fmt]
            log.info("%s: timing %d artifacts, one face, one thread, %d alternating rounds", fmt, len(mine), runs)
            for r, ms in zip(mine, artifact_latency_ms([(r["path"], r["options"]) for r in mine], faces.x, runs)):
                r["latency_ms_p50"] = round(ms, 4)
    for r in rows:
        del r["path"], r["options"]
    host = host_record() | ({"isa_cap": isa_caps()} if isa_caps() else {})
    return {"host": host, "model": {"name": source.name, "sha256": source.sha256},
            "keras_accuracy": ref.accuracy, "faces": len(faces), "faces_source": faces.source,
            "calibration": {"source": calib.source, "count": len(calib)}, "threads": 1, "rows": rows,
            "seconds": round(time.perf_counter() - started, 1)}


def to_markdown(report: dict) -> str:
    from feredge.edge.device import describe_host

    caps = ", ".join(f"{k}={v}" for k, v in report["host"].get("isa_cap", {}).items())
    lines = [f"Int8 schemes on {describe_host(report['host'])}{' capped to ' + caps if caps else ''}: "
             f"{report['faces']} faces from "
             f"{report['faces_source']}, Keras {report['keras_accuracy'] * 100:.2f} %; calibration "
             f"{report['calibration']['count']} faces; latency = median of one face, one thread.", "",
             "| format | scheme | portable | accuracy | drop (points) | agreement | latency ms | ran |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for r in report["rows"]:
        portable = "-" if r["portable"] is None else ("yes" if r["portable"] else "no")
        lines.append(f"| {r['format']} | {r['scheme']} | {portable} | {r['accuracy'] * 100:.2f} % | "
                     f"{r['drop_points']:.2f} | {r['agreement'] * 100:.2f} % | {r['latency_ms_p50']:.3f} | "
                     f"{r['ran_precision']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m feredge.benchmarks.int8_schemes", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model to quantize (default: the shipped model)")
    p.add_argument("--data", required=True, help="labelled faces: a FER-style root (its test/ split is used)")
    p.add_argument("--calib", required=True, help="calibration faces (e.g. DATA/train)")
    p.add_argument("--calib-count", type=int, default=300)
    p.add_argument("--runs", type=int, default=300, help="timed rounds per artifact")
    p.add_argument("--out", required=True, help="folder for schemes.md/.json/.csv")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from feredge.edge.fileio import write_text_atomic
    from feredge.edge.paths import PRETRAINED_DIR

    report = measure(args.model or PRETRAINED_DIR, args.data, args.calib, args.calib_count, args.runs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = to_markdown(report)
    write_text_atomic(out / "schemes.md", table)
    write_text_atomic(out / "schemes.json", json.dumps(report, indent=2) + "\n")
    with open(out / "schemes.csv.tmp", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(report["rows"][0]))
        writer.writeheader()
        writer.writerows(report["rows"])
    Path(out / "schemes.csv.tmp").replace(out / "schemes.csv")
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
