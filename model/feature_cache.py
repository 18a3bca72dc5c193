"""A feature cache on disk, keyed by file content and preset identity, so later runs extract nothing.

Layout under the cache folder::

    <preset key>/preset.json             what the key stands for (for people; never read back)
    <preset key>/<ab>/<file key>.npy     one float32 row of features, shape preset.input_shape

- The *file key* is the BLAKE2b-256 digest of the file's bytes: editing a file
  misses, renaming or copying one with the same bytes hits.
- The *preset key* is a SHA-256 digest of the preset's class, every constructor
  field (the numbers it depends on: rate, window, transform, normalisation ...),
  the torchaudio version and this module's format version: changing any of them
  misses.

Rows are written with ``np.save(allow_pickle=False)`` to a temporary file in the
same folder and renamed over the target (``os.replace``), so a reader sees a
whole row or none; two processes (or threads) filling the same folder at once
at worst both write the same bytes. Rows are read with
``np.load(allow_pickle=False)`` and checked for dtype and shape; a damaged or
foreign row counts as a miss and is rewritten.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torchaudio

from model.audio import AudioReadError
from model.features import FeaturePreset

CACHE_FORMAT = 1
DEFAULT_BATCH = 64
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class CacheStats:
    """How many of the requested files were found in the cache and how many were extracted."""

    hits: int = 0
    misses: int = 0


def file_digest(path: Path) -> str:
    """Hex BLAKE2b-256 of the file's bytes; AudioReadError when the file cannot be read."""
    h = hashlib.blake2b(digest_size=32)
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(_HASH_CHUNK):
                h.update(chunk)
    except OSError as exc:
        raise AudioReadError(f"{Path(path).name}: cannot read audio ({exc})") from exc
    return h.hexdigest()


def preset_identity(preset: FeaturePreset) -> dict[str, Any]:
    """Everything that changes a preset's numbers, as a JSON-able dict.

    A preset may define ``cache_identity()`` itself; a dataclass preset is
    described by its class and all of its constructor fields.
    """
    custom = getattr(preset, "cache_identity", None)
    if callable(custom):
        params = custom()
    elif dataclasses.is_dataclass(preset) and not isinstance(preset, type):
        params = {f.name: getattr(preset, f.name) for f in dataclasses.fields(preset) if f.init}
    else:
        raise TypeError(
            f"cannot cache features of {type(preset).__name__}: "
            "a preset must be a dataclass or define cache_identity()"
        )
    return {
        "format": CACHE_FORMAT,
        "class": f"{type(preset).__module__}.{type(preset).__qualname__}",
        "params": params,
        "input_shape": list(preset.input_shape),
        "torchaudio": torchaudio.__version__,
    }


def preset_key(preset: FeaturePreset) -> str:
    """Hex digest naming the preset's folder in the cache."""
    text = json.dumps(preset_identity(preset), sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _write_atomic(target: Path, write: Callable[[Any], None]) -> None:
    """Write via a temporary file in the target's folder, then rename over the target."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class FeatureCache:
    """Features of audio files, extracted once per (file content, preset) and kept under ``folder``.

    ``hits`` and ``misses`` count over the cache object's life; ``last`` holds the
    counts of the latest ``extract`` call. Safe to share between threads, and
    between processes using the same folder.
    """

    def __init__(self, folder: Path | str, batch_size: int = DEFAULT_BATCH) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.folder = Path(folder)
        self.batch_size = batch_size
        self.hits = 0
        self.misses = 0
        self.last = CacheStats()
        self._lock = threading.Lock()

    def _preset_dir(self, preset: FeaturePreset) -> Path:
        d = self.folder / preset_key(preset)
        if not (d / "preset.json").exists():
            d.mkdir(parents=True, exist_ok=True)
            text = json.dumps(preset_identity(preset), sort_keys=True, indent=2, default=repr) + "\n"
            _write_atomic(d / "preset.json", lambda fh: fh.write(text.encode()))
        return d

    @staticmethod
    def _row_path(preset_dir: Path, digest: str) -> Path:
        return preset_dir / digest[:2] / f"{digest}.npy"

    @staticmethod
    def _read_row(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
        try:
            row = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None  # missing, truncated or not an .npy file: extract again
        if row.dtype != np.float32 or row.shape != shape:
            return None
        return row

    @staticmethod
    def _write_row(path: Path, row: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, lambda fh: np.save(fh, np.ascontiguousarray(row, dtype=np.float32), allow_pickle=False))

    def extract(
        self, paths: Sequence[Path | str], preset: FeaturePreset,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Features of ``paths`` in order, float32 [N, *preset.input_shape].

        Cached rows are read; the others are extracted with ``preset.extract_files``
        in batches of ``batch_size`` (files with the same bytes once) and stored.
        ``progress(n)`` is called as files are done. An unreadable file raises
        AudioReadError (from hashing or from the preset's reader). The call's
        counts are in ``last`` (``extract_with_stats`` returns them instead).
        """
        return self.extract_with_stats(paths, preset, progress)[0]

    def extract_with_stats(
        self, paths: Sequence[Path | str], preset: FeaturePreset,
        progress: Callable[[int], None] | None = None,
    ) -> tuple[np.ndarray, CacheStats]:
        """Like ``extract``, also returning this call's hits and misses (hits + misses == len(paths))."""
        shape = tuple(preset.input_shape)
        out = np.empty((len(paths), *shape), dtype=np.float32)
        preset_dir = self._preset_dir(preset)
        digests = [file_digest(Path(p)) for p in paths]

        missing: dict[str, list[int]] = {}  # digest -> positions in ``paths``
        for i, digest in enumerate(digests):
            if digest in missing:
                missing[digest].append(i)
                continue
            row = self._read_row(self._row_path(preset_dir, digest), shape)
            if row is None:
                missing[digest] = [i]
            else:
                out[i] = row
        n_misses = sum(len(v) for v in missing.values())
        n_hits = len(paths) - n_misses
        if progress and n_hits:
            progress(n_hits)

        todo = list(missing.items())
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start : start + self.batch_size]
            feats = preset.extract_files([Path(paths[where[0]]) for _, where in batch])
            if feats.shape != (len(batch), *shape):
                raise ValueError(f"preset {preset.name!r} returned shape {feats.shape}, expected {(len(batch), *shape)}")
            for (digest, where), row in zip(batch, feats):
                self._write_row(self._row_path(preset_dir, digest), row)
                out[where] = row
            if progress:
                progress(sum(len(where) for _, where in batch))

        stats = CacheStats(n_hits, n_misses)
        with self._lock:
            self.hits += n_hits
            self.misses += n_misses
            self.last = stats
        return out, stats
