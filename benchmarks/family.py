"""Models side by side on one accuracy-latency plot, timed in one interleaved run.

    python -m feredge.benchmarks.family --bundle edge --bundle nano --bundle fer=bundles/fer \\
        --extra "fer as shipped=FILE.tflite@fer" --arch seed001 --data DATA --out DIR

Every artifact of every bundle is opened with the kit's edge backend at one thread and timed at
batch 1 in rounds that alternate them (the order rotates each round), so a load that comes and
goes hits all alike; its latency is the median of its round means. `--extra NAME=FILE@BUNDLE` adds
a file made elsewhere (the `fer` package's own TFLite), read with that bundle's preprocessing and
labels. Accuracy is scored on `--data` through the same backends. `--arch NAME` adds a network
of `models/architectures.py` that has no bundle: timed as an untrained TFLite fp32 file (fp32
latency does not depend on the weights), with the best accuracy `comparison.json` recorded for it.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger("feredge.bench")


@dataclass
class Entry:
    model: str  # the name a row is grouped and coloured by
    artifact: str  # artifact id, or a label for an extra file
    path: Path
    bundle: str | None  # name of the bundle whose preprocessing and labels apply (None: an --arch row)
    kind: str = "bundle"  # bundle | extra (a file made elsewhere) | arch (untrained, for its latency)
    parameters: int | None = None
    macs: int | None = None
    accuracy: float | None = None
    accuracy_from: str = "measured"
    latency_ms: float | None = None
    rounds_ms: list[float] = field(default_factory=list)


def _named(value: str) -> tuple[str, str]:
    name, sep, rest = value.partition("=")
    return (name, rest) if sep else (Path(value).name if Path(value).exists() else value, value)


def bundle_entries(values, formats_wanted) -> tuple[list[Entry], dict[str, object]]:
    from feredge.edge.bundle import Bundle
    from feredge.edge.paths import resolve_bundle

    entries, bundles = [], {}
    for value in values:
        name, where = _named(value)
        bundle = Bundle.load(resolve_bundle(where))
        bundles[name] = bundle
        facts = bundle.manifest.get("model", {})
        for artifact in bundle.artifacts:
            if formats_wanted and artifact.format not in formats_wanted:
                continue
            pruned = artifact.pruning or {}  # structured pruning made a smaller network than the bundle's model
            entries.append(Entry(name, artifact.id, bundle.path(artifact), name, "bundle",
                                 pruned.get("parameters_after", facts.get("parameters")),
                                 pruned.get("macs_after", facts.get("macs"))))
    return entries, bundles


def extra_entries(values, bundles) -> list[Entry]:
    entries = []
    for value in values:
        name, rest = _named(value)
        file, sep, bundle_name = rest.rpartition("@")
        if not sep or bundle_name not in bundles:
            raise ValueError(f"--extra {value!r}: expected NAME=FILE@BUNDLE with BUNDLE one of "
                             f"{', '.join(bundles) or 'the --bundle names'}")
        if not Path(file).is_file():
            raise FileNotFoundError(f"{file}: no such file (--extra {name})")
        facts = bundles[bundle_name].manifest.get("model", {})
        entries.append(Entry(name, Path(file).name, Path(file), bundle_name, "extra", facts.get("parameters"),
                             facts.get("macs")))
    return entries


def arch_entries(names, workdir: Path, comparison: Path) -> list[Entry]:
    """Networks without a bundle: an untrained TFLite fp32 file each, with their recorded accuracy."""
    from feredge.models.architectures import build_model, count_macs
    from feredge.models.tf_env import tf

    rows = json.loads(comparison.read_text()) if comparison.is_file() else []
    entries = []
    for name in names:
        model = build_model(name, (48, 48, 1), 7)
        path = workdir / f"{name}.fp32.tflite"
        path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
        scored = [r for r in rows if r.get("arch") == name and r.get("accuracy") is not None]
        best = max(scored, key=lambda r: r["accuracy"], default=None)
        entry = Entry(name, "tflite-fp32 (untrained)", path, None, "arch", int(model.count_params()),
                      int(count_macs(model)))
        if best:
            entry.accuracy = float(best["accuracy"])
            entry.accuracy_from = f"{comparison.name}: {best.get('label', name)} on {best.get('data', '?')}"
        entries.append(entry)
    return entries


def score(entries: list[Entry], bundles: dict, data: str | None, split: str | None, threads: int = 2) -> str:
    """Accuracy of every bundle-backed entry on `data`, through its edge backend."""
    from feredge.benchmarks.harness import load_labelled
    from feredge.edge.backends import open_artifact
    from feredge.evaluation.predict import predict

    cache, set_name = {}, "?"
    for entry in entries:
        if entry.bundle is None:
            continue
        bundle = bundles[entry.bundle]
        if entry.bundle not in cache:
            cache[entry.bundle] = load_labelled(bundle, data, split)
        x, y, set_name = cache[entry.bundle]
        started = time.perf_counter()
        probs = predict(open_artifact(entry.path, threads=threads), x, bundle.spec, prepared=True, batch_size=64)
        entry.accuracy = float(np.mean(probs.argmax(1) == y))
        log.info("%s %s: %.2f %% on %d faces (%.0f s)", entry.model, entry.artifact, 100 * entry.accuracy,
                 len(y), time.perf_counter() - started)
    return set_name


def time_interleaved(entries: list[Entry], bundles: dict, rounds: int, calls: int, warmup: int = 20) -> None:
    """Each entry's latency per face at batch 1 and one thread: the median of its round means."""
    from feredge.edge.backends import open_artifact
    from feredge.edge.tta import with_flip_average

    runners = []
    rng = np.random.default_rng(0)
    for entry in entries:
        spec = bundles[entry.bundle].spec if entry.bundle else None
        backend = with_flip_average(open_artifact(entry.path, threads=1), bool(spec and spec.flip_average))
        x = rng.random((1, *backend.input_shape), dtype=np.float32)
        runners.append((entry, backend, x))
    for r in range(rounds):
        shift = r % len(runners)
        for entry, backend, x in runners[shift:] + runners[:shift]:
            for _ in range(warmup):
                backend.predict(x)
            t0 = time.perf_counter_ns()
            for _ in range(calls):
                backend.predict(x)
            entry.rounds_ms.append((time.perf_counter_ns() - t0) / calls / 1e6)
        log.info("round %d of %d done", r + 1, rounds)
    for entry, _, _ in runners:
        entry.latency_ms = statistics.median(entry.rounds_ms)


