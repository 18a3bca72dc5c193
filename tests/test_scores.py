"""Tests for macro-F1 and the confusion-matrix text (model/evaluation.py).

Expected numbers are worked out by hand and written as literals.
"""
from __future__ import annotations

import numpy as np
import pytest

from model.evaluation import (
    Scores,
    classification_scores,
    confusion_matrix,
    format_confusion,
    macro_f1,
    per_class_f1,
    scores_from_confusion,
)
from model.ravdess import SEED_CLASSES

# Rows are true classes, columns predicted ones.
#            pred 0  1  2     TP  FP  FN   F1 = 2TP / (2TP + FP + FN)
# true 0        5   1  0      5   2   1    10 / 13 = 0.7692307692307693
# true 1        2   3  1      3   1   3     6 / 10 = 0.6
# true 2        0   0  4      4   1   0     8 / 9  = 0.8888888888888888
# macro-F1 = (10/13 + 6/10 + 8/9) / 3 = 0.7527065527065527
# accuracy = 12 / 16 = 0.75; UAR = (5/6 + 3/6 + 4/4) / 3 = 0.7777777777777778
CM = np.array([[5, 1, 0], [2, 3, 1], [0, 0, 4]], dtype=np.int64)


def test_per_class_f1_by_hand():
    np.testing.assert_allclose(per_class_f1(CM), [0.7692307692307693, 0.6, 0.8888888888888888])


def test_macro_f1_by_hand():
    assert macro_f1(CM) == pytest.approx(0.7527065527065527)
    s = scores_from_confusion(CM)
    assert s.macro_f1 == pytest.approx(0.7527065527065527)
    # The other scores are unchanged by the addition.
    assert (s.examples, s.accuracy) == (16, 0.75)
    assert s.uar == pytest.approx(0.7777777777777778)


def test_macro_f1_from_predictions_with_absent_and_predicted_only_classes():
    # Class 3 never true, never predicted: no F1, left out. Class 2 is true once, never predicted: F1 0.
    # neutral: TP 6, FP 2, FN 0 -> 12/14; happy: TP 1, FP 1, FN 2 -> 2/5; sad: 0.
    y_true = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 2])
    y_pred = np.array([0, 0, 0, 0, 0, 0, 0, 0, 1, 1])
    s = classification_scores(y_true, y_pred, 4)
    assert isinstance(s, Scores)
    assert s.macro_f1 == pytest.approx(0.41904761904761906)  # (12/14 + 2/5 + 0) / 3
    f1 = per_class_f1(s.confusion)
    assert np.isnan(f1[3])
    # A class that is only ever predicted (false alarms) counts with F1 0.
    only_predicted = confusion_matrix(np.array([0, 0, 1]), np.array([0, 2, 1]), 3)
    assert macro_f1(only_predicted) == pytest.approx(0.5555555555555556)  # (2/3 + 1 + 0) / 3


def test_macro_f1_perfect_and_empty():
    assert macro_f1(np.diag([3, 2, 5])) == 1.0
    assert macro_f1(np.zeros((4, 4), dtype=np.int64)) == 0.0
    assert scores_from_confusion(np.zeros((2, 2), dtype=np.int64)).macro_f1 == 0.0


def test_macro_f1_differs_from_uar_and_accuracy():
    # Always predicting class 0 on 9:1 data: accuracy 0.9, UAR 0.5, macro-F1 (18/19 + 0) / 2.
    s = classification_scores(np.array([0] * 9 + [1]), np.zeros(10, dtype=np.int64), 2)
    assert (s.accuracy, s.uar) == (pytest.approx(0.9), pytest.approx(0.5))
    assert s.macro_f1 == pytest.approx(0.47368421052631576)


def test_format_confusion_with_class_names():
    cm = np.array([[6, 0, 0, 0], [2, 1, 0, 0], [0, 1, 12, 0], [0, 0, 0, 0]])
    text = format_confusion(cm, SEED_CLASSES)
    assert text == (
        "true \\ predicted  neutral  happy  sad  angry  recall\n"
        "neutral                 6      0    0      0  100.0%\n"
        "happy                   2      1    0      0   33.3%\n"
        "sad                     0      1   12      0   92.3%\n"
        "angry                   0      0    0      0       -\n"
        "22 examples  accuracy 86.4%  UAR 75.2%  macro-F1 73.9%"
    )
    # accuracy 19/22; UAR (1 + 1/3 + 12/13) / 3; macro-F1 (12/14 + 2/5 + 24/25) / 3 (angry left out).


def test_format_confusion_widens_columns_for_large_counts():
    text = format_confusion(np.array([[12345, 6], [7, 8]]), ("a", "b"))
    lines = text.splitlines()
    assert lines[0] == "true \\ predicted      a  b  recall"
    assert lines[1] == "a                 12345  6  100.0%"
    assert lines[2] == "b                     7  8   53.3%"
    assert len({len(line) for line in lines[:3]}) == 1  # columns line up


def test_format_confusion_rejects_mismatched_names():
    with pytest.raises(ValueError, match="does not match 3 class names"):
        format_confusion(np.zeros((4, 4), dtype=np.int64), ("a", "b", "c"))
