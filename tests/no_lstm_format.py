"""A format added by a test whose converter cannot hold recurrent layers, as some converters
cannot: it writes half a file and raises, so that tests see how the temporal export reports it."""
from __future__ import annotations

from pathlib import Path


def convert(model, path: Path, precision: str, *, calib=None, scratch=None, scheme=None) -> dict:
    Path(path).write_bytes(b"half a model")
    if any("lstm" in layer.name for layer in model.layers):
        raise NotImplementedError("Bidirectional(LSTM) is not supported by this converter\n  at layer bilstm")
    raise AssertionError("only used on the temporal head")
