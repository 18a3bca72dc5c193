"""Streaming FedAvg: w = sum_k (n_k / m) * w_k, accumulated in float64 one update at a time.

Memory is O(model) whatever the number of clients: no update is kept after it
is folded in. A partial sum with its sample count is itself a valid update, so
accumulators merge (the basis for hierarchical aggregation).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np


class FedAvgAccumulator:
    """Running sum of n_k * w_k (float64) and m = sum of n_k."""

    def __init__(self, template: Mapping[str, np.ndarray]) -> None:
        self._sums = {name: np.zeros(a.shape, dtype=np.float64) for name, a in template.items()}
        largest = max((a.size for a in template.values()), default=0)
        # One reusable float64 buffer for n_k * w_k keeps add() allocation-free.
        self._scratch = np.empty(largest, dtype=np.float64)
        self.total_samples = 0
        self.updates = 0

    def add(self, arrays: Mapping[str, np.ndarray], num_samples: int) -> None:
        """Fold in one validated update with weight ``num_samples`` (> 0)."""
        if num_samples <= 0:
            raise ValueError("num_samples must be positive")
        for name, acc in self._sums.items():
            scratch = self._scratch[: acc.size].reshape(acc.shape)
            np.multiply(arrays[name], float(num_samples), out=scratch, dtype=np.float64)
            np.add(acc, scratch, out=acc)
        self.total_samples += int(num_samples)
        self.updates += 1

    def merge(self, other: "FedAvgAccumulator") -> None:
        """Add another accumulator's partial sums (e.g. from a relay aggregator)."""
        for name, acc in self._sums.items():
            np.add(acc, other._sums[name], out=acc)
        self.total_samples += other.total_samples
        self.updates += other.updates

    def result(self, dtype: np.dtype = np.float32) -> dict[str, np.ndarray]:
        """The weighted average, cast to ``dtype``; needs at least one update."""
        if self.total_samples == 0:
            raise ValueError("no updates accumulated")
        m = float(self.total_samples)
        return {name: (acc / m).astype(dtype) for name, acc in self._sums.items()}
