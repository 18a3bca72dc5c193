"""The edge client's transport against a recording gRPC server on 127.0.0.1.

It checks what the aggregator itself cannot see from one call: which
connection each call used, and the chunk messages the client wrote.
"""
from __future__ import annotations

import threading
from concurrent import futures
from typing import Iterator

import grpc
import numpy as np
import pytest

from edge_client.backoff import BackoffPolicy
from edge_client.errors import ClientError
from edge_client.transport import AggregatorClient
from fedser.v1 import aggregator_pb2 as pb
from fedser.v1.chunks import add_servicer, chunk_of
from model.serialization import DEFAULT_CHUNK_BYTES, arrays_to_bytes, xxh3_hex

MODEL = arrays_to_bytes({"w": np.arange(600_000, dtype=np.float32)})  # 2.4 MB: three chunks


class RecordingAggregator:
    """PullModel serves MODEL (or a lie about its size); PushUpdate reassembles the payload; peers are recorded."""

    def __init__(self, declared_size: int | None = None) -> None:
        self.pull_peers: list[str] = []
        self.push_peers: list[str] = []
        self.pushed: list[bytes] = []
        self.chunk_sizes: list[int] = []
        self.declared_size = declared_size
        self._lock = threading.Lock()

    def PullModel(self, request: pb.PullModelRequest, context: grpc.ServicerContext) -> Iterator[object]:
        with self._lock:
            self.pull_peers.append(context.peer())
        size = self.declared_size or len(MODEL)
        yield pb.PullModelResponse(header=pb.ModelHeader(round=1, model_version=0, total_bytes=size,
                                                         xxh3_128=xxh3_hex(MODEL)))
        view = memoryview(MODEL)
        for start in range(0, len(view), DEFAULT_CHUNK_BYTES):
            yield bytes(view[start : start + DEFAULT_CHUNK_BYTES])

    def PushUpdate(self, request_iterator: Iterator[object], context: grpc.ServicerContext) -> pb.PushUpdateResponse:
        messages = iter(request_iterator)
        header = next(messages)
        assert isinstance(header, pb.PushUpdateRequest) and header.WhichOneof("payload") == "header"
        body = bytearray()
        for msg in messages:
            chunk = chunk_of(msg)
            assert isinstance(chunk, memoryview)  # the codec's fast path: no protobuf copy
            with self._lock:
                self.chunk_sizes.append(len(chunk))
            body += chunk
        with self._lock:
            self.push_peers.append(context.peer())
            self.pushed.append(bytes(body))
        return pb.PushUpdateResponse(accepted=True, round=header.header.round)

    def ReportEvaluation(self, request, context):  # pragma: no cover - not called here
        return pb.ReportEvaluationResponse()

    def GetStatus(self, request, context):  # pragma: no cover - not called here
        return pb.GetStatusResponse()


@pytest.fixture
def recording() -> Iterator[tuple[RecordingAggregator, str]]:
    servicer = RecordingAggregator()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8),
                         options=[("grpc.max_receive_message_length", 8 << 20)])
    add_servicer(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(0).wait()


def test_pulls_share_one_connection_and_each_push_gets_its_own(recording) -> None:
    servicer, target = recording
    client = AggregatorClient(target, threading.Event(), BackoffPolicy(max_s=0.1), rpc_timeout_s=30)
    try:
        for _ in range(2):
            pulled = client.pull("dev-1")
            np.testing.assert_array_equal(pulled.arrays["w"], np.arange(600_000, dtype=np.float32))
        payloads = [arrays_to_bytes({"w": np.full(300_000, k, dtype=np.float32)}) for k in (1, 2)]
        for payload in payloads:
            reply = client.push(pb.UpdateHeader(client_id="dev-1", round=1, num_samples=3), payload)
            assert reply.accepted
        pulled = client.pull("dev-1")
    finally:
        client.close()
    assert servicer.pushed == payloads
    # 1.2 MB each: one full chunk and the rest.
    assert servicer.chunk_sizes == [DEFAULT_CHUNK_BYTES, len(payloads[0]) - DEFAULT_CHUNK_BYTES] * 2
    # The long-lived connection carries every pull, before and after the pushes...
    assert len(set(servicer.pull_peers)) == 1
    # ...and each push came from a connection of its own (another client port), since closed.
    assert len(set(servicer.push_peers)) == 2
    assert not set(servicer.push_peers) & set(servicer.pull_peers)


def test_a_model_larger_than_announced_is_refused() -> None:
    servicer = RecordingAggregator(declared_size=len(MODEL) - 1)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    add_servicer(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    client = AggregatorClient(f"127.0.0.1:{port}", threading.Event(), BackoffPolicy(max_s=0.1), rpc_timeout_s=30)
    try:
        with pytest.raises(ClientError, match="more model bytes than its header declared"):
            client.pull("dev-1")
    finally:
        client.close()
        server.stop(0).wait()
