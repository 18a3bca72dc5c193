"""Tensors on the wire and on disk: safetensors bytes, checksums and chunking.

Never pickle: safetensors holds only names, dtypes, shapes and raw data, so
bytes from the network can be parsed without running anything. torch is
imported only by the two functions that take a module, so the aggregator
(which never builds a network) does not pay its memory.
"""
from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Mapping

import numpy as np
import xxhash
from safetensors import SafetensorError
from safetensors.numpy import load as _st_load
from safetensors.numpy import save as _st_save

if TYPE_CHECKING:
    import torch

DEFAULT_CHUNK_BYTES = 1 << 20


class MalformedTensorsError(ValueError):
    """Bytes that are not a valid safetensors payload."""


def module_to_arrays(module: "torch.nn.Module") -> dict[str, np.ndarray]:
    """The module's state as contiguous float32 numpy arrays on the CPU."""
    return {k: v.detach().cpu().numpy().astype(np.float32, copy=True) for k, v in module.state_dict().items()}


def load_arrays_into(module: "torch.nn.Module", arrays: Mapping[str, np.ndarray]) -> None:
    """Copy ``arrays`` into ``module`` in place (strict: names must match exactly)."""
    import torch

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


# safetensors dtype codes that numpy can view (BF16 and F8 cannot be viewed without a copy).
_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}
_MAX_HEADER_BYTES = 100_000_000  # the format's own limit


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise MalformedTensorsError("not a valid safetensors payload: duplicate names in the header")
    return out


def view_arrays(data: bytes | bytearray | memoryview) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Parse safetensors bytes into read-only numpy views of ``data`` (no copy), and the metadata.

    The safetensors package parses only by copying (or from a file); an update of
    100 MB would cost a second 100 MB. This reader enforces the format's rules
    (tests check it against the package on fuzzed input): a JSON header of
    names -> dtype, shape and offsets that tile the data exactly, no holes, no
    overlaps, nothing past the end. The views live as long as ``data`` does.
    """
    view = memoryview(data).cast("B")
    if len(view) < 8:
        raise MalformedTensorsError("not a valid safetensors payload: shorter than its 8-byte header length")
    (n,) = struct.unpack_from("<Q", view, 0)
    if n > _MAX_HEADER_BYTES or 8 + n > len(view):
        raise MalformedTensorsError(f"not a valid safetensors payload: header length {n} exceeds the payload")
    try:
        header = json.loads(bytes(view[8 : 8 + n]).decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, MalformedTensorsError):
            raise
        raise MalformedTensorsError(f"not a valid safetensors payload: header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise MalformedTensorsError("not a valid safetensors payload: header is not an object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise MalformedTensorsError("not a valid safetensors payload: __metadata__ must map strings to strings")
    body = view[8 + n :]
    spans: list[tuple[int, int, str]] = []
    arrays: dict[str, np.ndarray] = {}
    for name, info in header.items():
        try:
            dtype = np.dtype(_DTYPES[info["dtype"]])
            shape = tuple(info["shape"])
            begin, end = info["data_offsets"]
            if not all(type(d) is int and d >= 0 for d in shape) or type(begin) is not int or type(end) is not int:
                raise TypeError
        except (KeyError, TypeError, ValueError):
            raise MalformedTensorsError(f"not a valid safetensors payload: bad header entry for {name[:64]!r}") from None
        count = int(np.prod(shape, dtype=np.uint64)) if shape else 1
        if not 0 <= begin <= end <= len(body) or end - begin != count * dtype.itemsize:
            raise MalformedTensorsError(f"not a valid safetensors payload: offsets of {name[:64]!r} do not fit")
        spans.append((begin, end, name))
        arrays[name] = np.frombuffer(body[begin:end], dtype=dtype).reshape(shape)
    spans.sort()
    position = 0
    for begin, end, name in spans:
        if begin != position:
            raise MalformedTensorsError(f"not a valid safetensors payload: {name[:64]!r} overlaps or leaves a hole")
        position = end
    if position != len(body):
        raise MalformedTensorsError("not a valid safetensors payload: data continues past the last tensor")
    for a in arrays.values():
        a.flags.writeable = False
    return arrays, metadata


_CODES = {np.dtype(v): k for k, v in _DTYPES.items()}


@dataclass(frozen=True)
class PayloadLayout:
    """Where each tensor of a safetensors payload lives: the header bytes, then (name, start, end) in order."""

    header: bytes  # the 8-byte length, then the padded JSON header
    tensors: tuple[tuple[str, int, int], ...]  # offsets relative to the end of ``header``

    @property
    def size(self) -> int:
        return len(self.header) + (self.tensors[-1][2] if self.tensors else 0)


def payload_layout(
    specs: Mapping[str, tuple[np.dtype, tuple[int, ...]]], metadata: Mapping[str, str] | None = None
) -> PayloadLayout:
    """The layout of a safetensors payload for ``specs`` (readable by the safetensors package)."""
    entries: dict[str, object] = {}
    if metadata:
        entries["__metadata__"] = dict(metadata)
    offset = 0
    tensors = []
    # Largest items first keeps every tensor aligned to its own item size.
    for name in sorted(specs, key=lambda k: (-np.dtype(specs[k][0]).itemsize, k)):
        dtype, shape = np.dtype(specs[name][0]), tuple(specs[name][1])
        size = int(np.prod(shape, dtype=np.uint64)) * dtype.itemsize if shape else dtype.itemsize
        entries[name] = {"dtype": _CODES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        tensors.append((name, offset, offset + size))
        offset += size
    header = json.dumps(entries, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the format pads with spaces so that data starts 8-aligned
    return PayloadLayout(struct.pack("<Q", len(header)) + header, tuple(tensors))


def data_xxh3(arrays: Mapping[str, np.ndarray]) -> str:
    """XXH3-128 of the tensors' bytes in safetensors payload order: a payload's data section, without its header."""
    layout = payload_layout({k: (a.dtype, a.shape) for k, a in arrays.items()})
    h = xxhash.xxh3_128()
    for name, _, _ in layout.tensors:
        h.update(memoryview(np.ascontiguousarray(arrays[name])).cast("B"))
    return h.hexdigest()


def allocate_payload(
    specs: Mapping[str, tuple[np.dtype, tuple[int, ...]]], metadata: Mapping[str, str] | None = None
) -> tuple[bytearray, dict[str, np.ndarray]]:
    """A zeroed safetensors payload for ``specs`` and writable views of its tensors.

    Lets a result be computed straight into the bytes that are stored and
    served, instead of into arrays that are then serialized (a second copy).
    """
    layout = payload_layout(specs, metadata)
    payload = bytearray(layout.size)
    payload[: len(layout.header)] = layout.header
    body = memoryview(payload)[len(layout.header) :]
    views = {
        name: np.frombuffer(body[begin:end], dtype=specs[name][0]).reshape(tuple(specs[name][1]))
        for name, begin, end in layout.tensors
    }
    return payload, views


def sha256_hex(data: bytes | memoryview) -> str:
    """Hex SHA-256 of ``data``: the checksum carried in pull and push headers."""
    return hashlib.sha256(data).hexdigest()


def xxh3_hex(data: bytes | bytearray | memoryview) -> str:
    """Hex XXH3-128 of ``data``: the cheap integrity checksum (about 25 GB/s against SHA-256's 1-2)."""
    return xxhash.xxh3_128_hexdigest(data)


def iter_chunks(data: bytes, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[bytes]:
    """Split ``data`` into chunks of at most ``chunk_bytes``."""
    view = memoryview(data)
    for start in range(0, len(view), chunk_bytes):
        yield bytes(view[start : start + chunk_bytes])
