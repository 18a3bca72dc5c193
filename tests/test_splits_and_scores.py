"""Tests for speaker-independent splits (model/splits.py), classification scores
(model/evaluation.py) and pooling/checking of evaluation reports (aggregator_service/evaluations.py).

Expected scores are worked out by hand and written as literals.
"""
from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest

from aggregator_service.errors import InvalidReportError
from aggregator_service.evaluations import EvalMetrics, check_report, pool
from model.evaluation import Scores, classification_scores, confusion_matrix, scores_from_confusion
from model.ravdess import Utterance
from model.splits import SplitError, speaker_split


def _corpus(n_speakers: int, per_speaker: int = 3) -> list[Utterance]:
    return [
        Utterance(Path(f"Actor_{s:02d}/{i}.wav"), "happy", f"actor{s:02d}")
        for s in range(1, n_speakers + 1)
        for i in range(per_speaker)
    ]


def _speakers(utterances) -> set[str]:
    return {u.speaker for u in utterances}


# -- speaker_split -------------------------------------------------------------


@pytest.mark.parametrize(
    "n_speakers, fraction, n_heldout",
    [(10, 0.2, 2), (10, 0.25, 3), (24, 0.25, 6), (2, 0.1, 1), (2, 0.9, 1), (3, 0.5, 2), (5, 0.05, 1)],
)
def test_split_is_speaker_disjoint_with_expected_sizes(n_speakers, fraction, n_heldout):
    data = _corpus(n_speakers)
    train, test = speaker_split(data, fraction, seed=0)
    assert _speakers(train).isdisjoint(_speakers(test))
    assert len(_speakers(test)) == n_heldout
    assert len(_speakers(train)) == n_speakers - n_heldout
    assert len(train) + len(test) == len(data)
    assert sorted(map(str, (u.path for u in train + test))) == sorted(map(str, (u.path for u in data)))


def test_split_deterministic_and_independent_of_input_order():
    data = _corpus(12)
    train, test = speaker_split(data, 0.25, seed=3)
    shuffled = data[:]
    random.Random(0).shuffle(shuffled)
    train2, test2 = speaker_split(shuffled, 0.25, seed=3)
    assert _speakers(test2) == _speakers(test)
    assert _speakers(train2) == _speakers(train)
    # Within each side, the input order is kept.
    assert train2 == [u for u in shuffled if u.speaker in _speakers(train)]
    assert speaker_split(data, 0.25, seed=3) == (train, test)


def test_split_depends_on_seed():
    data = _corpus(12)
    heldouts = {frozenset(_speakers(speaker_split(data, 0.25, seed=s)[1])) for s in range(6)}
    assert len(heldouts) > 1


def test_heldout_fraction_zero_keeps_everything_in_train():
    data = _corpus(4)
    train, test = speaker_split(data, 0.0)
    assert train == data and test == []
    one = _corpus(1)
    assert speaker_split(one, 0.0) == (one, [])


def test_single_speaker_with_heldout_raises():
    with pytest.raises(SplitError) as excinfo:
        speaker_split(_corpus(1), 0.2)
    message = str(excinfo.value)
    assert "found 1" in message
    assert "--heldout-fraction 0" in message


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_fraction_out_of_range_raises(fraction):
    with pytest.raises(SplitError, match=r"heldout_fraction must be in \[0, 1\)"):
        speaker_split(_corpus(4), fraction)


# -- confusion, accuracy, UAR ----------------------------------------------------

# 4 classes, class 3 never occurs in y_true.
#   true 0 (6 files): all predicted 0            -> recall 6/6
#   true 1 (3 files): predicted 1, 0, 0           -> recall 1/3
#   true 2 (1 file):  predicted 1                 -> recall 0/1
Y_TRUE = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 2])
Y_PRED = np.array([0, 0, 0, 0, 0, 0, 1, 0, 0, 1])


def test_confusion_matrix_by_hand():
    cm = confusion_matrix(Y_TRUE, Y_PRED, 4)
    assert cm.dtype == np.int64
    assert cm.tolist() == [
        [6, 0, 0, 0],
        [2, 1, 0, 0],
        [0, 1, 0, 0],
        [0, 0, 0, 0],
    ]


def test_accuracy_and_uar_differ_on_imbalanced_classes():
    s = classification_scores(Y_TRUE, Y_PRED, 4)
    assert isinstance(s, Scores)
    assert s.examples == 10
    assert s.accuracy == pytest.approx(0.7)  # 7 / 10
    # UAR over the 3 classes present: (1 + 1/3 + 0) / 3 = 4/9; class 3 is left out
    # (including it would give (1 + 1/3 + 0 + 0) / 4 = 1/3).
    assert s.uar == pytest.approx(0.4444444444444444)
    assert s.confusion.tolist()[0] == [6, 0, 0, 0]


def test_perfect_and_empty_scores():
    perfect = classification_scores(np.array([0, 1, 1]), np.array([0, 1, 1]), 2)
    assert (perfect.accuracy, perfect.uar) == (1.0, 1.0)
    empty = scores_from_confusion(np.zeros((3, 3), dtype=np.int64))
    assert (empty.examples, empty.accuracy, empty.uar) == (0, 0.0, 0.0)


