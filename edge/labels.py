"""Expression label names: the canonical FER-2013 set and the aliases other datasets use.

Labels are always names in the model's output order; datasets are mapped by name, never by
position (the FER-2013 CSV orders classes differently from the image-folder release).
"""
from __future__ import annotations

# Alphabetical, as the FER-2013 image-folder release sorts its class folders.
FER2013_LABELS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")

# The order of the `emotion` column of the original Kaggle fer2013.csv.
FER2013_CSV_ORDER: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

# Spellings used by CK+, JAFFE, AffectNet-style folders and others.
ALIASES: dict[str, str] = {
    "anger": "angry",
    "angry": "angry",
    "disgust": "disgust",
    "disgusted": "disgust",
    "fear": "fear",
    "fearful": "fear",
    "afraid": "fear",
    "happy": "happy",
    "happiness": "happy",
    "joy": "happy",
    "neutral": "neutral",
    "sad": "sad",
    "sadness": "sad",
    "surprise": "surprise",
    "surprised": "surprise",
}

# Classes some datasets carry that FER-2013 does not have.
NON_FER_CLASSES: frozenset[str] = frozenset({"contempt"})


def canonical_label(name: str) -> str | None:
    """FER-2013 name for a dataset's class name, or None when FER-2013 has no such class."""
    return ALIASES.get(name.strip().lower())
