"""`export_model`: a trained Keras model in, a verified bundle (DESIGN.md) out.

Order of work: check everything that can be checked cheaply (target, formats, pruning needs
data, the model path, the calibration folder, the output location) before TensorFlow is
imported; then load the model, the calibration and verification faces, convert and verify each
artifact in a temporary directory, prune and fine-tune if asked. An artifact that fails
verification is rejected on its own: its files are left out, the manifest and the summary name
it and why, and the artifacts that passed are written as the bundle (`ExportIncomplete` is
raised only when none passed; the earlier bundle then stays). --allow-drop keeps failures.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import gzip
import importlib
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from feredge.edge import formats as format_table
from feredge.edge.bundle import SCHEMA_VERSION, Artifact, Bundle, Verification, sha256_file
from feredge.edge.device import host_record, isa_caps
from feredge.edge.formats import PRECISIONS
from feredge.edge.paths import SAMPLE_DIR
from feredge.evaluation.predict import predict
from feredge.export.bundle_writer import BundleWriter
from feredge.export.calibration import list_calibration_files, load_calibration, labelled_sets
from feredge.export.pruning import PruneRequest, parse_prune
from feredge.export.summary import format_summary, toolchain_versions
from feredge.export.targets import get_target, host_warning
from feredge.export.verify import Reference, accuracy, verify
from feredge.models.run_dir import locate_model

log = logging.getLogger("feredge.export")

NOISY_LOGGERS = ("tf2onnx", "nncf", "absl", "onnxruntime", "openvino", "tensorflow")


class ExportIncomplete(ValueError):
    """No artifact passed verification: nothing was written; `summary` is the table of what failed."""

    def __init__(self, message: str, summary: str):
        super().__init__(message)
        self.summary = summary


def _as_list(value, allowed: tuple[str, ...], what: str) -> list[str]:
    if value is None:
        return list(allowed)
    items = value.split(",") if isinstance(value, str) else list(value)
    items = [str(x).strip().lower() for x in items if str(x).strip()]
    unknown = [x for x in items if x not in allowed]
    if unknown:
        raise ValueError(f"unknown {what} {', '.join(map(repr, unknown))} (choose from {', '.join(allowed)})")
    if not items:
        raise ValueError(f"no {what} given (choose from {', '.join(allowed)})")
    return [x for x in allowed if x in items]


def plan(formats=None, precisions=None, skip=None) -> tuple[list[tuple[str, str]], list[dict]]:
    """(format, precision) jobs in a sensible order, and the combinations skipped with a note.

    `skip` names combinations to leave out ("openvino-fp32"), to keep a shipped bundle small."""
    fmts = _as_list(formats, format_table.names(), "format")
    precs = _as_list(precisions, PRECISIONS, "precision")
    every = {f"{fmt}-{prec}" for fmt in format_table.names() for prec in PRECISIONS}
    unwanted = _as_list(skip, tuple(sorted(every)), "artifact to skip") if skip else []
    jobs, skipped = [], []
    for fmt in fmts:
        for prec in precs:
            if f"{fmt}-{prec}" in unwanted:
                skipped.append({"format": fmt, "precision": prec, "reason": "left out on request (--skip)"})
            elif prec in format_table.get(fmt).precisions:
                jobs.append((fmt, prec))
            else:
                skipped.append({"format": fmt, "precision": prec, "reason": format_table.get(fmt).why_not(prec)})
    if not jobs:
        raise ValueError(f"nothing to export: {', '.join(fmts)} offer none of {', '.join(precs)}"
                         + (f" once {', '.join(unwanted)} are skipped" if unwanted else ""))
    return jobs, skipped


def relative_files(fmt: str, precision: str, tag: str | None) -> list[str]:
    return format_table.get(fmt).files(f"model.{tag}.{precision}" if tag else f"model.{precision}")


def artifact_id(fmt: str, precision: str, tag: str | None) -> str:
    return f"{fmt}-{precision}" + (f"-{tag}" if tag else "")


def _quiet():
    """Silence converters' native stderr chatter (FEREDGE_TF_VERBOSE=1 shows it)."""
    from feredge.models.tf_env import native_stderr_silenced

    return native_stderr_silenced()


