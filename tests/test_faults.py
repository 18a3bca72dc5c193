"""Faults (issue 4): killed and paused clients, a killed aggregator, torn checkpoint writes, lost acknowledgements.

The process tests run the real `fedser-aggregator` and `fedser-client`
processes (started through experiments.processes) on 127.0.0.1 against the
session corpus: 3 client folders of real WAV files, 3 speakers x 28 files each,
one speaker held out, so every client trains on n_k = 56 samples.

Clients are started before the aggregator (they wait with backoff), so that
every client joins round 1 as soon as the aggregator serves; a client is
killed or paused at its "evaluated" event of a round: it has pulled that
round's model and is training (``--local-epochs`` is raised a little to make
that window comfortably longer than the 20 ms polling of its log).
"""
from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import grpc
import numpy as np
import pytest

from aggregator_service.checkpoints import CheckpointStore, encode_checkpoint
from experiments.processes import AggregatorProcess, single_thread_env, start_aggregator, start_client, stop_process
from model.serialization import arrays_to_bytes, bytes_to_arrays, sha256_hex
from tests.conftest import scrape
from tests.helpers_push import (
    channel,
    events_named,
    filled,
    free_port,
    pull,
    push,
    push_messages,
    rounds_completed,
    start_in_process,
    status,
    stub_for,
    update_header,
    updates_total,
    wait_until,
    weighted_average,
)

TRAIN_PER_CLIENT = 56  # 2 train speakers x 28 files per client folder
CLIENT_ARGS = ["--threads", "1", "--max-backoff", "1"]
TRAINING_EPOCHS = "10"  # ~1 s of local training: the window in which a client is killed or paused


