"""The aggregator's gRPC service over 127.0.0.1: pulls, pushes, every refusal, metrics, health, reflection."""
from __future__ import annotations

import uuid

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from fedser.v1 import aggregator_pb2 as pb
from fedser.v1 import aggregator_pb2_grpc as pb_grpc
from model.serialization import arrays_to_bytes, bytes_to_arrays, iter_chunks, sha256_hex
from tests.conftest import scrape


def pull(stub) -> tuple[pb.ModelHeader, dict[str, np.ndarray], bytes]:
    responses = list(stub.PullModel(pb.PullModelRequest(client_id="t"), timeout=30))
    header = responses[0].header
    payload = b"".join(r.chunk for r in responses[1:])
    return header, bytes_to_arrays(payload), payload


def push(stub, client_id: str, round: int, n: int, payload: bytes, *, update_id: str | None = None,
         total_bytes: int | None = None, sha256: str | None = None, chunks=None):
    header = pb.UpdateHeader(
        client_id=client_id, round=round, num_samples=n, update_id=update_id or uuid.uuid4().hex,
        total_bytes=len(payload) if total_bytes is None else total_bytes,
        sha256=sha256_hex(payload) if sha256 is None else sha256,
    )
    messages = [pb.PushUpdateRequest(header=header)]
    messages += chunks if chunks is not None else [pb.PushUpdateRequest(chunk=c) for c in iter_chunks(payload, 100_000)]
    return stub.PushUpdate(iter(messages), timeout=30)


def scaled(arrays: dict[str, np.ndarray], value: float) -> dict[str, np.ndarray]:
    return {k: np.full_like(v, value) for k, v in arrays.items()}


def rejected(metrics: dict, reason: str) -> float:
    return metrics.get(("fedser_updates_total", (("reason", reason), ("status", "rejected"))), 0.0)


def test_pull_serves_the_seeded_initial_model_in_chunks(stub, aggregator):
    header, arrays, payload = pull(stub)
    assert (header.round, header.model_version) == (1, 0)
    assert header.architecture_id == "seed-cnn-v1"
    assert list(header.labels) == ["neutral", "happy", "sad", "angry"]
    assert header.total_bytes == len(payload) and header.sha256 == sha256_hex(payload)
    assert header.plan.local_epochs >= 1 and header.plan.batch_size >= 1
    assert header.plan.proximal_mu == 0.0  # FedProx is off unless --proximal-mu is given
    assert sum(a.size for a in arrays.values()) == 333_700
    # The seeded initial model is the stored version 0, byte for byte.
    assert payload == (aggregator.manager.global_model.payload)


def test_fedavg_over_grpc_is_the_exact_weighted_average(stub, aggregator):
    header, arrays, _ = pull(stub)
    a, b = scaled(arrays, 1.0), scaled(arrays, 4.0)
    a["classifier.bias"] = np.array([1, 2, 3, 4], np.float32)
    b["classifier.bias"] = np.array([-3, 0, 5, 8], np.float32)
    r1 = push(stub, "alice", 1, 30, arrays_to_bytes(a))
    assert r1.accepted and not r1.duplicate and r1.accepted_in_round == 1
    r2 = push(stub, "bob", 1, 10, arrays_to_bytes(b))
    assert r2.accepted_in_round == 2
    new_header, new, _ = pull(stub)
    assert (new_header.round, new_header.model_version) == (2, 1)
    # (30 * 1 + 10 * 4) / 40 = 1.75; bias: (30*[1,2,3,4] + 10*[-3,0,5,8]) / 40
    np.testing.assert_array_equal(new["features.0.weight"], np.full_like(arrays["features.0.weight"], 1.75))
    np.testing.assert_array_equal(new["classifier.bias"], np.array([0.0, 1.5, 3.5, 5.0], np.float32))
    m = scrape(aggregator.metrics_port)
    assert m[("fedser_round", ())] == 2
    assert m[("fedser_model_version", ())] == 1
    assert m[("fedser_round_participants", ())] == 2
    assert m[("fedser_round_samples", ())] == 40
    assert m[("fedser_updates_total", (("reason", ""), ("status", "accepted")))] == 2
    assert m[("fedser_rounds_completed_total", (("closed_by", "quorum"),))] == 1
    assert m[("fedser_round_duration_seconds_count", ())] == 1
    assert m[("fedser_bytes_received_total", ())] == 2 * len(arrays_to_bytes(a))


