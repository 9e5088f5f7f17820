"""Reading an export bundle: manifest.json plus the artifacts it lists.

`export/` writes bundles; the runtime and the benchmarks read them through this module only.
The manifest (schema 1) carries the labels, the input and preprocessing spec, and one entry
per artifact with its files, sizes, sha256 and verification against the source model.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from edge.preprocess import PreprocessSpec

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
PRECISIONS = ("fp32", "fp16", "dynamic", "int8")


class BundleError(ValueError):
    """One line naming the bundle (or file) and what is wrong with it."""


@dataclasses.dataclass(frozen=True)
class Artifact:
    id: str  # e.g. "tflite-int8" or "tflite-int8-pruned50"
    format: str  # tflite | onnx | openvino
    precision: str  # fp32 | fp16 | dynamic | int8
    files: tuple[str, ...]  # relative to the bundle; the first one is what a runtime opens
    bytes: int
    sha256: dict
    pruning: dict | None = None
    verification: dict | None = None

    @classmethod
    def from_dict(cls, data: dict) -> "Artifact":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (tuple(v) if k == "files" else v) for k, v in data.items() if k in fields})


@dataclasses.dataclass
class Bundle:
    root: Path
    manifest: dict
    labels: tuple[str, ...]
    spec: PreprocessSpec
    artifacts: list[Artifact]

    @classmethod
    def load(cls, root: str | Path) -> "Bundle":
        root = Path(root)
        path = root / MANIFEST
        if not root.is_dir():
            raise BundleError(f"{root}: no such bundle directory")
        if not path.is_file():
            raise BundleError(f"{root}: not a bundle (no {MANIFEST}); make one with 'feredge export'")
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise BundleError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        if manifest.get("schema") != SCHEMA_VERSION:
            raise BundleError(f"{path}: schema {manifest.get('schema')!r} is not the supported {SCHEMA_VERSION}")
        try:
            labels = tuple(manifest["labels"])
            spec = PreprocessSpec.from_dict(manifest["preprocess"])
            artifacts = [Artifact.from_dict(a) for a in manifest["artifacts"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"{path}: malformed manifest ({exc})") from None
        return cls(root, manifest, labels, spec, artifacts)

    def find(self, format: str | None = None, precision: str | None = None, id: str | None = None) -> Artifact:
        """The artifact matching the request; unpruned ones first when several match."""
        matches = [a for a in self.artifacts
                   if (id is None or a.id == id) and (format is None or a.format == format)
                   and (precision is None or a.precision == precision)]
        if not matches:
            want = id or "/".join(x for x in (format, precision) if x)
            have = ", ".join(a.id for a in self.artifacts) or "none"
            raise BundleError(f"{self.root}: no artifact {want} (this bundle has: {have})")
        return sorted(matches, key=lambda a: a.pruning is not None)[0]

    def path(self, artifact: Artifact) -> Path:
        return self.root / artifact.files[0]

    def check(self, artifact: Artifact) -> None:
        """Raise if any file of the artifact is missing, truncated or altered since export."""
        for name in artifact.files:
            path = self.root / name
            if not path.is_file():
                raise BundleError(f"{path}: listed in the manifest but missing")
            expected = artifact.sha256.get(name)
            if expected and sha256_file(path) != expected:
                raise BundleError(f"{path}: sha256 differs from the manifest (truncated or altered)")

    def open(self, artifact: Artifact | None = None, *, format: str | None = None, precision: str | None = None,
             threads: int | None = None, verify: bool = True, **options):
        """A backend for one artifact of this bundle, flip-averaged if the bundle's spec says so."""
        from edge.backends import open_artifact
        from edge.tta import with_flip_average

        artifact = artifact or self.find(format, precision)
        if verify:
            self.check(artifact)
        return with_flip_average(open_artifact(self.path(artifact), threads=threads, **options),
                                 self.spec.flip_average)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
