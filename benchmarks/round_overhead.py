"""Sections 1 and 2: round overhead with no training, and the aggregator's peak RSS, against N.

One production aggregator process per (model size, N) (benchmarks.aggregator_process:
the real server with a synthetic flat architecture). N lightweight clients run
as threads of this process, each with its own gRPC channel (its own TCP
connection) for pulls and, as fedser-client does, a connection of its own for
each push, closed after it; they speak the production wire format: pulls
through the production client's stub (fedser.v1.chunks.ChunkStub), pushes as
the same chunk messages, serialized ahead (see below):

    round r:  all N clients are released together (barrier)
              PullModel(min_version=r-1)        the whole payload, streamed in 1 MiB chunks
              add a small known delta
              PushUpdate(header, chunks)       xxh3_128, total_bytes, n_k, update_id, round
    the round's time: release -> the last acknowledgement (the aggregator closes the
    round inside the last accepted push, checkpoint written, before it answers)

Memory: clients never hold private copies of the model. Client 0 (the leader)
keeps the bytes it pulled, checks size and SHA-256, parses them, checks them
against the expected FedAvg result of the previous round, adds the round's
delta ``d`` to the big tensor and serializes the result once; every other
client checks only the size of what it pulled and drops the chunks. Client k's
payload is that shared serialization with its own 64-element ``z_delta``
tensor (base + delta_k) spliced in: z_delta's bytes come last in the
safetensors layout, so its XXH3-128 costs one hash of the shared prefix per
round (hasher copy) plus 256 bytes per client. The shared prefix's chunk
messages are serialized once a round as well (fedser.v1.chunks.encode_chunk,
byte for byte what the production client sends), and every client sends those
same bytes objects; only its last chunk is its own. On two cores the harness
shares the CPU with the aggregator: a copy it saves is time the round does not
spend on the clients' side of the loopback. All N clients push at once:
the aggregator bounds the pushes it reads concurrently itself (its pool of
receive buffers, 64 MiB but at least two by default); the bound is recorded with the results.
``--push-concurrency`` adds a client-side bound for experiments.

The expected global model after round r is known exactly (the big tensor is
the same in every update, so FedAvg returns it bit for bit; z_delta is the
n_k-weighted mean of the client deltas), and it is checked every round.
"""
from __future__ import annotations

import json
import shutil
import struct
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import grpc
import numpy as np
import xxhash

from benchmarks.aggregator_process import SMALL_TENSOR
from benchmarks.common import BenchAggregator, median, own_cpu_seconds, sig, start_bench_aggregator
from benchmarks.reference import loopback_seconds, weighted_sum_seconds
from fedser.v1 import aggregator_pb2 as pb
from fedser.v1 import aggregator_pb2_grpc as pb_grpc
from fedser.v1.chunks import SERVICE, ChunkStub, chunk_of, encode_chunk
from aggregator_service.servicer import ServiceLimits
from model.serialization import arrays_to_bytes, bytes_to_arrays, xxh3_hex

CHUNK_BYTES = 1 << 20  # model.serialization.DEFAULT_CHUNK_BYTES: what the production client sends
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 8 << 20),
    ("grpc.max_send_message_length", 8 << 20),
    # One TCP connection per client, as with real devices (gRPC would otherwise share one).
    ("grpc.use_local_subchannel_pool", 1),
]
BIG_DELTA = np.float32(1e-3)  # added to every element of a_big each round (the same in every update)
RPC_TIMEOUT_S = 900.0
REFERENCE_CLIENTS = 50  # references for more clients are timed for this many and scaled linearly


def n_k(k: int) -> int:
    """Client k's sample count (weights differ, so the average is a real weighted one)."""
    return 1 + (k * 37) % 500


def client_delta(k: int) -> np.ndarray:
    """Client k's known delta on z_delta."""
    return (np.float32(1e-4 * (k + 1)) * (1 + np.arange(SMALL_TENSOR, dtype=np.float32) / SMALL_TENSOR)).astype(np.float32)


def receive_buffers(params: int, clients: int) -> int:
    """Pushes the aggregator reads at once with its default limits (see aggregator_service.servicer)."""
    limits = ServiceLimits()
    return min(clients, limits.receive_buffers(4 * params + 1024 + limits.size_margin_bytes))


