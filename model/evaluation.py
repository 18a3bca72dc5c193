"""Classification scores as SER reports them: accuracy, UAR (mean per-class recall), confusion."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Scores:
    """Scores of one evaluation; confusion is [true][predicted]."""

    examples: int
    accuracy: float
    uar: float
    confusion: np.ndarray


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts of (true, predicted) pairs as an int64 [C, C] matrix."""
    idx = np.asarray(y_true, dtype=np.int64) * num_classes + np.asarray(y_pred, dtype=np.int64)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def scores_from_confusion(cm: np.ndarray) -> Scores:
    """Accuracy and UAR from a confusion matrix; UAR averages over classes that occur."""
    total = int(cm.sum())
    support = cm.sum(axis=1)
    present = support > 0
    accuracy = float(np.trace(cm) / total) if total else 0.0
    uar = float(np.mean(np.diag(cm)[present] / support[present])) if present.any() else 0.0
    return Scores(total, accuracy, uar, cm)


def classification_scores(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> Scores:
    """Accuracy, UAR and confusion matrix of predictions."""
    return scores_from_confusion(confusion_matrix(y_true, y_pred, num_classes))