def _bad_payloads(arrays: dict[str, np.ndarray]) -> list[tuple[str, str, dict]]:
    wrong_name = dict(arrays)
    wrong_name["intruder"] = wrong_name.pop("classifier.bias")
    wrong_shape = dict(arrays, **{"classifier.bias": np.zeros(5, np.float32)})
    wrong_dtype = dict(arrays, **{"classifier.bias": np.zeros(4, np.float64)})
    nan = dict(arrays, **{"classifier.bias": np.array([0, np.nan, 0, 0], np.float32)})
    inf = dict(arrays, **{"classifier.bias": np.array([0, 0, np.inf, 0], np.float32)})
    return [
        ("tensor_names", "missing classifier.bias; unexpected intruder", wrong_name),
        ("tensor_shape", "shape [5], expected [4]", wrong_shape),
        ("tensor_dtype", "dtype float64, expected float32", wrong_dtype),
        ("non_finite", "NaN or Inf", nan),
        ("non_finite", "NaN or Inf", inf),
    ]


def assert_unchanged(stub, aggregator, payload_before: bytes) -> None:
    """Still round 1 on version 0, byte for byte, nothing accumulated, no new checkpoint."""
    header, _, payload = pull(stub)
    assert (header.round, header.model_version) == (1, 0)
    assert payload == payload_before
    assert aggregator.manager.status().accepted == 0
    assert aggregator.checkpoints.versions() == [0]
    assert aggregator.checkpoints.load(0).payload == payload_before


@pytest.mark.parametrize("case", range(5))
def test_bad_tensors_are_refused_counted_and_change_nothing(stub, aggregator, case):
    _, arrays, before = pull(stub)
    reason, message, bad = _bad_payloads(arrays)[case]
    with pytest.raises(grpc.RpcError) as err:
        push(stub, "mallory", 1, 10, arrays_to_bytes(bad))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()
    assert rejected(scrape(aggregator.metrics_port), reason) == 1
    assert_unchanged(stub, aggregator, before)


def test_header_refusals(stub, aggregator):
    _, arrays, before = pull(stub)
    good = arrays_to_bytes(arrays)
    cases = [
        ("wrong_round", grpc.StatusCode.FAILED_PRECONDITION, "round 2 is from the future",
         lambda: push(stub, "c", 2, 10, good)),
        ("wrong_round", grpc.StatusCode.FAILED_PRECONDITION, "round 0 is stale",
         lambda: push(stub, "c", 0, 10, good)),
        ("num_samples", grpc.StatusCode.INVALID_ARGUMENT, "num_samples must be > 0, got 0",
         lambda: push(stub, "c", 1, 0, good)),
        ("num_samples", grpc.StatusCode.INVALID_ARGUMENT, "num_samples must be > 0, got -7",
         lambda: push(stub, "c", 1, -7, good)),
        ("num_samples", grpc.StatusCode.INVALID_ARGUMENT, "exceeds the limit",
         lambda: push(stub, "c", 1, 10**12, good)),
        ("size_mismatch", grpc.StatusCode.INVALID_ARGUMENT, "header declared",
         lambda: push(stub, "c", 1, 10, good, total_bytes=len(good) + 10)),
        ("size_mismatch", grpc.StatusCode.INVALID_ARGUMENT, "exceeds the declared",
         lambda: push(stub, "c", 1, 10, good, total_bytes=len(good) - 10)),
        ("too_large", grpc.StatusCode.INVALID_ARGUMENT, "exceeds the limit",
         lambda: push(stub, "c", 1, 10, good, total_bytes=10**9)),
        ("checksum", grpc.StatusCode.INVALID_ARGUMENT, "checksum does not match",
         lambda: push(stub, "c", 1, 10, good, sha256="0" * 64)),
        ("bad_header", grpc.StatusCode.INVALID_ARGUMENT, "sha256 must be 64",
         lambda: push(stub, "c", 1, 10, good, sha256="xyz")),
        ("malformed", grpc.StatusCode.INVALID_ARGUMENT, "not a valid safetensors payload",
         lambda: push(stub, "c", 1, 10, b"\x07" * 1000)),
        ("bad_header", grpc.StatusCode.INVALID_ARGUMENT, "client_id must be",
         lambda: push(stub, "bad id with spaces", 1, 10, good)),
        ("bad_header", grpc.StatusCode.INVALID_ARGUMENT, "first message of a push must be the header",
         lambda: stub.PushUpdate(iter([pb.PushUpdateRequest(chunk=good[:100])]), timeout=10)),
        ("bad_stream", grpc.StatusCode.INVALID_ARGUMENT, "only chunks may follow the header",
         lambda: push(stub, "c", 1, 10, good, chunks=[pb.PushUpdateRequest(header=pb.UpdateHeader(client_id="c"))])),
    ]
    counts: dict[str, int] = {}
    for reason, code, message, call in cases:
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == code, (reason, err.value.details())
        assert message in err.value.details(), (reason, err.value.details())
        counts[reason] = counts.get(reason, 0) + 1
        assert rejected(scrape(aggregator.metrics_port), reason) == counts[reason]
    assert_unchanged(stub, aggregator, before)


