"""Update encodings (float32, fp16 and int8 deltas), the XXH3 checksum and the bounded receive buffers.

Unit checks of model/encodings.py, then the real aggregator over 127.0.0.1:
exact FedAvg of mixed encodings, and every refusal with its status code,
metric and an unchanged global model.
"""
from __future__ import annotations

import threading
import uuid
from pathlib import Path

import grpc
import numpy as np
import pytest

from aggregator_service.config import AggregatorConfig
from aggregator_service.rounds import RoundConfig
from aggregator_service.server import start
from aggregator_service.servicer import ServiceLimits
from experiments.processes import start_aggregator
from fedser.v1 import aggregator_pb2 as pb
from fedser.v1 import aggregator_pb2_grpc as pb_grpc
from model.encodings import SCALE_SUFFIX, Encoding, decode_weights, encode_update, to_proto
from model.serialization import arrays_to_bytes, bytes_to_arrays, iter_chunks, sha256_hex, xxh3_hex
from tests.conftest import scrape


def rejected(metrics: dict, reason: str) -> float:
    return metrics.get(("fedser_updates_total", (("reason", reason), ("status", "rejected"))), 0.0)


def pull(stub) -> tuple[pb.ModelHeader, dict[str, np.ndarray], bytes]:
    responses = list(stub.PullModel(pb.PullModelRequest(client_id="t"), timeout=30))
    payload = b"".join(r.chunk for r in responses[1:])
    return responses[0].header, bytes_to_arrays(payload), payload


def push(stub, client_id: str, round: int, n: int, tensors: dict[str, np.ndarray], encoding: Encoding, *,
         base_version: int = 0, checksum: str = "xxh3", chunks_gate: threading.Event | None = None):
    payload = arrays_to_bytes(tensors)
    header = pb.UpdateHeader(
        client_id=client_id, round=round, num_samples=n, update_id=uuid.uuid4().hex, total_bytes=len(payload),
        base_version=base_version, encoding=to_proto(encoding),
        sha256=sha256_hex(payload) if checksum in ("sha256", "both") else "",
        xxh3_128=xxh3_hex(payload) if checksum in ("xxh3", "both") else ("0" * 32 if checksum == "bad-xxh3" else ""),
    )

    def messages():
        yield pb.PushUpdateRequest(header=header)
        for i, c in enumerate(iter_chunks(payload, 100_000)):
            if i == 1 and chunks_gate is not None:
                chunks_gate.wait(30)
            yield pb.PushUpdateRequest(chunk=c)

    return stub.PushUpdate(messages(), timeout=60)


def trained(base: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (v + rng.normal(0, 0.01, v.shape)).astype(np.float32) for k, v in base.items()}


# -- model/encodings.py ----------------------------------------------------
def test_delta_encodings_cut_bytes_and_decode_close_to_the_weights():
    rng = np.random.default_rng(0)
    base = {"a": rng.normal(0, 0.1, (300, 200)).astype(np.float32), "b": rng.normal(0, 0.1, 50).astype(np.float32)}
    new = trained(base, 1)
    full = len(arrays_to_bytes(encode_update(new, base, Encoding.FLOAT32)))
    for encoding, ratio in ((Encoding.FLOAT16_DELTA, 1.99), (Encoding.INT8_DELTA, 3.9)):  # headers cost a little
        sent = encode_update(new, base, encoding)
        assert full / len(arrays_to_bytes(sent)) >= ratio
        decoded = decode_weights(sent, base, encoding)
        for name in base:
            d = new[name] - base[name]
            err = np.abs(decoded[name] - new[name])
            if encoding is Encoding.FLOAT16_DELTA:
                assert err.max() <= np.abs(d).max() * 2**-10 + 1e-7
            else:
                scale = float(sent[name + SCALE_SUFFIX][0])
                assert scale == pytest.approx(np.abs(d).max() / 127, rel=1e-6)
                assert err.max() <= scale * 0.501 + 1e-7  # nearest rounding moves at most half a step


def test_int8_rounds_each_value_to_the_nearest_step_and_repeats():
    base = {"w": np.zeros(7, np.float32)}
    scale = 0.5 / 127
    steps = np.array([-127, -3.49, -0.51, 0.0, 0.49, 2.5001, 127], np.float32)
    new = {"w": steps * np.float32(scale)}
    sent = encode_update(new, base, Encoding.INT8_DELTA)
    assert float(sent["w" + SCALE_SUFFIX][0]) == pytest.approx(scale, rel=1e-6)
    assert sent["w"].tolist() == [-127, -3, -1, 0, 0, 3, 127]
    again = encode_update(new, base, Encoding.INT8_DELTA)
    assert all(np.array_equal(sent[k], again[k]) for k in sent)  # no random draw: a retry sends the same bytes


