"""Load and exactness (issue 4): 200 concurrent clients in one round, 20 more cut off mid-stream.

One in-process aggregator (clients_per_round=200), real gRPC over 127.0.0.1,
one channel per client thread. Each client pulls the global model and pushes
a known update w_k = w0 * a_k + b_k with a known n_k; the test computes the
exact FedAvg independently in float64 and compares with the new global model.
Twenty further clients open a push, send the header and one 1 MiB chunk, and
are then cut off (half cancel the call, half have their request stream raise)
while the round is filling: they carry huge n_k and extreme values, so any
trace of them in the average would show. The gRPC health check is polled from
another thread throughout. Wall times are printed (run with -s), never asserted.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedser.v1 import aggregator_pb2 as pb
from model.serialization import arrays_to_bytes, bytes_to_arrays
from tests.conftest import scrape
from tests.helpers_push import (
    SERVING,
    channel,
    health,
    pull,
    push,
    start_in_process,
    stub_for,
    update_header,
    updates_total,
    wait_until,
)

N_CLIENTS = 200
N_CUT_OFF = 20
CHUNK = 1 << 20


def n_k(k: int) -> int:
    return 1 + (k * 37) % 500


def client_update(base: dict[str, np.ndarray], k: int) -> dict[str, np.ndarray]:
    """Client k's tensors: the global model scaled and shifted by per-client float32 constants."""
    a, b = np.float32(0.5 + k / 100), np.float32((k % 17) - 8.0) / np.float32(4.0)
    return {name: w * a + b for name, w in base.items()}


def cut_off_requests(header: pb.UpdateHeader, first_chunk: bytes, handed_over: threading.Event,
                     release: threading.Event, raise_on_release: bool):
    """Header and one chunk, then nothing until released; then the stream raises or just ends (after a cancel)."""
    yield pb.PushUpdateRequest(header=header)
    yield pb.PushUpdateRequest(chunk=first_chunk)
    handed_over.set()  # gRPC asked for the next message: the chunk is on its way
    release.wait(120)
    if raise_on_release:
        raise ConnectionAbortedError("client cut off mid-stream")


