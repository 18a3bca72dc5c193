"""TLS, mutual TLS and per-client bearer tokens on the real server over 127.0.0.1."""
from __future__ import annotations

import logging
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aggregator_service.config import AggregatorConfig
from aggregator_service.rounds import RoundConfig
from aggregator_service.security import SecurityConfigError, TokenTable
from aggregator_service.server import RunningAggregator, start
from aggregator_service.servicer import ServiceLimits
from experiments.processes import single_thread_env, start_aggregator, start_client
from fedser.v1 import aggregator_pb2 as pb
from fedser.v1 import aggregator_pb2_grpc as pb_grpc
from model.serialization import iter_chunks, sha256_hex
from tests.certificates import Pki, make_pki
from tests.conftest import scrape

ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-fedcba9876543210"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tokens_file(folder: Path) -> Path:
    path = folder / "tokens"
    path.write_text(f"# client-id:token\nalice:{ALICE}\n\nbob:{BOB}\n")
    return path


def serve(tmp_path: Path, pki: Pki, mutual: bool = False, **limits) -> RunningAggregator:
    return start(AggregatorConfig(
        host="127.0.0.1", port=0, metrics_port=0, checkpoint_dir=tmp_path / "ckpt",
        rounds=RoundConfig(clients_per_round=2, min_clients=1),
        limits=ServiceLimits(**limits) if limits else ServiceLimits(),
        tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=pki.ca if mutual else None,
        tokens_file=tokens_file(tmp_path),
    ))


@pytest.fixture
def secure(tmp_path: Path, pki: Pki) -> Iterator[RunningAggregator]:
    running = serve(tmp_path, pki)
    yield running
    running.stop(grace_s=1)


def channel(port: int, pki: Pki, client_cert: bool = False) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki.ca.read_bytes(),
        private_key=pki.client_key.read_bytes() if client_cert else None,
        certificate_chain=pki.client_cert.read_bytes() if client_cert else None,
    )
    return grpc.secure_channel(f"127.0.0.1:{port}", creds)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def pull(stub, client_id: str, metadata=()) -> tuple[pb.ModelHeader, bytes]:
    responses = list(stub.PullModel(pb.PullModelRequest(client_id=client_id), timeout=20, metadata=metadata))
    return responses[0].header, b"".join(r.chunk for r in responses[1:])


def push(stub, client_id: str, payload: bytes, metadata=()) -> pb.PushUpdateResponse:
    header = pb.UpdateHeader(client_id=client_id, round=1, num_samples=5, update_id=uuid.uuid4().hex,
                             total_bytes=len(payload), sha256=sha256_hex(payload))
    msgs = [pb.PushUpdateRequest(header=header)] + [pb.PushUpdateRequest(chunk=c) for c in iter_chunks(payload)]
    return stub.PushUpdate(iter(msgs), timeout=20, metadata=metadata)


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


def test_tokens_are_checked_on_every_rpc(secure: RunningAggregator, pki: Pki, caplog) -> None:
    caplog.set_level(logging.INFO)
    with channel(secure.port, pki) as ch:
        stub = pb_grpc.AggregatorStub(ch)
        header, payload = pull(stub, "alice", bearer(ALICE))
        assert header.model_version == 0
        good = payload

        calls = {
            "PullModel": lambda md: pull(stub, "alice", md),
            "PushUpdate": lambda md: push(stub, "alice", good, md),
            "ReportEvaluation": lambda md: stub.ReportEvaluation(pb.ReportEvaluationRequest(
                client_id="alice", model_version=0,
                metrics=pb.EvaluationMetrics(examples=1, loss=1, accuracy=1, uar=1)), timeout=10, metadata=md),
            "GetStatus": lambda md: stub.GetStatus(pb.GetStatusRequest(), timeout=10, metadata=md),
        }
        for rpc, call in calls.items():
            assert code_of(lambda: call(()))[0] == grpc.StatusCode.UNAUTHENTICATED, rpc
            code, details = code_of(lambda: call(bearer("not-a-real-token-at-all")))
            assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, "unknown bearer token"), rpc
        # Bob's token cannot act for alice.
        code, details = code_of(lambda: pull(stub, "alice", bearer(BOB)))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "does not belong to client 'alice'" in details
        assert code_of(lambda: push(stub, "alice", good, bearer(BOB)))[0] == grpc.StatusCode.PERMISSION_DENIED
        # The right token works for every RPC.
        assert push(stub, "alice", good, bearer(ALICE)).accepted
        assert stub.GetStatus(pb.GetStatusRequest(), timeout=10, metadata=bearer(BOB)).accepted_in_round == 1
        # Health stays open for probes, no token needed.
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING

    m = scrape(secure.metrics_port)
    assert m[("fedser_auth_failures_total", (("reason", "unauthenticated"), ("rpc", "PullModel")))] == 2
    assert m[("fedser_auth_failures_total", (("reason", "unauthenticated"), ("rpc", "PushUpdate")))] == 2
    assert m[("fedser_auth_failures_total", (("reason", "permission_denied"), ("rpc", "PullModel")))] == 1
    assert m[("fedser_updates_total", (("reason", "permission_denied"), ("status", "rejected")))] == 1
    with urllib.request.urlopen(f"http://127.0.0.1:{secure.metrics_port}/metrics", timeout=10) as resp:
        exported = resp.read().decode()
    for secret in (ALICE, BOB):
        assert secret not in exported
        assert secret not in caplog.text


