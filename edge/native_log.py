"""Native libraries' chatter on file descriptor 2, filtered.

LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." straight to fd 2 from
C++ on every interpreter, where Python's logging cannot reach it. Redirecting fd 2 to a file
for the duration of the call and writing back every line but the known banners keeps real
native errors visible (FEREDGE_NATIVE_VERBOSE=1 keeps everything). `models.tf_env` drops
everything TensorFlow's C++ side prints while it is imported the same way.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

BANNERS = (re.compile(r"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.\s*$"),
           re.compile(r"^INFO: Initialized TensorFlow Lite runtime\.\s*$"))
EVERYTHING = (re.compile(""),)


@contextlib.contextmanager
def banners_filtered(patterns=BANNERS, verbose_env: str = "FEREDGE_NATIVE_VERBOSE"):
    """Within the block, lines on fd 2 that match one of `patterns` are dropped; the rest are
    written back when it ends. Setting the environment variable `verbose_env` keeps every line."""
    if os.environ.get(verbose_env):
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real fd 2 (an embedding host): leave it alone
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines(keepends=True) if not any(p.match(line) for p in patterns)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
