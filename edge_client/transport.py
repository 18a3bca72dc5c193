"""gRPC calls to the aggregator, with chunking, checksums and retry on unreachable servers."""
from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

import grpc
import numpy as np

from edge_client.backoff import BackoffPolicy
from edge_client.errors import ClientError
from fedser.v1 import aggregator_pb2 as pb
from fedser.v1.chunks import ChunkStub, chunk_of
from model.eventlog import log_event
from model.encodings import Encoding, apply_delta, from_proto, to_proto
from model.serialization import (
    DEFAULT_CHUNK_BYTES, MalformedTensorsError, bytes_to_arrays, data_xxh3, sha256_hex, xxh3_hex,
)

log = logging.getLogger("fedser.client")

T = TypeVar("T")

# Codes that mean "try again later"; anything else is an answer.
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
MESSAGE_LIMIT = 8 << 20
# A model this large is refused before any of it is buffered (a lying header must not cost the device memory).
MAX_MODEL_BYTES = 4 << 30
# Pull deltas this client can apply (sent as PullModelRequest.accept_encodings).
DELTA_ENCODINGS = (to_proto(Encoding.FLOAT16_DELTA), to_proto(Encoding.INT8_DELTA))


class Stopped(Exception):
    """The client was asked to stop while waiting or retrying."""


@dataclass(frozen=True)
class ChannelSecurity:
    """TLS material (PEM bytes) and bearer token; all empty means plaintext without a token."""

    root_ca: bytes | None = None
    cert: bytes | None = None
    key: bytes | None = None
    token: str | None = None
    server_name: str | None = None


@dataclass(frozen=True)
class PulledModel:
    header: pb.ModelHeader
    arrays: dict[str, np.ndarray] | None  # None when the payload was omitted (not ready yet)