class ArtifactExporter:
    """Converts and verifies one Keras model (the source or a pruned variant) into the bundle."""

    def __init__(self, writer: BundleWriter, jobs, calib, verify_set, scratch: Path, total: int,
                 spec, target=None):
        self.writer, self.jobs, self.calib, self.verify_set = writer, jobs, calib, verify_set
        self.scratch, self.total, self.done = scratch, total, 0
        self.spec = spec  # verified as the device will run it (flip-averaged or not)
        self.target = target or get_target(None)
        self.unit = "faces"  # what the verification set holds, for the log

    def run(self, model, ref: Reference, tag: str | None = None, pruning: dict | None = None) -> list[Artifact]:
        return [self.one(model, ref, fmt, prec, tag, pruning) for fmt, prec in self.jobs]

    def one(self, model, ref: Reference, fmt: str, prec: str, tag: str | None = None,
            pruning: dict | None = None) -> Artifact:
        """Convert, verify and record one (format, precision) of `model`."""
        scratch = self.scratch / (tag or "model")  # what one model's conversions share (the ONNX fp32 graph)
        scratch.mkdir(parents=True, exist_ok=True)
        self.done += 1
        aid = artifact_id(fmt, prec, tag)
        files = relative_files(fmt, prec, tag)
        target = self.writer.path(files[0])
        target.parent.mkdir(parents=True, exist_ok=True)
        log.info("[%d/%d] %s: converting", self.done, self.total, aid)
        started = time.perf_counter()
        exporter = importlib.import_module(format_table.get(fmt).exporter)
        with _quiet(), contextlib.redirect_stdout(sys.stderr):  # NNCF draws progress on stdout
            settings = exporter.convert(model, target, prec, calib=self.calib.x, scratch=scratch,
                                        scheme=self.target.scheme_for(fmt))
        seconds = time.perf_counter() - started
        log.info("[%d/%d] %s: converted in %.1f s; verifying on %d %s", self.done, self.total, aid, seconds,
                 len(self.verify_set), self.unit)
        check = verify(target, fmt, prec, self.verify_set.x, self.verify_set.y, ref, self.spec)
        paths = [self.writer.path(f) for f in files]
        artifact = Artifact(
            id=aid, format=fmt, precision=prec, files=tuple(files),
            bytes=int(sum(p.stat().st_size for p in paths)),
            sha256={f: sha256_file(p) for f, p in zip(files, paths)},
            pruning=pruning, verification=Verification.from_dict(check), settings=settings,
            convert_seconds=round(seconds, 2),
            gzip_bytes=sum(len(gzip.compress(p.read_bytes(), 9)) for p in paths))
        acc = "-" if check["accuracy"] is None else f"{check['accuracy'] * 100:.2f} %"
        log.info("[%d/%d] %s: agreement %.2f %%, accuracy %s, ran %s%s", self.done, self.total, aid,
                 check["agreement"] * 100, acc, check["ran_precision"],
                 "" if check["passed"] else f"  FAILED: {check['failure']}")
        return artifact


