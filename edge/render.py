"""The overlay: a box per face with its (smoothed) label, a probability bar per class, and the FPS."""
from __future__ import annotations

import cv2
import numpy as np

# BGR colours per expression, in FER-2013 order; unknown labels cycle through them.
COLOURS = {
    "angry": (40, 40, 220), "disgust": (40, 140, 40), "fear": (160, 60, 160), "happy": (40, 200, 240),
    "neutral": (200, 200, 200), "sad": (200, 120, 40), "surprise": (40, 160, 255),
}
_FALLBACK = list(COLOURS.values())
FONT = cv2.FONT_HERSHEY_SIMPLEX
# Below this short side the overlay's text cannot be read (a 48x48 sample face): such frames are
# enlarged by a whole factor to at least ENLARGE_TO before drawing, for every sink that shows them.
ENLARGE_BELOW = 240
ENLARGE_TO = 360


def colour(label: str, index: int = 0) -> tuple[int, int, int]:
    return COLOURS.get(label, _FALLBACK[index % len(_FALLBACK)])


def enlargement(height: int, width: int) -> int:
    """The whole factor that makes a frame of this size big enough for a readable overlay (1: none)."""
    short = min(height, width)
    return 1 if short >= ENLARGE_BELOW or short < 1 else -(-ENLARGE_TO // short)


def annotate(image: np.ndarray, result, labels, fps: float | None = None) -> np.ndarray:
    """A BGR copy of `image` with the result drawn on it (the input is not modified); a frame whose
    short side is under ENLARGE_BELOW is drawn enlarged (see `enlargement`), boxes scaled with it."""
    out = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image.copy()
    k = enlargement(*out.shape[:2])
    if k > 1:
        out = cv2.resize(out, None, fx=k, fy=k, interpolation=cv2.INTER_CUBIC)
    h, w = out.shape[:2]
    unit = max(0.35, min(w, h) / 900)  # text scale that stays readable from 160 px to 1080p
    thick = max(1, int(round(unit * 2)))
    for face in result.faces:
        x, y, bw, bh = (int(v) * k for v in face.box)
        # the temporal head's label once the track has its T frames, else the smoothed per-frame one
        temporal = getattr(face, "temporal_label", None)
        label = temporal or face.smoothed_label
        p = face.temporal_probabilities if temporal else face.smoothed_probabilities
        c = colour(label, labels.index(label) if label in labels else 0)
        cv2.rectangle(out, (x, y), (x + bw, y + bh), c, thick)
        text = f"{label} {p.max():.0%}" + (" (clip)" if temporal else "")
        (tw, th), base = cv2.getTextSize(text, FONT, unit, thick)
        ty = y - 4 if y - th - base - 4 >= 0 else y + bh + th + 4
        inside = ty + base > h  # a face that fills the frame: the label goes inside the box, at its foot
        if inside:
            ty = y + bh - base - 2
        cv2.rectangle(out, (x, ty - th - base), (x + tw + 4, ty + base // 2), c, -1)
        cv2.putText(out, text, (x + 2, ty - base // 2), FONT, unit, (0, 0, 0), thick, cv2.LINE_AA)
        _bars(out, face, labels, x, y, bw, bh, unit, foot=th + base + 6 if inside else 0)
    if fps is not None:
        text = f"{fps:.1f} FPS"
        cv2.putText(out, text, (8, int(28 * unit / 0.7)), FONT, unit, (0, 0, 0), thick + 2, cv2.LINE_AA)
        cv2.putText(out, text, (8, int(28 * unit / 0.7)), FONT, unit, (255, 255, 255), thick, cv2.LINE_AA)
    return out


def _bars(out, face, labels, x, y, bw, bh, unit, foot: int = 0) -> None:
    """One horizontal bar per class, under the box when there is room, else beside it, else inside
    it above its foot (the `foot` pixels the label took), clear of the FPS at the top left."""
    h, w = out.shape[:2]
    n = len(labels)
    text_scale = unit * 0.6
    row = max(9, cv2.getTextSize("Sg", FONT, text_scale, 1)[0][1] + 5)
    name_w = max(cv2.getTextSize(name[:8], FONT, text_scale, 1)[0][0] for name in labels) + 6
    panel_w = max(bw, name_w + 40)
    panel_h = n * row
    if y + bh + 4 + panel_h <= h:
        px, py = x, y + bh + 4  # below
    elif x + bw + 6 + panel_w <= w:
        px, py = x + bw + 6, y  # right
    elif x - 6 - panel_w >= 0:
        px, py = x - 6 - panel_w, y  # left
    else:
        px, py = x, y + bh - foot - panel_h - 2  # inside
    px, py = max(0, min(px, w - panel_w)), max(0, min(py, h - panel_h))
    bar_len = panel_w - name_w - 4
    probs = face.smoothed_probabilities
    overlay = out[py:py + panel_h, px:px + panel_w]
    overlay[:] = (overlay * 0.35).astype(out.dtype)  # darken behind the bars, keep the scene visible
    for i, name in enumerate(labels):
        top = py + i * row
        p = float(np.clip(probs[i], 0, 1))
        cv2.rectangle(out, (px + name_w, top + 2), (px + name_w + int(round(bar_len * p)), top + row - 2),
                      colour(name, i), -1)
        cv2.putText(out, name[:8], (px + 3, top + row - 3), FONT, text_scale, (235, 235, 235), 1, cv2.LINE_AA)