# -- a federation of real processes -----------------------------------------
@dataclass
class Federation:
    """Client processes started first, then the aggregator on the port they are dialling."""

    tmp: Path
    env: dict[str, str]
    port: int
    clients: dict[str, subprocess.Popen] = field(default_factory=dict)
    aggregator: AggregatorProcess | None = None
    _all: list[subprocess.Popen] = field(default_factory=list)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def aggregator_log(self) -> Path:
        assert self.aggregator is not None
        return self.aggregator.log_path

    def client_log(self, client_id: str) -> Path:
        return self.tmp / f"client-{client_id}.log"

    def start_client(self, client_id: str, data: Path, extra: list[str] | None = None) -> subprocess.Popen:
        proc = start_client(self.target, data, client_id, self.client_log(client_id), [*CLIENT_ARGS, *(extra or [])],
                            env=self.env)
        self.clients[client_id] = proc
        self._all.append(proc)
        return proc

    def wait_data_ready(self, client_id: str, timeout_s: float = 120) -> None:
        wait_until(lambda: events_named(self.client_log(client_id), "data_ready") or self._exited(client_id),
                   timeout_s, f"{client_id} to load its data")
        assert self.clients[client_id].poll() is None, self.tail(self.client_log(client_id))

    def start_aggregator(self, args: list[str], log_name: str = "aggregator.log") -> AggregatorProcess:
        agg = start_aggregator(self.tmp / "ckpt", self.tmp / log_name, args=args, port=self.port, env=self.env)
        self.aggregator = agg
        self._all.append(agg.proc)
        return agg

    def signal_while_training(self, client_id: str, model_version: int, sig: signal.Signals) -> None:
        """Send ``sig`` once the client evaluated ``model_version`` (it pulled the round's model and is training)."""
        wait_until(lambda: events_named(self.client_log(client_id), "evaluated", model_version=model_version)
                   or self._exited(client_id), 120, f"{client_id} to start training on version {model_version}",
                   interval_s=0.02)
        self.clients[client_id].send_signal(sig)
        pushed = events_named(self.client_log(client_id), "update_pushed")
        assert not pushed, f"{client_id} pushed before it could be signalled (timing): {pushed}"

    def wait_clients(self, client_ids: list[str], timeout_s: float) -> list[int | None]:
        deadline = time.monotonic() + timeout_s
        codes = []
        for cid in client_ids:
            try:
                codes.append(self.clients[cid].wait(timeout=max(1.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                codes.append(None)
        return codes

    def logs(self, *client_ids: str) -> str:
        """Log tails for assertion messages."""
        parts = [f"--- aggregator\n{self.tail(self.aggregator_log)}"] if self.aggregator else []
        parts += [f"--- {cid}\n{self.tail(self.client_log(cid))}" for cid in client_ids]
        return "\n".join(parts)

    @staticmethod
    def tail(path: Path, chars: int = 2500) -> str:
        try:
            return path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _exited(self, client_id: str) -> bool:
        return self.clients[client_id].poll() is not None

    def cleanup(self) -> None:
        for proc in self._all:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)  # a paused process cannot handle SIGTERM
                stop_process(proc, timeout_s=10)


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    fed = Federation(tmp_path, single_thread_env(), free_port())
    yield fed
    fed.cleanup()


def start_federation(fed: Federation, clients: dict[str, Path], aggregator_args: list[str]) -> None:
    for cid, folder in clients.items():
        fed.start_client(cid, folder)
    for cid in clients:
        fed.wait_data_ready(cid)
    fed.start_aggregator(aggregator_args)


def summaries(st) -> list[tuple[int, int, int, int]]:
    return [(r.round, r.model_version, r.participants, r.samples) for r in st.rounds]


def accepted_by_round(log: Path) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for e in events_named(log, "update_accepted"):
        out.setdefault(e["round"], set()).add(e["client"])
    return out


# -- 1. a client killed mid-round --------------------------------------------
@pytest.mark.e2e
def test_client_killed_mid_round_round_closes_at_deadline_with_the_rest(federation: Federation, corpus: list[Path]) -> None:
    fed = federation
    timeout_s = 8.0
    start_federation(fed, {"alpha": corpus[0], "bravo": corpus[1], "victim": corpus[2]}, [
        "--clients-per-round", "3", "--min-clients", "2", "--round-timeout", str(timeout_s), "--rounds", "1",
        "--local-epochs", TRAINING_EPOCHS,
    ])
    fed.signal_while_training("victim", 0, signal.SIGKILL)
    assert fed.clients["victim"].wait(timeout=10) == -signal.SIGKILL

    assert fed.wait_clients(["alpha", "bravo"], 120) == [0, 0], fed.logs("alpha", "bravo")
    st = status(fed.target)
    assert st.finished and st.model_version == 1
    assert summaries(st) == [(1, 1, 2, 2 * TRAIN_PER_CLIENT)]
    assert st.rounds[0].duration_seconds >= timeout_s - 0.05  # not before its deadline
    m = scrape(fed.aggregator.metrics_port)
    assert rounds_completed(m, "deadline") == 1 and rounds_completed(m, "quorum") == 0
    assert m[("fedser_round_participants", ())] == 2 and m[("fedser_round_samples", ())] == 2 * TRAIN_PER_CLIENT
    assert accepted_by_round(fed.aggregator_log) == {1: {"alpha", "bravo"}}
    closed = events_named(fed.aggregator_log, "round_closed")
    assert [(e["round"], e["participants"], e["closed_by"]) for e in closed] == [(1, 2, "deadline")]


@pytest.mark.e2e
def test_round_below_min_clients_waits_past_deadline_until_a_replacement_joins(federation: Federation,
                                                                                corpus: list[Path]) -> None:
    fed = federation
    start_federation(fed, {"alpha": corpus[0], "bravo": corpus[1], "victim": corpus[2]}, [
        "--clients-per-round", "3", "--min-clients", "3", "--round-timeout", "6", "--rounds", "1",
        "--local-epochs", TRAINING_EPOCHS,
    ])
    fed.signal_while_training("victim", 0, signal.SIGKILL)

    def waiting_with_two():
        st = status(fed.target)
        return st if st.accepted_in_round == 2 and st.overdue else None

    st = wait_until(waiting_with_two, 120, "round 1 to be overdue with 2 updates")
    assert (st.round, st.model_version, st.finished) == (1, 0, False)
    assert st.deadline.ToNanoseconds() / 1e9 < time.time()
    m = scrape(fed.aggregator.metrics_port)
    assert m[("fedser_round_overdue", ())] == 1
    assert m[("fedser_round_accepted_updates", ())] == 2
    assert rounds_completed(m, "deadline") == 0 and rounds_completed(m, "quorum") == 0
    waiting = wait_until(lambda: events_named(fed.aggregator_log, "round_waiting", round=1), 10, "round_waiting")
    assert len(waiting) == 1 and waiting[0]["min_clients"] == 3 and waiting[0]["accepted"] <= 2

    # A replacement device (new id, the killed client's data) joins; until it pushes the round stays open.
    fed.start_client("victim-replacement", corpus[2])
    fed.wait_data_ready("victim-replacement")
    st = status(fed.target)
    assert (st.model_version, st.accepted_in_round, st.overdue) == (0, 2, True)

    codes = fed.wait_clients(["alpha", "bravo", "victim-replacement"], 120)
    assert codes == [0, 0, 0], fed.logs("alpha", "bravo", "victim-replacement")
    st = status(fed.target)
    assert st.finished and summaries(st) == [(1, 1, 3, 3 * TRAIN_PER_CLIENT)]
    m = scrape(fed.aggregator.metrics_port)
    assert rounds_completed(m, "quorum") == 1 and rounds_completed(m, "deadline") == 0
    assert accepted_by_round(fed.aggregator_log) == {1: {"alpha", "bravo", "victim-replacement"}}


def test_overdue_gauge_clears_when_the_overdue_final_round_closes(tmp_path: Path) -> None:
    """In process: the last round goes overdue, then closes; GetStatus and the gauge must agree (not overdue)."""
    agg = start_in_process(tmp_path / "ckpt", clients_per_round=2, min_clients=2, round_timeout_s=0.3, max_rounds=1)
    try:
        target = f"127.0.0.1:{agg.port}"
        with channel(target) as ch:
            stub = stub_for(ch)
            _, arrays, _ = pull(stub)
            push(stub, "one", 1, 5, arrays_to_bytes(filled(arrays, 1.0)))
            wait_until(lambda: status(target).overdue, 10, "overdue")
            assert scrape(agg.metrics_port)[("fedser_round_overdue", ())] == 1
            push(stub, "two", 1, 5, arrays_to_bytes(filled(arrays, 3.0)))
        st = wait_until(lambda: (s := status(target)).finished and s, 10, "the federation to finish")
        assert not st.overdue
        assert scrape(agg.metrics_port)[("fedser_round_overdue", ())] == 0
    finally:
        agg.stop(grace_s=1)


# -- 2. the aggregator killed mid-round ---------------------------------------
@pytest.mark.e2e
def test_aggregator_killed_mid_round_resumes_and_the_run_finishes(federation: Federation, corpus: list[Path]) -> None:
    fed = federation
    rounds = 3
    args = ["--clients-per-round", "3", "--min-clients", "2", "--rounds", str(rounds), "--local-epochs", "1"]
    # "charlie" takes part in round 1 only, so that round 2 holds two updates and waits for its deadline
    # (60 s, never reached): the window in which the aggregator is killed. The restarted process gets a
    # short round timeout, so that rounds 2 and 3, which only two clients serve, close at their deadlines.
    fed.start_client("alpha", corpus[0])
    fed.start_client("bravo", corpus[1])
    fed.start_client("charlie", corpus[2], ["--rounds", "1"])
    for cid in ("alpha", "bravo", "charlie"):
        fed.wait_data_ready(cid)
    first = fed.start_aggregator([*args, "--round-timeout", "60"])

    def round_two_half_full():
        st = status(fed.target)
        return st if st.model_version == 1 and st.accepted_in_round == 2 else None

    st = wait_until(round_two_half_full, 90, "round 2 to hold 2 accepted updates")
    assert summaries(st) == [(1, 1, 3, 3 * TRAIN_PER_CLIENT)]
    with channel(fed.target) as ch:
        v1_header, _, _ = pull(stub_for(ch))
    assert v1_header.model_version == 1

    first.proc.kill()
    assert first.proc.wait(timeout=10) == -signal.SIGKILL
    store = CheckpointStore(fed.tmp / "ckpt")
    assert store.versions() == [0, 1]
    assert sha256_hex((fed.tmp / "ckpt" / "global-v00000001.safetensors").read_bytes()) == v1_header.sha256

    second = fed.start_aggregator([*args, "--round-timeout", "4"], log_name="aggregator-2.log")
    assert second.port == first.port
    serving = events_named(second.log_path, "serving")
    assert serving and (serving[0]["model_version"], serving[0]["round"]) == (1, 2)
    assert [e["model_version"] for e in events_named(second.log_path, "resumed")] == [1]

    codes = fed.wait_clients(["alpha", "bravo", "charlie"], 180)
    assert codes == [0, 0, 0], fed.logs("alpha", "bravo", "charlie")
    st = status(fed.target)
    assert st.finished and st.model_version == rounds
    # The restarted process ran rounds 2 and 3; round 1 came from the first process: none lost.
    assert summaries(st) == [(2, 2, 2, 2 * TRAIN_PER_CLIENT), (3, 3, 2, 2 * TRAIN_PER_CLIENT)]
    assert store.versions() == [0, 1, 2, 3]
    assert accepted_by_round(second.log_path) == {2: {"alpha", "bravo"}, 3: {"alpha", "bravo"}}
    assert not events_named(second.log_path, "update_rejected")
    for cid in ("alpha", "bravo"):
        log = fed.client_log(cid)
        assert events_named(log, "update_repushed", round=2), fed.logs(cid)
        assert {e["code"] for e in events_named(log, "retrying")} >= {"UNAVAILABLE"}
        assert events_named(log, "finished")[-1]["model_version"] == rounds
    with channel(fed.target) as ch:
        final_header, final_arrays, _ = pull(stub_for(ch))
    assert final_header.model_version == rounds
    stored = store.load(rounds)
    assert stored.sha256 == final_header.sha256
    assert all(np.array_equal(stored.arrays[k], final_arrays[k]) for k in final_arrays)


# -- 3. a checkpoint write interrupted half-way -------------------------------
@pytest.fixture(scope="module")
def intact_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """A folder with intact versions 0, 1, 2 (made by a real in-process aggregator), and the bytes of a version 3."""
    folder = tmp_path_factory.mktemp("intact") / "ckpt"
    agg = start_in_process(folder, clients_per_round=1, min_clients=1, round_timeout_s=600)
    try:
        with channel(f"127.0.0.1:{agg.port}") as ch:
            stub = stub_for(ch)
            for rnd, value in ((1, 0.25), (2, -0.5)):
                _, arrays, _ = pull(stub)
                push(stub, f"writer-{rnd}", rnd, 10, arrays_to_bytes(filled(arrays, value)))
        v2 = agg.checkpoints.load(2)
        v3 = encode_checkpoint(3, filled(v2.arrays, 9.0), {k: v for k, v in v2.metadata.items() if k != "model_version"})
    finally:
        agg.stop(grace_s=1)
    assert CheckpointStore(folder).versions() == [0, 1, 2]
    return folder, v3.payload


def _header_end(payload: bytes) -> int:
    return 8 + int.from_bytes(payload[:8], "little")


DAMAGE = {
    # temp file of the interrupted write of version 3, half written
    "temp-file-half-written": {".global-v00000003.safetensors.tmp-123": lambda p: p[: len(p) // 2]},
    # a final name holding a truncated file (e.g. a copy or a file system without atomic rename)
    "final-file-truncated-in-data": {"global-v00000003.safetensors": lambda p: p[: len(p) - 1000]},
    "final-file-truncated-in-header": {"global-v00000003.safetensors": lambda p: p[: _header_end(p) // 2]},
    "final-file-empty": {"global-v00000003.safetensors": lambda p: b""},
    "temp-and-final-file": {
        ".global-v00000003.safetensors.tmp-123": lambda p: p[: len(p) // 3],
        "global-v00000003.safetensors": lambda p: p[: len(p) // 2],
    },
}


@pytest.mark.e2e
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_interrupted_checkpoint_write_is_never_loaded(tmp_path: Path, intact_checkpoints, damage: str) -> None:
    source, v3_payload = intact_checkpoints
    folder = tmp_path / "ckpt"
    shutil.copytree(source, folder)
    v2_bytes = (folder / "global-v00000002.safetensors").read_bytes()
    for name, cut in DAMAGE[damage].items():
        (folder / name).write_bytes(cut(v3_payload))

    agg = start_aggregator(folder, tmp_path / "aggregator.log", env=single_thread_env(),
                           args=["--clients-per-round", "1", "--min-clients", "1"])
    try:
        st = status(agg.target)
        assert (st.model_version, st.round) == (2, 3)
        with channel(agg.target) as ch:
            stub = stub_for(ch)
            header, arrays, payload = pull(stub)
            assert header.model_version == 2 and payload == v2_bytes
            np.testing.assert_array_equal(arrays["classifier.bias"], np.full(4, -0.5, np.float32))
            assert [e["model_version"] for e in events_named(agg.log_path, "resumed")] == [2]
            skipped = [e["version"] for e in events_named(agg.log_path, "checkpoint_skipped")]
            assert skipped == ([3] if "global-v00000003.safetensors" in DAMAGE[damage] else [])

            # The next round's checkpoint replaces the damaged file with an intact version 3.
            reply = push(stub, "next", 3, 4, arrays_to_bytes(filled(arrays, 2.0)))
            assert reply.accepted and reply.round == 3
            header3, arrays3, payload3 = pull(stub)
        assert header3.model_version == 3
        stored = CheckpointStore(folder).load(3)
        assert stored.payload == payload3
        np.testing.assert_array_equal(stored.arrays["classifier.bias"], np.full(4, 2.0, np.float32))
    finally:
        assert agg.stop() == 0


# -- 4. a client paused past the deadline --------------------------------------
@pytest.mark.e2e
def test_client_paused_past_deadline_is_refused_as_stale_then_joins_next_round(federation: Federation,
                                                                               corpus: list[Path]) -> None:
    fed = federation
    timeout_s = 15.0  # round 2 must not reach it before the resumed sleeper has retrained and pushed
    start_federation(fed, {"alpha": corpus[0], "bravo": corpus[1], "sleeper": corpus[2]}, [
        "--clients-per-round", "3", "--min-clients", "2", "--round-timeout", str(timeout_s), "--rounds", "2",
        "--local-epochs", TRAINING_EPOCHS,
    ])
    fed.signal_while_training("sleeper", 0, signal.SIGSTOP)
    try:
        st = wait_until(lambda: (s := status(fed.target)).model_version >= 1 and s, 60, "round 1 to close")
        assert summaries(st) == [(1, 1, 2, 2 * TRAIN_PER_CLIENT)]
        assert st.rounds[0].duration_seconds >= timeout_s - 0.05
        assert fed.clients["sleeper"].poll() is None
    finally:
        fed.clients["sleeper"].send_signal(signal.SIGCONT)

    codes = fed.wait_clients(["alpha", "bravo", "sleeper"], 120)
    assert codes == [0, 0, 0], fed.logs("alpha", "bravo", "sleeper")
    sleeper_log = fed.client_log("sleeper")
    refused = events_named(sleeper_log, "update_refused")
    assert [(e["round"], e["code"]) for e in refused] == [(1, "FAILED_PRECONDITION")]
    assert "stale" in refused[0]["detail"]
    assert [e["round"] for e in events_named(sleeper_log, "update_pushed")] == [2]
    assert events_named(sleeper_log, "finished")[-1]["rounds_done"] == 1

    m = scrape(fed.aggregator.metrics_port)
    assert updates_total(m, "rejected", "wrong_round") >= 1
    assert rounds_completed(m, "deadline") == 1
    rejected = events_named(fed.aggregator_log, "update_rejected", reason="wrong_round")
    assert [(e["client"], e["round"]) for e in rejected] == [("sleeper", 1)]
    by_round = accepted_by_round(fed.aggregator_log)
    assert by_round[1] == {"alpha", "bravo"}
    assert "sleeper" in by_round[2]
    st = status(fed.target)
    assert st.finished and summaries(st)[1] == (2, 2, 3, 3 * TRAIN_PER_CLIENT)


# -- 5. a push retried after the server accepted it (acknowledgement lost) -----
def test_retried_push_after_lost_acknowledgement_is_counted_once(tmp_path: Path) -> None:
    agg = start_in_process(tmp_path / "ckpt", clients_per_round=3, min_clients=1, round_timeout_s=600)
    try:
        with channel(f"127.0.0.1:{agg.port}") as ch:
            stub = stub_for(ch)
            _, base, _ = pull(stub)
            updates = {  # client: (n_k, tensors, update id)
                "ana": (11, {k: v * 0.5 + 1.0 for k, v in base.items()}, "ana-r1"),
                "ben": (29, {k: v * -2.0 + 0.25 for k, v in base.items()}, "ben-r1"),
                "cy": (7, filled(base, -3.5), "cy-r1"),
            }
            payloads = {c: arrays_to_bytes(a) for c, (_, a, _) in updates.items()}

            def send(cid: str):
                n, _, uid = updates[cid]
                return push(stub, cid, 1, n, payloads[cid], update_id=uid)

            first = send("ana")
            assert (first.duplicate, first.accepted_in_round) == (False, 1)
            # Two retries race each other and the original is already in: all acknowledged as duplicates.
            replies = []
            threads = [threading.Thread(target=lambda: replies.append(send("ana"))) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert [(r.accepted, r.duplicate, r.round) for r in replies] == [(True, True, 1)] * 2
            # An original and its retry racing: exactly one of them counts.
            replies = []
            threads = [threading.Thread(target=lambda: replies.append(send("ben"))) for _ in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert sorted(r.duplicate for r in replies) == [False, True]
            assert agg.manager.status().accepted == 2
            assert send("cy").accepted_in_round == 3  # closes round 1

            # Retries after the round closed: acknowledged for round 1, not counted in round 2.
            for cid in ("ana", "ben", "cy"):
                late = send(cid)
                assert (late.accepted, late.duplicate, late.round) == (True, True, 1)
            header, new, _ = pull(stub)
        assert (header.model_version, header.round) == (1, 2)
        assert agg.manager.status().accepted == 0
        expected = weighted_average((n, arrays) for n, arrays, _ in updates.values())
        for name in expected:
            np.testing.assert_allclose(new[name], expected[name], rtol=1e-6, atol=1e-7)
        summary = agg.manager.history()[0]
        assert (summary.participants, summary.samples) == (3, 11 + 29 + 7)
        m = scrape(agg.metrics_port)
        assert updates_total(m, "accepted") == 3
        assert updates_total(m, "duplicate") == 2 + 1 + 3
        stored = bytes_to_arrays((tmp_path / "ckpt" / "global-v00000001.safetensors").read_bytes())
        assert all(np.array_equal(stored[k], new[k]) for k in new)
    finally:
        agg.stop(grace_s=1)


def test_retry_of_an_update_lost_by_a_cancelled_call_is_counted_once(tmp_path: Path) -> None:
    """The client gives up on its call (deadline) after the server took the update; the retry is a duplicate."""
    agg = start_in_process(tmp_path / "ckpt", clients_per_round=2, min_clients=1, round_timeout_s=600)
    try:
        with channel(f"127.0.0.1:{agg.port}") as ch:
            stub = stub_for(ch)
            _, base, _ = pull(stub)
            payload = arrays_to_bytes(filled(base, 4.0))
            header = update_header("dana", 1, 13, payload, update_id="dana-r1")
            future = stub.PushUpdate.future(iter(push_messages(header, payload)), timeout=30)
            wait_until(lambda: agg.manager.status().accepted == 1, 30, "the server to accept the update")
            future.cancel()  # the acknowledgement never reaches the client
            retry = push(stub, "dana", 1, 13, payload, update_id="dana-r1")
            assert retry.accepted and retry.duplicate and retry.accepted_in_round == 1
            with pytest.raises(grpc.RpcError) as err:  # the same client with a new id is a second contribution
                push(stub, "dana", 1, 13, payload, update_id="dana-r1-other")
            assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
            push(stub, "eve", 1, 39, arrays_to_bytes(filled(base, 8.0)))
            _, new, _ = pull(stub)
        np.testing.assert_array_equal(new["classifier.bias"], np.full(4, (13 * 4.0 + 39 * 8.0) / 52, np.float32))
        assert updates_total(scrape(agg.metrics_port), "accepted") == 2
    finally:
        agg.stop(grace_s=1)