def format_table(entries: list[Entry], reference: str | None) -> str:
    ref = next((e.latency_ms for e in entries if e.model == reference), None) if reference else None
    head = ["model", "artifact", "parameters", "MACs", "accuracy", "ms per face", "round range"]
    if ref:
        head.append(f"vs {reference}")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for e in sorted(entries, key=lambda e: e.latency_ms or 0):
        cells = [e.model, e.artifact, f"{e.parameters:,}" if e.parameters else "-",
                 f"{e.macs / 1e6:.1f} M" if e.macs else "-",
                 f"{100 * e.accuracy:.2f} %" + ("" if e.accuracy_from == "measured" else " *")
                 if e.accuracy is not None else "-",
                 f"{e.latency_ms:.3f}", f"{min(e.rounds_ms):.3f}-{max(e.rounds_ms):.3f}"]
        if ref:
            cells.append(f"{e.latency_ms / ref:.2f}x")
        lines.append("| " + " | ".join(cells) + " |")
    notes = sorted({e.accuracy_from for e in entries if e.accuracy_from != "measured"})
    return "\n".join(lines + [f"* accuracy recorded earlier, not measured here ({n})" for n in notes])


def plot(entries: list[Entry], path: Path, title: str) -> None:
    from feredge.benchmarks.report import finish_latency_accuracy
    from feredge.evaluation.plots import _new_figure

    fig = _new_figure((9, 5.5))
    ax = fig.add_subplot()
    models = list(dict.fromkeys(e.model for e in entries))
    colours = dict(zip(models, ["tab:blue", "tab:red", "tab:green", "tab:orange", "tab:purple", "tab:brown",
                                "tab:pink", "tab:gray", "tab:olive", "tab:cyan"] * 3))
    markers = {"tflite": "o", "onnx": "s", "openvino": "D"}
    shown = [e for e in entries if e.accuracy is not None]
    fastest = {m: min((e for e in shown if e.model == m), key=lambda e: e.latency_ms) for m in {e.model for e in shown}}
    for e in shown:
        fmt = "extra" if e.kind == "extra" else e.artifact.split("-")[0]  # a star: a file made elsewhere
        ax.scatter(e.latency_ms, 100 * e.accuracy, color=colours[e.model], marker=markers.get(fmt, "*"),
                   s=55 if fmt in markers else 140, alpha=0.85, edgecolors="black" if fmt not in markers else None)
        if fastest[e.model] is e:  # one label per model, at its fastest artifact; the table has them all
            text = e.model if e.kind == "extra" else f"{e.model} {e.artifact.replace(' (untrained)', '')}"
            ax.annotate(text, (e.latency_ms, 100 * e.accuracy), fontsize=7, textcoords="offset points",
                        xytext=(0, 9 if e.kind == "extra" else -13), ha="center")
    ax.margins(x=0.12, y=0.08)
    for m in models:
        ax.scatter([], [], color=colours[m], label=m)
    for fmt, marker in markers.items():
        ax.scatter([], [], color="white", edgecolors="black", marker=marker, label=fmt)
    finish_latency_accuracy(fig, ax, path, "latency per face, ms (batch 1, 1 thread, median of interleaved rounds; "
                            "log scale)", title, title_size=10)


