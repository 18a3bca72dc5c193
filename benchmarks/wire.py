"""Section 5: bytes on the wire per round per client, for each update encoding.

Measured for every encoding: one client pulls the global model and pushes an
update (a small known change, encoded as the production client does:
model.encodings.encode_update) through a byte-counting TCP relay in front of a
real aggregator process; the relay counts every TCP payload byte each way
(HTTP/2 and gRPC framing, headers, flow-control and ping frames, connection
set-up; not IP/TCP headers). Each encoding gets its own round of the same
aggregator and a fresh connection. ReportEvaluation, which a production client
also sends each round, is a few hundred bytes and is not included. The pull
stays float32 in every case.
"""
from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import uuid
from pathlib import Path

import grpc
import numpy as np

from benchmarks.common import start_bench_aggregator
from fedser.v1 import aggregator_pb2 as pb
from fedser.v1 import aggregator_pb2_grpc as pb_grpc
from model.encodings import Encoding, encode_update, to_proto
from model.serialization import arrays_to_bytes, bytes_to_arrays, iter_chunks, xxh3_hex

CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 8 << 20),
    ("grpc.max_send_message_length", 8 << 20),
    ("grpc.use_local_subchannel_pool", 1),
]


class CountingRelay:
    """A TCP relay on 127.0.0.1 that forwards to ``target_port`` and counts bytes each way."""

    def __init__(self, target_port: int) -> None:
        self._target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.up = 0  # client -> server
        self.down = 0  # server -> client
        self._lock = threading.Lock()
        self._pumps: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, name="relay-accept", daemon=True)
        self._accepter.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._target)
            for src, dst, up in ((client, server, True), (server, client, False)):
                t = threading.Thread(target=self._pump, args=(src, dst, up), daemon=True)
                t.start()
                self._pumps.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        try:
            while True:
                n = src.recv_into(view)
                if n == 0:
                    break
                dst.sendall(view[:n])
                with self._lock:
                    if up:
                        self.up += n
                    else:
                        self.down += n
        except OSError:
            pass
        finally:
            for s in (dst, src):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self, timeout_s: float = 10.0) -> None:
        self._listener.close()
        for t in self._pumps:
            t.join(timeout_s)


ENCODINGS = (Encoding.FLOAT32, Encoding.FLOAT16_DELTA, Encoding.INT8_DELTA)


def one_client_round(target_port: int, encoding: Encoding) -> dict[str, object]:
    """Pull + push of one client through the relay; returns payload and wire byte counts."""
    relay = CountingRelay(target_port)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{relay.port}", options=CHANNEL_OPTIONS) as ch:
            stub = pb_grpc.AggregatorStub(ch)
            responses = list(stub.PullModel(pb.PullModelRequest(client_id="wire-0"), timeout=600))
            header = responses[0].header
            pulled = b"".join(r.chunk for r in responses[1:])
            if len(pulled) != header.total_bytes or xxh3_hex(pulled) != header.xxh3_128:
                raise RuntimeError("pulled model damaged")
            arrays = bytes_to_arrays(pulled)
            rng = np.random.default_rng(0)
            update = {k: (v + rng.normal(0, 1e-3, v.shape)).astype(v.dtype) for k, v in arrays.items()}
            payload = arrays_to_bytes(encode_update(update, arrays, encoding, rng))
            h = pb.UpdateHeader(client_id="wire-0", round=header.round, num_samples=10, update_id=uuid.uuid4().hex,
                                total_bytes=len(payload), xxh3_128=xxh3_hex(payload),
                                base_version=header.model_version, encoding=to_proto(encoding))
            messages = [pb.PushUpdateRequest(header=h)] + [pb.PushUpdateRequest(chunk=c) for c in iter_chunks(payload)]
            reply = stub.PushUpdate(iter(messages), timeout=600)
            if not reply.accepted:
                raise RuntimeError(f"push refused: {reply}")
    finally:
        relay.close()
    return {"arrays": arrays, "pull_payload": len(pulled), "push_payload": len(payload),
            "wire_down": relay.down, "wire_up": relay.up}


def measure_model(label: str, workdir: Path, params: int | None, architecture: str | None) -> list[dict[str, object]]:
    d = Path(tempfile.mkdtemp(prefix="wire-", dir=workdir))
    args = ["--clients-per-round", "1", "--min-clients", "1", "--rounds", str(len(ENCODINGS)), "--round-timeout", "600"]
    if architecture is not None:
        args += ["--architecture", architecture]
    agg = start_bench_aggregator(params, d, args)
    try:
        measured = [one_client_round(agg.port, e) for e in ENCODINGS]
    finally:
        agg.stop()
        shutil.rmtree(d, ignore_errors=True)
    arrays = measured[0]["arrays"]
    base = {"model": label, "params": int(sum(v.size for v in arrays.values())), "tensors": len(arrays),
            "pull_payload_bytes": measured[0]["pull_payload"]}
    rows = []
    float32_push = measured[0]["push_payload"]
    float32_wire = measured[0]["wire_down"] + measured[0]["wire_up"]
    for encoding, m in zip(ENCODINGS, measured):
        wire_total = m["wire_down"] + m["wire_up"]
        payload_total = m["pull_payload"] + m["push_payload"]
        rows.append({
            **base, "encoding": encoding.value, "status": "measured",
            "push_payload_bytes": m["push_payload"], "payload_bytes_per_round": payload_total,
            "wire_down_bytes": m["wire_down"], "wire_up_bytes": m["wire_up"], "wire_bytes_per_round": wire_total,
            "framing_overhead": round(wire_total / payload_total - 1, 5),
            "push_vs_float32": round(m["push_payload"] / float32_push, 4),
            "push_cut": round(float32_push / m["push_payload"], 3),
            "round_cut": round(float32_wire / wire_total, 3),
        })
    return rows


def run(workdir: Path, sizes: list[int], architectures: list[str] | None = None, log=print) -> dict[str, object]:
    """Every registered architecture (or ``architectures``), then the synthetic ``sizes``."""
    from model.architectures import ARCHITECTURES

    if architectures is None:
        architectures = [a for a in ARCHITECTURES if not a.startswith("bench-")]
    rows: list[dict[str, object]] = []
    for arch_id in architectures:
        rows += measure_model(arch_id, workdir, None, arch_id)
        log(f"  [wire] {arch_id}: {rows[-len(ENCODINGS)]['wire_bytes_per_round']:,} bytes per client per round (float32)")
    for params in sizes:
        rows += measure_model(f"bench-flat-{params}", workdir, params, None)
        log(f"  [wire] bench-flat-{params}: {rows[-len(ENCODINGS)]['wire_bytes_per_round']:,} bytes per client per round (float32)")
    return {"rows": rows}