def tensor_offsets(payload: bytes | memoryview, name: str) -> tuple[int, int]:
    """Absolute [start, end) byte range of tensor ``name`` inside safetensors ``payload``."""
    n = struct.unpack("<Q", bytes(payload[:8]))[0]
    header = json.loads(bytes(payload[8 : 8 + n]))
    start, end = header[name]["data_offsets"]
    return 8 + n + start, 8 + n + end


def iter_segment_chunks(segments: Sequence[memoryview | bytes], chunk: int = CHUNK_BYTES) -> Iterator[bytes | memoryview]:
    """Chunks of the concatenation of ``segments``, cut exactly as iter_chunks(b"".join(segments), chunk).

    Whole chunks inside one segment are views (the chunk codec copies them once, as the production client's are).
    """
    pending = bytearray()
    for seg in segments:
        view = memoryview(seg)
        pos = 0
        while pos < len(view):
            if not pending and len(view) - pos >= chunk:
                yield view[pos : pos + chunk]
                pos += chunk
                continue
            take = min(chunk - len(pending), len(view) - pos)
            pending += view[pos : pos + take]
            pos += take
            if len(pending) == chunk:
                yield bytes(pending)
                pending = bytearray()
    if pending:
        yield bytes(pending)


@dataclass
class RoundPayload:
    """What every client of one round pushes, less its own z_delta."""

    round: int
    base_version: int
    prefix: memoryview  # payload bytes before z_delta
    suffix: memoryview  # payload bytes after z_delta (normally empty)
    prefix_hash: "xxhash.xxh3_128"
    base_small: np.ndarray
    big: np.ndarray  # a_big as every client sends it (the expected next global a_big)
    total_bytes: int
    pulled_bytes: int
    shared: list[bytes] = field(init=False)  # chunk messages of the prefix's whole chunks, the same for every client

    def __post_init__(self) -> None:
        whole = len(self.prefix) // CHUNK_BYTES
        self.shared = [encode_chunk(self.prefix[i * CHUNK_BYTES : (i + 1) * CHUNK_BYTES]) for i in range(whole)]

    def client_small(self, k: int) -> np.ndarray:
        return (self.base_small + client_delta(k)).astype(np.float32)

    def header_and_chunks(self, k: int, client_id: str) -> tuple[pb.UpdateHeader, Iterator[pb.PushUpdateRequest | bytes | memoryview]]:
        tail = self.client_small(k).tobytes()
        h = self.prefix_hash.copy()
        h.update(tail)
        h.update(self.suffix)
        header = pb.UpdateHeader(
            client_id=client_id, round=self.round, num_samples=n_k(k), update_id=uuid.uuid4().hex,
            total_bytes=self.total_bytes, xxh3_128=h.hexdigest(), base_version=self.base_version,
            encoding=pb.UPDATE_ENCODING_FLOAT32,
        )

        def messages() -> Iterator[pb.PushUpdateRequest | bytes]:
            yield pb.PushUpdateRequest(header=header)
            yield from self.shared  # already serialized: push_stub sends them as they are
            rest = self.prefix[len(self.shared) * CHUNK_BYTES :]
            yield from (encode_chunk(c) for c in iter_segment_chunks((rest, tail, self.suffix)))

        return header, messages()

    def expected_small(self, clients: int) -> np.ndarray:
        acc = np.zeros(SMALL_TENSOR, np.float64)
        m = 0
        for k in range(clients):
            acc += self.client_small(k).astype(np.float64) * n_k(k)
            m += n_k(k)
        return (acc / m).astype(np.float32)


class VerificationError(AssertionError):
    pass


def push_stub(channel: grpc.Channel) -> Callable[..., pb.PushUpdateResponse]:
    """PushUpdate taking the header message, then chunk messages already serialized (bytes go out as they are)."""
    return channel.stream_unary(
        f"/{SERVICE}/PushUpdate",
        request_serializer=lambda m: m if isinstance(m, bytes) else m.SerializeToString(),
        response_deserializer=pb.PushUpdateResponse.FromString,
        _registered_method=True,
    )


