"""Server momentum (FedAvgM, Hsu et al. 2019): the round's average as a step, smoothed across rounds.

With ``a`` the round's aggregate (FedAvg's weighted mean) and ``w`` the global
model it started from, the server keeps ``v = beta * v + (a - w)`` and serves
``w + lr * v``. beta = 0 and lr = 1 is plain FedAvg (and is never routed
through here, so FedAvg stays exact). When clients take few local steps per
round (E = 1 on one or two speakers), FedAvg moves the model by about one
client's worth of steps a round; momentum carries earlier rounds' direction
forward. The state is one float32 copy of the model, streamed block by block
alongside the new global; a
round's new buffer replaces the old only once its checkpoint is written.
"""
from __future__ import annotations

from typing import Iterator, Mapping

import numpy as np

from model.encodings import TensorSpec


class ServerMomentum:
    """The momentum buffer per tensor and the step rule; not thread-safe (the round lock guards it)."""

    def __init__(self, specs: Mapping[str, TensorSpec], beta: float, lr: float = 1.0,
                 state: Mapping[str, np.ndarray] | None = None) -> None:
        if not 0.0 <= beta < 1.0:
            raise ValueError("server momentum must be in [0, 1)")
        if lr <= 0:
            raise ValueError("server learning rate must be > 0")
        self.beta, self.lr = float(beta), float(lr)
        self._v: dict[str, np.ndarray] = {}
        for name, spec in specs.items():
            given = None if state is None else state.get(name)
            if given is not None and tuple(given.shape) != tuple(spec.shape):
                raise ValueError(f"momentum state of {name} has shape {list(given.shape)}, expected {list(spec.shape)}")
            self._v[name] = np.zeros(spec.shape, np.float32) if given is None else np.array(given, np.float32)

    @property
    def state(self) -> dict[str, np.ndarray]:
        """The buffer, to persist beside the checkpoint it led to (read-only use)."""
        return self._v

    def begin(self) -> "MomentumStep":
        """A step whose new buffer is kept apart until ``commit``: a failed checkpoint write changes nothing."""
        return MomentumStep(self)


class MomentumStep:
    """One round's step: new global blocks now, the new buffer only on commit."""

    def __init__(self, owner: ServerMomentum) -> None:
        self._owner = owner
        self.new_state: dict[str, np.ndarray] = {k: np.empty_like(v) for k, v in owner.state.items()}

    def blocks(self, name: str, average: Iterator[np.ndarray], base: np.ndarray) -> Iterator[np.ndarray]:
        """New global blocks of tensor ``name`` from the aggregate's blocks (in order) and the old global.

        Each yielded block is valid until the next.
        """
        beta, lr = self._owner.beta, self._owner.lr
        v_old = self._owner.state[name].reshape(-1)
        v_new = self.new_state[name].reshape(-1)
        w = np.asarray(base).reshape(-1)
        pos = 0
        for block in average:
            a = np.asarray(block, np.float64).reshape(-1)
            end = pos + a.size
            v_new[pos:end] = beta * v_old[pos:end].astype(np.float64) + (a - w[pos:end])
            yield (w[pos:end] + lr * v_new[pos:end].astype(np.float64)).astype(np.float32)
            pos = end
        if pos != v_new.size:
            raise ValueError(f"tensor {name}: the aggregate had {pos} values, the model {v_new.size}")

    def commit(self) -> None:
        self._owner._v = self.new_state
