"""End to end: a real aggregator process and real client processes on 127.0.0.1, reading real WAV files."""
from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from safetensors.numpy import load_file

from experiments.processes import single_thread_env, start_aggregator, start_client, stop_process
from fedser.v1 import aggregator_pb2 as pb
from fedser.v1 import aggregator_pb2_grpc as pb_grpc
from model.network import build_model
from model.serialization import bytes_to_arrays, load_arrays_into
from tests.conftest import scrape

pytestmark = pytest.mark.e2e

CLIENT_ARGS = ["--threads", "1"]
# Each client has 3 speakers x 28 files; one speaker is held out, so n_k = 56.
TRAIN_PER_CLIENT = 56


def status(target: str) -> pb.GetStatusResponse:
    with grpc.insecure_channel(target) as ch:
        return pb_grpc.AggregatorStub(ch).GetStatus(pb.GetStatusRequest(), timeout=10)


def pull_arrays(target: str) -> tuple[pb.ModelHeader, dict[str, np.ndarray]]:
    with grpc.insecure_channel(target) as ch:
        responses = list(pb_grpc.AggregatorStub(ch).PullModel(pb.PullModelRequest(client_id="test"), timeout=30))
    return responses[0].header, bytes_to_arrays(b"".join(r.chunk for r in responses[1:]))


