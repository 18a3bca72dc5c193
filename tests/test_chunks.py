"""The chunk codec (fedser.v1.chunks) against protobuf itself, and its use on a real server.

Its fast path must give the same message as protobuf for every input, and
write exactly the bytes protobuf writes; peers with the generated stubs must
interoperate with peers using the codec.
"""
from __future__ import annotations

import grpc
import numpy as np
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from fedser.v1 import aggregator_pb2 as pb
from fedser.v1.chunks import (
    ChunkStub,
    chunk_of,
    decode_chunk,
    decode_pull_response,
    decode_push_request,
    encode_chunk,
    encode_message,
)
from model.serialization import arrays_to_bytes, bytes_to_arrays, sha256_hex


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16_383, 16_384, 1 << 20, (1 << 20) + 3])
def test_encoded_chunk_is_what_protobuf_writes(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert encode_chunk(data) == pb.PushUpdateRequest(chunk=data).SerializeToString()
    assert encode_chunk(memoryview(data)) == pb.PullModelResponse(chunk=data).SerializeToString()
    back = decode_chunk(encode_chunk(data))
    assert back is not None and bytes(back) == data


def test_headers_and_odd_messages_go_through_protobuf() -> None:
    header = pb.PushUpdateRequest(header=pb.UpdateHeader(client_id="a", round=3, num_samples=7))
    decoded = decode_push_request(header.SerializeToString())
    assert isinstance(decoded, pb.PushUpdateRequest) and decoded.header.num_samples == 7
    assert chunk_of(decoded) is None
    # Two chunk fields: protobuf's last-one-wins, not the fast path.
    twice = encode_chunk(b"abc") + encode_chunk(b"de")
    assert decode_chunk(twice) is None
    assert bytes(chunk_of(decode_push_request(twice))) == b"de"
    # An empty message has no payload at all.
    assert chunk_of(decode_pull_response(b"")) is None
    # A truncated chunk is an error from protobuf, as before.
    with pytest.raises(DecodeError):
        decode_push_request(encode_chunk(b"abcdef")[:-1])
    assert encode_message(header) == header.SerializeToString()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_decode_as_protobuf_does(data: bytes) -> None:
    try:
        reference = pb.PushUpdateRequest.FromString(data)
    except DecodeError:
        with pytest.raises(DecodeError):
            decode_push_request(data)
        return
    decoded = decode_push_request(data)
    expected = reference.chunk if reference.WhichOneof("payload") == "chunk" else None
    got = chunk_of(decoded)
    assert (None if got is None else bytes(got)) == expected
    if expected is None:
        assert isinstance(decoded, pb.PushUpdateRequest) and decoded == reference


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=4))
def test_chunk_with_overlong_length_varint_decodes_as_protobuf_does(data: bytes, extra: int) -> None:
    # Protobuf accepts non-minimal varints (up to 10 bytes); so must the fast path.
    n = len(data)
    groups = []
    while True:
        groups.append(n & 0x7F)
        n >>= 7
        if not n:
            break
    groups += [0] * extra
    varint = bytes([g | 0x80 for g in groups[:-1]] + [groups[-1]])
    message = b"\x12" + varint + data
    assert pb.PushUpdateRequest.FromString(message).chunk == data
    got = decode_chunk(message)
    assert got is not None and bytes(got) == data


def test_generated_stub_and_chunk_stub_both_talk_to_the_server(aggregator, stub) -> None:
    """The server registers the codec; clients of either kind pull the same bytes and push accepted updates."""
    port = aggregator.port
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        raw = ChunkStub(ch)
        responses = list(raw.PullModel(pb.PullModelRequest(client_id="raw"), timeout=30))
        header = responses[0].header
        payload_raw = b"".join(bytes(chunk_of(r)) for r in responses[1:])
        assert all(isinstance(r, memoryview) for r in responses[1:])
    generated = list(stub.PullModel(pb.PullModelRequest(client_id="gen"), timeout=30))
    payload_gen = b"".join(r.chunk for r in generated[1:])
    assert payload_raw == payload_gen and len(payload_raw) == header.total_bytes
    assert sha256_hex(payload_raw) == header.sha256

    base = bytes_to_arrays(payload_raw)
    updates = {"raw-client": (7, 1.0), "gen-client": (3, 3.0)}
    for client_id, (n, value) in updates.items():
        body = arrays_to_bytes({k: np.full_like(v, value) for k, v in base.items()})
        h = pb.UpdateHeader(client_id=client_id, round=header.round, num_samples=n, update_id=f"u-{client_id}",
                            total_bytes=len(body), sha256=sha256_hex(body), base_version=header.model_version,
                            encoding=pb.UPDATE_ENCODING_FLOAT32)
        if client_id == "raw-client":
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                view = memoryview(body)
                msgs = [pb.PushUpdateRequest(header=h)] + [view[i : i + 4096] for i in range(0, len(view), 4096)]
                reply = ChunkStub(ch).PushUpdate(iter(msgs), timeout=30)
        else:
            msgs = [pb.PushUpdateRequest(header=h)] + [
                pb.PushUpdateRequest(chunk=body[i : i + 5000]) for i in range(0, len(body), 5000)]
            reply = stub.PushUpdate(iter(msgs), timeout=30)
        assert reply.accepted and not reply.duplicate
    # Both updates went into the average: (7 * 1 + 3 * 3) / 10 = 1.6 in every element.
    after = list(stub.PullModel(
        pb.PullModelRequest(client_id="gen", min_version=header.model_version + 1, wait_seconds=10), timeout=30))
    assert after[0].header.model_version == header.model_version + 1
    new = bytes_to_arrays(b"".join(r.chunk for r in after[1:]))
    for name, tensor in new.items():
        np.testing.assert_array_equal(tensor, np.full_like(tensor, np.float32(1.6)), err_msg=name)
