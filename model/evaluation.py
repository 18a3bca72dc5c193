"""Classification scores as SER reports them: accuracy, UAR (mean per-class recall), macro-F1, confusion."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Scores:
    """Scores of one evaluation; confusion is [true][predicted]."""

    examples: int
    accuracy: float
    uar: float
    confusion: np.ndarray

    @property
    def macro_f1(self) -> float:
        """Mean per-class F1 of ``confusion`` (see ``macro_f1``)."""
        return macro_f1(self.confusion)


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


def per_class_f1(cm: np.ndarray) -> np.ndarray:
    """F1 = 2 TP / (2 TP + FP + FN) of each class; NaN for a class neither true nor predicted."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    denom = cm.sum(axis=0) + cm.sum(axis=1)  # (TP + FP) + (TP + FN)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2.0 * tp / np.where(denom > 0, denom, 1.0), np.nan)


def macro_f1(cm: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes that occur as truth or prediction.

    A class absent from both has no F1 and is left out (as UAR leaves out classes
    without examples); a class only ever predicted, never true, counts with F1 0.
    0.0 for an empty matrix.
    """
    f1 = per_class_f1(cm)
    defined = ~np.isnan(f1)
    return float(f1[defined].mean()) if defined.any() else 0.0


def format_confusion(cm: np.ndarray, class_names: Sequence[str]) -> str:
    """The confusion matrix as a text table with class names, per-class recall and the totals.

    Rows are true classes, columns predicted ones, e.g.::

        true \\ predicted  neutral  happy  recall
        neutral                 6      0  100.0%
        happy                   2      1   33.3%
        9 examples  accuracy 77.8%  UAR 66.7%  macro-F1 67.9%

    A class without true examples shows "-" as its recall.
    """
    cm = np.asarray(cm)
    names = [str(n) for n in class_names]
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(names):
        raise ValueError(f"confusion of shape {cm.shape} does not match {len(names)} class names")
    corner = "true \\ predicted"
    first = max([len(corner), *(len(n) for n in names)])
    widths = [max(len(n), len(str(int(cm[:, j].max()))) if cm.size else 1) for j, n in enumerate(names)]
    lines = ["  ".join([corner.ljust(first), *(n.rjust(w) for n, w in zip(names, widths)), "recall"])]
    support = cm.sum(axis=1)
    for i, name in enumerate(names):
        recall = f"{100.0 * cm[i, i] / support[i]:5.1f}%" if support[i] else "    -"
        cells = [str(int(v)).rjust(w) for v, w in zip(cm[i], widths)]
        lines.append("  ".join([name.ljust(first), *cells, recall.rjust(6)]))
    s = scores_from_confusion(cm)
    lines.append(
        f"{s.examples} examples  accuracy {100 * s.accuracy:.1f}%  UAR {100 * s.uar:.1f}%  "
        f"macro-F1 {100 * s.macro_f1:.1f}%"
    )
    return "\n".join(lines)
