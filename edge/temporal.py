"""seed004 on the device: a temporal head over the last T frames of each tracked face.

The head reads what every per-frame artifact already gives, the class probabilities, as
log-probabilities (`frame_features`), so it runs beside any artifact of the per-frame bundle,
of any format and precision, and the runtime needs no second output and no TensorFlow. A
temporal bundle is a bundle like the per-frame one (manifest, labels, sha256 per file) whose
manifest carries a "temporal" block: frames T, the features it reads and its own labels.

    head = TemporalHead.load("models/pretrained/seed004/bundle")
    buffers = TrackBuffers(head.frames)
    buffers.push(track_id, probs)            # every frame, per face
    if buffers.full(track_id): probs_t = head.predict(buffers.sequence(track_id))
"""
from __future__ import annotations

import collections
from pathlib import Path

import numpy as np

from feredge.edge.bundle import Bundle, BundleError

FEATURES = "logprobs"
EPS = 1e-7  # floor of a probability before its log: int8 artifacts give exact zeros


def frame_features(probs: np.ndarray) -> np.ndarray:
    """Per-frame class probabilities -> the head's input features (natural-log probabilities)."""
    return np.log(np.clip(np.asarray(probs, np.float32), EPS, 1.0)).astype(np.float32)


def temporal_block(bundle: Bundle) -> dict | None:
    """The manifest's temporal block, checked, or None for a per-frame bundle."""
    block = bundle.manifest.get("temporal")
    if block is None:
        return None
    if not isinstance(block, dict) or not isinstance(block.get("frames"), int) or block["frames"] < 2 \
            or block.get("features") != FEATURES:
        raise BundleError(f"{bundle.root}: malformed temporal block (needs frames >= 2 and features "
                          f"{FEATURES!r}): {block!r}")
    return block


class TemporalHead:
    """One artifact of a temporal bundle: (T, classes) log-probabilities in, class probabilities out."""

    def __init__(self, bundle: Bundle, backend, artifact):
        self.bundle, self.backend, self.artifact = bundle, backend, artifact
        self.frames = int(bundle.manifest["temporal"]["frames"])
        self.labels = bundle.labels

    @classmethod
    def load(cls, root: str | Path, *, format: str | None = None, precision: str | None = None,
             threads: int | None = 1) -> "TemporalHead":
        bundle = Bundle.load(root)
        if temporal_block(bundle) is None:
            raise BundleError(f"{root}: a per-frame bundle, not a temporal one (export a seed004 run: "
                              f"feredge export --model runs/seed004)")
        artifact = _pick(bundle, format, precision)
        backend = bundle.open(artifact, threads=threads)
        if backend.input_shape != (bundle.manifest["temporal"]["frames"], len(bundle.labels)):
            backend.close()
            raise BundleError(f"{bundle.path(artifact)}: input {backend.input_shape} is not (frames, classes) = "
                              f"({bundle.manifest['temporal']['frames']}, {len(bundle.labels)})")
        return cls(bundle, backend, artifact)

    def check_labels(self, frame_labels) -> None:
        if tuple(frame_labels) != tuple(self.labels):
            raise BundleError(f"{self.bundle.root}: the temporal head reads the classes {', '.join(self.labels)} "
                              f"but the per-frame model gives {', '.join(frame_labels)}")

    def predict(self, features: np.ndarray) -> np.ndarray:
        """(T, classes) or (N, T, classes) features -> (classes,) or (N, classes) probabilities."""
        features = np.asarray(features, np.float32)
        out = self.backend.predict(features if features.ndim == 3 else features[None])
        return out if features.ndim == 3 else out[0]

    def close(self) -> None:
        self.backend.close()

    @property
    def id(self) -> str:
        return self.artifact.id


def _pick(bundle: Bundle, format: str | None, precision: str | None):
    """The requested artifact, or the first one whose runtime is installed here (fp32 first)."""
    if format or precision:
        matches = [a for a in bundle.artifacts if format in (None, a.format) and precision in (None, a.precision)]
        return sorted(matches, key=lambda a: a.precision != "fp32")[0] if matches else bundle.find(format, precision)
    from feredge.edge.backends import installed_formats

    have = installed_formats()
    order = sorted(bundle.artifacts, key=lambda a: (a.precision != "fp32", a.id))
    for artifact in order:
        if artifact.format in have:
            return artifact
    raise BundleError(f"{bundle.root}: no installed runtime for any of {', '.join(a.id for a in order)}")


class TrackBuffers:
    """A ring buffer of the last T frame features per track; tracks unseen for `forget` frames are dropped."""

    def __init__(self, frames: int, forget: int = 30):
        self.frames, self.forget = int(frames), int(forget)
        self._buffers: dict[int, collections.deque] = {}
        self._last_seen: dict[int, int] = {}
        self._clock = 0

    def push(self, track: int, probs: np.ndarray) -> None:
        self._buffers.setdefault(track, collections.deque(maxlen=self.frames)).append(frame_features(probs))
        self._last_seen[track] = self._clock

    def count(self, track: int) -> int:
        return len(self._buffers.get(track, ()))

    def full(self, track: int) -> bool:
        return self.count(track) == self.frames

    def sequence(self, track: int) -> np.ndarray:
        return np.stack(self._buffers[track])

    def tick(self) -> None:
        """End of a frame: forget tracks that left the picture."""
        self._clock += 1
        for track in [t for t, seen in self._last_seen.items() if self._clock - seen > self.forget]:
            del self._buffers[track], self._last_seen[track]

    def reset(self) -> None:
        self._buffers.clear()
        self._last_seen.clear()

    def __len__(self) -> int:
        return len(self._buffers)
