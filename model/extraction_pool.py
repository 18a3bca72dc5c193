"""Worker processes that extract features of many audio files: threads share one GIL, processes use every core.

Between torch's kernels, each chunk of files runs about a hundred Python-level
operations that hold the GIL; two extraction threads ran at 1.0-1.2x one
thread on a 2-core VM, two processes at 1.5-1.8x. Workers start from a fork
server: a fresh interpreter that imported ``model.features`` and never ran a
kernel or a thread, so a fork of it cannot inherit a lock that some other
thread held (forking the client itself once left a worker spinning forever in
MKL's allocator). Starting costs about 2 s (one torch import), so the pool is
used only for batches of at least ``min_files`` files, and starts on first use.
"""
from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from model.eventlog import log_event

log = logging.getLogger("fedser.features")

FILES_PER_TASK = 16  # about 15 ms of work: the queue's round trip (~0.3 ms) stays small beside it
MIN_FILES = 512  # below this the ~2 s start costs more than a second core saves
TASK_TIMEOUT_S = 300.0  # a task that takes this long is stuck, not slow: stop the workers
_TASKS_PER_WORKER_IN_FLIGHT = 4  # enough queued work to keep a worker busy; bounds the results held

# In a worker process only: presets built from their specs, reused by later tasks.
_worker_presets: dict[Any, Any] = {}


class ExtractionPoolError(RuntimeError):
    """The worker processes died or stopped answering; the caller may extract in its own process instead."""


def _init_worker() -> None:
    import torch

    from model.allocator import keep_freed_memory

    torch.set_num_threads(1)  # one process per core already
    keep_freed_memory()


def _preset_spec(preset: Any) -> tuple[type, dict[str, Any]]:
    """(class, constructor arguments): what a worker needs to build the same preset."""
    if not dataclasses.is_dataclass(preset) or isinstance(preset, type):
        raise TypeError(f"{type(preset).__name__}: worker processes can only rebuild dataclass presets")
    return type(preset), {f.name: getattr(preset, f.name) for f in dataclasses.fields(preset) if f.init}


def _run_task(spec: tuple[type, dict[str, Any]], paths: list[Path]) -> np.ndarray:
    cls, kwargs = spec
    key = (cls, repr(sorted(kwargs.items())))
    preset = _worker_presets.get(key)
    if preset is None:
        preset = _worker_presets[key] = cls(**kwargs)
    return preset.extract_files(paths)


def _ping() -> int:
    return os.getpid()


def _context() -> multiprocessing.context.BaseContext:
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        # The server imports the feature code once; workers fork from it with torch loaded.
        # (Not the default '__main__': the client's main module need not be imported there.)
        ctx.set_forkserver_preload(["model.features"])
        return ctx
    return multiprocessing.get_context("spawn")


class ExtractionPool:
    """``workers`` processes running a preset's ``extract_files`` on tasks of a few files, results in order.

    A context manager; ``close()`` stops the workers. After a failure
    (ExtractionPoolError) the pool stays closed and ``worth_it`` is False.
    """

    def __init__(self, workers: int, min_files: int = MIN_FILES, task_timeout_s: float = TASK_TIMEOUT_S) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self.min_files = min_files
        self.task_timeout_s = task_timeout_s
        self._executor: ProcessPoolExecutor | None = None
        self._failed = False

    def __enter__(self) -> ExtractionPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def worth_it(self, n_files: int) -> bool:
        """True when ``n_files`` files are enough to pay for starting the workers."""
        return self.workers > 1 and not self._failed and n_files >= self.min_files

    def start(self) -> list[int]:
        """Start the workers now (otherwise the first ``imap`` does); their process ids."""
        if self._failed:
            raise ExtractionPoolError("the extraction workers failed earlier")
        if self._executor is None:
            self._executor = ProcessPoolExecutor(self.workers, mp_context=_context(), initializer=_init_worker)
        # One ping per worker makes the executor start them all; waiting for the answers waits until they are up.
        try:
            for future in [self._executor.submit(_ping) for _ in range(self.workers)]:
                future.result(timeout=self.task_timeout_s)
        except (BrokenProcessPool, FutureTimeout) as exc:
            self._fail("did not start")
            raise ExtractionPoolError(f"feature extraction worker processes did not start ({type(exc).__name__}); "
                                      "a script that uses them needs an `if __name__ == '__main__':` guard") from exc
        pids = self.worker_pids()
        log_event(log, "extraction_workers_started", workers=len(pids))
        return pids

    def worker_pids(self) -> list[int]:
        """Process ids of the running workers (empty before ``start``)."""
        return sorted(getattr(self._executor, "_processes", None) or {})

    def imap(self, preset: Any, batches: Sequence[Sequence[Path]]) -> Iterator[np.ndarray]:
        """``preset.extract_files(batch)`` for each batch, in order, computed by the workers.

        A worker's exception (AudioReadError for an unreadable file) is raised
        here as it is; dead or stuck workers raise ExtractionPoolError.
        """
        spec = _preset_spec(preset)
        if self._executor is None:
            self.start()
        executor = self._executor
        assert executor is not None
        tasks = [(b, [Path(p) for p in batch[i : i + FILES_PER_TASK]])
                 for b, batch in enumerate(batches) for i in range(0, len(batch), FILES_PER_TASK)]
        pending: deque[tuple[int, Future]] = deque()
        next_task = 0
        parts: list[np.ndarray] = []
        current = 0
        try:
            while next_task < len(tasks) or pending:
                while next_task < len(tasks) and len(pending) < self.workers * _TASKS_PER_WORKER_IN_FLIGHT:
                    b, paths = tasks[next_task]
                    pending.append((b, executor.submit(_run_task, spec, paths)))
                    next_task += 1
                b, future = pending.popleft()
                if b != current:  # the previous batch is complete
                    yield np.concatenate(parts)
                    parts, current = [], b
                parts.append(future.result(timeout=self.task_timeout_s))
            if parts:
                yield np.concatenate(parts)
        except (BrokenProcessPool, FutureTimeout) as exc:
            why = "did not answer" if isinstance(exc, FutureTimeout) else "died"
            self._fail(why)
            raise ExtractionPoolError(f"a feature extraction worker process {why} ({type(exc).__name__})") from exc
        finally:
            for _, future in pending:
                future.cancel()

    def _fail(self, why: str) -> None:
        self._failed = True
        log_event(log, "extraction_workers_failed", logging.WARNING, reason=why)
        executor, self._executor = self._executor, None
        if executor is None:
            return
        # A stuck worker would keep shutdown() waiting forever: end the processes first.
        for process in list((getattr(executor, "_processes", None) or {}).values()):
            process.kill()
        executor.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
