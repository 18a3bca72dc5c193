"""Physical references for the round benchmark: loopback TCP bytes and a numpy weighted sum.

Both move or add exactly what an aggregator round must: the same bytes through
one TCP connection on 127.0.0.1, and the same FedAvg arithmetic (float64
accumulator, one update at a time, as aggregator_service/fedavg.py does).
"""
from __future__ import annotations

import socket
import threading
import time
from typing import Sequence

import numpy as np

BLOCK_BYTES = 16 << 20


def loopback_seconds(total_bytes: int, block_bytes: int = BLOCK_BYTES) -> float:
    """Seconds to push ``total_bytes`` through one 127.0.0.1 TCP connection (sendall -> recv_into, two threads).

    Both ends use one preallocated buffer; connection set-up is not timed. The
    clock starts before the first send and stops when the receiver holds the
    last byte.
    """
    if total_bytes <= 0:
        return 0.0
    block = min(block_bytes, total_bytes)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    received = [0]
    done_at = [0.0]
    errors: list[BaseException] = []

    def receive() -> None:
        try:
            conn, _ = listener.accept()
            with conn:
                buf = bytearray(block)
                view = memoryview(buf)
                got = 0
                while got < total_bytes:
                    n = conn.recv_into(view, min(block, total_bytes - got))
                    if n == 0:
                        break
                    got += n
                done_at[0] = time.perf_counter()
                received[0] = got
        except BaseException as exc:  # reported below
            errors.append(exc)

    receiver = threading.Thread(target=receive, name="loopback-receiver", daemon=True)
    receiver.start()
    try:
        with socket.create_connection(listener.getsockname()) as out:
            out.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            data = memoryview(bytearray(np.random.default_rng(0).integers(0, 256, block, dtype=np.uint8).tobytes()))
            t0 = time.perf_counter()
            sent = 0
            while sent < total_bytes:
                n = min(block, total_bytes - sent)
                out.sendall(data[:n])
                sent += n
            receiver.join()
    finally:
        listener.close()
    if errors:
        raise errors[0]
    if received[0] != total_bytes:
        raise RuntimeError(f"loopback received {received[0]} of {total_bytes} bytes")
    return done_at[0] - t0


def weighted_sum_seconds(params: int, weights: Sequence[int]) -> float:
    """Seconds for FedAvg's arithmetic on len(weights) float32 updates of ``params`` elements.

    One float64 accumulator and one float64 scratch buffer: scratch = n_k * w_k,
    acc += scratch for each update, then acc / m cast to float32 (what
    FedAvgAccumulator.add and .result do). Two distinct update buffers
    alternate, so a model larger than the caches is read from memory each time.
    """
    rng = np.random.default_rng(1)
    updates = [rng.standard_normal(params, dtype=np.float32) for _ in range(2)]
    acc = np.zeros(params, dtype=np.float64)
    scratch = np.empty(params, dtype=np.float64)
    t0 = time.perf_counter()
    for k, n in enumerate(weights):
        np.multiply(updates[k % 2], float(n), out=scratch, dtype=np.float64)
        np.add(acc, scratch, out=acc)
    (acc / float(sum(weights))).astype(np.float32)
    return time.perf_counter() - t0
