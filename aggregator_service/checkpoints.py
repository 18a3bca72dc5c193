"""Atomic, resumable checkpoints of the global model as safetensors files.

A checkpoint is written to a temporary file, fsynced, renamed into place and
the folder fsynced, so a crash leaves either the old set or the new one: a
half-written file never carries a checkpoint's name.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
from safetensors import safe_open

from model.eventlog import log_event
from model.serialization import MalformedTensorsError, arrays_to_bytes, bytes_to_arrays, sha256_hex

log = logging.getLogger("fedser.checkpoints")

_NAME = re.compile(r"^global-v(\d{8})\.safetensors$")


@dataclass(frozen=True)
class Checkpoint:
    """One global model version as stored: tensors, their bytes and their metadata."""

    version: int
    arrays: dict[str, np.ndarray]
    payload: bytes
    metadata: dict[str, str]
    path: Path | None = None

    @property
    def sha256(self) -> str:
        return sha256_hex(self.payload)


def encode_checkpoint(version: int, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> Checkpoint:
    """Serialize a model version once; the same bytes are stored and served to clients."""
    meta = {**metadata, "model_version": str(version)}
    payload = arrays_to_bytes(arrays, meta)
    return Checkpoint(version=version, arrays=dict(arrays), payload=payload, metadata=meta)


class CheckpointStore:
    """A folder of ``global-vNNNNNNNN.safetensors`` files; keeps the newest ``keep``."""

    def __init__(self, directory: Path, keep: int = 5) -> None:
        self.directory = Path(directory)
        self.keep = max(1, keep)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temp_files()

    def _remove_stale_temp_files(self) -> None:
        # One aggregator writes a folder; a temp file found at start is a write a crash cut short.
        for entry in self.directory.glob(".global-v*.safetensors.tmp-*"):
            log_event(log, "checkpoint_temp_removed", logging.WARNING, file=entry.name)
            entry.unlink(missing_ok=True)

    def path_for(self, version: int) -> Path:
        return self.directory / f"global-v{version:08d}.safetensors"

    def save(self, checkpoint: Checkpoint) -> Path:
        """Write atomically (temp file, fsync, rename, fsync folder), then prune old versions."""
        final = self.path_for(checkpoint.version)
        tmp = self.directory / f".{final.name}.tmp-{os.getpid()}"
        with open(tmp, "wb") as fh:
            fh.write(checkpoint.payload)
            fh.flush()
            os.fsync(fh.fileno())
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
        found = []
        for entry in self.directory.iterdir():
            m = _NAME.match(entry.name)
            if m:
                found.append(int(m.group(1)))
        return sorted(found)

    def load(self, version: int) -> Checkpoint:
        """Load and verify one version; raises MalformedTensorsError if it is damaged."""
        path = self.path_for(version)
        payload = path.read_bytes()
        arrays = bytes_to_arrays(payload)
        with safe_open(str(path), framework="numpy") as fh:
            metadata = dict(fh.metadata() or {})
        if metadata.get("model_version") != str(version):
            raise MalformedTensorsError(f"{path.name}: metadata says version {metadata.get('model_version')!r}")
        return Checkpoint(version=version, arrays=arrays, payload=payload, metadata=metadata, path=path)

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
