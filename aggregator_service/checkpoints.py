"""Atomic, resumable checkpoints of the global model as safetensors files, served from disk.

A checkpoint is written to a temporary file, fsynced, renamed into place and
the folder fsynced, so a crash leaves either the old set or the new one: a
half-written file never carries a checkpoint's name. The round's average is
streamed into that file block by block, and pulls read it back with pread
from an open descriptor (the page cache, not the process, holds the bytes),
so the global model costs the aggregator no resident memory.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np
import xxhash

from model.encodings import TensorSpec
from model.eventlog import log_event
from model.serialization import (
    MalformedTensorsError,
    allocate_payload,
    arrays_to_bytes,
    data_xxh3,
    payload_layout,
    sha256_hex,
    view_arrays,
    xxh3_hex,
)

log = logging.getLogger("fedser.checkpoints")

_NAME = re.compile(r"^global-v(\d{8})\.safetensors$")
_MOMENTUM = re.compile(r"^momentum-v(\d{8})\.safetensors$")
MOMENTUM_KEEP = 2

# For each tensor name, in the payload's order: its float32 values, in blocks.
BlockSource = Callable[[str], Iterator[np.ndarray]]
CheckpointWriter = Callable[[int, Mapping[str, str], Mapping[str, TensorSpec], BlockSource], "Checkpoint"]


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """One global model version: checksums, metadata, and its bytes in memory or in an open file."""

    version: int
    metadata: dict[str, str]
    sha256: str
    xxh3_128: str
    size: int
    path: Path | None = None
    data: bytes | bytearray | None = None  # None: the bytes live in the file behind ``fd``
    fd: int | None = field(default=None, repr=False)
    data_xxh3_128: str = ""  # of the tensor data alone (after the header): what a delta pull rebuilds

    def read(self, offset: int, length: int) -> bytes:
        """Up to ``length`` payload bytes from ``offset``."""
        if self.data is not None:
            return bytes(memoryview(self.data)[offset : offset + length])
        return os.pread(self.fd, length, offset)  # type: ignore[arg-type]

    @property
    def payload(self) -> bytes | bytearray:
        """All the payload bytes (a full read for a file-backed checkpoint)."""
        return self.data if self.data is not None else self.read(0, self.size)

    @functools.cached_property
    def arrays(self) -> dict[str, np.ndarray]:
        """Read-only views of the tensors (of the file's pages for a file-backed checkpoint)."""
        if self.data is not None:
            return view_arrays(self.data)[0]
        mapped = np.memmap(self.path, dtype=np.uint8, mode="r") if self.size else np.zeros(0, np.uint8)
        return view_arrays(memoryview(mapped))[0]


def checkpoint_from_payload(version: int, payload: bytes | bytearray, path: Path | None = None) -> Checkpoint:
    """Parse and checksum an in-memory payload once; raises MalformedTensorsError if it is damaged."""
    arrays, metadata = view_arrays(payload)
    if metadata.get("model_version") != str(version):
        raise MalformedTensorsError(f"metadata says version {metadata.get('model_version')!r}, expected {version}")
    return Checkpoint(version, metadata, sha256_hex(payload), xxh3_hex(payload), len(payload), path, payload,
                      data_xxh3_128=data_xxh3(arrays))


def encode_checkpoint(version: int, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> Checkpoint:
    """Serialize a model version in memory (the seeded initial model; tests)."""
    return checkpoint_from_payload(version, arrays_to_bytes(arrays, {**metadata, "model_version": str(version)}))


def write_in_memory(
    version: int, metadata: Mapping[str, str], specs: Mapping[str, TensorSpec], blocks: BlockSource
) -> Checkpoint:
    """A CheckpointWriter that keeps the payload in memory (for round logic without a disk)."""
    meta = {**metadata, "model_version": str(version)}
    payload, views = allocate_payload({k: (s.dtype, s.shape) for k, s in specs.items()}, meta)
    for name, view in views.items():
        flat, pos = view.reshape(-1), 0
        for block in blocks(name):
            flat[pos : pos + block.size] = block.reshape(-1)
            pos += block.size
    del views
    return checkpoint_from_payload(version, payload)


def _file_backed(version: int, metadata: dict[str, str], sha256: str, xxh3: str, size: int, path: Path,
                 data_xxh3: str) -> Checkpoint:
    # The descriptor keeps the bytes readable after pruning unlinks the file.
    fd = os.open(path, os.O_RDONLY)
    checkpoint = Checkpoint(version, metadata, sha256, xxh3, size, path, None, fd, data_xxh3)
    weakref.finalize(checkpoint, os.close, fd)
    return checkpoint


class CheckpointStore:
    """A folder of ``global-vNNNNNNNN.safetensors`` files; keeps the newest ``keep``."""

    def __init__(self, directory: Path, keep: int = 5) -> None:
        self.directory = Path(directory)
        self.keep = max(1, keep)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temp_files()

    def _remove_stale_temp_files(self) -> None:
        # One aggregator writes a folder; a temp file found at start is a write a crash cut short.
        for pattern in (".global-v*.safetensors.tmp-*", ".momentum-v*.safetensors.tmp-*"):
            for entry in self.directory.glob(pattern):
                log_event(log, "checkpoint_temp_removed", logging.WARNING, file=entry.name)
                entry.unlink(missing_ok=True)

    def path_for(self, version: int) -> Path:
        return self.directory / f"global-v{version:08d}.safetensors"

    def save(self, checkpoint: Checkpoint) -> Checkpoint:
        """Write an in-memory checkpoint atomically; returns it backed by the file."""
        payload = checkpoint.payload
        final = self._commit(checkpoint.version, lambda fh: fh.write(payload))
        return _file_backed(checkpoint.version, checkpoint.metadata, checkpoint.sha256, checkpoint.xxh3_128,
                            checkpoint.size, final, checkpoint.data_xxh3_128)

    def write_stream(
        self, version: int, metadata: Mapping[str, str], specs: Mapping[str, TensorSpec], blocks: BlockSource
    ) -> Checkpoint:
        """A CheckpointWriter: stream the tensors' blocks to disk, checksumming on the way; file-backed result."""
        meta = {**metadata, "model_version": str(version)}
        layout = payload_layout({k: (s.dtype, s.shape) for k, s in specs.items()}, meta)
        sha, xxh = hashlib.sha256(layout.header), xxhash.xxh3_128(layout.header)
        data_xxh = xxhash.xxh3_128()

        def write(fh) -> None:
            fh.write(layout.header)
            for name, begin, end in layout.tensors:
                written = 0
                for block in blocks(name):
                    data = memoryview(np.ascontiguousarray(block, dtype=specs[name].dtype)).cast("B")
                    fh.write(data)
                    sha.update(data)
                    xxh.update(data)
                    data_xxh.update(data)
                    written += len(data)
                if written != end - begin:
                    raise ValueError(f"tensor {name}: wrote {written} bytes, the layout has {end - begin}")

        final = self._commit(version, write)
        return _file_backed(version, meta, sha.hexdigest(), xxh.hexdigest(), layout.size, final, data_xxh.hexdigest())

    def momentum_path(self, version: int) -> Path:
        return self.directory / f"momentum-v{version:08d}.safetensors"

    def save_momentum(self, version: int, arrays: Mapping[str, np.ndarray]) -> Path:
        """The server-momentum buffer that produced ``version``, written atomically; keeps the newest two."""
        payload = arrays_to_bytes(arrays, {"model_version": str(version)})
        path = self._commit(version, lambda fh: fh.write(payload), self.momentum_path(version))
        for old in sorted(self._numbered(_MOMENTUM))[:-MOMENTUM_KEEP]:
            self.momentum_path(old).unlink(missing_ok=True)
        return path

    def load_momentum(self, version: int) -> dict[str, np.ndarray] | None:
        """The buffer saved with ``version``; None when there is none or it is damaged (logged)."""
        path = self.momentum_path(version)
        if not path.exists():
            return None
        try:
            arrays, metadata = view_arrays(path.read_bytes())
            if metadata.get("model_version") != str(version):
                raise MalformedTensorsError(f"metadata says version {metadata.get('model_version')!r}")
        except (MalformedTensorsError, OSError) as exc:
            log_event(log, "momentum_skipped", logging.WARNING, version=version, reason=str(exc))
            return None
        return {k: np.array(v) for k, v in arrays.items()}

    def _commit(self, version: int, write: Callable[[object], object], final: Path | None = None) -> Path:
        """Temp file, fsync, rename, fsync folder, prune."""
        final = final or self.path_for(version)
        tmp = self.directory / f".{final.name}.tmp-{os.getpid()}"
        try:
            with open(tmp, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, final)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._prune()
        return final

    def versions(self) -> list[int]:
        """Stored versions, oldest first (temporary files are never listed)."""
        return self._numbered(_NAME)

    def _numbered(self, pattern: re.Pattern[str]) -> list[int]:
        return sorted(int(m.group(1)) for entry in self.directory.iterdir() if (m := pattern.match(entry.name)))

    def load(self, version: int) -> Checkpoint:
        """Verify one version (read once, parsed, checksummed) and return it backed by its file."""
        path = self.path_for(version)
        try:
            c = checkpoint_from_payload(version, path.read_bytes(), path)
        except MalformedTensorsError as exc:
            raise MalformedTensorsError(f"{path.name}: {exc}") from None
        return _file_backed(version, c.metadata, c.sha256, c.xxh3_128, c.size, path, c.data_xxh3_128)

    def latest(self) -> Checkpoint | None:
        """The newest checkpoint that loads cleanly; damaged ones are logged and skipped."""
        for version in reversed(self.versions()):
            try:
                return self.load(version)
            except (MalformedTensorsError, OSError) as exc:
                log_event(log, "checkpoint_skipped", logging.WARNING, version=version, reason=str(exc))
        return None

    def _prune(self) -> None:
        for version in self.versions()[: -self.keep]:
            try:
                self.path_for(version).unlink()
            except FileNotFoundError:
                pass
