"""Where the shipped model, its bundle and the sample faces live, wherever the kit is installed."""
from pathlib import Path

# edge/ and models/ are installed side by side (editable or not), so this holds in both cases.
MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
PRETRAINED_DIR = MODELS_DIR / "pretrained"
DEFAULT_BUNDLE = PRETRAINED_DIR / "bundle"
DEFAULT_TEMPORAL_BUNDLE = PRETRAINED_DIR / "seed004" / "bundle"  # seed004's head, for feredge run --temporal
SAMPLE_DIR = MODELS_DIR / "sample"
# the face detectors' model files that ship with the runtime (attribution in their README)
DETECTORS_DIR = Path(__file__).resolve().parent / "detectors"
YUNET_MODEL = DETECTORS_DIR / "face_detection_yunet_2023mar.onnx"
BLAZEFACE_MODEL = DETECTORS_DIR / "face_detection_short_range.tflite"
