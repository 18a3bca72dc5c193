"""Defences against poisoned updates: update-norm clipping and robust coordinate-wise aggregators.

Clipping keeps FedAvg streaming. Trimmed mean and median need every update of
the round at once: memory is K x model bytes for K updates (plus one sorted
copy while closing), so they suit rounds of tens of clients, not thousands.
"""
from __future__ import annotations

import math
from typing import Mapping, Protocol

import numpy as np


class Aggregator(Protocol):
    """What the round logic needs from an aggregation rule."""

    total_samples: int
    updates: int

    def add(self, arrays: Mapping[str, np.ndarray], num_samples: int) -> None: ...

    def result(self, dtype: np.dtype = np.float32, base: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]: ...


def update_norm(arrays: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> float:
    """L2 norm of (arrays - reference) over all tensors, in float64."""
    total = 0.0
    for name, ref in reference.items():
        d = arrays[name].astype(np.float64) - ref
        total += float(np.dot(d.ravel(), d.ravel()))
    return math.sqrt(total)


def clip_update(
    arrays: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], max_norm: float
) -> tuple[dict[str, np.ndarray], float]:
    """Scale the update's delta from ``reference`` down to ``max_norm`` if it is longer; returns it and the norm."""
    norm = update_norm(arrays, reference)
    if norm <= max_norm:
        return dict(arrays), norm
    scale = max_norm / norm
    clipped = {
        name: (ref.astype(np.float64) + (arrays[name].astype(np.float64) - ref) * scale).astype(arrays[name].dtype)
        for name, ref in reference.items()
    }
    return clipped, norm


class StackedAggregator:
    """Keeps every update of the round; the result is a coordinate-wise robust statistic (unweighted)."""

    def __init__(self, template: Mapping[str, object], rule: str, trim_fraction: float = 0.1) -> None:
        if rule not in ("median", "trimmed-mean"):
            raise ValueError(f"unknown robust rule {rule!r}")
        if not 0.0 <= trim_fraction < 0.5:
            raise ValueError("trim_fraction must be in [0, 0.5)")
        self._names = list(template)
        self._rule = rule
        self._trim = trim_fraction
        self._stack: dict[str, list[np.ndarray]] = {name: [] for name in self._names}
        self.total_samples = 0
        self.updates = 0

    def add(self, arrays: Mapping[str, np.ndarray], num_samples: int) -> None:
        if num_samples <= 0:
            raise ValueError("num_samples must be positive")
        for name in self._names:
            self._stack[name].append(np.array(arrays[name], dtype=np.float32, copy=True))
        self.total_samples += int(num_samples)
        self.updates += 1

    def result(self, dtype: np.dtype = np.float32, base: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """The robust statistic per coordinate (updates are stored as full weights, so ``base`` is unused)."""
        if self.updates == 0:
            raise ValueError("no updates accumulated")
        out = {}
        for name in self._names:
            stacked = np.stack(self._stack[name])  # [K, ...]
            if self._rule == "median":
                value = np.median(stacked, axis=0)
            else:
                k = int(math.floor(self._trim * self.updates))
                ordered = np.sort(stacked, axis=0)
                value = ordered[k : self.updates - k].mean(axis=0, dtype=np.float64)
            out[name] = value.astype(dtype)
        return out
