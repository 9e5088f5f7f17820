"""Arguments of `feredge eval`."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from feredge.models.model_io import add_trust_argument

    add_trust_argument(p)
    p.add_argument("--model", help="run directory, model file, or an exported artifact inside a bundle "
                                    "(.tflite, .onnx, openvino/*.xml) run by its edge backend, or a shipped model's "
                                    "name: edge, nano (default: edge)")
    p.add_argument("--data", help="labelled faces: class folders, a folder with train/ and test/, or the "
                                   "FER-2013 CSV (default: the shipped sample)")
    p.add_argument("--split", help="split of --data: test (default for a split folder or CSV), train, privatetest")
    p.add_argument("--out", help="write metrics.json, report.txt and confusion.png here")
    p.add_argument("--skip-bad", action="store_true", help="skip (and count) unreadable or malformed images")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON instead of tables")
    p.add_argument("--flip-average", choices=("spec", "on", "off"), default="spec",
                   help="average each face with its mirror image: as the model's preprocess.json says "
                        "(default), or force it on/off to measure what it buys")
    p.add_argument("--limit", type=int, metavar="N",
                   help="score N faces spread evenly over --data (a fixed subset, for slow devices and emulation)")
    p.add_argument("--labels", help="class names in output order for a model without labels.json: a labels.json "
                                    "or a comma list")
    from feredge.edge import preprocess_flags

    preprocess_flags.add_arguments(p)
    p.add_argument("--perturb", nargs="?", const="default", metavar="KIND:VALUE,...",
                   help="also score the model on perturbed copies of the faces, as a camera sees them: "
                        "scale:PX (face seen at PX pixels), jpeg:Q, shift:PX, box:FACTOR (looser/tighter "
                        "detector box), noise:SD (sensor noise), gamma:G (exposure); without a value a "
                        "default set of nine. Reports accuracy and agreement with the clean labels")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from feredge.evaluation.metrics import format_confusion, format_report
    from feredge.models.evaluate import evaluate_path
    from feredge.edge.paths import SAMPLE_DIR

    model = _shipped_or_given(args.model)
    data = args.data or SAMPLE_DIR
    split = args.split
    if split is None and (Path(data).suffix.lower() == ".csv" or (Path(data) / "test").is_dir()):
        split = "test"
    from feredge.models.temporal_train import is_temporal_run

    if is_temporal_run(model):
        return _run_temporal(args, model, data, split)
    flip = {"spec": None, "on": True, "off": False}[args.flip_average]
    perturb = ()
    if args.perturb is not None:
        from feredge.evaluation.perturb import parse_conditions
        perturb = parse_conditions(args.perturb)
    from feredge.edge import preprocess_flags

    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be at least 1, not {args.limit}")
    report = evaluate_path(model, data, split, out_dir=args.out, skip_bad=args.skip_bad, flip_average=flip,
                           perturb=perturb, labels=args.labels, preprocess=preprocess_flags.from_args(args),
                           limit=args.limit)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        flipped = " (flip-averaged)" if report["flip_average"] else ""
        print(f"{report['model']}{flipped} on {report['data']}: {report['num_samples']} faces\n")
        print(format_report(report))
        print("\nconfusion matrix (rows: true, columns: predicted)")
        print(format_confusion(report["confusion_matrix"], report["labels"]))
        if report.get("robustness"):
            from feredge.evaluation.scoring import format_robustness
            print("\nunder camera-path perturbations (agreement: same label as on the clean crop)")
            print(format_robustness(report))
    return 0


def _shipped_or_given(value):
    """A path as given; a shipped model (by name, default edge) as its Keras run, or on a device
    without TensorFlow as its bundle's fp32 artifact, scored through the edge runtime the device has
    (the README's main job works on both)."""
    import importlib.util
    import logging

    from feredge.edge.paths import SHIPPED_RUNS, resolve_model, shipped_bundle

    model = resolve_model(value)
    name = next((n for n, run in SHIPPED_RUNS.items() if model == run), None)
    if name is None:
        return model
    try:
        has_tensorflow = importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):  # a broken or blocked install counts as none
        has_tensorflow = False
    if has_tensorflow:
        return model
    from feredge.edge import formats
    from feredge.edge.backends import installed_formats
    from feredge.edge.bundle import Bundle

    bundle = Bundle.load(shipped_bundle(name))
    for fmt in formats.names():
        if fmt in installed_formats():
            artifact = next((a for a in bundle.artifacts if a.format == fmt and a.precision == "fp32"), None) \
                or next((a for a in bundle.artifacts if a.format == fmt), None)
            if artifact is not None:
                logging.getLogger("feredge").info("no TensorFlow here: evaluating the shipped bundle's %s",
                                                  artifact.id)
                return bundle.path(artifact)
    raise ValueError("no TensorFlow and no inference runtime installed: pip install \"feredge[tflite]\" "
                     "(or onnx, openvino) to evaluate the shipped bundle")


def _run_temporal(args, model, data, split) -> int:
    """A seed004 run on clips: per-clip report of the head, and the per-frame / EMA / temporal comparison."""
    import json

    from feredge.evaluation.metrics import format_confusion, format_report
    from feredge.models.temporal_train import evaluate_temporal_run, format_comparison

    result = evaluate_temporal_run(model, data, split, out_dir=args.out, limit=args.limit)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    report = result["rows"][-1]["report"]
    print(f"{model} (seed004 temporal head) on {result['data']}: {result['clips']} clips of {result['frames']} frames\n")
    print(format_report(report))
    print("\nconfusion matrix (rows: true, columns: predicted)")
    print(format_confusion(report["confusion_matrix"], report["labels"]))
    print("\nthe same clips through the per-frame model, with EMA smoothing and with the temporal head")
    print(format_comparison(result))
    return 0
