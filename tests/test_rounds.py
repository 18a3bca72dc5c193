"""Tests for the round state machine (aggregator_service/rounds.py RoundManager).

A fake clock drives deadlines; persist is a recording callable, so no files or
gRPC are involved. Weighted averages are worked out by hand.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from aggregator_service.checkpoints import Checkpoint, encode_checkpoint
from aggregator_service.errors import (
    DuplicateClientError,
    FederationFinishedError,
    InvalidReportError,
    InvalidUpdateError,
    WrongRoundError,
)
from aggregator_service.evaluations import EvalMetrics
from aggregator_service.rounds import RoundConfig, RoundManager, RoundSummary, UpdateMeta
from model.serialization import bytes_to_arrays

WALL_START = 1_700_000_000.0


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingListener:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def round_opened(self, round, deadline_unix):
        self.events.append(("opened", round, deadline_unix))

    def round_closed(self, summary):
        self.events.append(("closed", summary))

    def round_overdue(self, round, accepted, min_clients):
        self.events.append(("overdue", round, accepted, min_clients))

    def round_close_failed(self, round, error):
        self.events.append(("close_failed", round, error))

    def federation_finished(self, model_version):
        self.events.append(("finished", model_version))

    def kinds(self, kind: str) -> list[tuple]:
        return [e for e in self.events if e[0] == kind]


def _zeros() -> dict[str, np.ndarray]:
    return {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}


def _update(value: float, b: float = 0.0) -> dict[str, np.ndarray]:
    return {"w": np.full((2, 3), value, np.float32), "b": np.full(3, b, np.float32)}


class Harness:
    """A RoundManager with a fake clock, a recording persist and a recording listener."""

    def __init__(self, **config) -> None:
        self.clock = FakeClock()
        self.wall = FakeClock(WALL_START)
        self.persisted: list[Checkpoint] = []
        self.listener = RecordingListener()
        self.fail_persist = False
        self.seen_global_versions: list[int] = []
        self.config = RoundConfig(**config)
        self.manager = RoundManager(
            self.config,
            encode_checkpoint(0, _zeros(), {"architecture_id": "test"}),
            persist=self._persist,
            num_classes=2,
            listener=self.listener,
            clock=self.clock,
            wall_clock=self.wall,
        )

    def _persist(self, checkpoint: Checkpoint) -> None:
        # Called with the manager's lock held: read the private attribute.
        self.seen_global_versions.append(self.manager._global.version)
        if self.fail_persist:
            raise OSError(28, "No space left on device")
        self.persisted.append(checkpoint)

    def push(self, client: str, round: int, n: int, arrays=None, update_id: str | None = None, **kw):
        """Like the servicer: precheck the header, then fold in the tensors."""
        meta = UpdateMeta(client_id=client, round=round, num_samples=n, update_id=update_id or f"{client}-r{round}", **kw)
        seen = self.manager.precheck(meta)
        if seen is not None:
            return seen
        return self.manager.accept(meta, arrays if arrays is not None else _update(1.0))


def test_first_round_opens_on_version_zero():
    h = Harness(clients_per_round=3, min_clients=2, round_timeout_s=60.0)
    s = h.manager.status()
    assert (s.round, s.model_version, s.finished, s.accepted, s.overdue) == (1, 0, False, 0, False)
    assert s.deadline_unix == WALL_START + 60.0
    assert h.listener.events == [("opened", 1, WALL_START + 60.0)]
    assert h.manager.global_model.version == 0
    assert h.manager.global_model.metadata == {"architecture_id": "test", "model_version": "0"}


def test_quorum_closes_round_with_weighted_average():
    h = Harness(clients_per_round=3, min_clients=2)
    r1 = h.push("alice", 1, 1, _update(1.0, b=10.0), train_loss=2.0, train_accuracy=0.5)
    r2 = h.push("bob", 1, 3, _update(2.0, b=0.0), train_loss=1.0, train_accuracy=0.25)
    assert (r1.duplicate, r1.round, r1.accepted_in_round) == (False, 1, 1)
    assert (r2.round, r2.accepted_in_round) == (1, 2)
    assert h.manager.global_model.version == 0
    h.clock.advance(7.5)
    r3 = h.push("carol", 1, 6, _update(-1.0, b=-5.0), train_loss=0.5, train_accuracy=1.0)
    assert (r3.round, r3.accepted_in_round) == (1, 3)

    g = h.manager.global_model
    assert g.version == 1
    # w = (1*1 + 3*2 + 6*-1) / 10 = 0.1;  b = (1*10 + 3*0 + 6*-5) / 10 = -2.0
    np.testing.assert_array_equal(g.arrays["w"], np.full((2, 3), 0.1, np.float32))
    np.testing.assert_array_equal(g.arrays["b"], np.full(3, -2.0, np.float32))
    assert g.arrays["w"].dtype == np.float32
    assert g.metadata == {"architecture_id": "test", "model_version": "1"}
    np.testing.assert_array_equal(bytes_to_arrays(g.payload)["w"], g.arrays["w"])

    assert h.persisted == [g]
    summary = h.manager.history()[-1]
    # loss = (1*2 + 3*1 + 6*0.5) / 10 = 0.8; accuracy = (0.5 + 0.75 + 6) / 10 = 0.725
    assert summary == RoundSummary(
        round=1, model_version=1, participants=3, samples=10, duration_s=7.5,
        train_loss=pytest.approx(0.8), train_accuracy=pytest.approx(0.725), closed_by="quorum",
    )
    assert h.listener.kinds("closed") == [("closed", summary)]
    s = h.manager.status()
    assert (s.round, s.model_version, s.accepted, s.finished) == (2, 1, 0, False)
    assert h.listener.events[-1] == ("opened", 2, WALL_START + 300.0)


def test_persist_runs_before_new_global_is_visible():
    h = Harness(clients_per_round=1, min_clients=1)
    h.push("alice", 1, 4, _update(3.0))
    assert h.seen_global_versions == [0]
    assert h.persisted[0].version == 1
    assert h.manager.global_model is h.persisted[0]
    h.push("alice", 2, 4, _update(5.0))
    assert h.seen_global_versions == [0, 1]
    assert [c.version for c in h.persisted] == [1, 2]


def test_next_round_averages_from_fresh_accumulator():
    h = Harness(clients_per_round=2, min_clients=1)
    h.push("a", 1, 1, _update(4.0))
    h.push("b", 1, 1, _update(2.0))
    h.push("a", 2, 3, _update(1.0))
    h.push("b", 2, 1, _update(5.0))
    # round 2: (3*1 + 1*5) / 4 = 2.0 (round 1's updates are not carried over)
    np.testing.assert_array_equal(h.manager.global_model.arrays["w"], np.full((2, 3), 2.0, np.float32))
    assert h.manager.global_model.version == 2


@pytest.mark.parametrize("bad_round, word", [(0, "stale"), (2, "from the future"), (7, "from the future")])
def test_wrong_round_refused(bad_round, word):
    h = Harness(clients_per_round=3, min_clients=2)
    meta = UpdateMeta("alice", bad_round, 5, "u1")
    with pytest.raises(WrongRoundError, match=f"update for round {bad_round} is {word}: round 1 is open") as ei:
        h.manager.accept(meta, _update(1.0))
    assert ei.value.reason == "wrong_round"
    with pytest.raises(WrongRoundError):
        h.manager.precheck(meta)
    assert h.manager.status().accepted == 0


def test_stale_round_after_close():
    h = Harness(clients_per_round=1, min_clients=1)
    h.push("alice", 1, 1)
    with pytest.raises(WrongRoundError, match="update for round 1 is stale: round 2 is open"):
        h.push("bob", 1, 1)


def test_duplicate_update_id_is_counted_once():
    h = Harness(clients_per_round=3, min_clients=2)
    first = h.push("alice", 1, 1, _update(1.0), update_id="upd-1")
    again = h.push("alice", 1, 1, _update(100.0), update_id="upd-1")
    assert (first.duplicate, again.duplicate) == (False, True)
    assert (again.round, again.accepted_in_round) == (1, 1)
    # accept() itself also recognises the retry (a race past precheck).
    assert h.manager.accept(UpdateMeta("alice", 1, 1, "upd-1"), _update(50.0)) == again
    assert h.manager.status().accepted == 1
    h.push("bob", 1, 1, _update(3.0))
    h.push("carol", 1, 2, _update(0.5))
    # (1*1 + 1*3 + 2*0.5) / 4 = 1.25: the retried 100.0 never counted.
    np.testing.assert_array_equal(h.manager.global_model.arrays["w"], np.full((2, 3), 1.25, np.float32))
    assert h.manager.history()[-1].samples == 4


def test_duplicate_update_id_after_round_closed():
    h = Harness(clients_per_round=1, min_clients=1)
    h.push("alice", 1, 2, _update(1.0), update_id="upd-1")
    assert h.manager.global_model.version == 1
    again = h.push("alice", 1, 2, _update(9.0), update_id="upd-1")
    assert (again.duplicate, again.round, again.accepted_in_round) == (True, 1, 0)
    assert h.manager.global_model.version == 1
    assert len(h.persisted) == 1
    np.testing.assert_array_equal(h.manager.global_model.arrays["w"], np.full((2, 3), 1.0, np.float32))


def test_same_client_new_update_id_same_round_refused():
    h = Harness(clients_per_round=3, min_clients=2)
    h.push("alice", 1, 1, update_id="upd-1")
    with pytest.raises(DuplicateClientError, match="client already contributed to round 1") as ei:
        h.push("alice", 1, 1, update_id="upd-2")
    assert ei.value.reason == "duplicate_client"
    assert h.manager.status().accepted == 1


@pytest.mark.parametrize("n", [0, -5])
def test_non_positive_num_samples_refused(n):
    h = Harness()
    with pytest.raises(InvalidUpdateError, match=f"num_samples must be > 0, got {n}") as ei:
        h.manager.precheck(UpdateMeta("alice", 1, n, "u1"))
    assert ei.value.reason == "num_samples"


def test_num_samples_above_limit_refused():
    h = Harness(max_samples=100)
    with pytest.raises(InvalidUpdateError, match="num_samples 101 exceeds the limit of 100") as ei:
        h.manager.precheck(UpdateMeta("alice", 1, 101, "u1"))
    assert ei.value.reason == "num_samples"
    assert h.manager.precheck(UpdateMeta("alice", 1, 100, "u1")) is None


@pytest.mark.parametrize("client_id", ["bad id", "a/b", "", "x" * 129, "naïve", "a\nb"])
def test_bad_client_id_refused(client_id):
    h = Harness()
    with pytest.raises(InvalidUpdateError, match=r"client_id must be 1-128 characters") as ei:
        h.manager.precheck(UpdateMeta(client_id, 1, 5, "u1"))
    assert ei.value.reason == "bad_header"


def test_bad_update_id_refused():
    h = Harness()
    with pytest.raises(InvalidUpdateError, match="update_id must be 1-128 characters"):
        h.manager.precheck(UpdateMeta("alice", 1, 5, "has space"))


def test_good_ids_accepted_by_precheck():
    h = Harness()
    assert h.manager.precheck(UpdateMeta("edge-01.site:a@b_c", 1, 5, "x" * 128)) is None


def test_deadline_below_min_clients_waits_and_flags_overdue():
    h = Harness(clients_per_round=3, min_clients=2, round_timeout_s=30.0)
    h.push("alice", 1, 2, _update(1.0))
    h.clock.advance(29.9)
    h.manager.tick()
    assert h.manager.status().overdue is False
    h.clock.advance(0.1)  # exactly at the deadline
    h.manager.tick()
    h.clock.advance(10.0)
    h.manager.tick()
    s = h.manager.status()
    assert (s.round, s.model_version, s.accepted, s.overdue) == (1, 0, 1, True)
    assert h.listener.kinds("overdue") == [("overdue", 1, 1, 2)]
    assert h.persisted == []

    # One more update: min_clients reached but not quorum, so accept() leaves it open...
    h.push("bob", 1, 6, _update(3.0))
    assert h.manager.global_model.version == 0
    # ...and the next tick closes it.
    h.clock.advance(1.0)
    h.manager.tick()
    assert h.manager.global_model.version == 1
    # (2*1 + 6*3) / 8 = 2.5
    np.testing.assert_array_equal(h.manager.global_model.arrays["w"], np.full((2, 3), 2.5, np.float32))
    summary = h.manager.history()[-1]
    assert (summary.closed_by, summary.participants, summary.samples, summary.duration_s) == ("deadline", 2, 8, 41.0)
    s = h.manager.status()
    assert (s.round, s.overdue, s.accepted) == (2, False, 0)
    assert s.deadline_unix == WALL_START + 30.0  # wall clock did not move


def test_deadline_with_min_clients_closes_at_deadline():
    h = Harness(clients_per_round=3, min_clients=2, round_timeout_s=30.0)
    h.push("alice", 1, 1, _update(0.0))
    h.push("bob", 1, 1, _update(1.0))
    h.clock.advance(29.0)
    h.manager.tick()
    assert h.manager.global_model.version == 0
    h.clock.advance(1.0)
    h.manager.tick()
    assert h.manager.global_model.version == 1
    np.testing.assert_array_equal(h.manager.global_model.arrays["w"], np.full((2, 3), 0.5, np.float32))
    assert h.manager.history()[-1].closed_by == "deadline"
    assert h.listener.kinds("overdue") == []


def test_tick_with_no_updates_never_closes():
    h = Harness(clients_per_round=1, min_clients=1, round_timeout_s=5.0)
    h.clock.advance(100.0)
    h.manager.tick()
    h.manager.tick()
    assert h.manager.global_model.version == 0
    assert h.listener.kinds("overdue") == [("overdue", 1, 0, 1)]


def test_max_rounds_finishes_federation():
    h = Harness(clients_per_round=1, min_clients=1, max_rounds=2)
    h.push("alice", 1, 1)
    assert h.manager.status().finished is False
    h.push("alice", 2, 1)
    s = h.manager.status()
    assert (s.finished, s.model_version) == (True, 2)
    with pytest.raises(FederationFinishedError, match="the federation finished after round 2") as ei:
        h.push("alice", 3, 1)
    assert ei.value.reason == "finished"
    with pytest.raises(FederationFinishedError):
        h.manager.precheck(UpdateMeta("bob", 2, 1, "late"))
    # A retry of an accepted update is still acknowledged as a duplicate.
    assert h.push("alice", 2, 1).duplicate is True
    assert [e[1] for e in h.listener.kinds("opened")] == [1, 2]
    assert h.listener.kinds("finished") == [("finished", 2)]
    h.clock.advance(10_000)
    h.manager.tick()
    assert len(h.persisted) == 2


def test_initial_checkpoint_at_max_rounds_is_already_finished():
    clock = FakeClock()
    listener = RecordingListener()
    manager = RoundManager(
        RoundConfig(clients_per_round=1, min_clients=1, max_rounds=3),
        encode_checkpoint(3, _zeros(), {"architecture_id": "test"}),
        persist=lambda c: None,
        num_classes=2,
        listener=listener,
        clock=clock,
        wall_clock=clock,
    )
    assert manager.status().finished is True
    assert listener.events == [("finished", 3)]
    with pytest.raises(FederationFinishedError):
        manager.accept(UpdateMeta("a", 4, 1, "u"), _update(1.0))


def test_persist_failure_leaves_round_open_and_tick_retries():
    h = Harness(clients_per_round=2, min_clients=2, round_timeout_s=30.0)
    h.fail_persist = True
    h.push("alice", 1, 1, _update(2.0))
    result = h.push("bob", 1, 3, _update(6.0))
    assert (result.duplicate, result.accepted_in_round) == (False, 2)
    assert h.manager.global_model.version == 0
    np.testing.assert_array_equal(h.manager.global_model.arrays["w"], np.zeros((2, 3), np.float32))
    s = h.manager.status()
    assert (s.round, s.accepted, s.model_version) == (1, 2, 0)
    [(kind, rnd, err)] = h.listener.kinds("close_failed")
    assert (kind, rnd, type(err), err.errno) == ("close_failed", 1, OSError, 28)
    assert h.manager.history() == []

    h.fail_persist = False
    h.manager.tick()  # a full round is retried at the next tick, not at the deadline
    assert h.manager.global_model.version == 1
    # (1*2 + 3*6) / 4 = 5.0, each update counted once
    np.testing.assert_array_equal(h.manager.global_model.arrays["w"], np.full((2, 3), 5.0, np.float32))
    assert [c.version for c in h.persisted] == [1]
    summary = h.manager.history()[-1]
    assert (summary.participants, summary.samples, summary.closed_by) == (2, 4, "quorum")


def test_persist_failure_at_deadline_is_retried_on_next_tick():
    h = Harness(clients_per_round=3, min_clients=1, round_timeout_s=10.0)
    h.push("alice", 1, 2, _update(1.5))
    h.fail_persist = True
    h.clock.advance(10.0)
    h.manager.tick()
    h.manager.tick()
    assert len(h.listener.kinds("close_failed")) == 2
    assert h.manager.global_model.version == 0
    h.fail_persist = False
    h.manager.tick()
    assert h.manager.global_model.version == 1
    np.testing.assert_array_equal(h.manager.global_model.arrays["w"], np.full((2, 3), 1.5, np.float32))


def test_record_evaluation_for_future_version_refused():
    h = Harness()
    metrics = EvalMetrics(examples=4, loss=0.3, accuracy=0.75, uar=0.5, confusion=(2, 0, 1, 1))
    with pytest.raises(InvalidReportError, match=r"model_version 1 does not exist yet \(latest is 0\)"):
        h.manager.record_evaluation("alice", 1, metrics)
    assert h.manager.record_evaluation("alice", 0, metrics) == 1
    assert h.manager.record_evaluation("bob", 0, metrics) == 2
    assert h.manager.record_evaluation("alice", 0, metrics) == 2  # a repeat replaces
    reports, pooled = h.manager.pooled_evaluation(0)
    assert reports == 2
    assert (pooled.examples, pooled.confusion, pooled.accuracy) == (8, (4, 0, 2, 2), 0.75)
    assert h.manager.pooled_evaluation(5) is None


def test_record_evaluation_checks_report_and_client():
    h = Harness()
    with pytest.raises(InvalidReportError, match="examples must be > 0"):
        h.manager.record_evaluation("alice", 0, EvalMetrics(0, 0.1, 0.5, 0.5))
    with pytest.raises(InvalidUpdateError, match="client_id must be"):
        h.manager.record_evaluation("bad id", 0, EvalMetrics(1, 0.1, 0.5, 0.5))


def test_wait_for_version_returns_immediately_when_reached():
    h = Harness()
    start = time.monotonic()
    got = h.manager.wait_for_version(0, timeout_s=5.0)
    assert time.monotonic() - start < 1.0
    assert got.version == 0


def test_wait_for_version_times_out():
    h = Harness()
    start = time.monotonic()
    got = h.manager.wait_for_version(1, timeout_s=0.05)
    elapsed = time.monotonic() - start
    assert got.version == 0
    assert 0.04 <= elapsed < 2.0


def test_wait_for_version_returns_when_finished_or_stopped():
    h = Harness(clients_per_round=1, min_clients=1, max_rounds=1)
    h.push("alice", 1, 1)
    start = time.monotonic()
    assert h.manager.wait_for_version(10, timeout_s=5.0).version == 1
    h2 = Harness()
    h2.manager.stop()
    assert h2.manager.wait_for_version(10, timeout_s=5.0).version == 0
    assert time.monotonic() - start < 1.0


def test_round_config_validation():
    with pytest.raises(ValueError, match="clients_per_round must be >= 1"):
        RoundConfig(clients_per_round=0, min_clients=1)
    with pytest.raises(ValueError, match="min_clients must be between 1 and clients_per_round"):
        RoundConfig(clients_per_round=2, min_clients=3)
    with pytest.raises(ValueError, match="min_clients must be between 1 and clients_per_round"):
        RoundConfig(clients_per_round=2, min_clients=0)
    with pytest.raises(ValueError, match="round_timeout_s must be > 0"):
        RoundConfig(round_timeout_s=0)
    with pytest.raises(ValueError, match="max_rounds must be >= 0"):
        RoundConfig(max_rounds=-1)


# -- server momentum (FedAvgM) ----------------------------------------------------


def test_server_momentum_steps_by_hand():
    """v = beta * v + (avg - w); w' = w + lr * v, worked out for three rounds."""
    h = Harness(clients_per_round=2, min_clients=2, server_momentum=0.5, server_learning_rate=2.0)
    # Round 1 from w = 0: avg = (1*1 + 3*3) / 4 = 2.5 -> v = 2.5, w = 0 + 2 * 2.5 = 5.
    h.push("a", 1, 1, _update(1.0, b=-1.0))
    h.push("b", 1, 3, _update(3.0, b=-1.0))
    np.testing.assert_array_equal(h.manager.global_model.arrays["w"], np.full((2, 3), 5.0, np.float32))
    np.testing.assert_array_equal(h.manager.global_model.arrays["b"], np.full(3, -2.0, np.float32))
    # Round 2: avg = 6 -> v = 0.5 * 2.5 + (6 - 5) = 2.25, w = 5 + 4.5 = 9.5 (b: v = -0.5 + 1 = 0.5, b = -1).
    h.push("a", 2, 2, _update(6.0, b=-1.0))
    h.push("b", 2, 2, _update(6.0, b=-1.0))
    np.testing.assert_array_equal(h.manager.global_model.arrays["w"], np.full((2, 3), 9.5, np.float32))
    np.testing.assert_array_equal(h.manager.global_model.arrays["b"], np.full(3, -1.0, np.float32))
    # Round 3: the clients send the global back unchanged: the step is momentum alone.
    h.push("a", 3, 1, _update(9.5, b=-1.0))
    h.push("b", 3, 1, _update(9.5, b=-1.0))
    # v = 0.5 * 2.25 + 0 = 1.125 -> w = 9.5 + 2.25 = 11.75; b: v = 0.25 -> b = -0.5.
    np.testing.assert_array_equal(h.manager.global_model.arrays["w"], np.full((2, 3), 11.75, np.float32))
    np.testing.assert_array_equal(h.manager.global_model.arrays["b"], np.full(3, -0.5, np.float32))


def test_failed_checkpoint_write_leaves_the_momentum_buffer_alone():
    h = Harness(clients_per_round=2, min_clients=2, server_momentum=0.5)
    attempts = []
    real = h.manager._write

    def flaky(*args):
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError(28, "No space left on device")
        return real(*args)

    h.manager._write = flaky
    h.push("a", 1, 1, _update(2.0))
    h.push("b", 1, 1, _update(2.0))
    assert h.manager.global_model.version == 0 and h.listener.kinds("close_failed")
    h.manager.tick()  # the retry: the same step, not a second one on top of the first
    assert h.manager.global_model.version == 1
    np.testing.assert_array_equal(h.manager.global_model.arrays["w"], np.full((2, 3), 2.0, np.float32))


def test_server_momentum_settings_are_checked():
    for bad in ({"server_momentum": 1.0}, {"server_momentum": -0.1}, {"server_learning_rate": 0.0}):
        with pytest.raises(ValueError):
            RoundConfig(**bad)
    assert not RoundConfig().uses_server_momentum
    assert RoundConfig(server_learning_rate=1.5).uses_server_momentum
