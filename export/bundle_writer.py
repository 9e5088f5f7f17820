"""Write a bundle into a temporary directory beside its destination and swap it in at the end.

The output location is checked first (before minutes of conversion), everything is written
and verified in `.<name>.partial-XXXX` next to the destination, and only a complete bundle is
renamed into place; the previous bundle is moved aside and deleted only after the new one is
in. Any error or Ctrl-C removes the partial directory and leaves the previous bundle untouched.

Only a folder proven to be a feredge bundle is ever replaced: its manifest.json must parse as a
bundle manifest of this schema and every file in the folder must be one the manifest lists or
the kit writes there (a web app's manifest.json beside its index.html is not a bundle). The
temporary folders carry the writing process's id, so a later export removes those that a killed
export (kill -9, power loss) left behind, and never those of an export still running.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from feredge.edge.bundle import MANIFEST, SCHEMA_VERSION
from feredge.edge.fileio import write_text_atomic

log = logging.getLogger("feredge.export")

KIT_FILES = {MANIFEST, "preprocess.json", "labels.json", "summary.txt", "recommendation.json"}


def not_a_bundle(folder: Path) -> str | None:
    """Why `folder` is not a bundle feredge wrote (None: it is one, safe to replace)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return f"its {MANIFEST} is not a feredge bundle manifest"
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA_VERSION \
            or not isinstance(manifest.get("artifacts"), list):
        return f"its {MANIFEST} is not a feredge bundle manifest (schema {SCHEMA_VERSION} with artifacts)"
    listed = set(KIT_FILES)
    for artifact in manifest["artifacts"]:
        files = artifact.get("files") if isinstance(artifact, dict) else None
        listed |= {str(f) for f in files} if isinstance(files, list) else set()
    foreign = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                     if not p.is_dir() and str(p.relative_to(folder)) not in listed
                     and p.relative_to(folder).parts[0] != "trt_cache")  # TensorRT engines the runtime cached
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        return f"it holds files no feredge bundle has ({', '.join(foreign[:3])}{more})"
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


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
        if out.is_dir() and any(out.iterdir()):
            if not (out / MANIFEST).is_file():
                raise FileExistsError(f"{out}: exists, is not empty and holds no bundle ({MANIFEST}); "
                                      f"refusing to replace it, choose another --out")
            why = not_a_bundle(out)
            if why:
                raise FileExistsError(f"{out}: {why}; refusing to replace it, choose another --out")
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PermissionError(f"{out}: cannot create the output directory ({exc.strerror or exc})") from None
        if not os.access(out.parent, os.W_OK | os.X_OK):
            raise PermissionError(f"{out}: the output's parent directory {out.parent} is not writable")

    def _prefix(self, kind: str) -> str:
        return f".{self.out.name}.{kind}-{os.getpid()}-"

    def remove_stale(self) -> list[Path]:
        """This kit's temporary folders beside the output whose writing process is gone."""
        pattern = re.compile(re.escape(f".{self.out.name}.") + r"(partial|old)-(\d+)-")
        removed = []
        for folder in self.out.parent.iterdir():
            match = pattern.match(folder.name)
            if match and folder.is_dir() and not folder.is_symlink() and not _alive(int(match.group(2))):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
                log.info("removed %s, left by an export that did not finish", folder)
        return removed

    def __enter__(self) -> "BundleWriter":
        self.remove_stale()
        try:
            self.tmp = Path(tempfile.mkdtemp(prefix=self._prefix("partial"), dir=self.out.parent))
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
            old = Path(tempfile.mkdtemp(prefix=self._prefix("old"), dir=self.out.parent))
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
