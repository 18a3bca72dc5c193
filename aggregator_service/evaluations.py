"""Pooling of client evaluation reports into one held-out score per model version.

Confusion matrices are summed, so pooled accuracy and UAR are exactly what one
evaluation over all clients' held-out files would give; loss is example-weighted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from aggregator_service.errors import InvalidReportError
from model.evaluation import scores_from_confusion


@dataclass(frozen=True)
class EvalMetrics:
    """One evaluation: counts, loss, accuracy, UAR and (optionally) the confusion matrix."""

    examples: int
    loss: float
    accuracy: float
    uar: float
    confusion: tuple[int, ...] = ()


def check_report(metrics: EvalMetrics, num_classes: int) -> None:
    """Refuse reports that cannot be right: no examples, non-finite or out-of-range values."""
    if metrics.examples <= 0:
        raise InvalidReportError("examples must be > 0")
    if not all(math.isfinite(v) for v in (metrics.loss, metrics.accuracy, metrics.uar)) or metrics.loss < 0:
        raise InvalidReportError("loss, accuracy and uar must be finite and loss >= 0")
    if not (0.0 <= metrics.accuracy <= 1.0 and 0.0 <= metrics.uar <= 1.0):
        raise InvalidReportError("accuracy and uar must lie in [0, 1]")
    if metrics.confusion:
        if len(metrics.confusion) != num_classes * num_classes:
            raise InvalidReportError(f"confusion must have {num_classes * num_classes} entries")
        if sum(metrics.confusion) != metrics.examples:
            raise InvalidReportError("confusion counts must sum to examples")


def pool(reports: list[EvalMetrics], num_classes: int) -> EvalMetrics:
    """Combine reports of one model version into one set of metrics."""
    examples = sum(r.examples for r in reports)
    if examples == 0:
        return EvalMetrics(0, 0.0, 0.0, 0.0)
    loss = sum(r.loss * r.examples for r in reports) / examples
    if reports and all(r.confusion for r in reports):
        cm = np.sum([np.asarray(r.confusion, dtype=np.int64).reshape(num_classes, num_classes) for r in reports], axis=0)
        s = scores_from_confusion(cm)
        return EvalMetrics(examples, loss, s.accuracy, s.uar, tuple(int(v) for v in cm.ravel()))
    accuracy = sum(r.accuracy * r.examples for r in reports) / examples
    uar = sum(r.uar * r.examples for r in reports) / examples
    return EvalMetrics(examples, loss, accuracy, uar)
