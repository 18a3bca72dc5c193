"""Fuzzing the push path (issue 4): malformed and adversarial PushUpdate streams against a running server.

One in-process aggregator serves the whole module (real gRPC over 127.0.0.1).
Before the fuzzing starts a "resident" client has one accepted update in the
open round 1 (so ALREADY_EXISTS can be provoked); clients_per_round is large,
so no round ever closes. Every generated push is malformed by construction.

Properties checked after every example:
- the push is refused with INVALID_ARGUMENT, FAILED_PRECONDITION or
  ALREADY_EXISTS and a non-empty message (never UNKNOWN, INTERNAL, or a
  transport-level failure), and the refusal is counted once in
  fedser_updates_total{status="rejected"};
- the server is alive: health answers SERVING and a full pull works;
- nothing changed: the global model bytes (pull SHA-256), the checkpoint
  folder's files (names and bytes), the open round and its one accepted update.
"""
from __future__ import annotations

import hashlib
import json
import re
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from aggregator_service.server import RunningAggregator
from fedser.v1 import aggregator_pb2 as pb
from fedser.v1 import aggregator_pb2_grpc as pb_grpc
from model.serialization import arrays_to_bytes, iter_chunks, sha256_hex
from tests.conftest import scrape
from tests.helpers_push import SERVING, channel, health, pull, push, start_in_process, stub_for, update_header

ALLOWED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS}
RESIDENT = "resident"
RESIDENT_UPDATE = "resident-update-0001"
MAX_SAMPLES = 10_000_000
ID_RE = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")
INT64_MIN, INT64_MAX, UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@dataclass
class FuzzTarget:
    agg: RunningAggregator
    stub: pb_grpc.AggregatorStub
    channel: grpc.Channel
    base: dict[str, np.ndarray]
    payload: bytes
    sha256: str
    folder: Path
    files: dict[str, str]

    @property
    def size_limit(self) -> int:
        return len(self.payload) + (64 << 10)


