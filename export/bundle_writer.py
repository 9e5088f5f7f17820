"""Write a bundle into a temporary directory beside its destination and swap it in at the end.

The output location is checked first (before minutes of conversion), everything is written
and verified in `.<name>.partial-XXXX` next to the destination, and only a complete bundle is
renamed into place; the previous bundle is moved aside and deleted only after the new one is
in. Any error or Ctrl-C removes the partial directory and leaves the previous bundle untouched.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from edge.bundle import MANIFEST
from edge.fileio import write_text_atomic

log = logging.getLogger("feredge.export")


class BundleWriter:
    def __init__(self, out_dir):
        self.out = Path(out_dir).expanduser().absolute()
        self.tmp: Path | None = None
        self.committed = False
        self.check_destination()

    def check_destination(self) -> None:
        out = self.out
        if out.exists() and not out.is_dir():
            raise NotADirectoryError(f"{out}: exists and is not a directory")
        if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
            raise FileExistsError(f"{out}: exists, is not empty and holds no bundle ({MANIFEST}); "
                                  f"refusing to replace it, choose another --out")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PermissionError(f"{out}: cannot create the output directory ({exc.strerror or exc})") from None
        if not os.access(out.parent, os.W_OK | os.X_OK):
            raise PermissionError(f"{out}: the output's parent directory {out.parent} is not writable")

    def __enter__(self) -> "BundleWriter":
        try:
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.partial-", dir=self.out.parent))
        except OSError as exc:
            raise PermissionError(f"{self.out}: cannot write beside the output directory "
                                  f"({exc.strerror or exc})") from None
        os.chmod(self.tmp, 0o755)
        return self

    def __exit__(self, *exc) -> None:
        if self.tmp is not None and self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)

    def path(self, relative: str) -> Path:
        """Where a bundle file is written now (inside the temporary directory)."""
        target = self.tmp / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def write_text(self, relative: str, text: str) -> Path:
        target = self.path(relative)
        write_text_atomic(target, text)
        return target

    def commit(self, manifest: dict) -> Path:
        """Write manifest.json last and move the finished bundle into place."""
        self.write_text(MANIFEST, json.dumps(manifest, indent=2) + "\n")
        old = None
        if self.out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.old-", dir=self.out.parent))
            os.rmdir(old)
            os.rename(self.out, old)
        try:
            os.rename(self.tmp, self.out)
        except BaseException:
            if old is not None:
                os.rename(old, self.out)
            raise
        self.committed = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        log.info("bundle written: %s", self.out)
        return self.out
