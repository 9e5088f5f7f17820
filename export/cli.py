"""Arguments of `feredge export`.

Exit codes: 0 every artifact passed verification; 3 some were rejected (the bundle holds the
ones that passed, the summary lists each rejected one with its reason) or none passed (nothing
written, the earlier bundle kept); 2 bad input, named in one line.
"""
from __future__ import annotations

import argparse

EXIT_REJECTED = 3


def add_arguments(p: argparse.ArgumentParser) -> None:
    from feredge.models.model_io import add_trust_argument

    add_trust_argument(p)
    p.add_argument("--model", help="run directory, .keras/.h5 file or SavedModel directory, or a shipped model's "
                                    "name: edge, nano (default: edge)")
    p.add_argument("--out", help="bundle directory to write (default: for a shipped model, its shipped bundle, which "
                                 "'feredge run' and 'feredge bench' use; bundles/<model folder or file "
                                 "name> otherwise); an earlier bundle there is replaced only when the new one is "
                                 "complete and verified")
    from feredge.edge import preprocess_flags
    from feredge.export.targets import TARGETS

    p.add_argument("--target", default="generic", choices=tuple(TARGETS),
                   help="the device to build for: formats, precisions, int8 schemes and thread default "
                        "(default: generic, whose int8 gives the same results on every CPU); "
                        + "; ".join(f"{t.name}: {t.device}" for t in TARGETS.values()))
    p.add_argument("--formats", help="comma list of tflite, onnx, openvino (default: the target's)")
    p.add_argument("--precisions", help="comma list of fp32, fp16, dynamic, int8 (default: the target's; "
                                        "combinations a format does not offer are skipped with a note)")
    p.add_argument("--skip", metavar="FORMAT-PRECISION",
                   help="comma list of combinations to leave out, e.g. openvino-fp32 (a smaller bundle)")
    p.add_argument("--calib", help="folder of face images for int8 calibration (default: the shipped sample)")
    p.add_argument("--calib-count", type=int, default=300, help="calibration images to use (default: 300)")
    p.add_argument("--data", help="labelled faces for verification and for pruning's fine-tuning: a FER-style "
                                  "folder with train/ and test/ (fine-tune on train, verify on test), class "
                                  "folders, or the FER-2013 CSV (default: verify on the shipped sample)")
    p.add_argument("--labels", help="class names in output order: a labels.json or a comma list (default: the "
                                    "labels.json beside the model)")
    p.add_argument("--prune", action="append", metavar="METHOD:AMOUNT",
                   help="also export pruned variants: magnitude:0.5 (sparsity), structured:0.25 (fraction of "
                        "filters removed); repeat or comma-separate; needs --data")
    p.add_argument("--finetune-epochs", type=int, default=2, help="fine-tuning epochs after pruning (default: 2)")
    p.add_argument("--allow-drop", action="store_true",
                   help="keep artifacts that miss the agreement/accuracy limits (recorded in the manifest)")
    p.add_argument("--flip-average", choices=("spec", "on", "off"), default="spec",
                   help="run each face and its mirror image and average: as the model's preprocess.json says "
                        "(default) or set on/off in the bundle")
    p.add_argument("--add-softmax", action="store_true", help="append a softmax to a model that outputs logits")
    preprocess_flags.add_arguments(p)


def default_out(model):
    """A shipped model's own bundle (which run and bench use by name); bundles/NAME for any other."""
    from pathlib import Path

    from feredge.edge.paths import SHIPPED_RUNS, shipped_bundle

    shipped = next((name for name, run in SHIPPED_RUNS.items() if Path(model) == run), None)
    if shipped:
        return shipped_bundle(shipped)
    return Path("bundles") / (model.stem if model.is_file() else model.name)


def run(args: argparse.Namespace) -> int:
    import sys
    import time
    from pathlib import Path

    from feredge.edge import preprocess_flags
    from feredge.edge.paths import resolve_model
    from feredge.export import export_model
    from feredge.export.pipeline import ExportIncomplete

    model = resolve_model(args.model)
    out = Path(args.out) if args.out else default_out(model)
    started = time.perf_counter()
    from feredge.models.temporal_train import is_temporal_run

    try:
        if is_temporal_run(model):  # a seed004 head: its own bundle, verified on clips
            from feredge.export.temporal import export_temporal

            bundle = export_temporal(model, out, formats=args.formats, precisions=args.precisions, calib=args.calib,
                                     calib_count=args.calib_count, data=args.data, allow_drop=args.allow_drop,
                                     target=args.target, skip=args.skip)
        else:
            bundle = export_model(model, out, formats=args.formats, precisions=args.precisions, calib=args.calib,
                                  calib_count=args.calib_count, data=args.data, labels=args.labels, prune=args.prune,
                                  allow_drop=args.allow_drop, add_softmax=args.add_softmax, progress=not args.quiet,
                                  finetune_epochs=args.finetune_epochs, skip=args.skip, target=args.target,
                                  preprocess=preprocess_flags.from_args(args),
                                  flip_average={"spec": None, "on": True, "off": False}[args.flip_average])
    except ExportIncomplete as exc:
        print(exc.summary, end="")
        print(f"\nferedge export: {exc}", file=sys.stderr)
        return EXIT_REJECTED
    print((bundle.root / "summary.txt").read_text(), end="")
    rejected = bundle.manifest.get("rejected") or []
    print(f"\nbundle: {bundle.root} ({len(bundle.artifacts)} artifacts) in {time.perf_counter() - started:.0f} s")
    if rejected:
        print(f"feredge export: {len(rejected)} artifact(s) rejected and left out: "
              f"{', '.join(a['id'] for a in rejected)} (exit {EXIT_REJECTED})", file=sys.stderr)
        return EXIT_REJECTED
    return 0