def export_model(model_path, out_dir, *, formats=None, precisions=None, calib=None, calib_count: int = 300,
                 data=None, labels=None, prune=None, allow_drop: bool = False, add_softmax: bool = False,
                 progress: bool = True, finetune_epochs: int = 2, seed: int = 0, skip=None,
                 flip_average: bool | None = None, target: str | None = None, preprocess=None) -> Bundle:
    """Export a trained tf-keras model to a verified bundle in `out_dir`; returns the loaded bundle.

    formats: tflite, onnx, openvino (default all); precisions: fp32, fp16, dynamic, int8 (default
    all; combinations a format does not offer are skipped with a note); skip: combinations to
    leave out, e.g. "openvino-fp32". calib: folder of faces
    (default the shipped sample), calib_count of them. data: labelled faces for verification (its
    test split) and for pruning's fine-tuning (its train split); default the shipped sample.
    prune: e.g. "magnitude:0.5,structured:0.25". flip_average: None keeps the model's spec;
    True/False sets it in the bundle's spec (verification then runs that way too). target: an
    export.targets name (default generic): the formats and precisions when those are not given,
    the int8 schemes and the device's thread default. preprocess: {field: value} for a model
    without preprocess.json (edge.preprocess_flags). Raises ValueError /
    FileNotFoundError / PermissionError with one line naming the file on bad input, and
    ExportIncomplete when no artifact passed; the previous bundle at `out_dir` survives any
    failure or interruption. Artifacts that failed while others passed are listed under
    manifest["rejected"] and left out of the bundle.
    """
    started = time.perf_counter()
    profile = get_target(target)
    jobs, skipped = plan(formats if formats is not None else profile.formats,
                         precisions if precisions is not None else profile.precisions, skip)
    requests = parse_prune(prune)
    if requests and data is None:
        raise ValueError("pruning needs fine-tuning data: pass --data DIR")
    if int(calib_count) < 1:
        raise ValueError(f"--calib-count must be at least 1, not {calib_count}")
    if finetune_epochs < 1:
        raise ValueError(f"--finetune-epochs must be at least 1, not {finetune_epochs}")
    locate_model(model_path)
    calib_dir = Path(calib) if calib is not None else SAMPLE_DIR
    list_calibration_files(calib_dir)
    if data is not None and not Path(data).exists():
        raise FileNotFoundError(f"{data}: no such data folder or file")
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)

    with BundleWriter(out_dir) as writer, tempfile.TemporaryDirectory(prefix="feredge-export-") as scratch:
        from feredge.export.source import load_source

        log.info("loading %s", model_path)
        source = load_source(model_path, labels=labels, add_softmax=add_softmax, preprocess=preprocess)
        if flip_average is not None:
            source = dataclasses.replace(source, spec=source.spec.replace(flip_average=flip_average))
        if source.spec.flip_average:
            log.info("the model runs flip-averaged: every face and its mirror image (2x inference)")
        model = source.model
        from feredge.models.architectures import count_macs

        parameters, macs = int(model.count_params()), count_macs(model)
        log.info("%s: %s parameters, %.2f M MACs, %dx%dx%d input, %d classes (%s)", source.name,
                 f"{parameters:,}", macs / 1e6, *source.input_shape, len(source.labels), source.output)
        calib_set = load_calibration(calib_dir, source.spec, calib_count, seed=seed, progress=progress)
        log.info("calibration: %d faces from %s", len(calib_set), calib_set.source)
        verify_set, train = labelled_sets(data, source.spec, source.labels, need_training=bool(requests),
                                          seed=seed, progress=progress)
        log.info("verification: %d faces from %s", len(verify_set), verify_set.source)
        if not len(verify_set):
            raise ValueError(f"{verify_set.source}: no verification images")
        ref_probs = predict(model, verify_set.x, source.spec, prepared=True)
        ref_acc = accuracy(ref_probs, verify_set.y)
        if ref_acc is not None:
            log.info("Keras source accuracy on the verification faces: %.2f %%", ref_acc * 100)

        host = host_record()
        caps = isa_caps()
        warning = host_warning(profile, host)
        if warning:
            log.warning("%s", warning)
        log.info("target %s: int8 schemes %s; verifying on %s%s", profile.name,
                 ", ".join(dict.fromkeys(f"{fmt} {profile.scheme_for(fmt)}" for fmt, _ in jobs
                                         if profile.scheme_for(fmt))) or "-",  # once per format
                 host["cpu"],
                 f" with {', '.join(f'{k}={v}' for k, v in caps.items())}" if caps else "")
        exporter = ArtifactExporter(writer, jobs, calib_set, verify_set, Path(scratch),
                                    len(jobs) * (1 + len(requests)), source.spec, profile)
        artifacts = exporter.run(model, Reference(ref_probs, ref_acc, ref_acc))
        reports = []
        for request in requests:
            pruned, report, brief = _prune(source, request, train, verify_set, ref_acc, finetune_epochs, seed,
                                           progress)
            probs = predict(pruned, verify_set.x, source.spec, prepared=True)
            variant = exporter.run(pruned, Reference(probs, accuracy(probs, verify_set.y), ref_acc), request.tag,
                                   brief)
            report["gzip_bytes"] = _gzip_comparison(artifacts, variant)
            if request.method == "structured":
                report["tflite_latency_ms"] = _tflite_latency(writer, artifacts, variant, verify_set.x)
            reports.append(report)
            artifacts += variant
            del pruned

        artifacts, rejected = reject_failures(writer, artifacts, allow_drop)

        writer.write_text("preprocess.json", json.dumps(source.spec.to_dict(), indent=2) + "\n")
        writer.write_text("labels.json", json.dumps(list(source.labels), indent=2) + "\n")
        h, w, c = source.input_shape
        manifest = {
            "schema": SCHEMA_VERSION,
            "model": {"name": source.name, "source": str(source.path.resolve()), "sha256": source.sha256,
                      "parameters": parameters, "macs": macs, "output": source.output,
                      "preprocess_from": source.spec_from},
            "labels": list(source.labels),
            "input": {"height": h, "width": w, "channels": c, "layout": "NHWC", "dtype": "float32"},
            "preprocess": source.spec.to_dict(),
            "toolchain": toolchain_versions(),
            "target": profile.to_dict(),
            "verified_on": {**host, **({"isa_cap": caps} if caps else {})},
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "calibration": {"source": calib_set.source, "count": len(calib_set)},
            "verification_data": {"source": verify_set.source, "count": len(verify_set),
                                  "labelled": int(verify_set.labelled.sum()), "keras_accuracy": ref_acc},
            "artifacts": [a.to_dict() for a in artifacts],
            "rejected": rejected,
            "skipped": skipped,
            "pruning": reports,
            "allow_drop": bool(allow_drop),
        }
        manifest["export_seconds"] = round(time.perf_counter() - started, 1)
        if not artifacts:
            reasons = "; ".join(f"{a['id']}: {a['reason']}" for a in rejected)
            raise ExportIncomplete(f"verification failed for every artifact ({reasons}); nothing was written and "
                                   f"{writer.out} is unchanged (--allow-drop keeps such artifacts)",
                                   format_summary(manifest))
        writer.write_text("summary.txt", format_summary(manifest))
        manifest["files"] = {name: sha256_file(writer.path(name))
                             for name in ("preprocess.json", "labels.json", "summary.txt")}
        out = writer.commit(manifest)
    log.info("export finished in %.0f s", time.perf_counter() - started)
    return Bundle.load(out)