def test_uar_of_majority_guesser_is_chance_level():
    # Always predicting class 0 on 90/10 data: accuracy 0.9, UAR (1 + 0) / 2 = 0.5.
    y_true = np.array([0] * 9 + [1])
    s = classification_scores(y_true, np.zeros(10, dtype=np.int64), 2)
    assert s.accuracy == pytest.approx(0.9)
    assert s.uar == pytest.approx(0.5)


# -- pooled evaluation reports -------------------------------------------------

# Report A: confusion [[3, 1], [0, 1]], 5 examples, loss 0.5.
# Report B: confusion [[1, 0], [2, 4]], 7 examples, loss 1.1.
# Summed:   [[4, 1], [2, 5]], 12 examples; accuracy 9/12 = 0.75;
#           UAR (4/5 + 5/7) / 2 = 0.7571428571428571; loss (2.5 + 7.7) / 12 = 0.85.
REPORT_A = EvalMetrics(examples=5, loss=0.5, accuracy=0.8, uar=0.875, confusion=(3, 1, 0, 1))
REPORT_B = EvalMetrics(examples=7, loss=1.1, accuracy=5 / 7, uar=(1 + 4 / 6) / 2, confusion=(1, 0, 2, 4))


def test_pool_sums_confusion_matrices():
    pooled = pool([REPORT_A, REPORT_B], 2)
    assert pooled.examples == 12
    assert pooled.confusion == (4, 1, 2, 5)
    assert pooled.accuracy == pytest.approx(0.75)
    assert pooled.uar == pytest.approx(0.7571428571428571)
    assert pooled.loss == pytest.approx(0.85)
    # Not the example-weighted mean of the reported UARs, (5*0.875 + 7*0.8333) / 12 = 0.8507.
    assert pooled.uar != pytest.approx((5 * REPORT_A.uar + 7 * REPORT_B.uar) / 12)


def test_pool_without_confusion_is_example_weighted():
    a = EvalMetrics(examples=2, loss=1.0, accuracy=0.5, uar=0.5)
    b = EvalMetrics(examples=6, loss=0.2, accuracy=1.0, uar=0.75)
    pooled = pool([a, b], 4)
    assert pooled.examples == 8
    assert pooled.loss == pytest.approx(0.4)  # (2 + 1.2) / 8
    assert pooled.accuracy == pytest.approx(0.875)  # (1 + 6) / 8
    assert pooled.uar == pytest.approx(0.6875)  # (1 + 4.5) / 8
    assert pooled.confusion == ()
    # One report without a confusion matrix: fall back to weighting for all.
    mixed = pool([REPORT_A, EvalMetrics(examples=5, loss=0.5, accuracy=0.4, uar=0.5)], 2)
    assert mixed.confusion == ()
    assert mixed.accuracy == pytest.approx(0.6)  # (5*0.8 + 5*0.4) / 10


def test_pool_of_nothing():
    assert pool([], 4) == EvalMetrics(0, 0.0, 0.0, 0.0)


def test_check_report_accepts_valid():
    check_report(REPORT_A, 2)
    check_report(EvalMetrics(examples=1, loss=0.0, accuracy=0.0, uar=1.0), 4)


@pytest.mark.parametrize(
    "metrics, message",
    [
        (EvalMetrics(0, 0.5, 0.5, 0.5), "examples must be > 0"),
        (EvalMetrics(-3, 0.5, 0.5, 0.5), "examples must be > 0"),
        (EvalMetrics(5, math.nan, 0.5, 0.5), "must be finite and loss >= 0"),
        (EvalMetrics(5, math.inf, 0.5, 0.5), "must be finite and loss >= 0"),
        (EvalMetrics(5, -0.1, 0.5, 0.5), "must be finite and loss >= 0"),
        (EvalMetrics(5, 0.5, math.nan, 0.5), "must be finite and loss >= 0"),
        (EvalMetrics(5, 0.5, 1.2, 0.5), r"accuracy and uar must lie in \[0, 1\]"),
        (EvalMetrics(5, 0.5, 0.5, -0.01), r"accuracy and uar must lie in \[0, 1\]"),
        (EvalMetrics(5, 0.5, 0.5, 0.5, (3, 1, 1)), "confusion must have 4 entries"),
        (EvalMetrics(5, 0.5, 0.5, 0.5, (3, 1, 1, 1, 0)), "confusion must have 4 entries"),
        (EvalMetrics(5, 0.5, 0.5, 0.5, (3, 1, 0, 0)), "confusion counts must sum to examples"),
    ],
    ids=[
        "zero-examples", "negative-examples", "nan-loss", "inf-loss", "negative-loss", "nan-accuracy",
        "accuracy-above-1", "uar-below-0", "confusion-too-short", "confusion-too-long", "confusion-sum",
    ],
)
def test_check_report_refuses(metrics, message):
    with pytest.raises(InvalidReportError, match=message) as excinfo:
        check_report(metrics, 2)
    assert excinfo.value.reason == "invalid_report"
