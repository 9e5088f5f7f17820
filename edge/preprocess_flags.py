"""Preprocessing flags for a model that has no preprocess.json (`feredge export` and `feredge eval`).

A model from elsewhere (the `fer` package's mini-Xception, a Keras file from a paper) carries
no record of how its faces were scaled, and a guess costs silently: x/255 for a model trained on
x/127.5-1 exports at 54 % instead of 65 %. So without preprocess.json the normalisation and the
equalisation must be given; the input size and channels are read from the model and, when given,
checked against it. With a preprocess.json the flags override its fields.
"""
from __future__ import annotations

import argparse
import logging

from feredge.edge.preprocess import EQUALIZE_MODES, NORMALIZE_MODES, PreprocessSpec

log = logging.getLogger("feredge")

FLAGS = ("--normalize unit|symmetric|zscore:MEAN,STD and --equalize none|global|clahe "
         "(--input-size HxW and --channels 1|3 are read from the model)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("preprocessing of a model without preprocess.json (overrides it when present)")
    g.add_argument("--input-size", metavar="HxW", help="face size the model takes, e.g. 48x48 or 64 (checked "
                                                        "against the model's input)")
    g.add_argument("--channels", type=int, choices=(1, 3), help="1: grayscale, 3: RGB")
    g.add_argument("--normalize", metavar="MODE", help="unit (x/255), symmetric (x/127.5-1) or zscore:MEAN,STD "
                                                       "((x/255-MEAN)/STD)")
    g.add_argument("--equalize", choices=EQUALIZE_MODES, help="histogram equalisation before normalising")


def from_args(args: argparse.Namespace) -> dict:
    """The spec fields the flags set, parsed and checked ({} when none was given)."""
    return parse(getattr(args, "input_size", None), getattr(args, "channels", None), getattr(args, "normalize", None),
                 getattr(args, "equalize", None))


def parse(input_size=None, channels=None, normalize=None, equalize=None) -> dict:
    out: dict = {}
    if input_size is not None:
        text = str(input_size).lower().replace(" ", "")
        parts = text.split("x") if "x" in text else [text, text]
        try:
            h, w = (int(v) for v in parts)
        except ValueError:
            raise ValueError(f"--input-size {input_size!r}: expected HxW such as 48x48, or one number") from None
        out["height"], out["width"] = h, w
    if channels is not None:
        out["channels"] = int(channels)
    if normalize is not None:
        mode, _, stats = str(normalize).strip().lower().partition(":")
        if mode not in NORMALIZE_MODES:
            raise ValueError(f"--normalize {normalize!r}: choose unit, symmetric or zscore:MEAN,STD")
        out["normalize"] = mode
        if mode == "zscore":
            try:
                out["mean"], out["std"] = (float(v) for v in stats.split(","))
            except ValueError:
                raise ValueError(f"--normalize {normalize!r}: zscore needs its statistics on the 0..1 scale, "
                                 f"e.g. zscore:0.5,0.25") from None
        elif stats:
            raise ValueError(f"--normalize {normalize!r}: only zscore takes values")
    if equalize is not None:
        if equalize not in EQUALIZE_MODES:
            raise ValueError(f"--equalize {equalize!r}: choose from {', '.join(EQUALIZE_MODES)}")
        out["equalize"] = equalize
    return out


def check_given(flags: dict, where: str) -> None:
    """Refuse early, before a model is loaded, when there is no preprocess.json and the flags are missing."""
    missing = [f"--{k}" for k in ("normalize", "equalize") if k not in flags]
    if missing:
        raise ValueError(f"{where}: no preprocess.json beside the model, so how its faces were scaled is unknown; "
                         f"pass {' and '.join(missing)} (full set: {FLAGS})")


def resolve(found: PreprocessSpec | None, flags: dict, shape: tuple[int, int, int], where: str) \
        -> tuple[PreprocessSpec, str]:
    """(spec, where it came from) for a model with input `shape` (H, W, C); `where` names the model file."""
    h, w, c = (int(v) for v in shape)
    size = {k: flags[k] for k in ("height", "width", "channels") if k in flags}
    wanted = (size.get("height", h), size.get("width", w), size.get("channels", c))
    if wanted != (h, w, c):
        raise ValueError(f"{where}: the flags say {wanted[0]}x{wanted[1]}x{wanted[2]} input but the model takes "
                         f"{h}x{w}x{c}")
    if found is not None:
        changed = {k: v for k, v in flags.items() if getattr(found, k) != v}
        if changed:
            log.info("%s: preprocess.json overridden by flags: %s", where,
                     ", ".join(f"{k}={v}" for k, v in changed.items()))
        try:
            return found.replace(**changed), "preprocess.json" + (" with flags" if changed else "")
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    check_given(flags, where)
    if c not in (1, 3):
        raise ValueError(f"{where}: input has {c} channels; faces are 1 (gray) or 3 (RGB)")
    try:
        return PreprocessSpec(**{**flags, "height": h, "width": w, "channels": c}), "flags"
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
