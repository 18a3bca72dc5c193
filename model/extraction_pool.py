"""Worker processes that extract features of audio files: threads share one GIL, processes use every core.

The per-file Python between torch's kernels (reading, slicing, dispatch) holds
the GIL, so two extraction threads ran at 1.2-1.45x one; two forked processes
run at about 2x. Workers are forked (milliseconds, nothing re-imported) and run
one torch thread each, as PyTorch's own DataLoader workers do, since OpenMP
thread teams do not survive a fork.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

FILES_PER_TASK = 8  # a task's files: enough work (~8 ms) to hide the queue's pickling round trip

# In a worker process only: the function it was forked with, set once by the initializer.
# The parent never writes it: forking hands the worker its own copy of the preset.
_worker_extract: Callable[[Sequence[Path]], np.ndarray] | None = None


class ExtractionPoolError(RuntimeError):
    """A worker process died (killed, out of memory) before returning its features."""


def _keep_freed_memory() -> None:
    """Ask glibc's malloc to keep what a task frees for the next task, rather than hand it back to the OS.

    Each file's temporaries (about 1.4 MB for the seed preset) otherwise came back
    as fresh pages: 350 page faults a file, which cost up to 40 % of the extraction
    time on a VM. A worker's heap then stays at its peak (tens of MB).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h>
    libc.mallopt(m_mmap_threshold, 32 << 20)  # glibc's largest: allocations below it come from the heap
    libc.mallopt(m_trim_threshold, 1 << 30)


def _init_worker(extract: Callable[[Sequence[Path]], np.ndarray]) -> None:
    global _worker_extract
    torch.set_num_threads(1)
    _keep_freed_memory()
    _worker_extract = extract


def _run_task(paths: Sequence[Path]) -> np.ndarray:
    assert _worker_extract is not None, "not an extraction worker"
    with torch.inference_mode():
        return _worker_extract(paths)


def fork_available() -> bool:
    """True where worker processes can be forked (Linux, macOS); elsewhere extraction stays in threads."""
    return "fork" in multiprocessing.get_all_start_methods()


class ExtractionPool:
    """``workers`` forked processes, each running ``extract`` (paths -> [n, ...] float32) on tasks of a few files.

    Made by the process that uses it; a process forked from that one (a pool
    worker, a test runner's child) gets ``owned() == False`` and must make its own.
    """

    def __init__(self, extract: Callable[[Sequence[Path]], np.ndarray], workers: int) -> None:
        self.workers = workers
        self._owner = os.getpid()
        self._executor = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"),
                                             initializer=_init_worker, initargs=(extract,))

    def owned(self) -> bool:
        return os.getpid() == self._owner

    def map(self, paths: Sequence[Path]) -> list[np.ndarray]:
        """Features of ``paths`` in order, as one array per task; a worker's exception is re-raised here."""
        tasks = [list(paths[i : i + FILES_PER_TASK]) for i in range(0, len(paths), FILES_PER_TASK)]
        try:
            return list(self._executor.map(_run_task, tasks))
        except BrokenProcessPool as exc:
            self.close()
            raise ExtractionPoolError(f"a feature extraction worker process died ({exc}); "
                                      "rerun, or extract in threads with --threads 1") from exc

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        self._executor.shutdown(wait=True, cancel_futures=True)