# -- over gRPC ---------------------------------------------------------------
def test_mixed_encodings_average_to_the_exact_fedavg(stub, aggregator):
    header, g, served = pull(stub)
    assert header.xxh3_128 == xxh3_hex(served)
    wa, wb = trained(g, 1), trained(g, 2)
    sent_b = encode_update(wb, g, Encoding.INT8_DELTA)
    assert push(stub, "a", 1, 3, encode_update(wa, g, Encoding.FLOAT32), Encoding.FLOAT32).accepted
    assert push(stub, "b", 1, 5, sent_b, Encoding.INT8_DELTA).accepted
    # What client b's bytes stand for, rebuilt independently: g + scale * q.
    wb_sent = {k: g[k].astype(np.float64) + sent_b[k].astype(np.float64) * float(sent_b[k + SCALE_SUFFIX][0]) for k in g}
    new = aggregator.manager.global_model
    assert new.version == 1
    for k in g:
        expected = ((3 * wa[k].astype(np.float64) + 5 * wb_sent[k]) / 8).astype(np.float32)
        np.testing.assert_allclose(new.arrays[k], expected, rtol=1e-6, atol=1e-7)


def test_fp16_deltas_average_exactly(stub, aggregator):
    _, g, _ = pull(stub)
    sent = [encode_update(trained(g, s), g, Encoding.FLOAT16_DELTA) for s in (1, 2)]
    for cid, n, tensors in (("a", 2, sent[0]), ("b", 6, sent[1])):
        assert push(stub, cid, 1, n, tensors, Encoding.FLOAT16_DELTA, checksum="sha256").accepted
    new = aggregator.manager.global_model.arrays
    for k in g:
        d = (2 * sent[0][k].astype(np.float64) + 6 * sent[1][k].astype(np.float64)) / 8
        np.testing.assert_allclose(new[k], (g[k] + d).astype(np.float32), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    "case, code, reason",
    [
        ("wrong_base", grpc.StatusCode.FAILED_PRECONDITION, "wrong_base"),
        ("missing_scale", grpc.StatusCode.INVALID_ARGUMENT, "tensor_names"),
        ("float32_as_int8", grpc.StatusCode.INVALID_ARGUMENT, "tensor_dtype"),
        ("nan_scale", grpc.StatusCode.INVALID_ARGUMENT, "non_finite"),
        ("fp16_inf", grpc.StatusCode.INVALID_ARGUMENT, "non_finite"),
        ("bad_xxh3", grpc.StatusCode.INVALID_ARGUMENT, "checksum"),
        ("no_checksum", grpc.StatusCode.INVALID_ARGUMENT, "bad_header"),
    ],
)
def test_bad_encoded_updates_are_refused_and_change_nothing(stub, aggregator, case, code, reason):
    _, g, before = pull(stub)
    w = trained(g, 1)
    encoding, base_version, checksum = Encoding.INT8_DELTA, 0, "xxh3"
    tensors = encode_update(w, g, encoding)
    name = next(iter(g))
    if case == "wrong_base":
        base_version = 7
    elif case == "missing_scale":
        del tensors[name + SCALE_SUFFIX]
    elif case == "float32_as_int8":
        tensors[name] = w[name]
    elif case == "nan_scale":
        tensors[name + SCALE_SUFFIX] = np.array([np.nan], np.float32)
    elif case == "fp16_inf":
        encoding = Encoding.FLOAT16_DELTA
        tensors = encode_update(w, g, encoding)
        tensors[name] = tensors[name].copy()
        tensors[name].reshape(-1)[0] = np.inf
    elif case == "bad_xxh3":
        checksum = "bad-xxh3"
    elif case == "no_checksum":
        checksum = "none"
    with pytest.raises(grpc.RpcError) as info:
        push(stub, "a", 1, 4, tensors, encoding, base_version=base_version, checksum=checksum)
    assert info.value.code() == code, info.value.details()
    assert rejected(scrape(aggregator.metrics_port), reason) == 1
    assert aggregator.manager.status().accepted == 0
    assert pull(stub)[2] == before