def test_200_concurrent_clients_are_each_counted_once_and_averaged_exactly(tmp_path: Path,
                                                                           record_property) -> None:
    t_test = time.monotonic()
    agg = start_in_process(tmp_path / "ckpt", max_workers=320, clients_per_round=N_CLIENTS, min_clients=1,
                           round_timeout_s=3600)
    target = f"127.0.0.1:{agg.port}"
    try:
        with channel(target) as ch:
            header0, base, base_payload = pull(stub_for(ch))
        assert (header0.round, header0.model_version) == (1, 0)

        # -- 20 pushes cut off mid-stream, holding their server threads while the round fills
        cut_channel = channel(target)
        cut_stub = stub_for(cut_channel)
        releases = [threading.Event() for _ in range(N_CUT_OFF)]
        handed = [threading.Event() for _ in range(N_CUT_OFF)]
        poison = arrays_to_bytes({name: np.full_like(w, 1e3) for name, w in base.items()})
        cut_futures = []
        for j in range(N_CUT_OFF):
            h = update_header(f"cut-{j}", 1, 10**6, poison)
            requests = cut_off_requests(h, poison[:CHUNK], handed[j], releases[j], raise_on_release=j % 2 == 1)
            cut_futures.append(cut_stub.PushUpdate.future(requests, timeout=300))
        for e in handed:
            assert e.wait(30)
        # The server has read each cut-off push's header and first chunk and waits for the rest.
        wait_until(lambda: scrape(agg.metrics_port).get(("fedser_bytes_received_total", ())) == N_CUT_OFF * CHUNK,
                   30, "the server to read the first chunk of every cut-off push")

        # -- health checks from another thread, for the whole load
        health_answers: list[object] = []
        load_done = threading.Event()

        def poll_health() -> None:
            with channel(target) as hch:
                while not load_done.is_set():
                    try:
                        health_answers.append(health(hch, timeout=10))
                    except grpc.RpcError as exc:
                        health_answers.append(exc.code())
                    load_done.wait(0.05)

        # -- 200 clients: pull, then push w_k with n_k, all released at once
        replies: dict[int, object] = {}
        start = threading.Barrier(N_CLIENTS + 1)

        def run_client(k: int) -> None:
            start.wait(60)
            try:
                with channel(target) as cch:
                    stub = stub_for(cch)
                    header, arrays, payload = pull(stub, client_id=f"load-{k}")
                    assert header.round == 1 and payload == base_payload
                    replies[k] = push(stub, f"load-{k}", 1, n_k(k), arrays_to_bytes(client_update(arrays, k)),
                                      timeout=300)
            except BaseException as exc:  # recorded and asserted on below
                replies[k] = exc

        health_thread = threading.Thread(target=poll_health, name="health-poller")
        health_thread.start()
        clients = [threading.Thread(target=run_client, args=(k,), name=f"client-{k}") for k in range(N_CLIENTS)]
        for t in clients:
            t.start()
        start.wait(60)
        t_round = time.monotonic()

        # Cut the 20 off while the round is half full.
        wait_until(lambda: agg.manager.status().accepted >= N_CLIENTS // 2 or agg.manager.status().model_version,
                   300, "half of the round's updates")
        assert agg.manager.status().model_version == 0, "the round closed before the cut-off clients were cut off"
        for j, fut in enumerate(cut_futures):
            if j % 2 == 0:
                fut.cancel()
            releases[j].set()

        for t in clients:
            t.join(300)
        round_wall_s = time.monotonic() - t_round
        load_done.set()
        health_thread.join(30)

        # -- every client accepted exactly once, in a distinct position of the round
        failures = {k: r for k, r in replies.items() if not isinstance(r, pb.PushUpdateResponse)}
        assert not failures, list(failures.items())[:3]
        assert len(replies) == N_CLIENTS
        assert all(r.accepted and not r.duplicate and r.round == 1 for r in replies.values())
        assert sorted(r.accepted_in_round for r in replies.values()) == list(range(1, N_CLIENTS + 1))

        # -- the cut-off pushes ended without an answer and count nowhere
        for j, fut in enumerate(cut_futures):
            if j % 2 == 0:
                assert fut.cancelled()
            else:  # the request stream raised: gRPC cancels the call on the client side
                with pytest.raises(grpc.RpcError) as err:
                    fut.result(timeout=30)
                assert err.value.code() == grpc.StatusCode.UNKNOWN
                assert "Exception iterating requests" in err.value.details()
        cut_channel.close()

        status = agg.manager.status()
        assert (status.round, status.model_version, status.accepted) == (2, 1, 0)
        (summary,) = agg.manager.history()
        assert summary.participants == N_CLIENTS
        assert summary.samples == sum(n_k(k) for k in range(N_CLIENTS))

        # -- the new global model is the exact weighted average of the 200 updates
        sums = {name: np.zeros(w.shape, np.float64) for name, w in base.items()}
        for k in range(N_CLIENTS):
            for name, w in client_update(base, k).items():
                sums[name] += w.astype(np.float64) * n_k(k)
        m = float(summary.samples)
        with channel(target) as ch:
            header1, new, payload1 = pull(stub_for(ch))
        assert header1.model_version == 1
        for name, s in sums.items():
            np.testing.assert_allclose(new[name], (s / m).astype(np.float32), rtol=1e-6, atol=1e-6, err_msg=name)
        assert bytes_to_arrays((tmp_path / "ckpt" / "global-v00000001.safetensors").read_bytes()).keys() == new.keys()
        assert (tmp_path / "ckpt" / "global-v00000001.safetensors").read_bytes() == payload1

        # -- metrics: 200 accepted, nothing else counted; cut-offs only delivered their first chunk
        metrics = scrape(agg.metrics_port)
        assert updates_total(metrics, "accepted") == N_CLIENTS
        assert updates_total(metrics, "duplicate") == 0
        # A cut-off stream normally reaches the handler as a cancellation (counted nowhere); the server may
        # also see it end early (a half-close racing the cancel), which is refused as a size mismatch.
        rejected = {dict(k[1])["reason"]: v for k, v in metrics.items()
                    if k[0] == "fedser_updates_total" and ("status", "rejected") in k[1]}
        assert set(rejected) <= {"size_mismatch"} and sum(rejected.values()) <= N_CUT_OFF, rejected
        assert metrics[("fedser_round_participants", ())] == N_CLIENTS
        assert metrics[("fedser_round_samples", ())] == summary.samples
        assert metrics[("fedser_rounds_completed_total", (("closed_by", "quorum"),))] == 1
        update_bytes = len(arrays_to_bytes(client_update(base, 0)))
        assert metrics[("fedser_bytes_received_total", ())] == N_CLIENTS * update_bytes + N_CUT_OFF * CHUNK

        # -- health answered SERVING throughout
        assert len(health_answers) >= 3, health_answers
        assert all(a == SERVING for a in health_answers), [a for a in health_answers if a != SERVING][:5]

        # A cut-off client id is free to take part in the next round (its stream slot was released).
        with channel(target) as ch:
            reply = push(stub_for(ch), "cut-0", 2, 5, arrays_to_bytes(new))
        assert reply.accepted and reply.round == 2
    finally:
        agg.stop(grace_s=2)
    test_wall_s = time.monotonic() - t_test
    record_property("round_wall_s", round(round_wall_s, 2))
    record_property("test_wall_s", round(test_wall_s, 2))
    print(f"\n[load] {N_CLIENTS} clients + {N_CUT_OFF} cut off: round wall {round_wall_s:.2f} s "
          f"(server round duration {summary.duration_s:.2f} s), health checks {len(health_answers)}, "
          f"cut-offs refused as size_mismatch {int(sum(rejected.values()))}, "
          f"test wall {test_wall_s:.2f} s")
