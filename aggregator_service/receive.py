"""Receiving an update's bytes: a bounded pool of reusable buffers, filled chunk by chunk and checksummed on the way.

Memory for pushes in flight is at most ``count`` x (model bytes + margin),
whatever the number of clients: a push waits for a free buffer before it
reads its bulk. Buffers are allocated on first use and kept, so a round
allocates nothing per push; checksums are updated per chunk, so the payload
is read once more only to fold it into the sum.
"""
from __future__ import annotations

import hashlib
import threading
from collections import deque
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

import xxhash

from aggregator_service.errors import BusyError, InvalidUpdateError
from fedser.v1.chunks import PushMessage, chunk_of


class ReceiveBuffers:
    """At most ``count`` buffers of ``size`` bytes, handed out one per push, first come first served."""

    def __init__(self, size: int, count: int) -> None:
        if size <= 0 or count <= 0:
            raise ValueError("buffer size and count must be positive")
        self.size = size
        self.count = count
        self._free: list[bytearray] = []
        self._created = 0
        self._in_use = 0
        # Waiters in arrival order: a released buffer goes straight to the oldest, so
        # no push starves behind later ones (200 pushes share 2 buffers of a 25M model).
        self._waiters: deque[_Waiter] = deque()
        self._lock = threading.Lock()

    @property
    def in_use(self) -> int:
        with self._lock:
            return self._in_use

    @contextmanager
    def acquire(self, timeout_s: float) -> Iterator[bytearray]:
        """A free buffer for the duration of the block; BusyError if none frees up within ``timeout_s``."""
        buf = self._take(timeout_s)
        try:
            yield buf
        finally:
            self._give_back(buf)

    def _take(self, timeout_s: float) -> bytearray:
        waiter = _Waiter()
        with self._lock:
            if not self._waiters and self._free:
                self._in_use += 1
                return self._free.pop()
            allocate = not self._waiters and self._created < self.count
            if allocate:
                self._in_use += 1
                self._created += 1
            else:
                self._waiters.append(waiter)
        if allocate:
            return bytearray(self.size)  # calloc'd: pages cost memory only once written
        waiter.ready.wait(max(0.0, timeout_s))
        with self._lock:
            if waiter.buffer is None:  # timed out, and no buffer was handed over meanwhile
                self._waiters.remove(waiter)
                raise BusyError(f"all {self.count} receive buffers are busy; retry shortly")
            return waiter.buffer

    def _give_back(self, buf: bytearray) -> None:
        with self._lock:
            if self._waiters:
                waiter = self._waiters.popleft()
                waiter.buffer = buf
                waiter.ready.set()
            else:
                self._free.append(buf)
                self._in_use -= 1


class _Waiter:
    def __init__(self) -> None:
        self.ready = threading.Event()
        self.buffer: bytearray | None = None


class Slots:
    """A counting bound with a timeout that ends in BusyError (used for pulls that stream model bytes)."""

    def __init__(self, count: int) -> None:
        if count <= 0:
            raise ValueError("count must be positive")
        self.count = count
        self._sem = threading.BoundedSemaphore(count)

    @contextmanager
    def acquire(self, timeout_s: float) -> Iterator[None]:
        if not self._sem.acquire(timeout=max(0.0, timeout_s)):
            raise BusyError(f"all {self.count} model-sending slots are busy; retry shortly")
        try:
            yield
        finally:
            self._sem.release()


def receive_into(
    messages: Iterable[PushMessage],
    buf: bytearray,
    total: int,
    max_chunk: int,
    sha256: str,
    xxh3_128: str,
    on_bytes: Callable[[int], None],
) -> memoryview:
    """Copy the chunks that follow a header into ``buf``, check size and the declared checksums; the filled view."""
    if total > len(buf):
        raise InvalidUpdateError(f"declared total_bytes {total} exceeds the receive buffer", reason="too_large")
    view = memoryview(buf)[:total]
    hashers = []
    if sha256:
        hashers.append((hashlib.sha256(), sha256))
    if xxh3_128:
        hashers.append((xxhash.xxh3_128(), xxh3_128))
    offset = 0
    for msg in messages:
        chunk = chunk_of(msg)
        if chunk is None:
            raise InvalidUpdateError("only chunks may follow the header", reason="bad_stream")
        n = len(chunk)
        if n > max_chunk:
            raise InvalidUpdateError(f"chunk of {n} bytes exceeds {max_chunk}", reason="too_large")
        if offset + n > total:
            raise InvalidUpdateError(f"payload exceeds the declared {total} bytes", reason="size_mismatch")
        view[offset : offset + n] = chunk
        for h, _ in hashers:
            h.update(chunk)
        offset += n
        on_bytes(n)
    if offset != total:
        raise InvalidUpdateError(f"payload has {offset} bytes, header declared {total}", reason="size_mismatch")
    for h, expected in hashers:
        if h.hexdigest() != expected:
            raise InvalidUpdateError("checksum does not match the payload", reason="checksum")
    return view