def build_round_payload(r: int, pulled: bytes, header: pb.ModelHeader, previous: RoundPayload | None,
                        clients: int) -> RoundPayload:
    """Check the pulled global against the previous round's expected FedAvg, then build round r's payload."""
    if len(pulled) != header.total_bytes or xxh3_hex(pulled) != header.xxh3_128:
        raise VerificationError(f"round {r}: pulled model has wrong size or checksum")
    arrays = bytes_to_arrays(pulled)
    verify_global(arrays, previous, clients, f"round {r}")
    big = arrays["a_big"] + BIG_DELTA
    payload = arrays_to_bytes({"a_big": big, "z_delta": arrays["z_delta"]})
    start, end = tensor_offsets(payload, "z_delta")
    view = memoryview(payload)
    return RoundPayload(
        round=r, base_version=header.model_version, prefix=view[:start], suffix=view[end:],
        prefix_hash=xxhash.xxh3_128(view[:start]), base_small=arrays["z_delta"].copy(), big=big,
        total_bytes=len(payload), pulled_bytes=len(pulled),
    )


def verify_global(arrays: dict[str, np.ndarray], previous: RoundPayload | None, clients: int, where: str) -> None:
    if previous is None:
        return
    if not np.array_equal(arrays["a_big"], previous.big):
        raise VerificationError(f"{where}: a_big is not the FedAvg of identical updates")
    expected = previous.expected_small(clients)
    if not np.allclose(arrays["z_delta"], expected, rtol=1e-6, atol=1e-9):
        raise VerificationError(f"{where}: z_delta is not the n_k-weighted mean of the client deltas")


@dataclass
class ClientTimes:
    pull_start: float = 0.0
    pull_end: float = 0.0
    push_start: float = 0.0
    ack: float = 0.0


@dataclass
class RoundRecord:
    round: int
    seconds: float
    pull_phase_s: float
    push_phase_s: float
    aggregator_cpu_s: float | None
    harness_cpu_s: float
    aggregator_rss_mib: float | None


@dataclass
class Fleet:
    """N client threads driven round by round from the caller's thread."""

    target: str
    clients: int
    rounds: int
    push_concurrency: int
    start: threading.Barrier = field(init=False)
    end: threading.Barrier = field(init=False)

    def __post_init__(self) -> None:
        self.start = threading.Barrier(self.clients + 1)
        self.end = threading.Barrier(self.clients + 1)
        self.push_slots = threading.BoundedSemaphore(self.push_concurrency)
        self.times = [[ClientTimes() for _ in range(self.clients)] for _ in range(self.rounds + 1)]
        self.payloads: dict[int, RoundPayload] = {}
        self.payload_ready = {r: threading.Event() for r in range(1, self.rounds + 1)}
        self.errors: list[BaseException] = []
        self.replies: list[pb.PushUpdateResponse] = []
        self._lock = threading.Lock()

    def _pull(self, stub: ChunkStub, client_id: str, min_version: int, keep: bool) -> tuple[pb.ModelHeader, bytes | None]:
        stream = stub.PullModel(pb.PullModelRequest(client_id=client_id, min_version=min_version, wait_seconds=30),
                                timeout=RPC_TIMEOUT_S)
        first = next(stream)
        header = first.header
        if header.payload_omitted or header.model_version < min_version:
            raise VerificationError(f"{client_id}: version {min_version} not served")
        if keep:
            buf = bytearray()
            for msg in stream:
                buf += chunk_of(msg)
            return header, bytes(buf)
        got = 0
        for msg in stream:
            got += len(chunk_of(msg))
        if got != header.total_bytes:
            raise VerificationError(f"{client_id}: pulled {got} of {header.total_bytes} bytes")
        return header, None

    def run_client(self, k: int) -> None:
        client_id = f"bench-{k:04d}"
        try:
            with grpc.insecure_channel(self.target, options=CHANNEL_OPTIONS) as ch:
                stub = ChunkStub(ch)  # what fedser-client uses
                for r in range(1, self.rounds + 1):
                    self.start.wait()
                    t = self.times[r][k]
                    t.pull_start = time.perf_counter()
                    header, pulled = self._pull(stub, client_id, r - 1, keep=k == 0)
                    t.pull_end = time.perf_counter()
                    if header.round != r:
                        raise VerificationError(f"{client_id}: expected round {r}, header says {header.round}")
                    if k == 0:
                        previous = self.payloads.get(r - 1)
                        self.payloads[r] = build_round_payload(r, pulled, header, previous, self.clients)
                        del pulled
                        self.payloads.pop(r - 1, None)
                        self.payload_ready[r].set()
                    if not self.payload_ready[r].wait(RPC_TIMEOUT_S):
                        raise TimeoutError("round payload never built")
                    update_header, messages = self.payloads[r].header_and_chunks(k, client_id)
                    with self.push_slots:
                        t.push_start = time.perf_counter()
                        # As fedser-client does: the push on a connection of its own, closed after it
                        # (edge_client.transport.AggregatorClient.push says why).
                        with grpc.insecure_channel(self.target, options=CHANNEL_OPTIONS) as push_channel:
                            reply = push_stub(push_channel)(messages, timeout=RPC_TIMEOUT_S)
                        t.ack = time.perf_counter()
                    if not reply.accepted or reply.duplicate or reply.round != r:
                        raise VerificationError(f"{client_id}: push not accepted as new in round {r}: {reply}")
                    self.end.wait()
        except threading.BrokenBarrierError:
            pass
        except BaseException as exc:  # reported by the driver
            with self._lock:
                self.errors.append(exc)
            self.start.abort()
            self.end.abort()
            for e in self.payload_ready.values():
                e.set()