def folder_digest(folder: Path) -> dict[str, str]:
    """Every file in the checkpoint folder (temporary ones too), by name, with the SHA-256 of its bytes."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzTarget]:
    folder = tmp_path_factory.mktemp("fuzz") / "ckpt"
    agg = start_in_process(folder, clients_per_round=1000, min_clients=1, round_timeout_s=10**7)
    ch = channel(f"127.0.0.1:{agg.port}")
    stub = stub_for(ch)
    header, base, payload = pull(stub)
    reply = push(stub, RESIDENT, 1, 5, payload, update_id=RESIDENT_UPDATE)
    assert reply.accepted and reply.accepted_in_round == 1
    try:
        yield FuzzTarget(agg, stub, ch, base, payload, header.sha256, folder, folder_digest(folder))
    finally:
        ch.close()
        agg.stop(grace_s=1)


def rejected_total(metrics_port: int) -> float:
    return sum(v for (name, labels), v in scrape(metrics_port).items()
               if name == "fedser_updates_total" and ("status", "rejected") in labels)


def assert_refused(t: FuzzTarget, messages: list[pb.PushUpdateRequest]) -> grpc.RpcError:
    """Send one push; it must be refused cleanly, counted, and leave the server serving and unchanged."""
    before = rejected_total(t.agg.metrics_port)
    with pytest.raises(grpc.RpcError) as err:
        t.stub.PushUpdate(iter(messages), timeout=30)
    code, details = err.value.code(), err.value.details()
    assert code in ALLOWED, (code, details)
    assert details and details.strip(), code
    assert rejected_total(t.agg.metrics_port) == before + 1
    assert_intact(t)
    return err.value


def assert_intact(t: FuzzTarget) -> None:
    assert health(t.channel) == SERVING
    assert health(t.channel, "fedser.v1.Aggregator") == SERVING
    header, _, payload = pull(t.stub, client_id="fuzz-checker")
    assert (header.round, header.model_version) == (1, 0)
    assert header.sha256 == t.sha256 and sha256_hex(payload) == t.sha256
    assert folder_digest(t.folder) == t.files
    st_ = t.agg.manager.status()
    assert (st_.round, st_.model_version, st_.accepted, st_.finished) == (1, 0, 1, False)


def fresh_ids() -> tuple[str, str]:
    return f"fuzz-{uuid.uuid4().hex[:12]}", uuid.uuid4().hex


def header_msg(**fields) -> pb.PushUpdateRequest:
    client_id, update_id = fresh_ids()
    defaults = dict(client_id=client_id, round=1, num_samples=10, update_id=update_id)
    return pb.PushUpdateRequest(header=pb.UpdateHeader(**{**defaults, **fields}))


def chunk_msgs(data: bytes, size: int) -> list[pb.PushUpdateRequest]:
    return [pb.PushUpdateRequest(chunk=c) for c in iter_chunks(data, size)]


chunk_sizes = st.sampled_from([1 << 20, 65536, 7919])


# -- random bytes, truncations, lying and huge headers ------------------------
@FUZZ
@given(data=st.binary(max_size=20000), chunk=st.integers(1, 8192), honest_sha=st.booleans())
def test_random_bytes_as_chunks(target: FuzzTarget, data: bytes, chunk: int, honest_sha: bool) -> None:
    sha = sha256_hex(data) if honest_sha else hashlib.sha256(b"other" + data).hexdigest()
    err = assert_refused(target, [header_msg(total_bytes=len(data), sha256=sha), *chunk_msgs(data, chunk)])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


@FUZZ
@given(fraction=st.floats(0.0, 1.0, exclude_max=True), honest=st.booleans(), chunk=chunk_sizes)
def test_truncated_safetensors(target: FuzzTarget, fraction: float, honest: bool, chunk: int) -> None:
    """A prefix of a valid update: declared as such (not parseable), or declared as the whole (too short)."""
    cut = target.payload[: int(len(target.payload) * fraction)]
    declared = cut if honest else target.payload
    header = header_msg(total_bytes=len(declared), sha256=sha256_hex(declared))
    err = assert_refused(target, [header, *chunk_msgs(cut, chunk)])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


@FUZZ
@given(delta=st.integers(-(1 << 21), 1 << 21), sha=st.one_of(st.none(), st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
                                                          st.text(max_size=80)),
       chunk=chunk_sizes)
def test_lying_headers(target: FuzzTarget, delta: int, sha: str | None, chunk: int) -> None:
    """A valid update under a header whose total_bytes and/or sha256 do not match it."""
    true_sha = sha256_hex(target.payload)
    declared_sha = true_sha if sha is None else sha
    assume(delta != 0 or declared_sha != true_sha)
    total = max(0, len(target.payload) + delta)
    err = assert_refused(target, [header_msg(total_bytes=total, sha256=declared_sha),
                                  *chunk_msgs(target.payload, chunk)])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


@FUZZ
@given(total=st.one_of(st.sampled_from([UINT64_MAX, 2**63, 2**32]), st.integers(1_401_297, UINT64_MAX)),
       send=st.integers(0, 3))
def test_huge_declared_sizes(target: FuzzTarget, total: int, send: int) -> None:
    assume(total > target.size_limit)
    messages = [header_msg(total_bytes=total, sha256="a" * 64), *chunk_msgs(target.payload, 1 << 20)[:send]]
    err = assert_refused(target, messages)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "exceeds the limit" in err.details()


@FUZZ
@given(n=st.one_of(st.sampled_from([INT64_MIN, INT64_MIN + 1, -1, 0, MAX_SAMPLES + 1, INT64_MAX]),
                   st.integers(INT64_MIN, 0), st.integers(MAX_SAMPLES + 1, INT64_MAX)))
def test_num_samples_out_of_bounds(target: FuzzTarget, n: int) -> None:
    """Negative, zero and enormous n_k (int64 extremes) with an otherwise valid update."""
    header = header_msg(num_samples=n, total_bytes=len(target.payload), sha256=target.sha256)
    err = assert_refused(target, [header, *chunk_msgs(target.payload, 1 << 20)])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "num_samples" in err.details()


# -- tensors that do not match the model ---------------------------------------
tensor_names = st.text(min_size=1, max_size=64).filter(lambda s: s != "__metadata__")


@FUZZ
@given(data=st.data(), change=st.sampled_from(["rename", "add", "drop", "shape", "dtype"]))
def test_unknown_or_mismatched_tensors(target: FuzzTarget, data: st.DataObject, change: str) -> None:
    arrays = dict(target.base)
    victim = data.draw(st.sampled_from(sorted(arrays)))
    if change in ("rename", "add"):
        name = data.draw(tensor_names)
        assume(name not in arrays)
        arrays[name] = arrays[victim] if change == "add" else arrays.pop(victim)
    elif change == "drop":
        del arrays[victim]
    elif change == "shape":
        arrays[victim] = np.zeros(arrays[victim].size + data.draw(st.integers(1, 5)), np.float32)
    else:
        arrays[victim] = arrays[victim].astype(data.draw(st.sampled_from([np.float64, np.float16, np.int32, np.uint8])))
    payload = arrays_to_bytes(arrays)
    assume(len(payload) <= target.size_limit)
    header = header_msg(total_bytes=len(payload), sha256=sha256_hex(payload))
    err = assert_refused(target, [header, *chunk_msgs(payload, 1 << 20)])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def raw_safetensors(header: dict, data: bytes) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


@pytest.mark.parametrize("case", ["ascii-name-20k", "accented-name-3k", "dtype-string-20k"])
def test_refusal_message_stays_bounded_for_huge_names(target: FuzzTarget, case: str) -> None:
    if case == "dtype-string-20k":
        payload = raw_safetensors({"classifier.bias": {"dtype": "Q" * 20000, "shape": [4], "data_offsets": [0, 16]}},
                                  bytes(16))
    else:
        arrays = dict(target.base)
        name = "x" * 20000 if case == "ascii-name-20k" else "\u00e9" * 3000
        arrays[name] = arrays.pop("classifier.bias")
        payload = arrays_to_bytes(arrays)
    assert len(payload) <= target.size_limit
    header = header_msg(total_bytes=len(payload), sha256=sha256_hex(payload))
    err = assert_refused(target, [header, *chunk_msgs(payload, 1 << 20)])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


@FUZZ
@given(header=st.dictionaries(tensor_names, st.fixed_dictionaries({
    "dtype": st.one_of(st.sampled_from(["F32", "F64", "I8", "BOOL", "F8_E4M3", "XX"]), st.text(max_size=20)),
    "shape": st.lists(st.integers(-3, 1 << 40), max_size=4),
    "data_offsets": st.lists(st.integers(-3, 1 << 40), max_size=3),
}), max_size=4), data=st.binary(max_size=256))
def test_adversarial_safetensors_headers(target: FuzzTarget, header: dict, data: bytes) -> None:
    """Hand-made safetensors headers: bad dtypes, negative or enormous shapes and offsets, inconsistent sizes."""
    payload = raw_safetensors(header, data)
    hdr = header_msg(total_bytes=len(payload), sha256=sha256_hex(payload))
    err = assert_refused(target, [hdr, *chunk_msgs(payload, 4096)])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


# -- stream shape ----------------------------------------------------------------
@FUZZ
@given(kinds=st.lists(st.sampled_from(["header", "chunk"]), max_size=7))
@example(kinds=[])  # an empty stream
@example(kinds=["chunk", "header", "chunk"])  # chunk first
@example(kinds=["header", "header", "chunk"])  # two headers
@example(kinds=["header", "chunk", "chunk", "header", "chunk", "chunk"])  # a header after chunks
@example(kinds=["header"])  # a header and no data
def test_wrong_order_of_header_and_chunks(target: FuzzTarget, kinds: list[str]) -> None:
    """Chunk first, two headers, a header after chunks, too few or too many chunks, an empty stream."""
    slices = list(iter_chunks(target.payload, len(target.payload) // 4 + 1))  # 4 slices
    assert len(slices) == 4
    assume(kinds != ["header"] + ["chunk"] * len(slices))  # the one valid stream
    client_id, update_id = fresh_ids()
    header = pb.UpdateHeader(client_id=client_id, round=1, num_samples=10, update_id=update_id,
                             total_bytes=len(target.payload), sha256=target.sha256)
    messages, next_slice = [], 0
    for kind in kinds:
        if kind == "header":
            messages.append(pb.PushUpdateRequest(header=header))
        else:
            chunk = slices[next_slice] if next_slice < len(slices) else b"\x00" * 100
            next_slice += 1
            messages.append(pb.PushUpdateRequest(chunk=chunk))
    err = assert_refused(target, messages)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


# -- identities --------------------------------------------------------------------
ids = st.one_of(st.text(max_size=40), st.text(min_size=120, max_size=3000), st.from_regex(ID_RE, fullmatch=True))


@FUZZ
@given(client_id=ids, update_id=ids)
def test_random_client_and_update_ids(target: FuzzTarget, client_id: str, update_id: str) -> None:
    """Unicode, empty and very long ids, on a push for a future round: bad ids are refused first."""
    assume(update_id != RESIDENT_UPDATE)
    header = pb.PushUpdateRequest(header=pb.UpdateHeader(
        client_id=client_id, round=2, num_samples=10, update_id=update_id,
        total_bytes=len(target.payload), sha256=target.sha256))
    err = assert_refused(target, [header, *chunk_msgs(target.payload, 1 << 20)])
    valid = bool(ID_RE.match(client_id)) and bool(ID_RE.match(update_id))
    expected = grpc.StatusCode.FAILED_PRECONDITION if valid else grpc.StatusCode.INVALID_ARGUMENT
    assert err.code() == expected, err.details()


@FUZZ
@given(update_id=st.from_regex(ID_RE, fullmatch=True), n=st.integers(1, MAX_SAMPLES))
def test_second_contribution_of_a_client_in_a_round(target: FuzzTarget, update_id: str, n: int) -> None:
    """The resident already contributed to round 1: any new update id from it is ALREADY_EXISTS."""
    assume(update_id != RESIDENT_UPDATE)
    header = update_header(RESIDENT, 1, n, target.payload, update_id=update_id)
    err = assert_refused(target, [pb.PushUpdateRequest(header=header), *chunk_msgs(target.payload, 1 << 20)])
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS


def test_resident_retry_is_still_a_duplicate_after_the_fuzzing(target: FuzzTarget) -> None:
    """The one accepted update is still remembered: its retry is acknowledged, not counted again."""
    reply = push(target.stub, RESIDENT, 1, 5, target.payload, update_id=RESIDENT_UPDATE)
    assert reply.accepted and reply.duplicate and reply.accepted_in_round == 1
    assert_intact(target)
