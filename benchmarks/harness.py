"""`feredge bench`: every artifact of a bundle, measured on this device, one record per row.

A record per (device, artifact, runtime, threads): load time, first inference, latency
percentiles, FPS, memory, size, the precision that actually ran, and accuracy, macro-F1,
agreement and drop against the float reference on a labelled set.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from feredge.benchmarks.device import device_facts
from feredge.benchmarks.records import LATENCY_FIELDS, BenchRecord
from feredge.evaluation.metrics import classification_report, top1_agreement
from feredge.edge import formats
from feredge.edge.bundle import Artifact, Bundle, sha256_file
from feredge.edge.preprocess import preprocess
from feredge.evaluation.predict import predict

log = logging.getLogger("feredge.bench")

RECORD_VERSION = 1


@dataclasses.dataclass
class BenchOptions:
    threads: tuple[int, ...] = (1,)
    batch: int = 1
    warmup_s: float = 0.5
    min_s: float = 1.0
    min_runs: int = 50
    max_drop: float = 1.0  # accuracy points
    select: tuple[str, ...] = ()  # artifact ids or formats; empty: all
    data: str | None = None  # labelled set; None: the shipped sample
    split: str | None = None
    accuracy: bool = True
    reference: str = "auto"  # auto (Keras if TensorFlow is installed, else fp32 artifact) | keras | artifact
    openvino_device: str = "CPU"
    onnx_providers: str = "auto"
    timeout_s: float = 600.0


def selected(bundle: Bundle, select) -> list[Artifact]:
    if not select:
        return list(bundle.artifacts)
    chosen = [a for a in bundle.artifacts if a.id in select or a.format in select]
    if not chosen:
        raise ValueError(f"{bundle.root}: no artifact matches {', '.join(select)} "
                         f"(has: {', '.join(a.id for a in bundle.artifacts)})")
    return chosen


def load_labelled(bundle: Bundle, data: str | None, split: str | None):
    """Preprocessed faces and labels in the bundle's class order, plus a name for the set."""
    from feredge.evaluation.datasets import load_dataset
    from feredge.evaluation.scoring import labels_in_model_order
    from feredge.edge.paths import SAMPLE_DIR

    source = Path(data) if data else SAMPLE_DIR
    if split is None and (source.suffix.lower() == ".csv" or (source / "test").is_dir()):
        split = "test"
    dataset = load_dataset(source, split=split, color=bundle.spec.channels == 3, progress=False)
    x = preprocess(dataset.images, bundle.spec)
    y = labels_in_model_order(dataset, bundle.labels)
    name = str(source) + (f" [{split}]" if split else "")
    return x, y, name


def keras_reference(bundle: Bundle, x: np.ndarray) -> np.ndarray | None:
    """Probabilities of the bundle's Keras source, if TensorFlow and the unchanged file are here."""
    source = Path(bundle.manifest.get("model", {}).get("source", ""))
    expected = bundle.manifest.get("model", {}).get("sha256")
    if not source.is_file() or (expected and sha256_file(source) != expected):
        return None
    try:
        from feredge.models.model_io import UnsafeModelError, load_keras_model
        from feredge.models.tf_env import keras  # noqa: F401  (TensorFlow present?)
    except ImportError:
        return None
    try:
        model = load_keras_model(source)
    except UnsafeModelError as exc:
        log.warning("%s; comparing with the fp32 artifact instead", exc)
        return None
    return predict(model, x, bundle.spec, prepared=True)


def _options_for(artifact: Artifact, opts: BenchOptions) -> dict:
    return formats.runtime_options(artifact.format, device=opts.openvino_device, providers=opts.onnx_providers)


def run_worker(job: dict, timeout_s: float) -> dict:
    cmd = [sys.executable, "-m", "feredge.benchmarks.worker", json.dumps(job)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"worker exited with {done.returncode}: {tail[:300]}"}
    return json.loads(lines[-1])


