"""Chunk messages of PullModel and PushUpdate, encoded and decoded without protobuf's copies.

A chunk message is one length-delimited field, ``chunk`` (field 2) of the
``payload`` oneof: the bytes 0x12, a varint length, then the data. Through the
generated code every chunk is copied twice more than the bytes themselves
need (into protobuf's arena and out again as a ``bytes`` attribute on the
way in; into a message and out of ``SerializeToString`` on the way out);
for a 100 MB update that is most of the aggregator's CPU besides the
arithmetic. Here a chunk is written with one join and read as a
``memoryview`` of the bytes gRPC received. Anything that is not exactly one
chunk field (headers, unknown fields, repeated fields) goes through protobuf,
so both paths give the same message for every input (fuzz-tested).

The wire format is unchanged: peers using the generated stubs interoperate.
"""
from __future__ import annotations

from typing import Any, Callable, Union

import grpc

from fedser.v1 import aggregator_pb2 as pb

CHUNK_TAG = 0x12  # field 2, wire type 2 (length-delimited), in both PushUpdateRequest and PullModelResponse
_MAX_VARINT_BYTES = 10

Chunk = Union[bytes, bytearray, memoryview]
PushMessage = Union[pb.PushUpdateRequest, memoryview]
PullMessage = Union[pb.PullModelResponse, memoryview]

SERVICE = "fedser.v1.Aggregator"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def encode_chunk(data: Chunk) -> bytes:
    """The serialized chunk message for ``data``: byte for byte what protobuf writes, with one copy."""
    view = memoryview(data).cast("B")
    return b"".join((bytes((CHUNK_TAG,)), _varint(len(view)), view))


def decode_chunk(data: bytes) -> memoryview | None:
    """The chunk of a message that is exactly one chunk field, as a view of ``data``; None otherwise."""
    if len(data) < 2 or data[0] != CHUNK_TAG:
        return None
    length = 0
    shift = 0
    pos = 1
    limit = min(len(data), 1 + _MAX_VARINT_BYTES)
    while pos < limit:
        byte = data[pos]
        length |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            break
        shift += 7
    else:
        return None  # unterminated or overlong varint: let protobuf say what is wrong
    if pos + length != len(data):
        return None
    return memoryview(data)[pos:]


def decode_push_request(data: bytes) -> PushMessage:
    """A PushUpdateRequest: a chunk as a memoryview, anything else as the protobuf message."""
    chunk = decode_chunk(data)
    return chunk if chunk is not None else pb.PushUpdateRequest.FromString(data)


def decode_pull_response(data: bytes) -> PullMessage:
    """A PullModelResponse: a chunk as a memoryview, anything else as the protobuf message."""
    chunk = decode_chunk(data)
    return chunk if chunk is not None else pb.PullModelResponse.FromString(data)


def encode_message(message: Any) -> bytes:
    """Serialize a protobuf message, or a raw chunk (bytes-like) as a chunk message."""
    if isinstance(message, (bytes, bytearray, memoryview)):
        return encode_chunk(message)
    return message.SerializeToString()


def chunk_of(message: PushMessage | PullMessage) -> memoryview | bytes | None:
    """The chunk a decoded message carries, or None when it carries something else."""
    if isinstance(message, memoryview):
        return message
    return message.chunk if message.WhichOneof("payload") == "chunk" else None


def add_servicer(servicer: Any, server: grpc.Server) -> None:
    """Register a fedser.v1.Aggregator servicer with the chunk codecs on its two streaming RPCs."""
    handlers = {
        "PullModel": grpc.unary_stream_rpc_method_handler(
            servicer.PullModel,
            request_deserializer=pb.PullModelRequest.FromString,
            response_serializer=encode_message,
        ),
        "PushUpdate": grpc.stream_unary_rpc_method_handler(
            servicer.PushUpdate,
            request_deserializer=decode_push_request,
            response_serializer=pb.PushUpdateResponse.SerializeToString,
        ),
        "ReportEvaluation": grpc.unary_unary_rpc_method_handler(
            servicer.ReportEvaluation,
            request_deserializer=pb.ReportEvaluationRequest.FromString,
            response_serializer=pb.ReportEvaluationResponse.SerializeToString,
        ),
        "GetStatus": grpc.unary_unary_rpc_method_handler(
            servicer.GetStatus,
            request_deserializer=pb.GetStatusRequest.FromString,
            response_serializer=pb.GetStatusResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)


class ChunkStub:
    """The generated AggregatorStub's four calls, with the chunk codecs on PullModel and PushUpdate.

    PullModel yields the header message, then memoryviews; PushUpdate takes the
    header message, then bytes-like chunks.
    """

    def __init__(self, channel: grpc.Channel) -> None:
        self.PullModel: Callable[..., Any] = channel.unary_stream(
            f"/{SERVICE}/PullModel",
            request_serializer=pb.PullModelRequest.SerializeToString,
            response_deserializer=decode_pull_response,
            _registered_method=True,
        )
        self.PushUpdate: Callable[..., Any] = channel.stream_unary(
            f"/{SERVICE}/PushUpdate",
            request_serializer=encode_message,
            response_deserializer=pb.PushUpdateResponse.FromString,
            _registered_method=True,
        )
        self.ReportEvaluation: Callable[..., Any] = channel.unary_unary(
            f"/{SERVICE}/ReportEvaluation",
            request_serializer=pb.ReportEvaluationRequest.SerializeToString,
            response_deserializer=pb.ReportEvaluationResponse.FromString,
            _registered_method=True,
        )
        self.GetStatus: Callable[..., Any] = channel.unary_unary(
            f"/{SERVICE}/GetStatus",
            request_serializer=pb.GetStatusRequest.SerializeToString,
            response_deserializer=pb.GetStatusResponse.FromString,
            _registered_method=True,
        )
