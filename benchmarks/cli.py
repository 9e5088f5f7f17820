"""Arguments of `feredge bench` and `feredge bench compare`."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("feredge.bench")


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    from feredge.models.model_io import add_trust_argument

    add_trust_argument(p)
    from feredge.benchmarks.harness import BenchOptions

    d = BenchOptions()
    p.add_argument("compare", nargs="*", metavar="compare RECORDS.json",
                   help="'compare a.json b.json ...': merge records from several devices into one table and plot")
    p.add_argument("--bundle", help="bundle directory, or a shipped model's name: edge, nano (default: edge)")
    p.add_argument("--artifacts", default="", help="comma-separated artifact ids or formats (default: all)")
    p.add_argument("--threads", type=_ints, default=d.threads, help="thread counts, e.g. 1,2,4 (default: 1)")
    p.add_argument("--batch", type=int, default=d.batch, help="faces per inference (default: 1)")
    p.add_argument("--data", help="labelled faces for accuracy (default: the shipped sample)")
    p.add_argument("--split", help="split of --data (default: test when it has one)")
    p.add_argument("--no-accuracy", action="store_true", help="latency only")
    p.add_argument("--reference", default=d.reference, choices=("auto", "keras", "artifact"),
                   help="float reference for drop and agreement (default: Keras if TensorFlow is here)")
    p.add_argument("--max-drop", type=float, default=d.max_drop, help="accuracy budget in points (default: 1.0)")
    p.add_argument("--warmup", type=float, default=d.warmup_s, help="warm-up seconds (default: 0.5)")
    p.add_argument("--min-time", type=float, default=d.min_s, help="measure at least this many seconds (default: 1)")
    p.add_argument("--min-runs", type=int, default=d.min_runs, help="and at least this many runs (default: 50)")
    p.add_argument("--device", default=d.openvino_device, help="OpenVINO device (default: CPU)")
    p.add_argument("--providers", default=d.onnx_providers, help="ONNX Runtime providers (default: auto)")
    p.add_argument("--video", help="also run the edge pipeline end to end on this video (or camera source)")
    p.add_argument("--e2e-frames", type=int, default=300, help="frames for the end-to-end run (default: 300)")
    p.add_argument("--overhead", action="store_true",
                   help="measure the harness's own overhead against a bare loop and the native benchmark tools")
    p.add_argument("--no-recommend", action="store_true", help="do not store the recommendation in the bundle")
    p.add_argument("--detectors", nargs="?", const="haar,yunet,blazeface", default=None, metavar="LIST",
                   help="compare the face detectors instead (default all: haar,yunet,blazeface): ms per frame, "
                        "detection rate by face size, false detections, box framing; no bundle needed")
    p.add_argument("--faces-per-size", type=int, default=40, help="--detectors: faces per size bin (default: 40)")
    p.add_argument("--video-seconds", type=float, default=6.0,
                   help="--detectors: length of each of the two test videos (default: 6)")
    p.add_argument("--photos", default=None, metavar="DIR",
                   help="--detectors: also a folder of your own full photos (no ground truth: faces found, time)")
    p.add_argument("--temporal", nargs="?", const="default", default=None, metavar="BUNDLE",
                   help="measure seed004's temporal head instead (default: the shipped one): latency per clip "
                        "per artifact and --threads; with --video also the pipeline on that video without and "
                        "with the head (per-frame artifacts: --artifacts, default tflite-fp32)")
    p.add_argument("--out", default="bench-results", help="directory for JSON, CSV, Markdown and plots")


def run(args: argparse.Namespace) -> int:
    if args.detectors:
        from feredge.benchmarks import detectors

        if args.video_seconds < 1 / 15:
            raise ValueError(f"--video-seconds must hold at least one frame at 15 FPS, not {args.video_seconds}")

        detectors.run(argparse.Namespace(detectors=args.detectors, per_bin=args.faces_per_size,
                                         empty=args.faces_per_size, video_seconds=args.video_seconds, cv_threads=1, seed=0,
                                         out=args.out, photos=args.photos))
        return 0
    if args.temporal:
        from feredge.benchmarks import temporal
        from feredge.edge.paths import DEFAULT_TEMPORAL_BUNDLE, resolve_bundle

        root = DEFAULT_TEMPORAL_BUNDLE if args.temporal == "default" else Path(args.temporal)
        result = temporal.measure(root, args.threads, warmup_s=args.warmup, min_s=args.min_time,
                                  min_runs=args.min_runs)
        if args.video:  # what the head costs a whole frame: the pipeline without and with it
            result["e2e"] = temporal.e2e_with_and_without(
                resolve_bundle(args.bundle), root, args.video, args.threads,
                [a for a in args.artifacts.split(",") if a] or ["tflite-fp32"], args.e2e_frames)
        print(temporal.format_table(result))
        print(f"\nresults in {temporal.write(result, args.out)}")
        return 0
    if args.compare:
        if args.compare[0] != "compare" or len(args.compare) < 2:
            raise ValueError("usage: feredge bench compare RECORDS.json [RECORDS.json ...] [--out DIR]")
        return _compare(args.compare[1:], args.out)
    from feredge.benchmarks.harness import BenchOptions, run_bench
    from feredge.benchmarks.recommend import apply_gate, recommend, write_recommendation
    from feredge.benchmarks.report import format_table, write_reports
    from feredge.edge.paths import resolve_bundle

    _check_args(args)
    bundle = resolve_bundle(args.bundle)
    opts = BenchOptions(threads=args.threads, batch=args.batch, warmup_s=args.warmup, min_s=args.min_time,
                        min_runs=args.min_runs, max_drop=args.max_drop,
                        select=tuple(s for s in args.artifacts.split(",") if s), data=args.data, split=args.split,
                        accuracy=not args.no_accuracy, reference=args.reference, openvino_device=args.device,
                        onnx_providers=args.providers)
    from feredge.edge.bundle import Bundle
    from feredge.edge.device import host_difference

    try:
        note = host_difference(Bundle.load(bundle).manifest.get("verified_on"))
    except ValueError:
        note = None  # run_bench names what is wrong with the bundle
    if note:
        print(note, file=sys.stderr)
    result = run_bench(bundle, opts)
    apply_gate(result["records"], opts.max_drop)
    result["recommendation"] = recommend(result["records"], opts.max_drop)
    if args.video:
        from feredge.benchmarks.e2e import run_e2e
        chosen = list(dict.fromkeys(r.artifact for r in result["records"])) if opts.select else None
        result["e2e"] = run_e2e(bundle, args.video, threads=opts.threads, max_frames=args.e2e_frames,
                                artifacts=chosen)
    if args.overhead:
        from feredge.benchmarks.overhead import measure_overhead
        result["overhead"] = measure_overhead(bundle, opts)
    print(format_table(result["records"]))
    failed = [r for r in result["records"] if not r.ok]
    rec = result["recommendation"]
    if rec:
        print(f"\nrecommended on this device: {rec['artifact']} with {rec['threads']} thread(s) "
              f"({rec['p50_ms']:.3f} ms p50, {rec['fps']:.0f} FPS)")
        if not args.no_recommend:
            stored = write_recommendation(bundle, rec)
            if stored:
                print(f"stored in {stored} for 'feredge run --backend auto'")
    else:
        print(f"\nno artifact stays within {opts.max_drop:g} accuracy points: no recommendation")
    if result.get("e2e"):
        from feredge.benchmarks.report import format_e2e_markdown
        print("\n" + format_e2e_markdown(result["e2e"]))
    if result.get("overhead"):
        print("\n" + "\n".join(result["overhead"]["lines"]))
    written = write_reports(result, args.out)
    print(f"\nreports: {', '.join(str(p) for p in written.values())}")
    if failed and len(failed) == len(result["records"]):
        print(f"feredge bench: every artifact failed ({failed[0].artifact}: {failed[0].status})",
              file=sys.stderr)
        return 3
    return 0


def _check_args(args) -> None:
    """Nonsense settings are refused before anything runs (a batch of 0 would store 0 FPS)."""
    for name in ("batch", "min_runs", "e2e_frames"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(args, name)}")
    for name in ("max_drop", "warmup", "min_time"):
        value = getattr(args, name)
        if not value >= 0:  # NaN too
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0, not {value}")
    video = args.video
    if video and not (video.isdigit() or video.startswith(("gst:", "picamera", "/dev/video"))) \
            and not Path(video).exists():  # before minutes of measuring, not after
        raise FileNotFoundError(f"{video}: no such video file")


def _compare(files: list[str], out: str) -> int:
    from feredge.benchmarks.merge import merge_results
    from feredge.benchmarks.report import format_table, write_reports

    results = []
    for name in files:
        path = Path(name)
        try:
            results.append(json.loads(path.read_text()))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no such benchmark record file") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    merged = merge_results(results, [str(f) for f in files])
    print(format_table(merged["records"]))
    written = write_reports(merged, out, stem="compare")
    print(f"\nreports: {', '.join(str(p) for p in written.values())}")
    return 0
