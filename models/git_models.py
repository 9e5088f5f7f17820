"""Models committed to git, named as `git:REV` or `git:REV:PATH` wherever a trained model is asked for.

Run folders need not outlive a working session, but every shipped model stays in the
repository's history. `--teacher git:a3122bf` or `--init-from git:b6fb1c4` then means the
`models/pretrained` folder as that commit holds it, and the run's config keeps the same words,
so its command line reproduces it on any checkout. The folder is extracted once per commit into
~/.cache/feredge/git/ (into a temporary folder renamed into place, so a kill leaves no half copy).
"""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

PREFIX = "git:"
DEFAULT_PATH = "models/pretrained"


def is_git_ref(path) -> bool:
    return str(path).startswith(PREFIX)


def cache_root() -> Path:
    return Path.home() / ".cache" / "feredge" / "git"


def resolve(path, repo: str | Path = ".") -> Path:
    """A local path for `path`: itself, or for `git:REV[:PATH]` the folder as commit REV holds it."""
    if not is_git_ref(path):
        return Path(path)
    ref = str(path)
    rev, _, inside = ref[len(PREFIX):].partition(":")
    inside = inside.strip("/") or DEFAULT_PATH
    if not rev:
        raise ValueError(f"{ref}: expected git:REV or git:REV:PATH")
    sha = _git(repo, ref, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").strip()
    target = cache_root() / sha / inside
    if target.exists():
        return target
    archive = _git(repo, ref, "archive", "--format=tar", sha, "--", inside, text=False,
                   missing=f"{ref}: commit {sha[:12]} has no {inside}")
    cache_root().mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{sha}.", dir=cache_root()))
    try:
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(staging, filter="data")
            else:  # Python < 3.11.4; the archive comes from our own repository
                tar.extractall(staging)
        if not (staging / inside).exists():
            raise FileNotFoundError(f"{ref}: commit {sha[:12]} has no {inside}")
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():  # another process may have put it there meanwhile
            os.replace(staging / inside, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _git(repo, ref: str, *args: str, text: bool = True, missing: str | None = None):
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=text, check=False)
    except FileNotFoundError:
        raise RuntimeError(f"{ref}: git is not installed") from None
    if done.returncode != 0:
        if missing:
            raise FileNotFoundError(missing)
        raise ValueError(f"{ref}: not a commit of the git repository at {Path(repo).resolve()}")
    return done.stdout