class AggregatorClient:
    """One channel to the aggregator; every call has a deadline."""

    def __init__(self, target: str, stop: threading.Event, backoff: BackoffPolicy, rpc_timeout_s: float = 120.0,
                 rng: random.Random | None = None, security: ChannelSecurity | None = None) -> None:
        self.target = target
        self._stop = stop
        self._backoff = backoff
        self._timeout = rpc_timeout_s
        self._rng = rng or random.Random()
        security = security or ChannelSecurity()
        self._options = [
            ("grpc.max_receive_message_length", MESSAGE_LIMIT),
            ("grpc.max_send_message_length", MESSAGE_LIMIT),
        ]
        if security.server_name:
            self._options.append(("grpc.ssl_target_name_override", security.server_name))
        self._credentials = None if security.root_ca is None else grpc.ssl_channel_credentials(
            root_certificates=security.root_ca, private_key=security.key, certificate_chain=security.cert
        )
        self._channel = self._open_channel()
        # The token rides on every call; it is never logged.
        self._metadata = (("authorization", f"Bearer {security.token}"),) if security.token else ()
        self._stub = ChunkStub(self._channel)
        # Calls that had to be retried because the aggregator was unreachable: a
        # change tells the session the aggregator may have restarted.
        self.outages = 0

    def _open_channel(self, extra: list[tuple[str, int]] | None = None) -> grpc.Channel:
        options = self._options + (extra or [])
        if self._credentials is None:
            return grpc.insecure_channel(self.target, options=options)
        return grpc.secure_channel(self.target, self._credentials, options=options)

    def close(self) -> None:
        self._channel.close()

    def with_retry(self, what: str, call: Callable[[], T]) -> T:
        """Run ``call``; while the aggregator is unreachable, retry with jittered backoff until stopped."""
        delays = self._backoff.delays(self._rng)
        attempt = 0
        while True:
            if self._stop.is_set():
                raise Stopped()
            try:
                return call()
            except grpc.RpcError as exc:
                if exc.code() not in RETRYABLE:
                    raise
                attempt += 1
                if attempt == 1:
                    self.outages += 1
                delay = next(delays)
                log_event(log, "retrying", logging.WARNING, rpc=what, attempt=attempt, code=exc.code().name,
                          delay_s=round(delay, 2))
                if self._stop.wait(delay):
                    raise Stopped() from None

    def pull(self, client_id: str, min_version: int = 0, wait_s: float = 0.0,
             have: PulledModel | None = None) -> PulledModel:
        """The global model (or, when min_version is not reached in wait_s, only its header).

        With ``have`` (the model this client holds) an aggregator that compresses pulls
        may send only the delta to the next version; the model is rebuilt from it and
        checked against the aggregator's digest, and pulled whole if that fails.
        """
        request = pb.PullModelRequest(client_id=client_id, min_version=min_version, wait_seconds=wait_s)
        if have is not None and have.arrays is not None:
            request.have_version = have.header.model_version
            request.accept_encodings.extend(DELTA_ENCODINGS)
        header, payload = self._pull_payload(request, wait_s)
        if payload is None:
            return PulledModel(header, None)
        encoding = from_proto(header.encoding)
        try:
            arrays = bytes_to_arrays(payload)
        except MalformedTensorsError as exc:
            raise ClientError(f"global model is not valid safetensors: {exc}") from None
        if encoding is None or not encoding.is_delta:
            return PulledModel(header, arrays)
        if have is None or have.arrays is None or header.base_version != have.header.model_version:
            raise ClientError("aggregator sent a delta from a version this client does not hold")
        try:
            rebuilt = apply_delta(have.arrays, arrays, encoding)
        except (KeyError, IndexError, ValueError):
            rebuilt = None
        if rebuilt is not None and data_xxh3(rebuilt) == header.model_data_xxh3_128:
            return PulledModel(header, rebuilt)
        log_event(log, "delta_pull_mismatch", logging.WARNING, model_version=header.model_version,
                  detail="the rebuilt model does not match the aggregator's digest; pulling it whole")
        return self.pull(client_id, min_version, 0.0)

    def _pull_payload(self, request: pb.PullModelRequest, wait_s: float) -> tuple[pb.ModelHeader, bytes | None]:
        stream = self._stub.PullModel(request, timeout=self._timeout + wait_s, metadata=self._metadata)
        first = next(stream, None)
        if not isinstance(first, pb.PullModelResponse) or first.WhichOneof("payload") != "header":
            raise ClientError("aggregator sent a model stream without a header")
        header = first.header
        if header.payload_omitted:
            return header, None
        if header.total_bytes > MAX_MODEL_BYTES:
            raise ClientError(f"aggregator announced a model of {header.total_bytes} bytes, over the client's limit")
        payload = bytearray(header.total_bytes)
        filled = 0
        for msg in stream:
            chunk = chunk_of(msg)
            if chunk is None:
                raise ClientError("aggregator sent something other than model bytes after the header")
            if filled + len(chunk) > header.total_bytes:
                raise ClientError("aggregator sent more model bytes than its header declared")
            payload[filled : filled + len(chunk)] = chunk
            filled += len(chunk)
        if filled != header.total_bytes or not _checksum_matches(payload, header):
            raise ClientError("global model arrived damaged (size or checksum mismatch)")
        return header, bytes(payload)

    def push(self, header: pb.UpdateHeader, payload: bytes) -> pb.PushUpdateResponse:
        """Stream the header, then the payload in chunks, on a connection of its own.

        gRPC keeps a connection's read buffers as large as the biggest messages it
        received until the connection closes: about a chunk (1 MiB) per connection on
        the aggregator, for every device that pushed and then only long-polls. A
        connection per push, closed when the push ends, returns that memory at once
        (200 clients: ~180 MiB less at the aggregator; one handshake per round here).
        """

        def messages() -> Iterator[pb.PushUpdateRequest | memoryview]:
            yield pb.PushUpdateRequest(header=header)
            view = memoryview(payload)
            for start in range(0, len(view), DEFAULT_CHUNK_BYTES):
                yield view[start : start + DEFAULT_CHUNK_BYTES]  # serialized by fedser.v1.chunks, one copy

        # Its own subchannel pool: grpc would otherwise hand back the long-poll's connection.
        with self._open_channel([("grpc.use_local_subchannel_pool", 1)]) as channel:
            return ChunkStub(channel).PushUpdate(messages(), timeout=self._timeout, metadata=self._metadata)

    def report(self, request: pb.ReportEvaluationRequest) -> pb.ReportEvaluationResponse:
        return self._stub.ReportEvaluation(request, timeout=self._timeout, metadata=self._metadata)

    def status(self) -> pb.GetStatusResponse:
        return self._stub.GetStatus(pb.GetStatusRequest(), timeout=self._timeout, metadata=self._metadata)


def _checksum_matches(payload: bytearray, header: pb.ModelHeader) -> bool:
    """The cheap XXH3-128 when the aggregator sent it (older ones send only SHA-256)."""
    if header.xxh3_128:
        return xxh3_hex(payload) == header.xxh3_128
    return sha256_hex(payload) == header.sha256
