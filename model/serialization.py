"""Tensors on the wire and on disk: safetensors bytes, checksums and chunking.

Never pickle: safetensors holds only names, dtypes, shapes and raw data, so
bytes from the network can be parsed without running anything.
"""
from __future__ import annotations

import hashlib
from typing import Iterator, Mapping

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load as _st_load
from safetensors.numpy import save as _st_save

DEFAULT_CHUNK_BYTES = 1 << 20


class MalformedTensorsError(ValueError):
    """Bytes that are not a valid safetensors payload."""


def module_to_arrays(module: torch.nn.Module) -> dict[str, np.ndarray]:
    """The module's state as contiguous float32 numpy arrays on the CPU."""
    return {k: v.detach().cpu().numpy().astype(np.float32, copy=True) for k, v in module.state_dict().items()}


def load_arrays_into(module: torch.nn.Module, arrays: Mapping[str, np.ndarray]) -> None:
    """Copy ``arrays`` into ``module`` in place (strict: names must match exactly)."""
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    module.load_state_dict(state, strict=True)


def arrays_to_bytes(arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialize named arrays as safetensors bytes."""
    # np.ascontiguousarray would turn 0-d arrays into shape (1,); only copy when needed.
    return _st_save(
        {k: v if v.flags.c_contiguous else np.ascontiguousarray(v) for k, v in arrays.items()},
        metadata=dict(metadata or {}) or None,
    )


def bytes_to_arrays(data: bytes) -> dict[str, np.ndarray]:
    """Parse safetensors bytes; raises MalformedTensorsError on anything invalid."""
    try:
        return _st_load(bytes(data))
    except (SafetensorError, ValueError, TypeError, OverflowError) as exc:
        raise MalformedTensorsError(f"not a valid safetensors payload: {exc}") from exc


def sha256_hex(data: bytes | memoryview) -> str:
    """Hex SHA-256 of ``data``: the checksum carried in pull and push headers."""
    return hashlib.sha256(data).hexdigest()


def iter_chunks(data: bytes, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[bytes]:
    """Split ``data`` into chunks of at most ``chunk_bytes``."""
    view = memoryview(data)
    for start in range(0, len(view), chunk_bytes):
        yield bytes(view[start : start + chunk_bytes])
