"""`feredge export` of a seed004 run: the temporal head as a verified bundle of its own.

The head's input is (1, T, classes) per-frame log-probabilities, not images. Calibration and
verification sequences come from clips (the shipped sample made into clips by default) run
through the frozen per-frame Keras model, and each artifact is verified against the Keras head
on them, by the same rules as every other artifact. Every format and precision is tried; one a
converter cannot hold is rejected with the converter's own error and the nearest export that
works (a unidirectional LSTM), and the others are written. The bundle is separate from the
per-frame one (a bundle folder holds only what its manifest lists) and carries a "temporal"
block that `edge.temporal` reads.
"""
from __future__ import annotations

import datetime
import json
import logging
import tempfile
import time
from pathlib import Path

from feredge.edge.bundle import SCHEMA_VERSION, Bundle, sha256_file
from feredge.edge.device import host_record
from feredge.edge.paths import SAMPLE_DIR
from feredge.export.bundle_writer import BundleWriter
from feredge.export.calibration import ImageSet, is_split_source
from feredge.export.summary import format_summary, toolchain_versions
from feredge.export.targets import get_target
from feredge.export.verify import Reference, accuracy

log = logging.getLogger("feredge.export")

NEAREST = "train with --unidirectional (a forward LSTM with the same interface) and export that"


def _sequences(frame_model, frame_files, labels, data, frames: int, *, split, seed: int, limit: int | None) -> ImageSet:
    """(N, T, classes) per-frame log-probabilities of clips from `data`, labels in the head's order."""
    from feredge.evaluation.clip_sources import clip_source
    from feredge.models.temporal_train import cached_logprobs, model_order

    clips = clip_source(data, split, frames, seed=seed, limit=limit, progress=False)
    if not len(clips):
        raise ValueError(f"{data}: no clips")
    return ImageSet(cached_logprobs(frame_files, clips.clips, lambda: frame_model), model_order(clips, labels),
                    clips.source)