def test_plaintext_client_cannot_talk_to_a_tls_server(secure: RunningAggregator) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{secure.port}") as ch:
        code, _ = code_of(lambda: pb_grpc.AggregatorStub(ch).GetStatus(
            pb.GetStatusRequest(), timeout=5, metadata=bearer(ALICE)))
    assert code == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_requires_a_client_certificate(tmp_path: Path, pki: Pki) -> None:
    running = serve(tmp_path, pki, mutual=True)
    try:
        with channel(running.port, pki) as ch:
            code, _ = code_of(lambda: pb_grpc.AggregatorStub(ch).GetStatus(
                pb.GetStatusRequest(), timeout=5, metadata=bearer(ALICE)))
            assert code == grpc.StatusCode.UNAVAILABLE
        with channel(running.port, pki, client_cert=True) as ch:
            status = pb_grpc.AggregatorStub(ch).GetStatus(pb.GetStatusRequest(), timeout=10, metadata=bearer(ALICE))
            assert status.round == 1
    finally:
        running.stop(grace_s=1)


def test_streams_per_client_are_bounded(tmp_path: Path, pki: Pki) -> None:
    running = serve(tmp_path, pki, max_streams_per_client=1)
    try:
        with channel(running.port, pki) as ch:
            stub = pb_grpc.AggregatorStub(ch)
            held: list = []

            def long_poll() -> None:
                # Waits 5 s for a version that never comes, holding alice's only stream slot.
                held.extend(stub.PullModel(pb.PullModelRequest(client_id="alice", min_version=5, wait_seconds=5),
                                           timeout=20, metadata=bearer(ALICE)))

            t = threading.Thread(target=long_poll)
            t.start()
            time.sleep(1.5)  # ample for the long poll to reach the server; nothing else runs meanwhile
            code, details = code_of(lambda: pull(stub, "alice", bearer(ALICE)))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "1 streams open" in details
            assert pull(stub, "bob", bearer(BOB))[0].model_version == 0  # others are unaffected
            t.join()
            assert len(held) == 1 and held[0].header.payload_omitted  # the long poll itself ran normally
            assert pull(stub, "alice", bearer(ALICE))[0].model_version == 0  # slot freed
    finally:
        running.stop(grace_s=1)


@pytest.mark.parametrize("content, message", [
    ("alice", "line 1 is not 'client-id:token'"),
    (f"alice:{ALICE}\nalice:{BOB}", "line 2: client 'alice' has a second token"),
    ("alice:short", "shorter than 16 characters"),
    (f"alice:{ALICE}\nbob:{ALICE}", "a token is shared by two clients"),
    ("# nothing\n", "no tokens"),
])
def test_tokens_file_errors_name_the_line_not_the_token(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "tokens"
    path.write_text(content)
    with pytest.raises(SecurityConfigError) as err:
        TokenTable.from_file(path)
    assert message in str(err.value)
    assert ALICE not in str(err.value) and BOB not in str(err.value)


def test_a_client_process_trains_over_tls_with_its_token(tmp_path: Path, pki: Pki, corpus: list[Path]) -> None:
    tokens = tokens_file(tmp_path)
    (tmp_path / "alice.token").write_text(ALICE + "\n")
    env = single_thread_env()
    agg = start_aggregator(tmp_path / "ckpt", tmp_path / "aggregator.log", env=env, args=[
        "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key), "--tokens-file", str(tokens),
        "--clients-per-round", "1", "--min-clients", "1", "--rounds", "1", "--local-epochs", "1",
    ])
    try:
        client = start_client(f"localhost:{agg.port}", corpus[0], "alice", tmp_path / "client.log", env=env,
                              args=["--tls-ca", str(pki.ca), "--token-file", str(tmp_path / "alice.token"),
                                    "--threads", "1"])
        assert client.wait(timeout=180) == 0, (tmp_path / "client.log").read_text()[-2000:]
        log = (tmp_path / "aggregator.log").read_text()
        assert '"event":"round_closed"' in log and '"tls":true' in log
        assert ALICE not in log and ALICE not in (tmp_path / "client.log").read_text()
    finally:
        assert agg.stop() == 0


def test_plaintext_health_port_for_probes_beside_a_tls_server(tmp_path: Path, pki: Pki) -> None:
    from dataclasses import replace

    running = start(replace(
        AggregatorConfig(host="127.0.0.1", port=0, metrics_port=0, checkpoint_dir=tmp_path / "ckpt",
                         tls_cert=pki.server_cert, tls_key=pki.server_key, tokens_file=tokens_file(tmp_path)),
        health_port=0,
    ))
    try:
        assert running.health_port not in (None, running.port)
        with grpc.insecure_channel(f"127.0.0.1:{running.health_port}") as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="fedser.v1.Aggregator"),
                                                         timeout=10)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
            # Only health lives there: the federation's RPCs are not reachable in plaintext.
            code, _ = code_of(lambda: pb_grpc.AggregatorStub(ch).GetStatus(pb.GetStatusRequest(), timeout=5))
            assert code == grpc.StatusCode.UNIMPLEMENTED
    finally:
        running.stop(grace_s=1)
