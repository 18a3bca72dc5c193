"""Section 5: bytes on the wire per round per client, for each update and pull encoding.

For every combination (update encoding, the aggregator's --pull-encoding), a
real aggregator process serves one production client (edge_client.transport:
pulls on its long-lived connection, each push on a connection of its own)
through a byte-counting TCP relay; the relay counts every TCP payload byte
each way (HTTP/2 and gRPC framing, headers, flow-control and ping frames,
connection set-up; not IP/TCP headers). The client does two rounds, pushing a
small known change encoded as fedser-client does (model.encodings.encode_update);
the second round is the one counted: its pull comes from a client that holds
the previous version, so a compressing aggregator sends only the delta.
ReportEvaluation, a few hundred bytes a round, is not included.
"""
from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import uuid
from pathlib import Path

import numpy as np

from benchmarks.common import start_bench_aggregator
from edge_client.backoff import BackoffPolicy
from edge_client.transport import AggregatorClient, PulledModel
from fedser.v1 import aggregator_pb2 as pb
from model.encodings import Encoding, encode_update, from_proto, to_proto
from model.serialization import arrays_to_bytes, xxh3_hex


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

    def reset(self) -> None:
        with self._lock:
            self.up = self.down = 0

    def counts(self) -> tuple[int, int]:
        """(client -> server, server -> client) bytes since the last reset."""
        with self._lock:
            return self.up, self.down

    def close(self, timeout_s: float = 10.0) -> None:
        self._listener.close()
        for t in self._pumps:
            t.join(timeout_s)


# (update encoding, pull encoding): float32 both ways, compressed updates only, compressed both ways.
COMBOS = (
    (Encoding.FLOAT32, Encoding.FLOAT32),
    (Encoding.FLOAT16_DELTA, Encoding.FLOAT32),
    (Encoding.INT8_DELTA, Encoding.FLOAT32),
    (Encoding.FLOAT16_DELTA, Encoding.FLOAT16_DELTA),
    (Encoding.INT8_DELTA, Encoding.INT8_DELTA),
)


def _push(client: AggregatorClient, pulled: PulledModel, encoding: Encoding, rng: np.random.Generator) -> int:
    update = {k: (v + rng.normal(0, 1e-3, v.shape)).astype(v.dtype) for k, v in pulled.arrays.items()}
    payload = arrays_to_bytes(encode_update(update, pulled.arrays, encoding))
    h = pb.UpdateHeader(client_id="wire-0", round=pulled.header.round, num_samples=10, update_id=uuid.uuid4().hex,
                        total_bytes=len(payload), xxh3_128=xxh3_hex(payload),
                        base_version=pulled.header.model_version, encoding=to_proto(encoding))
    reply = client.push(h, payload)
    if not reply.accepted:
        raise RuntimeError(f"push refused: {reply}")
    return len(payload)


def one_client(target_port: int, update_encoding: Encoding) -> dict[str, object]:
    """Two rounds of one client through the relay; the second round's payload and wire byte counts."""
    relay = CountingRelay(target_port)
    client = AggregatorClient(f"127.0.0.1:{relay.port}", threading.Event(), BackoffPolicy(max_s=0.1),
                              rpc_timeout_s=600)
    rng = np.random.default_rng(0)
    try:
        first = client.pull("wire-0")
        _push(client, first, update_encoding, rng)
        relay.reset()
        second = client.pull("wire-0", min_version=first.header.model_version + 1, wait_s=60, have=first)
        pushed = _push(client, second, update_encoding, rng)
        counts = relay.counts()
    finally:
        client.close()
        relay.close()
    return {"arrays": second.arrays, "pull_payload": second.header.total_bytes, "push_payload": pushed,
            "pull_encoding": from_proto(second.header.encoding).value, "wire_down": counts[1], "wire_up": counts[0]}


def measure_model(label: str, workdir: Path, params: int | None, architecture: str | None) -> list[dict[str, object]]:
    measured = []
    for update_encoding, pull_encoding in COMBOS:
        d = Path(tempfile.mkdtemp(prefix="wire-", dir=workdir))
        args = ["--clients-per-round", "1", "--min-clients", "1", "--rounds", "2", "--round-timeout", "600",
                "--pull-encoding", pull_encoding.value]
        if architecture is not None:
            args += ["--architecture", architecture]
        agg = start_bench_aggregator(params, d, args)
        try:
            measured.append(one_client(agg.port, update_encoding))
        finally:
            agg.stop()
            shutil.rmtree(d, ignore_errors=True)
    arrays = measured[0]["arrays"]
    base = {"model": label, "params": int(sum(v.size for v in arrays.values())), "tensors": len(arrays)}
    rows = []
    float32_push = measured[0]["push_payload"]
    float32_wire = measured[0]["wire_down"] + measured[0]["wire_up"]
    for (update_encoding, pull_encoding), m in zip(COMBOS, measured):
        wire_total = m["wire_down"] + m["wire_up"]
        payload_total = m["pull_payload"] + m["push_payload"]
        rows.append({
            **base, "encoding": update_encoding.value, "pull_encoding": pull_encoding.value, "status": "measured",
            "pull_sent_as": m["pull_encoding"], "pull_payload_bytes": m["pull_payload"],
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
        log(f"  [wire] {arch_id}: {rows[-len(COMBOS)]['wire_bytes_per_round']:,} bytes per client per round (float32)")
    for params in sizes:
        rows += measure_model(f"bench-flat-{params}", workdir, params, None)
        log(f"  [wire] bench-flat-{params}: {rows[-len(COMBOS)]['wire_bytes_per_round']:,} bytes per client per round (float32)")
    return {"rows": rows}