def export_temporal(run, out_dir, *, formats=None, precisions=None, calib=None, calib_count: int = 300,
                    data=None, allow_drop: bool = False, target: str | None = None, skip=None) -> Bundle:
    """Export a seed004 run directory to a verified temporal bundle at out_dir (see the module doc)."""
    from feredge.evaluation.clip_sources import SPLIT_SEED_OFFSET, is_clip_data
    from feredge.export.pipeline import ArtifactExporter, plan, reject_failures
    from feredge.models.model_io import load_keras_model
    from feredge.models.temporal_train import load_temporal_run

    started = time.perf_counter()
    profile = get_target(target)
    jobs, skipped = plan(formats, precisions, skip)
    head, info, labels, frame_files = load_temporal_run(run)
    frames = info["frames"]
    calib_data, data = Path(calib) if calib else SAMPLE_DIR, Path(data) if data else SAMPLE_DIR
    for path in (calib_data, data):
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such data folder or file")
    with BundleWriter(out_dir) as writer, tempfile.TemporaryDirectory(prefix="feredge-export-") as scratch:
        frame_model = load_keras_model(frame_files.model)
        split = "test" if not is_clip_data(data) and is_split_source(data) else None
        calib_split = "train" if not is_clip_data(calib_data) and is_split_source(calib_data) else None
        log.info("calibration and verification clips of %d frames through the per-frame model %s", frames,
                 frame_files.model)
        calib_set = _sequences(frame_model, frame_files, labels, calib_data, frames, split=calib_split, seed=0,
                               limit=calib_count)
        # the default sample serves both: verification clips get their own seed
        verify_set = _sequences(frame_model, frame_files, labels, data, frames, split=split,
                                seed=0 if split else SPLIT_SEED_OFFSET["test"], limit=None)
        ref_probs = head.predict(verify_set.x, batch_size=512, verbose=0)
        ref_acc = accuracy(ref_probs, verify_set.y)
        log.info("calibration: %d clips from %s; verification: %d clips from %s; Keras head accuracy %.2f %%",
                 len(calib_set), calib_set.source, len(verify_set), verify_set.source, 100 * (ref_acc or 0))
        spec = frame_files.spec.replace(flip_average=False)  # sequences are never mirrored
        exporter = ArtifactExporter(writer, jobs, calib_set, verify_set, Path(scratch), len(jobs), spec, profile)
        exporter.unit = "clips"
        artifacts, failed = [], []
        for fmt, prec in jobs:
            try:
                artifacts.append(exporter.one(head, Reference(ref_probs, ref_acc, ref_acc), fmt, prec))
            except Exception as exc:  # a converter that cannot hold the model: its own words, then the way out
                from feredge.export.pipeline import relative_files

                for name in relative_files(fmt, prec, None):  # whatever it left half-written
                    writer.path(name).unlink(missing_ok=True)
                reason = f"the {fmt} converter failed: {_first_line(exc)}" + \
                    (f"; nearest that works: {NEAREST}" if info.get("bidirectional", True) else "")
                log.warning("%s-%s: REJECTED: %s", fmt, prec, reason)
                failed.append({"id": f"{fmt}-{prec}", "format": fmt, "precision": prec, "reason": reason})
        artifacts, rejected = reject_failures(writer, artifacts, allow_drop)
        rejected += failed
        writer.write_text("preprocess.json", json.dumps(frame_files.spec.to_dict(), indent=2) + "\n")
        writer.write_text("labels.json", json.dumps(list(labels), indent=2) + "\n")
        source = Path(run) / "model.keras" if Path(run).is_dir() else Path(run)
        manifest = {
            "schema": SCHEMA_VERSION,
            "model": {"name": "seed004", "source": str(source.resolve()), "sha256": sha256_file(source),
                      "parameters": int(head.count_params()), "macs": int(info.get("macs", 0)),
                      "output": "probabilities", "preprocess_from": str(frame_files.model)},
            "labels": list(labels),
            "input": {"frames": frames, "features": len(labels), "layout": "NTF", "dtype": "float32"},
            "temporal": {"frames": frames, "features": "logprobs",
                         "bidirectional": bool(info.get("bidirectional", True)),
                         "frame_model": info.get("frame_model", "shipped"),
                         "frame_model_sha256": info.get("frame_model_sha256", "")},
            "preprocess": frame_files.spec.to_dict(),
            "toolchain": toolchain_versions(),
            "target": profile.to_dict(),
            "verified_on": host_record(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "calibration": {"source": calib_set.source, "count": len(calib_set), "unit": "clips"},
            "verification_data": {"source": verify_set.source, "count": len(verify_set), "unit": "clips",
                                  "labelled": int(verify_set.labelled.sum()), "keras_accuracy": ref_acc},
            "artifacts": [a.to_dict() for a in artifacts],
            "rejected": rejected,
            "skipped": skipped,
            "pruning": [],
            "allow_drop": bool(allow_drop),
        }
        manifest["export_seconds"] = round(time.perf_counter() - started, 1)
        from feredge.export.pipeline import ExportIncomplete

        if not artifacts:
            reasons = "; ".join(f"{a['id']}: {a['reason']}" for a in rejected)
            raise ExportIncomplete(f"verification failed for every artifact ({reasons}); nothing was written and "
                                   f"{writer.out} is unchanged", format_summary(_summary_view(manifest)))
        writer.write_text("summary.txt", format_summary(_summary_view(manifest)))
        manifest["files"] = {name: sha256_file(writer.path(name))
                             for name in ("preprocess.json", "labels.json", "summary.txt")}
        out = writer.commit(manifest)
    log.info("temporal export finished in %.0f s", time.perf_counter() - started)
    return Bundle.load(out)


def _summary_view(manifest: dict) -> dict:
    """The manifest as the summary table reads it: converter failures have no verification to show."""
    view = dict(manifest)
    view["rejected"] = [r for r in manifest["rejected"] if "verification" in r]
    view["skipped"] = list(manifest["skipped"]) + [
        {"format": r["format"], "precision": r["precision"], "reason": r["reason"]}
        for r in manifest["rejected"] if "verification" not in r]
    return view


def _first_line(exc: BaseException) -> str:
    from feredge.edge.backends.tflite import _first_line as first

    return first(exc)

