"""Section 5: bytes on the wire per round per client, for each update encoding.

Measured (the protocol's only encoding today, UPDATE_ENCODING_FLOAT32): one
client pulls the global model and pushes an update through a byte-counting TCP
relay in front of a real aggregator process; the relay counts every TCP payload
byte each way (HTTP/2 and gRPC framing, headers, flow-control and ping frames,
connection set-up; not IP/TCP headers). ReportEvaluation, which a production
client also sends each round, is a few hundred bytes and is not included.

Projected, not measured (not implemented yet): the same push encoded as
float16, or as int8 deltas from the global model with one float32 scale per
tensor. Their sizes are exact sizes of safetensors payloads with the same
tensor names and shapes in those dtypes (plus one ``<name>.scale`` scalar per
tensor for int8); the pull stays float32.
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
from model.serialization import arrays_to_bytes, bytes_to_arrays, iter_chunks, sha256_hex

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


def projected_push_bytes(arrays: dict[str, np.ndarray]) -> dict[str, int]:
    """Exact safetensors sizes of the update in the projected encodings (zeros: only sizes matter)."""
    fp16 = {k: np.zeros(v.shape, np.float16) for k, v in arrays.items()}
    int8: dict[str, np.ndarray] = {}
    for k, v in arrays.items():
        int8[k] = np.zeros(v.shape, np.int8)
        int8[k + ".scale"] = np.zeros((), np.float32)
    return {"fp16": len(arrays_to_bytes(fp16)), "int8": len(arrays_to_bytes(int8))}


def one_client_round(target_port: int) -> dict[str, object]:
    """Pull + push of one client through the relay; returns payload and wire byte counts."""
    relay = CountingRelay(target_port)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{relay.port}", options=CHANNEL_OPTIONS) as ch:
            stub = pb_grpc.AggregatorStub(ch)
            responses = list(stub.PullModel(pb.PullModelRequest(client_id="wire-0"), timeout=600))
            header = responses[0].header
            pulled = b"".join(r.chunk for r in responses[1:])
            if len(pulled) != header.total_bytes or sha256_hex(pulled) != header.sha256:
                raise RuntimeError("pulled model damaged")
            arrays = bytes_to_arrays(pulled)
            update = {k: (v + np.float32(1e-3)).astype(v.dtype) for k, v in arrays.items()}
            payload = arrays_to_bytes(update)
            h = pb.UpdateHeader(client_id="wire-0", round=header.round, num_samples=10, update_id=uuid.uuid4().hex,
                                total_bytes=len(payload), sha256=sha256_hex(payload),
                                base_version=header.model_version, encoding=pb.UPDATE_ENCODING_FLOAT32)
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
    args = ["--clients-per-round", "1", "--min-clients", "1", "--rounds", "1", "--round-timeout", "600"]
    if architecture is not None:
        args += ["--architecture", architecture]
    agg = start_bench_aggregator(params, d, args)
    try:
        m = one_client_round(agg.port)
    finally:
        agg.stop()
        shutil.rmtree(d, ignore_errors=True)
    arrays = m.pop("arrays")
    n_params = int(sum(v.size for v in arrays.values()))
    proj = projected_push_bytes(arrays)
    base = {"model": label, "params": n_params, "tensors": len(arrays), "pull_payload_bytes": m["pull_payload"]}
    wire_total = m["wire_down"] + m["wire_up"]
    payload_total = m["pull_payload"] + m["push_payload"]
    rows = [{
        **base, "encoding": "float32", "status": "measured",
        "push_payload_bytes": m["push_payload"], "payload_bytes_per_round": payload_total,
        "wire_down_bytes": m["wire_down"], "wire_up_bytes": m["wire_up"], "wire_bytes_per_round": wire_total,
        "framing_overhead": round(wire_total / payload_total - 1, 5),
        "push_vs_float32": 1.0,
    }]
    for enc, label_enc in (("fp16", "float16"), ("int8", "int8 delta + per-tensor scale")):
        rows.append({
            **base, "encoding": label_enc, "status": "projection (not implemented yet)",
            "push_payload_bytes": proj[enc], "payload_bytes_per_round": m["pull_payload"] + proj[enc],
            "wire_down_bytes": None, "wire_up_bytes": None, "wire_bytes_per_round": None, "framing_overhead": None,
            "push_vs_float32": round(proj[enc] / m["push_payload"], 4),
        })
    return rows


def run(workdir: Path, sizes: list[int], architectures: list[str] | None = None, log=print) -> dict[str, object]:
    """Every registered architecture (or ``architectures``), then the synthetic ``sizes``."""
    from model.network import ARCHITECTURES

    if architectures is None:
        architectures = [a for a in ARCHITECTURES if not a.startswith("bench-")]
    rows: list[dict[str, object]] = []
    for arch_id in architectures:
        rows += measure_model(arch_id, workdir, None, arch_id)
        log(f"  [wire] {arch_id}: {rows[-3]['wire_bytes_per_round']:,} bytes per client per round (float32)")
    for params in sizes:
        rows += measure_model(f"bench-flat-{params}", workdir, params, None)
        log(f"  [wire] bench-flat-{params}: {rows[-3]['wire_bytes_per_round']:,} bytes per client per round (float32)")
    return {"rows": rows}
