"""A feature cache on disk, keyed by file content and preset identity, so later runs extract nothing.

Layout under the cache folder::

    files.json                           stat index: audio path -> content digest (see below)
    <preset key>/preset.json             what the key stands for (for people; never read back)
    <preset key>/<ab>/<file key>.npy     one float32 row of features, shape preset.input_shape

- The *file key* is the BLAKE2b-256 digest of the file's bytes: editing a file
  misses, renaming or copying one with the same bytes hits.
- The *preset key* is a SHA-256 digest of the preset's class, every constructor
  field (the numbers it depends on: rate, window, transform, normalisation ...),
  the torchaudio version and this module's format version: changing any of them
  misses.
- The *stat index* saves hashing every file on every run: it maps an audio
  file's absolute path to its digest together with the file's size, mtime_ns,
  ctime_ns, inode and device, and a digest is only taken from it when all five
  are unchanged. An entry is recorded only for a file whose stat was the same
  before and after hashing and whose mtime and ctime were at least
  ``RACY_SECONDS`` older than the moment hashing started, so a file rewritten
  within one timestamp tick of being hashed (same size, same mtime) is never
  mistaken for the old one (git's "racy clean" rule). ctime cannot be set
  from user space, so tools that restore an old mtime still miss. A missing,
  damaged or foreign index is ignored (every file is hashed) and rewritten.

Rows are written with ``np.save``'s format (no pickle) to a temporary file in the
same folder and renamed over the target (``os.replace``), so a reader sees a
whole row or none; two processes (or threads) filling the same folder at once
at worst both write the same bytes. The index is written the same way. Rows
are read back checked for their exact ``.npy`` header (dtype, order, shape),
falling back to ``np.load(allow_pickle=False)``; a damaged or foreign row
counts as a miss and is rewritten.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torchaudio

from model.audio import AudioReadError
from model.eventlog import log_event
from model.extraction_pool import ExtractionPool, ExtractionPoolError
from model.features import FeaturePreset, map_chunks

log = logging.getLogger("fedser.features")

CACHE_FORMAT = 1
DEFAULT_BATCH = 64
INDEX_NAME = "files.json"
INDEX_FORMAT = 1
INDEX_MAX_ENTRIES = 500_000  # oldest entries are dropped beyond this (a hint only: dropped files are hashed again)
RACY_SECONDS = 2.0  # FAT's mtime granularity; ext4, XFS, APFS, NTFS are far finer
_HASH_CHUNK = 1 << 20
_HASH_FILES_PER_TASK = 8


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


def _write_atomic(target: Path, data: bytes) -> None:
    """Write ``data`` to a new temporary file in the target's folder, then rename it over the target."""
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _npy_header(shape: tuple[int, ...]) -> bytes:
    """The exact bytes ``np.save`` puts before a float32 C-order array of ``shape``."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                                               "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue()


def _stat_key(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


class _StatIndex:
    """The stat index file of a cache folder, kept in memory and reloaded when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, list] = {}  # abs path -> [size, mtime_ns, ctime_ns, ino, dev, digest]
        self._seen: tuple | None = None  # the index file's stat when loaded
        self._lock = threading.Lock()

    def _load(self) -> None:
        try:
            st = os.stat(self.path)
        except OSError:
            self.entries, self._seen = {}, None
            return
        seen = (st.st_size, st.st_mtime_ns, st.st_ino)
        if seen == self._seen:
            return
        entries: dict[str, list] = {}
        try:
            doc = json.loads(self.path.read_bytes())
            if isinstance(doc, dict) and doc.get("format") == INDEX_FORMAT and isinstance(doc.get("files"), dict):
                for k, v in doc["files"].items():
                    if (isinstance(v, list) and len(v) == 6 and all(type(x) is int for x in v[:5])
                            and isinstance(v[5], str) and len(v[5]) == 64):
                        entries[k] = v
        except (OSError, ValueError, UnicodeDecodeError):
            entries = {}  # damaged or foreign: hash everything, rewrite on the next save
        self.entries, self._seen = entries, seen

    def lookup(self, paths: Sequence[str]) -> tuple[list[str | None], list[os.stat_result | None]]:
        """Known digests (None where unknown or changed) and each file's stat (None if it cannot be had)."""
        with self._lock:
            self._load()
            entries = self.entries
        digests: list[str | None] = []
        stats: list[os.stat_result | None] = []
        for p in paths:
            try:
                st = os.stat(p)
            except OSError:
                digests.append(None)
                stats.append(None)
                continue
            stats.append(st)
            e = entries.get(p)
            digests.append(e[5] if e is not None and e[:5] == _stat_key(st) else None)
        return digests, stats

    def save(self, learned: dict[str, list]) -> None:
        """Merge ``learned`` into the index on disk (re-read first: other processes may have added entries)."""
        if not learned:
            return
        with self._lock:
            self._load()
            entries = dict(self.entries)
            for k, v in learned.items():
                entries.pop(k, None)  # re-insert at the end: the oldest entries are the first dropped
                entries[k] = v
            if len(entries) > INDEX_MAX_ENTRIES:
                entries = dict(list(entries.items())[-INDEX_MAX_ENTRIES:])
            data = json.dumps({"format": INDEX_FORMAT, "files": entries}, separators=(",", ":")).encode()
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                _write_atomic(self.path, data)
            except OSError:
                return  # a read-only or full cache folder: the index is only a hint
            self.entries = entries
            try:
                st = os.stat(self.path)
                self._seen = (st.st_size, st.st_mtime_ns, st.st_ino)
            except OSError:
                self._seen = None


