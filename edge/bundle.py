"""Reading an export bundle: manifest.json plus the artifacts it lists.

`export/` writes bundles; the runtime and the benchmarks read them through this module only.
The manifest (schema 1) carries the labels, the input and preprocessing spec, and one entry
per artifact with its files, sizes, sha256 and verification against the source model. A bundle
may come from anywhere, so `Bundle.load` checks the manifest's shape before anything uses it:
`check_manifest` is the schema, in code. Artifact files must lie inside the bundle folder and
have a sha256 each; an artifact whose output count differs from the labels is refused on open.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path, PurePosixPath

from feredge.edge import formats
from feredge.edge.formats import PRECISIONS
from feredge.edge.preprocess import PreprocessSpec

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1
SHA256 = re.compile(r"[0-9a-f]{64}")


class BundleError(ValueError):
    """One line naming the bundle (or file) and what is wrong with it."""


def _record_from(cls, data: dict, **converted):
    """A record dataclass from a manifest dict: unknown keys are ignored (a newer writer may add some)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in fields}, **converted)


def _record_to(record, optional: tuple[str, ...] = ()) -> dict:
    """A record as the manifest writes it: fields in order, the optional ones only when set."""
    out = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if f.name in optional and value is None:
            continue
        out[f.name] = value.to_dict() if hasattr(value, "to_dict") else list(value) if isinstance(value, tuple) \
            else value
    return out


@dataclasses.dataclass
class Verification:
    """How one artifact compared with its Keras source on the verification faces (export/verify.py)."""
    samples: int = 0
    accuracy_samples: int = 0
    agreement: float | None = None  # share of faces with the same top-1 class as the source
    max_abs_diff: float | None = None
    accuracy: float | None = None
    source_accuracy: float | None = None  # the Keras model it was converted from (a pruned one for pruned artifacts)
    reference_accuracy: float | None = None  # the unpruned Keras model
    accuracy_drop: float | None = None  # against reference_accuracy
    source_accuracy_drop: float | None = None  # against source_accuracy: what the threshold judges
    threshold: dict = dataclasses.field(default_factory=dict)
    ran_precision: str | None = None
    runtime: str | None = None
    precision_hint: str = "default"
    passed: bool = False
    failure: str | None = None
    device_default: dict | None = None  # when verified with options: what runs without them
    allowed: bool | None = None  # failed but kept (--allow-drop)

    @classmethod
    def from_dict(cls, data: dict) -> "Verification":
        return _record_from(cls, data)

    def to_dict(self) -> dict:
        return _record_to(self, optional=("device_default", "allowed"))


@dataclasses.dataclass(frozen=True)
class Artifact:
    """One artifact as the manifest lists it; export writes it with to_dict, everyone reads it with from_dict."""
    id: str  # e.g. "tflite-int8" or "tflite-int8-pruned50"
    format: str  # a name in edge.formats: tflite | onnx | openvino
    precision: str  # fp32 | fp16 | dynamic | int8
    files: tuple[str, ...]  # relative to the bundle; the first one is what a runtime opens
    bytes: int
    sha256: dict
    pruning: dict | None = None
    verification: Verification | None = None
    settings: dict = dataclasses.field(default_factory=dict)  # how it was converted and quantized
    convert_seconds: float | None = None
    gzip_bytes: int | None = None

    @classmethod
    def from_dict(cls, data: dict) -> "Artifact":
        check = data.get("verification")
        return _record_from(cls, {k: v for k, v in data.items() if k not in ("files", "verification")},
                            files=tuple(data["files"]),
                            verification=Verification.from_dict(check) if isinstance(check, dict) else None)

    def to_dict(self) -> dict:
        return _record_to(self, optional=("convert_seconds", "gzip_bytes"))


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
        except (OSError, UnicodeDecodeError) as exc:
            raise BundleError(f"{path}: cannot read the manifest ({exc})") from None
        problem = check_manifest(manifest, root)
        if problem:
            raise BundleError(f"{path}: {problem}")
        try:
            spec = PreprocessSpec.from_dict(manifest["preprocess"])
        except (TypeError, ValueError) as exc:
            raise BundleError(f"{path}: malformed preprocess ({exc})") from None
        artifacts = [Artifact.from_dict(a) for a in manifest["artifacts"]]
        return cls(root, manifest, tuple(manifest["labels"]), spec, artifacts)

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
            if sha256_file(path) != expected:
                raise BundleError(f"{path}: sha256 differs from the manifest (truncated or altered)")

    def open(self, artifact: Artifact | None = None, *, format: str | None = None, precision: str | None = None,
             threads: int | None = None, verify: bool = True, **options):
        """A backend for one artifact of this bundle, flip-averaged if the bundle's spec says so."""
        from feredge.edge.backends import open_artifact
        from feredge.edge.tta import with_flip_average

        artifact = artifact or self.find(format, precision)
        if verify:
            self.check(artifact)
        backend = open_artifact(self.path(artifact), threads=threads, **options)
        if backend.num_classes != len(self.labels):
            backend.close()
            raise BundleError(f"{self.path(artifact)}: the model has {backend.num_classes} outputs but the manifest "
                              f"names {len(self.labels)} labels")
        # a temporal head reads per-frame features, never images: mirroring means nothing to it
        return with_flip_average(backend, self.spec.flip_average and "temporal" not in self.manifest)


def _relative_inside(name, root: Path) -> bool:
    if not isinstance(name, str) or not name or "\\" in name:
        return False
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts:
        return False
    return (root / name).resolve().is_relative_to(root.resolve())


def check_manifest(manifest, root: Path) -> str | None:
    """What is wrong with a manifest's shape, in a few words (None: nothing). The schema, in code."""
    if not isinstance(manifest, dict):
        return f"not a bundle manifest (a JSON {type(manifest).__name__}, expected an object)"
    if manifest.get("schema") != SCHEMA_VERSION:
        return f"schema {manifest.get('schema')!r} is not the supported {SCHEMA_VERSION}"
    labels = manifest.get("labels")
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) and x for x in labels):
        return "labels must be a list of at least two class names"
    if len(set(labels)) != len(labels):
        return f"labels repeat a class name ({', '.join(labels)})"
    if not isinstance(manifest.get("preprocess"), dict):
        return "preprocess must be an object (the preprocessing spec)"
    artifacts = manifest.get("artifacts")
    if not isinstance(artifacts, list) or not artifacts:
        return "artifacts must be a non-empty list"
    seen = set()
    for i, a in enumerate(artifacts):
        where = f"artifact {i + 1}"
        if not isinstance(a, dict):
            return f"{where} is not an object"
        if not isinstance(a.get("id"), str) or not a["id"] or a["id"] in seen:
            return f"{where}: missing or repeated id"
        seen.add(a["id"])
        where = f"artifact {a['id']}"
        if a.get("format") not in formats.names() or a.get("precision") not in PRECISIONS:
            return (f"{where}: format must be one of {', '.join(formats.names())} and precision one of "
                    f"{', '.join(PRECISIONS)}")
        files = a.get("files")
        if not isinstance(files, list) or not files:
            return f"{where}: files must be a non-empty list"
        for name in files:
            if not _relative_inside(name, root):
                return f"{where}: file {name!r} lies outside the bundle folder"
        hashes = a.get("sha256")
        if not isinstance(hashes, dict) or any(not isinstance(hashes.get(n), str) or not SHA256.fullmatch(hashes[n])
                                               for n in files):
            return f"{where}: every file needs its sha256 (64 hex digits)"
        if not isinstance(a.get("bytes"), int) or a["bytes"] < 0:
            return f"{where}: bytes must be a non-negative integer"
    return None


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