def wait_all(procs, timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    for p in procs:
        p.wait(timeout=max(1.0, deadline - time.monotonic()))
    return [p.returncode for p in procs]


def log_events(path: Path) -> list[dict]:
    events = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


def test_three_clients_two_rounds_then_resume(tmp_path: Path, corpus: list[Path]) -> None:
    ckpt = tmp_path / "ckpt"
    env = single_thread_env()
    agg = start_aggregator(ckpt, tmp_path / "aggregator.log", env=env, args=[
        "--clients-per-round", "3", "--min-clients", "2", "--rounds", "2", "--round-timeout", "120",
        "--local-epochs", "1", "--batch-size", "16",
    ])
    try:
        clients = [start_client(agg.target, folder, f"client-{k}", tmp_path / f"client-{k}.log", CLIENT_ARGS, env=env)
                   for k, folder in enumerate(corpus)]
        codes = wait_all(clients, 300)
        logs = {k: (tmp_path / f"client-{k}.log").read_text()[-2000:] for k in range(3)}
        assert codes == [0, 0, 0], logs

        st = status(agg.target)
        assert st.model_version == 2 and st.round == 3 and st.finished
        assert [(r.round, r.model_version, r.participants, r.samples) for r in st.rounds] == [
            (1, 1, 3, 3 * TRAIN_PER_CLIENT), (2, 2, 3, 3 * TRAIN_PER_CLIENT)]
        # Every client evaluated every version (0, 1, 2) on its held-out speaker: 28 files each.
        assert [(e.model_version, e.reports, e.metrics.examples) for e in st.evaluations] == [
            (0, 3, 84), (1, 3, 84), (2, 3, 84)]

        # The served model is the checkpoint on disk, tensor for tensor, and loads into the network.
        header, served = pull_arrays(agg.target)
        stored = load_file(str(ckpt / "global-v00000002.safetensors"))
        assert header.model_version == 2 and served.keys() == stored.keys()
        for name in served:
            np.testing.assert_array_equal(served[name], stored[name])
        load_arrays_into(build_model("seed-cnn-v1"), stored)
        initial = load_file(str(ckpt / "global-v00000000.safetensors"))
        assert not np.array_equal(initial["classifier.weight"], stored["classifier.weight"])

        m = scrape(agg.metrics_port)
        assert m[("fedser_round", ())] == 2  # the last round; none opens after the final one
        assert m[("fedser_federation_finished", ())] == 1
        assert m[("fedser_model_version", ())] == 2
        assert m[("fedser_rounds_completed_total", (("closed_by", "quorum"),))] == 2
        assert m[("fedser_round_participants", ())] == 3
        assert m[("fedser_round_samples", ())] == 3 * TRAIN_PER_CLIENT
        assert m[("fedser_round_duration_seconds_count", ())] == 2
        assert m[("fedser_updates_total", (("reason", ""), ("status", "accepted")))] == 6
        assert m[("fedser_evaluation_reports_total", (("status", "accepted"),))] == 9
        assert m[("fedser_global_evaluated_version", ())] == 2
        assert m[("fedser_global_evaluation_examples", ())] == 84
        assert 0.0 <= m[("fedser_global_uar", ())] <= 1.0
        assert m[("fedser_build_info", (("architecture", "seed-cnn-v1"), ("version", "0.1.0")))] == 1
        events = [e["event"] for e in log_events(tmp_path / "aggregator.log")]
        assert events.count("round_closed") == 2 and events.count("update_accepted") == 6
        sha_before = header.sha256
    finally:
        assert agg.stop() == 0  # SIGTERM: graceful, exit code 0

    # Restart on the same folder: it resumes at the same version, byte for byte.
    again = start_aggregator(ckpt, tmp_path / "aggregator-2.log", env=env, args=["--rounds", "2"])
    try:
        st = status(again.target)
        assert (st.model_version, st.round) == (2, 3)
        header, _ = pull_arrays(again.target)
        assert header.model_version == 2 and header.sha256 == sha_before
        resumed = [e for e in log_events(tmp_path / "aggregator-2.log") if e["event"] == "resumed"]
        assert resumed and resumed[0]["model_version"] == 2
    finally:
        again.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_client_waits_with_backoff_for_a_late_aggregator(tmp_path: Path, corpus: list[Path]) -> None:
    port = free_port()
    env = single_thread_env()
    client = start_client(f"127.0.0.1:{port}", corpus[0], "early", tmp_path / "client.log",
                          [*CLIENT_ARGS, "--rounds", "1", "--max-backoff", "1"], env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "retrying" not in (tmp_path / "client.log").read_text():
            time.sleep(0.2)
        retries = [e for e in log_events(tmp_path / "client.log") if e["event"] == "retrying"]
        assert retries and retries[0]["code"] == "UNAVAILABLE"
        agg = start_aggregator(tmp_path / "ckpt", tmp_path / "aggregator.log", port=port, env=env,
                               args=["--clients-per-round", "1", "--min-clients", "1", "--local-epochs", "1"])
        try:
            assert wait_all([client], 120) == [0]
            assert status(agg.target).model_version == 1
        finally:
            agg.stop()
    finally:
        stop_process(client)


def test_client_stops_cleanly_on_sigterm(tmp_path: Path, corpus: list[Path]) -> None:
    env = single_thread_env()
    # One client per round of two: the round never closes, so the client waits until told to stop.
    agg = start_aggregator(tmp_path / "ckpt", tmp_path / "aggregator.log", env=env,
                           args=["--clients-per-round", "2", "--min-clients", "2", "--local-epochs", "1"])
    try:
        client = start_client(agg.target, corpus[1], "waiter", tmp_path / "client.log", CLIENT_ARGS, env=env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and status(agg.target).accepted_in_round < 1:
            time.sleep(0.2)
        assert status(agg.target).accepted_in_round == 1
        assert stop_process(client, timeout_s=30) == 0
        events = [e["event"] for e in log_events(tmp_path / "client.log")]
        assert "shutdown_requested" in events and "stopped" in events
        assert "Traceback" not in (tmp_path / "client.log").read_text()
    finally:
        agg.stop()


@pytest.mark.parametrize("encoding, max_share", [("fp16-delta", 0.51), ("int8-delta", 0.26)])
def test_clients_push_compressed_updates(tmp_path: Path, corpus: list[Path], encoding: str, max_share: float) -> None:
    """Real client processes with --update-encoding: rounds close, the model learns, and fewer bytes arrive."""
    env = single_thread_env()
    agg = start_aggregator(tmp_path / "ckpt", tmp_path / "aggregator.log", env=env, args=[
        "--clients-per-round", "2", "--min-clients", "2", "--rounds", "2", "--round-timeout", "120",
        "--local-epochs", "1", "--batch-size", "16",
    ])
    try:
        _, initial = pull_arrays(agg.target)
        model_bytes = 4 * sum(a.size for a in initial.values())
        clients = [start_client(agg.target, folder, f"client-{k}", tmp_path / f"client-{k}.log",
                                CLIENT_ARGS + ["--update-encoding", encoding], env=env)
                   for k, folder in enumerate(corpus[:2])]
        assert wait_all(clients, 300) == [0, 0]
        st = status(agg.target)
        assert st.model_version == 2 and [r.participants for r in st.rounds] == [2, 2]
        _, final = pull_arrays(agg.target)
        assert not np.array_equal(initial["classifier.weight"], final["classifier.weight"])
        assert all(np.isfinite(a).all() for a in final.values())
        m = scrape(agg.metrics_port)
        assert m[("fedser_updates_total", (("reason", ""), ("status", "accepted")))] == 4
        # Four updates arrived in (about) half or a quarter of the float32 bytes.
        assert m[("fedser_bytes_received_total", ())] <= max_share * 4 * model_bytes
    finally:
        assert agg.stop() == 0
