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
from model.eventlog import log_event
from model.serialization import MalformedTensorsError, arrays_to_bytes, sha256_hex, view_arrays, xxh3_hex

log = logging.getLogger("fedser.checkpoints")

_NAME = re.compile(r"^global-v(\d{8})\.safetensors$")


@dataclass(frozen=True)
class Checkpoint:
    """One global model version as stored: its payload, read-only views of its tensors, metadata, checksums."""

    version: int
    arrays: dict[str, np.ndarray]
    payload: bytes | bytearray
    metadata: dict[str, str]
    path: Path | None = None
    sha256: str = ""
    xxh3_128: str = ""


def checkpoint_from_payload(version: int, payload: bytes | bytearray, path: Path | None = None) -> Checkpoint:
    """Parse (zero-copy) and checksum a payload once; raises MalformedTensorsError if it is damaged."""
    arrays, metadata = view_arrays(payload)
    if metadata.get("model_version") != str(version):
        raise MalformedTensorsError(f"metadata says version {metadata.get('model_version')!r}, expected {version}")
    return Checkpoint(version, arrays, payload, metadata, path, sha256_hex(payload), xxh3_hex(payload))


def encode_checkpoint(version: int, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> Checkpoint:
    """Serialize a model version once; the same bytes are stored and served to clients."""
    return checkpoint_from_payload(version, arrays_to_bytes(arrays, {**metadata, "model_version": str(version)}))


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
        try:
            return checkpoint_from_payload(version, path.read_bytes(), path)
        except MalformedTensorsError as exc:
            raise MalformedTensorsError(f"{path.name}: {exc}") from None

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