def test_same_update_id_is_acknowledged_and_counted_once(stub, aggregator):
    _, arrays, _ = pull(stub)
    payload = arrays_to_bytes(scaled(arrays, 2.0))
    first = push(stub, "alice", 1, 10, payload, update_id="u-1")
    again = push(stub, "alice", 1, 10, payload, update_id="u-1")
    assert (first.duplicate, again.duplicate) == (False, True)
    assert again.accepted and again.accepted_in_round == 1
    assert aggregator.manager.status().accepted == 1
    with pytest.raises(grpc.RpcError) as err:  # same client, new update id, same round
        push(stub, "alice", 1, 10, payload, update_id="u-2")
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    push(stub, "bob", 1, 30, arrays_to_bytes(scaled(arrays, 6.0)))
    # A retry after the round closed (its acknowledgement was lost) is still acknowledged, not stale.
    late = push(stub, "alice", 1, 10, payload, update_id="u-1")
    assert late.duplicate
    _, new, _ = pull(stub)
    np.testing.assert_array_equal(new["classifier.bias"], np.full(4, 5.0, np.float32))  # (10*2 + 30*6) / 40
    m = scrape(aggregator.metrics_port)
    assert m[("fedser_updates_total", (("reason", ""), ("status", "accepted")))] == 2
    assert m[("fedser_updates_total", (("reason", ""), ("status", "duplicate")))] == 2
    assert rejected(m, "duplicate_client") == 1


def test_evaluation_reports_are_pooled_into_global_gauges(stub, aggregator):
    def report(cid: str, confusion: list[int], loss: float):
        n = sum(confusion)
        cm = np.array(confusion).reshape(4, 4)
        return stub.ReportEvaluation(pb.ReportEvaluationRequest(
            client_id=cid, model_version=0,
            metrics=pb.EvaluationMetrics(examples=n, loss=loss, accuracy=float(np.trace(cm) / n),
                                         uar=float(np.mean(np.diag(cm) / cm.sum(axis=1))), confusion=confusion)),
            timeout=10)

    assert report("a", [2, 0, 0, 0, 0, 2, 0, 0, 0, 0, 2, 0, 0, 0, 0, 2], 0.5).reports == 1
    assert report("b", [0, 4, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0], 1.5).reports == 2
    m = scrape(aggregator.metrics_port)
    # Summed confusion: diagonal 2+6+2+2 = 12 of 24; recalls 2/6, 6/6, 2/6, 2/6.
    assert m[("fedser_global_accuracy", ())] == pytest.approx(12 / 24)
    assert m[("fedser_global_uar", ())] == pytest.approx((1 / 3 + 1 + 1 / 3 + 1 / 3) / 4)
    assert m[("fedser_global_loss", ())] == pytest.approx((8 * 0.5 + 16 * 1.5) / 24)
    assert m[("fedser_global_evaluation_examples", ())] == 24
    with pytest.raises(grpc.RpcError) as err:
        stub.ReportEvaluation(pb.ReportEvaluationRequest(client_id="a", model_version=9,
                              metrics=pb.EvaluationMetrics(examples=1, loss=1, accuracy=1, uar=1)), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not exist yet" in err.value.details()


def test_health_and_reflection(aggregator):
    with grpc.insecure_channel(f"127.0.0.1:{aggregator.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "fedser.v1.Aggregator"):
            resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
        names = {s.name for s in replies[0].list_services_response.service}
        assert {"fedser.v1.Aggregator", "grpc.health.v1.Health"} <= names


def test_long_poll_pull_waits_then_omits_the_payload(stub):
    responses = list(stub.PullModel(pb.PullModelRequest(client_id="t", min_version=1, wait_seconds=0.3), timeout=10))
    assert len(responses) == 1
    assert responses[0].header.payload_omitted and responses[0].header.model_version == 0


def test_the_plan_carries_fedprox_mu_to_clients(tmp_path):
    """The aggregator's --proximal-mu reaches every client in the pulled header (0 when unset)."""
    from aggregator_service.config import AggregatorConfig
    from aggregator_service.rounds import RoundConfig
    from aggregator_service.server import start
    from model.plan import TrainingPlan

    running = start(AggregatorConfig(
        host="127.0.0.1", port=0, metrics_port=0, checkpoint_dir=tmp_path / "ckpt", insecure=True,
        rounds=RoundConfig(clients_per_round=1, min_clients=1, round_timeout_s=600,
                           plan=TrainingPlan(3, 8, 5e-4, proximal_mu=0.25)),
    ))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            header, _, _ = pull(pb_grpc.AggregatorStub(channel))
    finally:
        running.stop(grace_s=1)
    assert (header.plan.local_epochs, header.plan.batch_size, header.plan.learning_rate) == (3, 8, 5e-4)
    assert header.plan.proximal_mu == 0.25