def reject_failures(writer: BundleWriter, artifacts: list[Artifact],
                    allow_drop: bool) -> tuple[list[Artifact], list[dict]]:
    """(artifacts kept, manifest records of those rejected): a failed artifact's files leave the
    bundle, unless allow_drop keeps it marked as allowed."""
    rejected = []
    for a in artifacts:
        if a.verification.passed:
            continue
        if allow_drop:
            log.warning("%s: %s (kept: --allow-drop)", a.id, a.verification.failure)
            a.verification.allowed = True
        else:
            log.warning("%s: REJECTED, left out of the bundle: %s", a.id, a.verification.failure)
            for name in a.files:
                writer.path(name).unlink(missing_ok=True)
            rejected.append({**a.to_dict(), "reason": a.verification.failure})
    return [a for a in artifacts if a.verification.passed or allow_drop], rejected


def _gzip_comparison(unpruned: list[Artifact], pruned: list[Artifact]) -> dict:
    base = {a.id: a for a in unpruned}
    out = {}
    for a in pruned:
        twin = base.get(artifact_id(a.format, a.precision, None))
        out[a.id] = {"pruned": a.gzip_bytes, "unpruned": twin.gzip_bytes if twin else None, "file_bytes": a.bytes}
    return out


def _tflite_latency(writer: BundleWriter, unpruned: list[Artifact], pruned: list[Artifact], x: np.ndarray) -> dict:
    """Single-face, one-thread LiteRT latency of the fp32 artifact before and after structured pruning."""
    from feredge.export.latency import artifact_latency_ms

    twin = next((a for a in pruned if a.format == "tflite" and a.precision == "fp32"), None)
    base = next((a for a in unpruned if a.id == "tflite-fp32"), None)
    if twin is None or base is None:
        return {}
    before, after = artifact_latency_ms([(writer.path(base.files[0]), {}), (writer.path(twin.files[0]), {})], x)
    log.info("LiteRT fp32 single-face latency (1 thread): %.3f -> %.3f ms", before, after)
    return {"before": before, "after": after, "runtime": twin.verification.runtime, "threads": 1}


