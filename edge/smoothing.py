"""Smoothing each face's prediction over recent frames.

Expressions unfold over time, and a per-frame classifier flickers between neighbouring classes;
smoothing per face steadies the label shown. Faces are followed across frames by greedy IoU
matching of their boxes (`FaceTracker`); each track keeps its own smoother state:

- EmaSmoother(alpha): exponential moving average of the probabilities (alpha = weight of the
  newest frame; 1.0 = no smoothing);
- MajoritySmoother(window): the most frequent top-1 label over the last `window` frames (ties go
  to the most recent), reported as vote fractions;
- NoSmoother: the frame's own probabilities.

A track not matched for `max_missed` consecutive frames is dropped, so a face that leaves and a new
one that arrives at the same place do not share a history for long.
"""
from __future__ import annotations

import collections
import dataclasses

import numpy as np

from feredge.edge.detect import iou


class _EmaState:
    def __init__(self, alpha: float):
        self.alpha, self.value = alpha, None

    def update(self, probs: np.ndarray) -> np.ndarray:
        if self.value is None:
            self.value = probs.astype(np.float32).copy()
        else:
            self.value = self.alpha * probs + (1.0 - self.alpha) * self.value
        return self.value


class _MajorityState:
    def __init__(self, window: int, classes: int | None = None):
        self.votes: collections.deque[int] = collections.deque(maxlen=window)

    def update(self, probs: np.ndarray) -> np.ndarray:
        self.votes.append(int(np.argmax(probs)))
        counts = np.bincount(np.fromiter(self.votes, int), minlength=len(probs)).astype(np.float32)
        best = counts.max()
        # ties: the most recent of the tied labels wins
        winner = next(v for v in reversed(self.votes) if counts[v] == best)
        out = counts / len(self.votes)
        out[winner] += 1e-6  # so argmax picks the tie-break winner
        return out


class _Identity:
    def update(self, probs: np.ndarray) -> np.ndarray:
        return probs


class EmaSmoother:
    def __init__(self, alpha: float = 0.5):
        if not 0 < alpha <= 1:
            raise ValueError(f"EMA alpha must be in (0, 1], not {alpha}")
        self.alpha = float(alpha)
        self.name = f"ema:{alpha:g}"

    def new_state(self):
        return _EmaState(self.alpha)


class MajoritySmoother:
    def __init__(self, window: int = 5):
        if int(window) < 1:
            raise ValueError(f"majority window must be >= 1, not {window}")
        self.window = int(window)
        self.name = f"window:{self.window}"

    def new_state(self):
        return _MajorityState(self.window)


class NoSmoother:
    name = "none"

    def new_state(self):
        return _Identity()


def parse_smoother(text: str):
    """ema:ALPHA | window:N | none."""
    text = (text or "none").strip().lower()
    try:
        if text == "none":
            return NoSmoother()
        if text.startswith("ema"):
            return EmaSmoother(float(text.split(":", 1)[1]) if ":" in text else 0.5)
        if text.startswith(("window", "majority")):
            return MajoritySmoother(int(text.split(":", 1)[1]) if ":" in text else 5)
    except (IndexError, ValueError) as exc:
        raise ValueError(f"bad --smooth {text!r}: {exc}") from None
    raise ValueError(f"unknown smoothing {text!r} (expected ema:ALPHA, window:N or none)")


@dataclasses.dataclass
class Track:
    id: int
    box: tuple[int, int, int, int]
    state: object
    missed: int = 0
    age: int = 0


class FaceTracker:
    """Matches each frame's boxes to the previous tracks by IoU (greedy, best pairs first) and smooths.

    update(boxes, probs) -> (track ids, smoothed probabilities (N, C)) in the order of `boxes`.
    """

    def __init__(self, smoother=None, iou_threshold: float = 0.3, max_missed: int = 5):
        self.smoother = smoother or NoSmoother()
        self.iou_threshold, self.max_missed = float(iou_threshold), int(max_missed)
        self.tracks: list[Track] = []
        self._next_id = 1

    def reset(self) -> None:
        self.tracks = []
        self._next_id = 1

    def update(self, boxes, probs: np.ndarray) -> tuple[list[int], np.ndarray]:
        probs = np.asarray(probs, np.float32)
        pairs = sorted(((iou(t.box, b), ti, bi) for ti, t in enumerate(self.tracks) for bi, b in enumerate(boxes)),
                       reverse=True)
        owner: dict[int, Track] = {}
        used: set[int] = set()
        for overlap, ti, bi in pairs:
            if overlap < self.iou_threshold:
                break
            if ti in used or bi in owner:
                continue
            used.add(ti)
            owner[bi] = self.tracks[ti]
        for ti, track in enumerate(self.tracks):
            if ti not in used:
                track.missed += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.max_missed]
        ids, smoothed = [], np.zeros_like(probs)
        for bi, box in enumerate(boxes):
            track = owner.get(bi)
            if track is None:
                track = Track(self._next_id, tuple(box), self.smoother.new_state())
                self._next_id += 1
                self.tracks.append(track)
            track.box, track.missed = tuple(box), 0
            track.age += 1
            ids.append(track.id)
            smoothed[bi] = track.state.update(probs[bi])
        return ids, smoothed
