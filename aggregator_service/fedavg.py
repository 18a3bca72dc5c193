"""Streaming FedAvg: w = sum_k (n_k / m) * w_k, accumulated in float64 one update at a time.

Memory is O(model) whatever the number of clients: no update is kept after it
is folded in, and a round's sums reuse the previous round's buffers. Updates
are folded block by block through one small float64 scratch buffer that stays
in cache, so adding a 100 MB update allocates nothing and reads it once.
Delta-encoded updates (model/encodings.py) add n_k * d_k; the global model they
started from is added once, weighted by their samples, when the result is
taken. A partial sum with its sample count is itself a valid update, so
accumulators merge (the basis for hierarchical aggregation).
"""
from __future__ import annotations

from typing import Iterable, Iterator, Mapping

import numpy as np

from model.encodings import Term

BLOCK = 1 << 16  # elements per step: 512 KiB of float64 scratch, resident in L2


class FedAvgAccumulator:
    """Running sum of n_k * w_k (float64) and m = sum of n_k."""

    def __init__(self, template: Mapping[str, object], reuse: "FedAvgAccumulator | None" = None) -> None:
        """``template``: name -> anything with .shape; ``reuse``: a finished accumulator whose buffers to take."""
        shapes = {name: tuple(a.shape) for name, a in template.items()}  # type: ignore[attr-defined]
        old = reuse._sums if reuse is not None else {}
        # Sums are never zeroed: the first update of each tensor is written, not added. With the
        # buffers of the previous round, a round allocates (and page-faults) nothing.
        self._sums = {name: old[name] if name in old and old[name].shape == shape else np.empty(shape, np.float64)
                      for name, shape in shapes.items()}
        if reuse is not None:
            reuse._sums = {}
        self._written: set[str] = set()
        self._scratch = reuse._scratch if reuse is not None else np.empty(BLOCK, dtype=np.float64)
        self.total_samples = 0
        self.delta_samples = 0  # samples behind updates sent as deltas from the base model
        self.updates = 0

    def add(self, arrays: Mapping[str, np.ndarray], num_samples: int) -> None:
        """Fold in one validated update of full weights with weight ``num_samples`` (> 0)."""
        self.add_terms((Term(name, arrays[name], 1.0) for name in self._sums), num_samples, delta=False)

    def add_terms(self, terms: Iterable[Term], num_samples: int, delta: bool) -> None:
        """Fold in a decoded update: sum += num_samples * scale * values, tensor by tensor."""
        if num_samples <= 0:
            raise ValueError("num_samples must be positive")
        scratch = self._scratch
        for t in terms:
            acc = self._sums[t.name].reshape(-1)
            values = t.values.reshape(-1)
            weight = float(num_samples) * t.scale
            if t.name not in self._written:
                np.multiply(values, weight, out=acc, dtype=np.float64)
                self._written.add(t.name)
                continue
            for start in range(0, acc.size, BLOCK):
                stop = min(start + BLOCK, acc.size)
                s = scratch[: stop - start]
                np.multiply(values[start:stop], weight, out=s, dtype=np.float64)
                np.add(acc[start:stop], s, out=acc[start:stop])
        self.total_samples += int(num_samples)
        if delta:
            self.delta_samples += int(num_samples)
        self.updates += 1

    def merge(self, other: "FedAvgAccumulator") -> None:
        """Add another accumulator's partial sums (e.g. from a relay aggregator)."""
        for name, acc in self._sums.items():
            if name not in other._written:
                continue
            if name in self._written:
                np.add(acc, other._sums[name], out=acc)
            else:
                acc[...] = other._sums[name]
                self._written.add(name)
        self.total_samples += other.total_samples
        self.delta_samples += other.delta_samples
        self.updates += other.updates

    def result(self, dtype: np.dtype = np.float32, base: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """The weighted average, cast to ``dtype``; ``base`` (the round's global) is needed after delta updates."""
        self._check(base)
        out = {}
        for name, acc in self._sums.items():
            out[name] = np.concatenate([b.copy() for b in self.result_blocks(name, base, dtype)] or
                                       [np.zeros(0, dtype)]).reshape(acc.shape)
        return out

    def result_blocks(
        self, name: str, base: Mapping[str, np.ndarray] | None = None, dtype: np.dtype = np.float32
    ) -> Iterator[np.ndarray]:
        """Tensor ``name`` of the weighted average as ``dtype`` blocks, in order (each valid until the next).

        Lets the average be streamed into the checkpoint file: no model-sized temporary.
        """
        self._check(base)
        m = float(self.total_samples)
        md = float(self.delta_samples)
        scratch = self._scratch
        out = np.empty(BLOCK, dtype=dtype)
        if name not in self._written:  # no term of this tensor was added: its sum is zero
            self._sums[name].fill(0.0)
            self._written.add(name)
        flat_acc = self._sums[name].reshape(-1)
        flat_base = base[name].reshape(-1) if md and base is not None else None
        for start in range(0, flat_acc.size, BLOCK):
            stop = min(start + BLOCK, flat_acc.size)
            s = scratch[: stop - start]
            if flat_base is not None:
                # (sum n_k d_k + m_delta * g) / m = sum n_k w_k / m
                np.multiply(flat_base[start:stop], md, out=s, dtype=np.float64)
                np.add(s, flat_acc[start:stop], out=s)
                np.divide(s, m, out=s)
            else:
                np.divide(flat_acc[start:stop], m, out=s)
            block = out[: stop - start]
            block[...] = s
            yield block

    def _check(self, base: Mapping[str, np.ndarray] | None) -> None:
        if self.total_samples == 0:
            raise ValueError("no updates accumulated")
        if self.delta_samples and base is None:
            raise ValueError("delta updates were added: the base model is needed")