def run_combo(params: int, clients: int, rounds: int, workdir: Path, push_concurrency: int | None = None,
              reference_reps: int = 3, log=print) -> dict[str, object]:
    """One aggregator process, N clients, ``rounds`` rounds; returns the figures of sections 1 and 2."""
    server_bound = receive_buffers(params, clients)
    push_concurrency = push_concurrency or clients
    max_workers = 2 * clients + 16
    combo_dir = Path(tempfile.mkdtemp(prefix=f"round-{params}-{clients}-", dir=workdir))
    agg: BenchAggregator = start_bench_aggregator(params, combo_dir, [
        "--clients-per-round", str(clients), "--min-clients", str(clients), "--rounds", str(rounds),
        "--round-timeout", "600", "--max-workers", str(max_workers), "--keep-checkpoints", "2",
        # Harness clients do not retry: let a push wait for a receive buffer as long as the round may last.
        "--busy-wait", "600",
    ])
    records: list[RoundRecord] = []
    weights = [n_k(k) for k in range(clients)]
    loop: list[float] = []
    sums: list[float] = []
    try:
        rss_ready_kib = agg.rss_kib()
        fleet = Fleet(agg.target, clients, rounds, push_concurrency)
        threads = [threading.Thread(target=fleet.run_client, args=(k,), name=f"bench-client-{k}", daemon=True)
                   for k in range(clients)]
        for t in threads:
            t.start()
        for r in range(1, rounds + 1):
            cpu0, own0 = agg.cpu_seconds(), own_cpu_seconds()
            try:
                fleet.start.wait()
                t0 = time.perf_counter()
                fleet.end.wait()
            except threading.BrokenBarrierError:
                break
            cpu1, own1 = agg.cpu_seconds(), own_cpu_seconds()
            ts = fleet.times[r]
            last_ack = max(t.ack for t in ts)
            pulls_done = max(t.pull_end for t in ts)
            rss = agg.rss_kib()
            records.append(RoundRecord(
                round=r,
                seconds=last_ack - t0,
                pull_phase_s=pulls_done - t0,
                push_phase_s=last_ack - min(t.push_start for t in ts),
                aggregator_cpu_s=None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
                harness_cpu_s=own1 - own0,
                aggregator_rss_mib=None if rss is None else rss / 1024,
            ))
            # The reference for this round, measured right after it while the aggregator idles: the
            # shared VM's speed drifts from minute to minute, so each round is paired with its own.
            # Both references are linear in N (bytes through one connection, one update after another);
            # above REFERENCE_CLIENTS they are timed for that many clients and scaled, which keeps a
            # 200 x 25M reference at ~6 s instead of ~25 s a round.
            done = fleet.payloads[r]
            measured_clients = min(clients, REFERENCE_CLIENTS)
            scale = clients / measured_clients
            sample_bytes = measured_clients * (done.pulled_bytes + done.total_bytes)
            loop.append(scale * median([loopback_seconds(sample_bytes) for _ in range(reference_reps)]))
            sums.append(scale * median([weighted_sum_seconds(params, weights[:measured_clients])
                                        for _ in range(reference_reps)]))
            log(f"  [round] params={params:,} N={clients} round {r}/{rounds}: {records[-1].seconds:.3f} s, "
                f"reference {loop[-1] + sums[-1]:.3f} s")
        for t in threads:
            t.join(60)
        if fleet.errors:
            raise RuntimeError(f"client failed: {fleet.errors[0]!r}\naggregator log:\n{agg.log_tail()}") from fleet.errors[0]
        last = fleet.payloads[rounds]
        # The last round's result, checked outside the timed rounds.
        with grpc.insecure_channel(agg.target, options=CHANNEL_OPTIONS) as ch:
            header, pulled = fleet._pull(ChunkStub(ch), "bench-verify", rounds, keep=True)
            with grpc.insecure_channel(agg.target) as ch2:
                status = pb_grpc.AggregatorStub(ch2).GetStatus(pb.GetStatusRequest(), timeout=60)
        verify_global(bytes_to_arrays(pulled), last, clients, "final model")
        if status.model_version != rounds or not status.finished:
            raise VerificationError(f"aggregator at version {status.model_version}, finished={status.finished}")
        peak_kib = agg.peak_rss_kib()
        pull_bytes, push_bytes = last.pulled_bytes, last.total_bytes
    finally:
        agg.stop()
        shutil.rmtree(combo_dir, ignore_errors=True)

    total_bytes = clients * (pull_bytes + push_bytes)
    round_s = median([x.seconds for x in records])
    reference_s = median(loop) + median(sums)
    paired = [x.seconds / (a + b) for x, a, b in zip(records, loop, sums) if a + b > 0]
    return {
        "params": params,
        "clients": clients,
        "rounds": rounds,
        "push_concurrency": min(push_concurrency, server_bound),
        "max_workers": max_workers,
        "pull_bytes_per_client": pull_bytes,
        "push_bytes_per_client": push_bytes,
        "bytes_per_round": total_bytes,
        "round_seconds": [sig(x.seconds) for x in records],
        "median_round_s": sig(round_s),
        "median_pull_phase_s": sig(median([x.pull_phase_s for x in records])),
        "median_push_phase_s": sig(median([x.push_phase_s for x in records])),
        "server_round_durations_s": [sig(s.duration_seconds) for s in status.rounds],
        "aggregator_cpu_s_per_round": [None if x.aggregator_cpu_s is None else round(x.aggregator_cpu_s, 3) for x in records],
        "harness_cpu_s_per_round": [round(x.harness_cpu_s, 3) for x in records],
        "loopback_s": sig(median(loop)),
        "loopback_gib_per_s": round(total_bytes / median(loop) / 2**30, 3) if median(loop) > 0 else None,
        "weighted_sum_s": sig(median(sums)),
        "reference_s": sig(reference_s),
        "ratio": sig(median(paired), 3) if paired else None,
        "ratio_of_medians": sig(round_s / reference_s, 3) if reference_s > 0 else None,
        "paired_ratios": [sig(x, 3) for x in paired],
        "reference_s_per_round": [sig(a + b) for a, b in zip(loop, sums)],
        "aggregator_start_s": round(agg.start_s, 2),
        "aggregator_rss_ready_mib": None if rss_ready_kib is None else round(rss_ready_kib / 1024, 1),
        "aggregator_rss_after_round_mib": [None if x.aggregator_rss_mib is None else round(x.aggregator_rss_mib, 1) for x in records],
        "aggregator_peak_rss_mib": None if peak_kib is None else round(peak_kib / 1024, 1),
        "model_mib": round(4 * params / 2**20, 2),
        "verified": True,
    }
