"""The `feredge` command: a thin dispatcher over the subcommands.

Each subcommand lives with the package that does its work and is imported only when chosen,
so `feredge run` on a device never pays for (or needs) TensorFlow. This is the one place in
`edge/` that names the other packages, and only as strings.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from feredge.edge.backends.base import BackendError  # numpy only: cheap at start-up

# name -> (module with add_arguments(parser) and run(args), one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "train": ("feredge.models.cli_train", "train a network on labelled faces into a run directory"),
    "eval": ("feredge.models.cli_eval", "evaluate a trained model (default: the shipped model on the shipped sample)"),
    "compare": ("feredge.models.compare", "compare trained runs on one test split (accuracy, size, MACs, speed)"),
    "average": ("feredge.models.soup", "average the weights of runs fine-tuned from one start (a model soup)"),
    "export": ("feredge.export.cli", "convert a trained Keras model into a verified bundle (TFLite, ONNX, OpenVINO; fp32 to int8)"),
    "bench": ("feredge.benchmarks.cli", "measure every artifact of a bundle on this device: latency, memory, accuracy drop"),
    "run": ("feredge.edge.run_cli", "faces from a camera, video, image or folder through a bundle: window, JSON lines, "
                            "MJPEG page, recording"),
    "info": ("feredge.edge.info_cli", "this device: CPU, OS, inference runtimes, OpenCV build (GUI, GStreamer, V4L2), cameras"),
}

# Bad input and bad usage exit with 2 and one line, and so does an OSError (full disk, read-only file
# system, a camera unplugged); anything else is a bug and exits with 1.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
               PermissionError, BackendError)


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="feredge", description="Facial-expression recognition from training to the edge.",
        epilog="Run 'feredge COMMAND --help' for a command's options.")
    parser.add_argument("command", choices=sorted(SUBCOMMANDS), metavar="COMMAND",
                        help="; ".join(f"{name}: {text}" for name, (_, text) in SUBCOMMANDS.items()))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        _top_parser().parse_args(argv[:1] or ["--help"])
        return 2
    name, rest = argv[0], argv[1:]
    module_name, help_text = SUBCOMMANDS[name]
    parser = argparse.ArgumentParser(prog=f"feredge {name}", description=help_text)
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    module = importlib.import_module(module_name)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s",
                        stream=sys.stderr)
    if getattr(args, "trust_model_code", False):  # read by models.model_io, here and in worker processes
        os.environ["FEREDGE_TRUST_MODEL_CODE"] = "1"
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:  # 130 = 128 + SIGINT, as a shell and 'feredge run' report it
        print(f"feredge {name}: interrupted; nothing half-written was kept", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        print(f"feredge {name}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a read-only file system, a device gone: one line, naming the file
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"feredge {name}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
