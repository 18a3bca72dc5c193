"""Update encodings: how a client's new weights travel, and the one place they are decoded.

float32 sends w_k itself. The delta encodings send d = w_k - g, where g is the
global model the client pulled: fp16 halves the bytes, int8 (one float32 scale
per tensor, values rounded to the nearest step) quarters them. What the
rounding drops is sent in the next round (:class:`ErrorFeedback`). The
aggregator never rebuilds w_k for FedAvg: it sums n_k * scale * d in float64
and adds the delta clients' share of g once when the round closes.

The same encodings compress pulls (the aggregator's --pull-encoding): the new
global model is then defined as ``apply_delta(old, encode_update(new, old))``,
so a client that holds the old version rebuilds it bit for bit from the delta.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Mapping

import numpy as np

SCALE_SUFFIX = ":scale"  # ':' appears in no torch parameter name, so these cannot collide


class Encoding(enum.Enum):
    FLOAT32 = "float32"
    FLOAT16_DELTA = "fp16-delta"
    INT8_DELTA = "int8-delta"

    @property
    def is_delta(self) -> bool:
        return self is not Encoding.FLOAT32


@dataclass(frozen=True)
class TensorSpec:
    dtype: np.dtype
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Term:
    """One tensor of a decoded update: its contribution is ``scale * values`` (values as sent, no copy)."""

    name: str
    values: np.ndarray
    scale: float


def to_proto(encoding: Encoding) -> int:
    """The fedser.v1 UpdateEncoding value for ``encoding``."""
    from fedser.v1 import aggregator_pb2 as pb

    return {
        Encoding.FLOAT32: pb.UPDATE_ENCODING_FLOAT32,
        Encoding.FLOAT16_DELTA: pb.UPDATE_ENCODING_FLOAT16_DELTA,
        Encoding.INT8_DELTA: pb.UPDATE_ENCODING_INT8_DELTA,
    }[encoding]


def from_proto(value: int) -> Encoding | None:
    """The encoding for a fedser.v1 UpdateEncoding value (unspecified means float32); None if unknown."""
    from fedser.v1 import aggregator_pb2 as pb

    if value == pb.UPDATE_ENCODING_UNSPECIFIED:
        return Encoding.FLOAT32
    return next((e for e in Encoding if to_proto(e) == value), None)


def expected_layout(template: Mapping[str, TensorSpec], encoding: Encoding) -> dict[str, TensorSpec]:
    """The tensors (names, dtypes, shapes) an update in ``encoding`` must carry for this model."""
    if encoding is Encoding.FLOAT32:
        return dict(template)
    if encoding is Encoding.FLOAT16_DELTA:
        return {k: TensorSpec(np.dtype(np.float16), s.shape) for k, s in template.items()}
    layout = {k: TensorSpec(np.dtype(np.int8), s.shape) for k, s in template.items()}
    layout.update({k + SCALE_SUFFIX: TensorSpec(np.dtype(np.float32), (1,)) for k in template})
    return layout


def decode_terms(arrays: Mapping[str, np.ndarray], template: Mapping[str, TensorSpec], encoding: Encoding) -> list[Term]:
    """The update as (name, values, scale) terms: w_k for float32, d for the delta encodings.

    ``arrays`` must already match expected_layout (names, dtypes, shapes, finite).
    """
    if encoding is Encoding.INT8_DELTA:
        return [Term(k, arrays[k], float(arrays[k + SCALE_SUFFIX][0])) for k in template]
    return [Term(k, arrays[k], 1.0) for k in template]


def decode_weights(
    arrays: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray], encoding: Encoding
) -> dict[str, np.ndarray]:
    """Rebuild w_k as float32 (for rules that need whole updates: clipping, median, trimmed mean)."""
    template = {k: TensorSpec(v.dtype, v.shape) for k, v in base.items()}
    out = {}
    for t in decode_terms(arrays, template, encoding):
        w = t.values.astype(np.float64) * t.scale
        if encoding.is_delta:
            w += base[t.name]
        out[t.name] = w.astype(np.float32)
    return out


def encode_update(
    weights: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray], encoding: Encoding
) -> dict[str, np.ndarray]:
    """The tensors to send for new weights ``weights`` trained from ``base``: a pure function of them."""
    if encoding is Encoding.FLOAT32:
        return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}
    out: dict[str, np.ndarray] = {}
    for k, w in weights.items():
        d = np.asarray(w, dtype=np.float32) - np.asarray(base[k], dtype=np.float32)
        if encoding is Encoding.FLOAT16_DELTA:
            out[k] = d.astype(np.float16)
            continue
        peak = float(np.abs(d).max()) if d.size else 0.0
        scale = peak / 127.0 if peak > 0 else 1.0
        # Nearest, not stochastic, rounding: with error feedback neither needs to be unbiased per
        # round, and nearest leaves a residual of at most half a step where stochastic rounding leaves
        # random noise of up to a step in every weight. On the demo task (14 seeds) int8 both ways lost
        # 0.20 +- 0.26 points with stochastic rounding, -0.23 +- 0.36 with nearest (docs/PERFORMANCE.md).
        q = np.rint(d / np.float32(scale))
        out[k] = np.clip(q, -127, 127).astype(np.int8)
        out[k + SCALE_SUFFIX] = np.array([scale], dtype=np.float32)
    return out


def apply_delta(
    base: Mapping[str, np.ndarray], tensors: Mapping[str, np.ndarray], encoding: Encoding
) -> dict[str, np.ndarray]:
    """``base`` plus the decoded delta, in float32 element by element: the same bits wherever it runs.

    The aggregator serves exactly this as the new global when it compresses pulls,
    and a client rebuilds it from the version it holds.
    """
    if not encoding.is_delta:
        raise ValueError("apply_delta needs a delta encoding")
    out = {}
    for k, b in base.items():
        d = np.asarray(tensors[k]).astype(np.float32)
        if encoding is Encoding.INT8_DELTA:
            d *= np.float32(tensors[k + SCALE_SUFFIX][0])
        out[k] = np.asarray(b, dtype=np.float32) + d
    return out


class ErrorFeedback:
    """A client's memory of what its lossy encodings dropped, added to its next update.

    Error feedback (as in 1-bit SGD and EF-SGD): the rounding error of round t
    is sent in round t+1, so quantisation error does not accumulate across
    rounds; the residual is one float32 copy of the model on the client.
    """

    def __init__(self) -> None:
        self._residual: dict[str, np.ndarray] = {}

    def encode(
        self, weights: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray], encoding: Encoding
    ) -> dict[str, np.ndarray]:
        """encode_update of ``weights`` plus the carried residual; remembers the new residual."""
        if not encoding.is_delta:
            self._residual = {}
            return encode_update(weights, base, encoding)
        target = {k: np.asarray(w, np.float32) + self._residual[k] if k in self._residual else np.asarray(w, np.float32)
                  for k, w in weights.items()}
        sent = encode_update(target, base, encoding)
        decoded = decode_weights(sent, base, encoding)
        self._residual = {k: target[k] - decoded[k] for k in target}
        return sent