def run_bench(bundle_dir: str | Path, opts: BenchOptions, progress: bool = True) -> dict:
    bundle = Bundle.load(bundle_dir)
    artifacts = selected(bundle, opts.select)
    device = device_facts()
    meta = {"record_version": RECORD_VERSION, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "bundle": str(Path(bundle_dir).resolve()), "model": bundle.manifest.get("model", {}).get("name"),
            "device": device, "options": dataclasses.asdict(opts)}
    with tempfile.TemporaryDirectory(prefix="feredge-bench-") as tmp:
        tmp = Path(tmp)
        x = y = reference = None
        if opts.accuracy:
            x, y, meta["data"] = load_labelled(bundle, opts.data, opts.split)
            np.save(tmp / "x.npy", x)
            meta["samples"] = int(len(y))
            if opts.reference in ("auto", "keras"):
                reference = keras_reference(bundle, x)
                if reference is not None:
                    meta["reference"] = "keras"
                elif opts.reference == "keras":
                    raise ValueError(f"{bundle.root}: the Keras source model or TensorFlow is not available here")
        records, probs_by_id = [], {}
        total = len(artifacts) * len(opts.threads)
        step = 0
        for artifact in artifacts:
            for i, threads in enumerate(opts.threads):
                step += 1
                job = {"path": str(bundle.path(artifact)), "threads": threads, "batch": opts.batch,
                       "warmup_s": opts.warmup_s, "min_s": opts.min_s, "min_runs": opts.min_runs,
                       "options": _options_for(artifact, opts), "spec": bundle.spec.to_dict()}
                if opts.accuracy and i == 0:
                    job.update(data=str(tmp / "x.npy"), probs_out=str(tmp / f"{artifact.id}.npy"))
                if progress:
                    print(f"[{step}/{total}] {artifact.id} threads={threads} ...", file=sys.stderr, flush=True)
                bundle.check(artifact)
                result = run_worker(job, opts.timeout_s)
                if "probs_out" in job and "error" not in result:
                    probs_by_id[artifact.id] = np.load(job["probs_out"])
                records.append(_record(artifact, bundle, threads, opts, device, result))
        if opts.accuracy:
            if reference is None:
                reference, meta["reference"] = _artifact_reference(probs_by_id, bundle)
            meta["reference_accuracy"] = float((reference.argmax(1) == y).mean()) if reference is not None else None
            _add_accuracy(records, probs_by_id, reference, y, bundle.labels)
    return {**meta, "records": records}


def _artifact_reference(probs_by_id: dict, bundle: Bundle):
    for fmt in formats.names():
        for artifact in bundle.artifacts:
            if artifact.format == fmt and artifact.precision == "fp32" and artifact.pruning is None \
                    and artifact.id in probs_by_id:
                return probs_by_id[artifact.id], artifact.id
    return None, None


def _record(artifact: Artifact, bundle: Bundle, threads: int, opts: BenchOptions, device: dict,
            result: dict) -> BenchRecord:
    record = BenchRecord(
        device={k: device.get(k) for k in ("machine", "cpu", "isa", "system", "board", "cores", "hostname")},
        artifact=artifact.id, format=artifact.format, precision=artifact.precision, pruning=artifact.pruning,
        threads=threads, batch=opts.batch, size_bytes=artifact.bytes, flip_average=bundle.spec.flip_average,
        status="ok" if "error" not in result else f"error: {result['error']}")
    if "error" not in result:
        record = dataclasses.replace(
            record, runtime=result["runtime"], precision_ran=result["precision_ran"], load_ms=result["load_ms"],
            first_inference_ms=result["first_inference_ms"], peak_rss_mb=result["peak_rss_mb"],
            model_rss_mb=result["model_rss_mb"], **{k: result["latency"][k] for k in LATENCY_FIELDS})
    return record


def _add_accuracy(records, probs_by_id, reference, y, labels) -> None:
    ref_acc = float((reference.argmax(1) == y).mean()) if reference is not None else None
    for record in records:
        probs = probs_by_id.get(record.artifact)
        if probs is None:
            continue
        report = classification_report(y, probs.argmax(1), list(labels))
        record.accuracy, record.macro_f1 = report["accuracy"], report["macro_f1"]
        if reference is not None:
            record.agreement = top1_agreement(probs, reference)
            record.reference_accuracy = ref_acc
            record.accuracy_drop = ref_acc - report["accuracy"]