def test_pushes_wait_for_a_receive_buffer_and_time_out_busy(tmp_path: Path):
    # A budget of one byte still grants one buffer: a second push waits for it, then gives up.
    config = AggregatorConfig(
        host="127.0.0.1", port=0, metrics_port=0, checkpoint_dir=tmp_path / "ckpt", insecure=True,
        rounds=RoundConfig(clients_per_round=2, min_clients=1, round_timeout_s=600),
        limits=ServiceLimits(receive_buffer_bytes=1, min_receive_buffers=1, max_buffer_wait_s=0.5),
    )
    running = start(config)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            stub = pb_grpc.AggregatorStub(ch)
            _, g, before = pull(stub)
            gate = threading.Event()
            first: dict[str, object] = {}
            holder = threading.Thread(target=lambda: first.update(
                reply=push(stub, "a", 1, 2, trained(g, 1), Encoding.FLOAT32, chunks_gate=gate)))
            holder.start()
            # Wait until the first push holds the only buffer (its first chunk arrived).
            for _ in range(200):
                if scrape(running.metrics_port).get(("fedser_bytes_received_total", ()), 0) > 0:
                    break
                threading.Event().wait(0.05)
            with pytest.raises(grpc.RpcError) as info:
                push(stub, "b", 1, 3, trained(g, 2), Encoding.FLOAT32)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "receive buffers are busy" in info.value.details()
            assert rejected(scrape(running.metrics_port), "busy") == 1
            assert running.manager.status().accepted == 0 and pull(stub)[2] == before
            gate.set()
            holder.join(30)
            assert first["reply"].accepted  # type: ignore[union-attr]
            # Its buffer is free again: the retried push goes through and closes the round.
            assert push(stub, "b", 1, 3, trained(g, 2), Encoding.FLOAT32).accepted
            assert running.manager.global_model.version == 1
    finally:
        running.stop(grace_s=1)


def test_the_aggregator_process_never_loads_torch(tmp_path: Path):
    agg = start_aggregator(tmp_path / "ckpt", tmp_path / "agg.log")
    try:
        maps = Path(f"/proc/{agg.proc.pid}/maps").read_text()
        assert "libtorch" not in maps and "libc10" not in maps
        with grpc.insecure_channel(agg.target) as ch:
            header, arrays, _ = pull(pb_grpc.AggregatorStub(ch))
        assert sum(a.size for a in arrays.values()) == 333_700  # the seeded model, built in a child process
    finally:
        agg.stop()


def test_receive_buffers_and_slots_are_bounded_and_reused():
    from aggregator_service.errors import BusyError
    from aggregator_service.receive import ReceiveBuffers, Slots

    pool = ReceiveBuffers(size=1000, count=2)
    with pool.acquire(1) as a, pool.acquire(1) as b:
        assert a is not b and len(a) == 1000 and pool.in_use == 2
        with pytest.raises(BusyError):
            with pool.acquire(0.05):
                pass
    with pool.acquire(1) as again:
        assert again is a or again is b  # reused, not reallocated
    slots = Slots(1)
    with slots.acquire(1):
        with pytest.raises(BusyError, match="model-sending slots"):
            with slots.acquire(0.05):
                pass
    with slots.acquire(0.05):
        pass


def test_receive_buffers_serve_waiters_first_come_first_served():
    from aggregator_service.receive import ReceiveBuffers

    pool = ReceiveBuffers(size=10, count=1)
    order: list[int] = []
    lock = threading.Lock()

    def push(k: int, started: threading.Event) -> None:
        started.set()
        with pool.acquire(10):
            with lock:
                order.append(k)

    with pool.acquire(1):
        threads = []
        for k in range(5):  # queue up one by one, so arrival order is known
            started = threading.Event()
            t = threading.Thread(target=push, args=(k, started))
            t.start()
            started.wait(5)
            for _ in range(100):
                if len(pool._waiters) == k + 1:
                    break
                threading.Event().wait(0.01)
            threads.append(t)
    for t in threads:
        t.join(10)
    assert order == [0, 1, 2, 3, 4]
    assert pool.in_use == 0


def test_error_feedback_keeps_the_sum_of_sent_updates_on_track():
    from model.encodings import ErrorFeedback

    rng = np.random.default_rng(7)
    base = {"w": np.zeros(500, np.float32)}
    fb = ErrorFeedback()
    sent_total = np.zeros(500, np.float64)
    true_total = np.zeros(500, np.float64)
    for _ in range(30):
        # One outlier per round inflates the per-tensor scale: the small entries round to 0 or +-1 steps.
        d = rng.normal(0, 1e-4, 500).astype(np.float32)
        d[0] = 0.05
        true_total += d
        sent = fb.encode({"w": base["w"] + d}, base, Encoding.INT8_DELTA)
        sent_total += decode_weights(sent, base, Encoding.INT8_DELTA)["w"]
    scale = 0.05 / 127
    # With feedback the error of the sum stays within half of one last rounding step, not 30 roundings.
    assert np.abs(sent_total - true_total).max() <= 0.5 * scale * 1.01