def write(result: dict, entries: list[Entry], out: Path, reference: str | None) -> None:
    from feredge.edge.fileio import write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "family.json", json.dumps(result, indent=2, default=str) + "\n")
    device = result["device"]
    header = (f"Latency per face: batch 1, 1 thread, median of {result['rounds']} interleaved rounds of "
              f"{result['calls']} calls, on {device.get('cpu', '?')} ({device.get('machine', '?')}; "
              f"{', '.join(device.get('isa') or []) or 'no listed ISA'}). Accuracy on {result['data']}.\n\n")
    write_text_atomic(out / "family.md", header + format_table(entries, reference) + "\n")
    rows = [{k: v for k, v in asdict(e).items() if k != "rounds_ms"} for e in entries]
    tmp = out / ".family.csv.tmp"
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(out / "family.csv")
    plot(entries, out / "family.png", result["title"])


def main(argv=None) -> int:
    from feredge.edge.paths import PRETRAINED_DIR

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", action="append", default=[], metavar="[NAME=]DIR",
                   help="a bundle or a shipped model's name (edge, nano); repeatable")
    p.add_argument("--extra", action="append", default=[], metavar="NAME=FILE@BUNDLE",
                   help="an artifact made elsewhere, read like the bundle named BUNDLE; repeatable")
    p.add_argument("--arch", action="append", default=[], help="an architecture without a bundle; repeatable")
    p.add_argument("--comparison", default=str(PRETRAINED_DIR / "comparison.json"),
                   help="where --arch rows take their recorded accuracy")
    p.add_argument("--formats", help="comma list: time only these formats' artifacts (default: all)")
    p.add_argument("--data", help="labelled faces to score on (default: the shipped sample)")
    p.add_argument("--split")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--calls", type=int, default=200, help="timed calls per artifact per round")
    p.add_argument("--reference", help="model name the last column divides by (e.g. 'fer as shipped')")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.bundle and not args.arch:
        p.error("give at least one --bundle or --arch")
    if args.rounds < 1 or args.calls < 1:
        p.error("--rounds and --calls must be at least 1")
    try:
        return _run(args)
    except (OSError, ValueError) as exc:  # bad input: one line, not a traceback (BundleError is a ValueError)
        print(f"family: error: {exc}", file=sys.stderr)
        return 2


def _run(args) -> int:
    from feredge.benchmarks.device import device_facts

    wanted = {f for f in (args.formats or "").split(",") if f}
    entries, bundles = bundle_entries(args.bundle, wanted)
    entries += extra_entries(args.extra, bundles)
    set_name = score(entries, bundles, args.data, args.split)
    with tempfile.TemporaryDirectory() as tmp:
        entries += arch_entries(args.arch, Path(tmp), Path(args.comparison))
        time_interleaved(entries, bundles, args.rounds, args.calls)
    device = device_facts()
    isa = ", ".join(device.get("isa", [])) or "no listed ISA"
    title = (f"accuracy on {Path(set_name).name or set_name} against latency per face\n"
             f"{device.get('cpu', '?')} ({device.get('machine', '?')}, {isa})")
    result = {"title": title, "device": device, "data": set_name, "rounds": args.rounds, "calls": args.calls,
              "rows": [asdict(e) for e in entries]}
    print(format_table(entries, args.reference))
    write(result, entries, Path(args.out), args.reference)
    print(f"\nresults in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