def _prune(source, request: PruneRequest, train, verify_set, ref_acc, epochs: int, seed: int, progress: bool):
    """(pruned Keras model, full report for the manifest, brief dict for each artifact)."""
    from feredge.export import pruning
    from feredge.export.latency import keras_latency_ms
    from feredge.models.architectures import count_macs

    started = time.perf_counter()
    verbose = 2 if progress else 0
    log.info("pruning %s: %s %g, fine-tuning %d epoch(s) on %d faces from %s", request.tag, request.method,
             request.amount, epochs, len(train), train.source)
    model = source.model
    report = {"tag": request.tag, "method": request.method, "amount": request.amount, "finetune_epochs": epochs,
              "finetune_images": len(train), "finetune_source": train.source}
    if request.method == "magnitude":
        pruned, info = pruning.magnitude_prune(model, train, source.spec, request.amount, epochs=epochs, seed=seed,
                                               verbose=verbose)
        report.update(info)
        before = None
        brief = {"method": "magnitude", "sparsity": request.amount, "measured_sparsity": info["measured_sparsity"],
                 "tag": request.tag}
    else:
        pruned, notes = pruning.structured_prune(model, request.amount)
        before = accuracy(predict(pruned, verify_set.x, source.spec, prepared=True), verify_set.y)
        pruning.fine_tune(pruned, train, source.spec, epochs=epochs, lr=3e-4, seed=seed, verbose=verbose,
                          teacher=model)
        report.update({
            "fraction": request.amount, "notes": notes, "finetune_lr": 3e-4,
            "finetune_teacher": {"model": "the unpruned source", "alpha": pruning.TEACHER_ALPHA, "augment": "standard"},
            "parameters_before": int(model.count_params()), "parameters_after": int(pruned.count_params()),
            "macs_before": count_macs(model), "macs_after": count_macs(pruned),
        })
        report["latency_ms_before"], report["latency_ms_after"] = keras_latency_ms(model, pruned)
        for note in notes:
            log.info("  %s", note)
        brief = {"method": "structured", "fraction": request.amount, "tag": request.tag,
                 **{k: report[k] for k in ("parameters_before", "parameters_after", "macs_before", "macs_after")}}
    after = accuracy(predict(pruned, verify_set.x, source.spec, prepared=True), verify_set.y)
    report["keras_accuracy"] = {"source": ref_acc, "pruned_before_finetune": before, "pruned": after}
    report["seconds"] = round(time.perf_counter() - started, 1)
    brief["keras_accuracy"] = after
    log.info("pruning %s done in %.0f s: Keras accuracy %s -> %s", request.tag, report["seconds"],
             "-" if ref_acc is None else f"{ref_acc * 100:.2f} %", "-" if after is None else f"{after * 100:.2f} %")
    return pruned, report, brief
