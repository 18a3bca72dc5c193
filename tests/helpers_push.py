"""Small shared helpers for the fault, load and fuzz tests: gRPC calls, polling, logs, metrics.

Every connection to an aggregator goes through :func:`channel`, so a change of
transport (TLS, tokens) for these tests is one edit here.
"""
from __future__ import annotations

import json
import socket
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable, Mapping, TypeVar

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aggregator_service.config import AggregatorConfig
from aggregator_service.rounds import RoundConfig
from aggregator_service.server import RunningAggregator, start
from fedser.v1 import aggregator_pb2 as pb
from fedser.v1 import aggregator_pb2_grpc as pb_grpc
from model.serialization import bytes_to_arrays, iter_chunks, sha256_hex

T = TypeVar("T")

# Transport-level message size for test channels (model chunks are 1 MiB).
_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 8 << 20), ("grpc.max_send_message_length", 8 << 20)]


# -- servers ---------------------------------------------------------------
def start_in_process(checkpoint_dir: Path, *, max_workers: int = 64, **rounds: object) -> RunningAggregator:
    """A real aggregator in this process on a free 127.0.0.1 port (plaintext, like the `aggregator` fixture)."""
    config = AggregatorConfig(
        host="127.0.0.1", port=0, metrics_port=0, checkpoint_dir=checkpoint_dir, insecure=True,
        max_workers=max_workers, rounds=RoundConfig(**rounds),  # type: ignore[arg-type]
    )
    return start(config)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def channel(target: str) -> grpc.Channel:
    """A channel to an aggregator started by these tests (plaintext on 127.0.0.1)."""
    return grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)


def stub_for(ch: grpc.Channel) -> pb_grpc.AggregatorStub:
    return pb_grpc.AggregatorStub(ch)


# -- RPCs ------------------------------------------------------------------
def pull(stub: pb_grpc.AggregatorStub, client_id: str = "test-puller") -> tuple[pb.ModelHeader, dict[str, np.ndarray], bytes]:
    """The current global model: header, tensors and the exact bytes served."""
    responses = list(stub.PullModel(pb.PullModelRequest(client_id=client_id), timeout=30))
    header = responses[0].header
    payload = b"".join(r.chunk for r in responses[1:])
    assert len(payload) == header.total_bytes and sha256_hex(payload) == header.sha256
    return header, bytes_to_arrays(payload), payload


def update_header(client_id: str, round: int, n: int, payload: bytes, *, update_id: str | None = None,
                  total_bytes: int | None = None, sha256: str | None = None) -> pb.UpdateHeader:
    return pb.UpdateHeader(
        client_id=client_id, round=round, num_samples=n, update_id=update_id or uuid.uuid4().hex,
        total_bytes=len(payload) if total_bytes is None else total_bytes,
        sha256=sha256_hex(payload) if sha256 is None else sha256,
    )


def push_messages(header: pb.UpdateHeader, payload: bytes, chunk_bytes: int = 1 << 20) -> list[pb.PushUpdateRequest]:
    return [pb.PushUpdateRequest(header=header)] + [pb.PushUpdateRequest(chunk=c) for c in iter_chunks(payload, chunk_bytes)]


def push(stub: pb_grpc.AggregatorStub, client_id: str, round: int, n: int, payload: bytes, *,
         update_id: str | None = None, timeout: float = 60) -> pb.PushUpdateResponse:
    """One well-formed push: header, then the payload in chunks."""
    header = update_header(client_id, round, n, payload, update_id=update_id)
    return stub.PushUpdate(iter(push_messages(header, payload)), timeout=timeout)


def status(target: str) -> pb.GetStatusResponse:
    with channel(target) as ch:
        return stub_for(ch).GetStatus(pb.GetStatusRequest(), timeout=10)


def health(ch: grpc.Channel, service: str = "", timeout: float = 10) -> int:
    """The health status (health_pb2.HealthCheckResponse.SERVING == 1)."""
    return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout).status


SERVING = health_pb2.HealthCheckResponse.SERVING


# -- math ------------------------------------------------------------------
def weighted_average(updates: Iterable[tuple[int, Mapping[str, np.ndarray]]]) -> dict[str, np.ndarray]:
    """FedAvg computed independently: sum(n_k * w_k) / sum(n_k) in float64, cast to float32."""
    sums: dict[str, np.ndarray] = {}
    m = 0
    for n, arrays in updates:
        m += n
        for name, a in arrays.items():
            term = a.astype(np.float64) * float(n)
            sums[name] = sums[name] + term if name in sums else term
    return {name: (s / float(m)).astype(np.float32) for name, s in sums.items()}


def filled(arrays: Mapping[str, np.ndarray], value: float) -> dict[str, np.ndarray]:
    return {k: np.full_like(v, value) for k, v in arrays.items()}


# -- metrics ---------------------------------------------------------------
def updates_total(metrics: Mapping, status_label: str, reason: str = "") -> float:
    return metrics.get(("fedser_updates_total", (("reason", reason), ("status", status_label))), 0.0)


def rounds_completed(metrics: Mapping, closed_by: str) -> float:
    return metrics.get(("fedser_rounds_completed_total", (("closed_by", closed_by),)), 0.0)


# -- polling and logs ------------------------------------------------------
def wait_until(condition: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.05) -> T:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def log_events(path: Path) -> list[dict]:
    """The JSON-line events of a fedser log (other lines, e.g. warnings, are skipped)."""
    events = []
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return events
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:  # a line still being written
                pass
    return events


def events_named(path: Path, name: str, **fields: object) -> list[dict]:
    return [e for e in log_events(path) if e.get("event") == name and all(e.get(k) == v for k, v in fields.items())]
