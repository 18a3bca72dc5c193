"""Compressed pulls (--pull-encoding): the new global as the old one plus an encoded delta.

A lossy delta cannot rebuild an arbitrary model exactly, so the aggregator
makes the new global *be* what the delta rebuilds: ``new = apply_delta(old,
encode(target - old))`` (model/encodings.py), with ``target`` the round's
aggregate. A client that holds the old version then gets the same bits from
the delta as from the whole model, and its next update's base is the version
the aggregator holds. What the rounding drops is carried into the next round's
delta (error feedback, as the clients do for their updates): without it, each
round's int8 rounding (up to half a quantisation step of the round's largest
change, in any weight) stayed in the model and added up across rounds. The
residual is one float32 copy of the model, held in memory only: a restarted
aggregator starts it from zero.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import numpy as np

from model.encodings import Encoding, TensorSpec, apply_delta, encode_update
from model.serialization import arrays_to_bytes, sha256_hex, xxh3_hex


@dataclass(frozen=True)
class PullDelta:
    """The delta from ``base_version`` to ``version`` as a safetensors payload, with its checksums."""

    base_version: int
    version: int
    encoding: Encoding
    payload: bytes
    sha256: str
    xxh3_128: str

    @property
    def size(self) -> int:
        return len(self.payload)

    def read(self, offset: int, length: int) -> bytes:
        return self.payload[offset : offset + length]


class SnapStep:
    """One round's snapping: new global blocks tensor by tensor, then the delta they came from."""

    def __init__(self, encoding: Encoding, old: Mapping[str, np.ndarray], specs: Mapping[str, TensorSpec],
                 base_version: int, version: int, residual: Mapping[str, np.ndarray] | None = None) -> None:
        self._encoding = encoding
        self._old = old
        self._residual = residual or {}  # what the previous round's snapping dropped
        self.new_residual: dict[str, np.ndarray] = {}  # what this round's dropped: the next round's ``residual``
        self._specs = specs
        self._base_version, self._version = base_version, version
        self._sent: dict[str, np.ndarray] = {}

    def blocks(self, name: str, source: Callable[[str], Iterator[np.ndarray]]) -> Iterator[np.ndarray]:
        """The snapped tensor ``name`` (one block), from the aggregate's blocks of it."""
        spec = self._specs[name]
        # Copies: a source may reuse one buffer for all its blocks.
        target = np.concatenate([np.array(b, np.float32).reshape(-1) for b in source(name)] or
                                [np.zeros(0, np.float32)]).reshape(spec.shape)
        carried = self._residual.get(name)
        if carried is not None and carried.shape == target.shape:
            target += carried
        base = {name: self._old[name]}
        sent = encode_update({name: target}, base, self._encoding)
        self._sent.update(sent)
        snapped = apply_delta(base, sent, self._encoding)[name]
        self.new_residual[name] = target - snapped
        yield snapped

    def finish(self) -> PullDelta:
        payload = arrays_to_bytes(self._sent, {"base_version": str(self._base_version),
                                               "model_version": str(self._version),
                                               "encoding": self._encoding.value})
        return PullDelta(self._base_version, self._version, self._encoding, payload, sha256_hex(payload),
                         xxh3_hex(payload))
