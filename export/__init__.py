"""Export: pruning, quantization, conversion (TFLite, ONNX, OpenVINO), verification, bundle writing.

`export_model(model_path, out_dir, ...)` is the Python API; `feredge export` is its command line.
TensorFlow and the converters are imported only when an export runs.
"""
from __future__ import annotations


def export_model(model_path, out_dir, *, formats=None, precisions=None, calib=None, calib_count: int = 300,
                 data=None, labels=None, prune=None, allow_drop: bool = False, add_softmax: bool = False,
                 progress: bool = True, **more):
    """Export a trained tf-keras model to a verified bundle; returns the `edge.bundle.Bundle`.

    See export.pipeline.export_model (more: finetune_epochs=2, seed=0, skip, flip_average, target,
    preprocess).
    """
    from feredge.export.pipeline import export_model as _export_model

    return _export_model(model_path, out_dir, formats=formats, precisions=precisions, calib=calib,
                         calib_count=calib_count, data=data, labels=labels, prune=prune, allow_drop=allow_drop,
                         add_softmax=add_softmax, progress=progress, **more)


__all__ = ["export_model"]
