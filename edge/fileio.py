"""Atomic file writes: a reader sees the old file or the new one, never half of either."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_image(path: str | Path, flag: int | None = None):
    """Decode an image file with OpenCV, or None if it is empty or not an image.

    Read as bytes first so non-ASCII paths work on every OS (cv2.imread fails on them on Windows).
    flag: a cv2.IMREAD_* constant (default IMREAD_UNCHANGED).
    """
    import cv2
    import numpy as np

    try:
        data = np.fromfile(str(path), np.uint8)
        if not data.size:
            return None
        return cv2.imdecode(data, cv2.IMREAD_UNCHANGED if flag is None else flag)
    except (OSError, cv2.error):
        return None
