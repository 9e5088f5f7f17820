"""evaluation.metrics against hand-computed numbers, and evaluation.plots PNG output."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from pytest import approx

import feredge.edge.fileio as edge_fileio
from feredge.evaluation.metrics import (classification_report, confusion_matrix, format_confusion,
                                format_report, top1_agreement)

LABELS = ["angry", "happy", "sad"]
# 3 classes, 10 samples.
Y_TRUE = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
Y_PRED = [0, 0, 1, 2, 1, 1, 0, 2, 2, 1]
# Confusion matrix by hand (rows true, cols predicted):
#   true 0: pred 0,0,1,2 -> [2, 1, 1]   support 4
#   true 1: pred 1,1,0   -> [1, 2, 0]   support 3
#   true 2: pred 2,2,1   -> [0, 1, 2]   support 3
#   column sums (times predicted): [3, 4, 3]; diagonal 2,2,2 -> accuracy 6/10 = 0.6
# precision = diag / colsum: 2/3, 2/4 = 1/2, 2/3
# recall    = diag / rowsum: 2/4 = 1/2, 2/3, 2/3
# f1 = 2PR/(P+R): class0 2*(1/3)/(7/6) = 4/7; class1 same = 4/7; class2 = 2/3
# macro P = (2/3 + 1/2 + 2/3)/3 = 11/18;  macro R = (1/2 + 2/3 + 2/3)/3 = 11/18
# macro F1 = (4/7 + 4/7 + 2/3)/3 = 38/63
# weighted F1 = (4*4/7 + 3*4/7 + 3*2/3)/10 = (4 + 2)/10 = 0.6
CM = [[2, 1, 1], [1, 2, 0], [0, 1, 2]]


def test_confusion_matrix_hand_computed():
    cm = confusion_matrix(Y_TRUE, Y_PRED, 3)
    assert cm.dtype == np.int64 and cm.shape == (3, 3)
    assert cm.tolist() == CM
    assert cm.sum() == 10


def test_classification_report_hand_computed():
    r = classification_report(np.array(Y_TRUE), np.array(Y_PRED), LABELS)
    assert r["num_samples"] == 10
    assert r["accuracy"] == approx(0.6)
    pc = r["per_class"]
    assert [pc[k]["precision"] for k in LABELS] == approx([2 / 3, 1 / 2, 2 / 3])
    assert [pc[k]["recall"] for k in LABELS] == approx([1 / 2, 2 / 3, 2 / 3])
    assert [pc[k]["f1"] for k in LABELS] == approx([4 / 7, 4 / 7, 2 / 3])
    assert [pc[k]["support"] for k in LABELS] == [4, 3, 3]
    assert r["macro_precision"] == approx(11 / 18)
    assert r["macro_recall"] == approx(11 / 18)
    assert r["macro_f1"] == approx(38 / 63)
    assert r["weighted_f1"] == approx(0.6)
    assert r["labels"] == LABELS
    assert r["confusion_matrix"] == CM


def test_report_is_plain_python_and_json_roundtrips():
    r = classification_report(Y_TRUE, Y_PRED, LABELS)
    assert json.loads(json.dumps(r)) == r
    assert type(r["num_samples"]) is int and type(r["accuracy"]) is float
    assert all(type(v) is int for row in r["confusion_matrix"] for v in row)
    assert all(type(pc["support"]) is int and type(pc["f1"]) is float for pc in r["per_class"].values())


def test_class_never_predicted_has_zero_precision_without_warnings():
    # true [0,1,2,2], pred [0,1,1,1]: class 2 is never predicted -> precision 0/0 := 0, recall 0/2 = 0.
    # class 1: precision 1/3, recall 1/1 -> f1 = 2*(1/3)/(4/3) = 1/2. class 0: all 1.0.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = classification_report([0, 1, 2, 2], [0, 1, 1, 1], LABELS)
    sad, happy = r["per_class"]["sad"], r["per_class"]["happy"]
    assert (sad["precision"], sad["recall"], sad["f1"], sad["support"]) == (0.0, 0.0, 0.0, 2)
    assert (happy["precision"], happy["recall"], happy["f1"]) == approx((1 / 3, 1.0, 0.5))
    assert r["macro_f1"] == approx((1.0 + 0.5 + 0.0) / 3)
    # weighted F1 = (1*1 + 1*0.5 + 2*0)/4
    assert r["weighted_f1"] == approx(1.5 / 4)


def test_class_absent_from_y_true_counts_in_macro_average():
    # true [0,0,1], pred [0,2,1]: class 2 has no support -> recall 0/0 := 0; predicted once wrongly
    # -> precision 0/1 = 0. class 0: P 1, R 1/2, F1 2/3. class 1: all 1.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = classification_report([0, 0, 1], [0, 2, 1], LABELS)
    sad = r["per_class"]["sad"]
    assert (sad["precision"], sad["recall"], sad["f1"], sad["support"]) == (0.0, 0.0, 0.0, 0)
    assert r["macro_f1"] == approx((2 / 3 + 1.0 + 0.0) / 3)  # absent class still averaged
    assert r["macro_recall"] == approx((0.5 + 1.0 + 0.0) / 3)
    assert r["weighted_f1"] == approx((2 * 2 / 3 + 1 * 1.0) / 3)  # zero support adds nothing
    # A class absent from both y_true and y_pred is all zeros as well.
    r = classification_report([0, 1], [0, 1], LABELS)
    assert r["per_class"]["sad"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_perfect_predictions():
    y = [0, 1, 2, 2, 1, 0, 0]
    r = classification_report(y, y, LABELS)
    for key in ("accuracy", "macro_precision", "macro_recall", "macro_f1", "weighted_f1"):
        assert r[key] == 1.0
    assert all(pc["f1"] == 1.0 for pc in r["per_class"].values())
    assert np.array_equal(confusion_matrix(y, y, 3), np.diag([3, 2, 2]))


def test_empty_input_is_all_zero():
    r = classification_report([], [], LABELS)
    assert r["num_samples"] == 0 and r["accuracy"] == 0.0 and r["weighted_f1"] == 0.0


@pytest.mark.parametrize("y_true, y_pred, needle", [
    ([0, 3], [0, 1], "3"),          # above range
    ([0, 1], [0, -1], "-1"),        # negative
    ([0, 1.5], [0, 1], "1.5"),      # non-integer
    ([0, 1, 2], [0, 1], "length"),  # length mismatch
    ([[1, 0, 0]], [0], "1-D"),      # one-hot given by mistake
])
def test_invalid_labels_raise(y_true, y_pred, needle):
    with pytest.raises(ValueError, match=needle):
        confusion_matrix(y_true, y_pred, 3)
    with pytest.raises(ValueError):
        classification_report(y_true, y_pred, LABELS)


def test_integral_floats_accepted():
    assert confusion_matrix(np.array([0.0, 2.0]), [0, 2], 3).tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 1]]


def test_duplicate_label_names_rejected():
    with pytest.raises(ValueError, match="duplicate"):
        classification_report([0], [0], ["a", "a"])


def test_format_report_lists_every_label_and_numbers():
    text = format_report(classification_report(Y_TRUE, Y_PRED, LABELS))
    lines = text.splitlines()
    for name, support, f1 in zip(LABELS, [4, 3, 3], [4 / 7, 4 / 7, 2 / 3]):
        (row,) = [ln for ln in lines if ln.split()[0] == name]
        assert row.split()[-1] == str(support)
        assert row.split()[-2] == f"{f1:.4f}"
    assert any(ln.startswith("accuracy") and "0.6000" in ln for ln in lines)
    assert any(ln.startswith("macro avg") and f"{38 / 63:.4f}" in ln for ln in lines)
    assert any(ln.startswith("weighted avg") and "0.6000" in ln for ln in lines)
    assert len({len(ln) for ln in lines}) == 1  # fixed width


def test_format_confusion_rows_and_columns():
    for source in (np.array(CM), classification_report(Y_TRUE, Y_PRED, LABELS)):
        lines = format_confusion(source, LABELS).splitlines()
        assert lines[0].split()[-3:] == LABELS
        for name, row, line in zip(LABELS, CM, lines[1:]):
            assert line.split() == [name] + [str(v) for v in row]
        assert len({len(ln) for ln in lines}) == 1
    # labels default to the report's own
    assert format_confusion(classification_report(Y_TRUE, Y_PRED, LABELS)) == format_confusion(CM, LABELS)
    with pytest.raises(ValueError):
        format_confusion(CM, ["a", "b"])


def test_top1_agreement():
    a = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]])
    b = np.array([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.0, 0.2, 0.8], [0.4, 0.3, 0.3]])
    # argmax a: 0,1,2,2; argmax b: 0,0,2,0 -> 2 of 4 agree
    assert top1_agreement(a, b) == approx(0.5)
    assert top1_agreement(a, a) == 1.0
    assert type(top1_agreement(a, b)) is float
    with pytest.raises(ValueError):
        top1_agreement(a, b[:3])
    with pytest.raises(ValueError):
        top1_agreement(np.zeros((0, 3)), np.zeros((0, 3)))


# ---------------------------------------------------------------- plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _read_png(path: Path) -> np.ndarray:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    try:
        import cv2
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except ImportError:
        import matplotlib.image
        img = matplotlib.image.imread(path)
    assert img is not None
    return img


def test_plot_confusion_writes_png(tmp_path):
    from feredge.evaluation.plots import plot_confusion
    labels = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
    rng = np.random.default_rng(0)
    cm = confusion_matrix(rng.integers(0, 7, 200), rng.integers(0, 7, 200), 7)
    cm[1] = 0  # a class with no support must not crash normalisation
    out = tmp_path / "sub" / "cm.png"
    plot_confusion(cm, labels, out, title="test")
    h, w = _read_png(out).shape[:2]
    assert 400 < h < 2000 and 400 < w < 2500
    plot_confusion(classification_report(Y_TRUE, Y_PRED, LABELS), None, tmp_path / "raw.png",
                   normalize=False)
    _read_png(tmp_path / "raw.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw.png", "sub"]  # no temp leftovers


def test_plot_history_writes_png(tmp_path):
    from feredge.evaluation.plots import plot_history
    hist = {"loss": [1.5, 1.1, 0.9], "val_loss": [1.6, 1.2, 1.3],
            "accuracy": [0.3, 0.5, 0.6], "val_accuracy": [0.28, 0.45, 0.44],
            "learning_rate": [1e-3, 1e-3, 1e-4]}
    plot_history(hist, tmp_path / "h.png")
    h3, w3 = _read_png(tmp_path / "h.png").shape[:2]
    assert 300 < w3 < 2000 and 300 < h3 < 2000
    plot_history({"loss": [1.0, 0.5]}, tmp_path / "loss_only.png", title="loss only")
    h1, _ = _read_png(tmp_path / "loss_only.png").shape[:2]
    assert h1 < h3  # fewer panels, shorter figure
    with pytest.raises(ValueError):
        plot_history({"lr": [0.1]}, tmp_path / "nothing.png")
    assert not (tmp_path / "nothing.png").exists()


def test_plot_robustness_draws_a_panel_per_kind_with_two_values(tmp_path):
    from feredge.evaluation.plots import plot_robustness

    def row(condition, acc, agree):
        return {"condition": condition, "accuracy": acc, "agreement": agree}
    two_kinds = [row("noise:4", 0.6, 0.9), row("noise:12", 0.5, 0.7), row("scale:24", 0.5, 0.6),
                 row("scale:40", 0.6, 0.8), row("jpeg:40", 0.55, 0.8)]  # jpeg: one value, no panel
    assert plot_robustness(0.65, two_kinds, tmp_path / "two.png")
    assert plot_robustness(0.65, two_kinds[:2], tmp_path / "one.png")
    assert _read_png(tmp_path / "two.png").shape[1] > 1.5 * _read_png(tmp_path / "one.png").shape[1]
    assert not plot_robustness(0.65, [row("noise:8", 0.6, 0.9), row("jpeg:40", 0.5, 0.8)], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    from feredge.evaluation.plots import plot_confusion, plot_history
    out = tmp_path / "cm.png"
    out.write_bytes(b"old")

    def boom(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(edge_fileio.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        plot_confusion(CM, LABELS, out)
    with pytest.raises(OSError, match="disk full"):
        plot_history({"loss": [1.0]}, tmp_path / "h.png")
    assert out.read_bytes() == b"old"  # previous file untouched
    assert [p.name for p in tmp_path.iterdir()] == ["cm.png"]  # no temp or partial files


def test_importing_plots_does_not_import_matplotlib():
    code = "import sys, feredge.evaluation.plots, feredge.evaluation.metrics; print('matplotlib' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(root)}, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"