def _hash_files(paths: Sequence[str], stats: Sequence[os.stat_result | None],
                ) -> list[tuple[str | None, list | None, AudioReadError | None]]:
    """Digest of each file, its index entry when it may be recorded (see the module docstring), or its error."""
    out: list[tuple[str | None, list | None, AudioReadError | None]] = []
    for p, before in zip(paths, stats):
        started = time.time_ns()
        try:
            digest = file_digest(Path(p))
        except AudioReadError as exc:
            out.append((None, None, exc))
            continue
        entry = None
        if before is not None:
            try:
                after = os.stat(p)
            except OSError:
                after = None
            settled = started - int(RACY_SECONDS * 1e9)
            if (after is not None and _stat_key(after) == _stat_key(before)
                    and before.st_mtime_ns < settled and before.st_ctime_ns < settled):
                entry = _stat_key(before) + [digest]
        out.append((digest, entry, None))
    return out


class FeatureCache:
    """Features of audio files, extracted once per (file content, preset) and kept under ``folder``.

    ``hits`` and ``misses`` count over the cache object's life; ``last`` holds the
    counts of the latest ``extract`` call. Safe to share between threads, and
    between processes using the same folder. ``use_stat_index=False`` hashes
    every file on every call (for folders whose timestamps cannot be trusted).
    """

    def __init__(self, folder: Path | str, batch_size: int = DEFAULT_BATCH, use_stat_index: bool = True,
                 pool: ExtractionPool | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.folder = Path(folder)
        self.batch_size = batch_size
        self.hits = 0
        self.misses = 0
        self.last = CacheStats()
        self._lock = threading.Lock()
        self._index = _StatIndex(self.folder / INDEX_NAME) if use_stat_index else None
        self._dirs: set[Path] = set()  # row folders known to exist
        self.last_hashed = 0  # files the latest call had to hash (the others' digests came from the stat index)
        self.pool = pool  # worker processes for calls with many files to extract; the caller closes it

    def _preset_dir(self, preset: FeaturePreset) -> Path:
        d = self.folder / preset_key(preset)
        if not (d / "preset.json").exists():
            d.mkdir(parents=True, exist_ok=True)
            text = json.dumps(preset_identity(preset), sort_keys=True, indent=2, default=repr) + "\n"
            _write_atomic(d / "preset.json", text.encode())
        return d

    @staticmethod
    def _row_path(preset_dir: Path, digest: str) -> Path:
        return preset_dir / digest[:2] / f"{digest}.npy"

    @staticmethod
    def _read_row(path: Path, shape: tuple[int, ...], header: bytes | None = None) -> np.ndarray | None:
        header = header if header is not None else _npy_header(shape)
        size = len(header) + 4 * int(np.prod(shape))
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except OSError:
            return None  # missing
        try:
            data = os.read(fd, size + 1)
        except OSError:
            return None
        finally:
            os.close(fd)
        if len(data) == size and data.startswith(header):
            return np.frombuffer(data, dtype=np.float32, offset=len(header)).reshape(shape).copy()
        try:  # another writer's header padding, say: let numpy judge
            row = np.load(io.BytesIO(data), allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None  # truncated or not an .npy file: extract again
        if row.dtype != np.float32 or row.shape != shape:
            return None
        return row

    def _write_row(self, path: Path, row: np.ndarray, header: bytes) -> None:
        data = header + np.ascontiguousarray(row, dtype="<f4").tobytes()
        if path.parent not in self._dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(path.parent)
        try:
            _write_atomic(path, data)
        except FileNotFoundError:  # the folder was removed since: make it again
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(path, data)

    def _digests(self, paths: list[str]) -> list[str]:
        """Content digest of every path: from the stat index where it is still valid, else by hashing."""
        if self._index is not None:
            known, stats = self._index.lookup(paths)
        else:
            known, stats = [None] * len(paths), [None] * len(paths)
        todo = [i for i, d in enumerate(known) if d is None]
        self.last_hashed = len(todo)
        if not todo:
            return known  # type: ignore[return-value]
        groups = [todo[i : i + _HASH_FILES_PER_TASK] for i in range(0, len(todo), _HASH_FILES_PER_TASK)]
        learned: dict[str, list] = {}
        error: AudioReadError | None = None
        # Hashing releases the GIL: the extraction worker threads share it out.
        for group, results in zip(groups, map_chunks(
                lambda g: _hash_files([paths[i] for i in g], [stats[i] for i in g]), groups)):
            for i, (digest, entry, exc) in zip(group, results):
                known[i] = digest
                if entry is not None:
                    learned[paths[i]] = entry
                error = error or exc
        if self._index is not None:
            self._index.save(learned)  # also when a file failed: the caller may go on without it
        if error is not None:
            raise error
        return known  # type: ignore[return-value]

    def extract(
        self, paths: Sequence[Path | str], preset: FeaturePreset,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Features of ``paths`` in order, float32 [N, *preset.input_shape].

        Cached rows are read; the others are extracted with ``preset.extract_files``
        in batches of ``batch_size`` (files with the same bytes once; by ``pool``'s
        worker processes when there are enough of them) and stored.
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
        header = _npy_header(shape)
        out = np.empty((len(paths), *shape), dtype=np.float32)
        preset_dir = self._preset_dir(preset)
        digests = self._digests([os.path.abspath(p) for p in paths])

        missing: dict[str, list[int]] = {}  # digest -> positions in ``paths``
        for i, digest in enumerate(digests):
            if digest in missing:
                missing[digest].append(i)
                continue
            row = self._read_row(self._row_path(preset_dir, digest), shape, header)
            if row is None:
                missing[digest] = [i]
            else:
                out[i] = row
        n_misses = sum(len(v) for v in missing.values())
        n_hits = len(paths) - n_misses
        if progress and n_hits:
            progress(n_hits)

        todo = list(missing.items())
        batches = [todo[i : i + self.batch_size] for i in range(0, len(todo), self.batch_size)]
        files = [[Path(paths[where[0]]) for _, where in batch] for batch in batches]
        done = 0

        def store(batch: list[tuple[str, list[int]]], feats: np.ndarray) -> None:
            if feats.shape != (len(batch), *shape):
                raise ValueError(f"preset {preset.name!r} returned shape {feats.shape}, expected {(len(batch), *shape)}")
            for (digest, where), row in zip(batch, feats):
                self._write_row(self._row_path(preset_dir, digest), row, header)
                out[where] = row
            if progress:
                progress(sum(len(where) for _, where in batch))

        if self.pool is not None and self.pool.worth_it(len(todo)):
            try:
                for feats in self.pool.imap(preset, files):
                    store(batches[done], feats)
                    done += 1
            except ExtractionPoolError as exc:
                # The rows stored so far stay; this process extracts the rest itself.
                log_event(log, "extraction_workers_lost", logging.WARNING, detail=str(exc), remaining=len(todo) - done)
        for batch, batch_files in zip(batches[done:], files[done:]):
            store(batch, preset.extract_files(batch_files))

        stats = CacheStats(n_hits, n_misses)
        with self._lock:
            self.hits += n_hits
            self.misses += n_misses
            self.last = stats
        return out, stats
