"""Checks on an update's header and tensors, before anything touches the global model."""
from __future__ import annotations

import re
from typing import Mapping

import numpy as np

from aggregator_service.errors import InvalidUpdateError
from model.encodings import TensorSpec

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_XXH3 = re.compile(r"^[0-9a-f]{32}$")
_ID = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")


def check_identifier(value: str, what: str) -> None:
    """Client and update ids: 1-128 characters of a safe alphabet (they reach the logs)."""
    if not _ID.match(value):
        raise InvalidUpdateError(f"{what} must be 1-128 characters of [A-Za-z0-9._:@-]", reason="bad_header")


def check_declared_size(total_bytes: int, sha256: str, xxh3_128: str, max_bytes: int) -> None:
    """The declared payload size and checksums, checked before any bulk data is read."""
    if total_bytes <= 0:
        raise InvalidUpdateError("total_bytes must be positive", reason="bad_header")
    if total_bytes > max_bytes:
        raise InvalidUpdateError(
            f"declared total_bytes {total_bytes} exceeds the limit of {max_bytes} for this model",
            reason="too_large",
        )
    if not sha256 and not xxh3_128:
        raise InvalidUpdateError("a checksum is required: sha256 or xxh3_128", reason="bad_header")
    if sha256 and not _SHA256.match(sha256):
        raise InvalidUpdateError("sha256 must be 64 lowercase hex digits", reason="bad_header")
    if xxh3_128 and not _XXH3.match(xxh3_128):
        raise InvalidUpdateError("xxh3_128 must be 32 lowercase hex digits", reason="bad_header")


def check_num_samples(num_samples: int, max_samples: int) -> None:
    """n_k must be a positive count no larger than the configured bound."""
    if num_samples <= 0:
        raise InvalidUpdateError(f"num_samples must be > 0, got {num_samples}", reason="num_samples")
    if num_samples > max_samples:
        raise InvalidUpdateError(
            f"num_samples {num_samples} exceeds the limit of {max_samples}", reason="num_samples"
        )


def _quote(name: str, limit: int = 64) -> str:
    return name if len(name) <= limit and name.isprintable() and name.isascii() else repr(name[:limit]) + "..."


def check_tensors(arrays: Mapping[str, np.ndarray], layout: Mapping[str, TensorSpec]) -> None:
    """Names, shapes and dtypes must match the expected layout exactly; float values must be finite."""
    missing = sorted(set(layout) - set(arrays))
    unexpected = sorted(set(arrays) - set(layout))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:5])}")
        if unexpected:
            # These names come from the client: quote them, and only the start of each.
            parts.append(f"unexpected {', '.join(_quote(n) for n in unexpected[:5])}")
        raise InvalidUpdateError("tensor names do not match the model: " + "; ".join(parts), reason="tensor_names")
    for name, ref in layout.items():
        got = arrays[name]
        if got.dtype != ref.dtype:
            raise InvalidUpdateError(f"tensor {name}: dtype {got.dtype}, expected {ref.dtype}", reason="tensor_dtype")
        if got.shape != tuple(ref.shape):
            raise InvalidUpdateError(
                f"tensor {name}: shape {list(got.shape)}, expected {list(ref.shape)}", reason="tensor_shape"
            )
    for name, got in arrays.items():
        if got.dtype.kind == "f" and not all_finite(got.reshape(-1)):
            raise InvalidUpdateError(f"tensor {name} contains NaN or Inf", reason="non_finite")


_BLOCK = 1 << 16


def _read_only_zeros(dtype: type) -> np.ndarray:
    zeros = np.zeros(_BLOCK, dtype=dtype)
    zeros.flags.writeable = False
    return zeros


_ZEROS = {np.dtype(t): _read_only_zeros(t) for t in (np.float32, np.float64)}


def all_finite(flat: np.ndarray) -> bool:
    """True when no element of the 1-d float array ``flat`` is NaN or +-Inf."""
    zeros = _ZEROS.get(flat.dtype)
    if zeros is None:  # float16 and others: BLAS has no dot for them
        flags = np.empty(min(_BLOCK, flat.size), dtype=bool)
        for start in range(0, flat.size, _BLOCK):
            out = flags[: min(_BLOCK, flat.size - start)]
            np.isfinite(flat[start : start + _BLOCK], out=out)
            if not out.all():
                return False
        return True
    # x . 0 is exactly 0 when every x is finite and NaN otherwise (0 * Inf and 0 * NaN are NaN, and NaN
    # propagates through the sum): one BLAS pass, a third cheaper than np.isfinite, and no temporary.
    with np.errstate(invalid="ignore"):
        for start in range(0, flat.size, _BLOCK):
            block = flat[start : start + _BLOCK]
            if np.dot(block, zeros[: block.size]) != 0.0:
                return False
    return True
