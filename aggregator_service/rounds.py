"""Round state: which round is open, who contributed, when it closes, and the new global model.

Pure logic with an injectable clock: no gRPC, no files (checkpoint writing is
a callable passed in: in memory by default, streamed to disk by the server),
so deadlines and every refusal are testable directly.
"""
from __future__ import annotations

import functools
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, Protocol

import numpy as np

from aggregator_service.checkpoints import BlockSource, Checkpoint, CheckpointWriter, write_in_memory
from aggregator_service.errors import (
    DuplicateClientError,
    FederationFinishedError,
    InvalidReportError,
    WrongRoundError,
)
from aggregator_service.evaluations import EvalMetrics, check_report, pool
from aggregator_service.fedavg import FedAvgAccumulator
from aggregator_service.robust import Aggregator, StackedAggregator, clip_update
from aggregator_service.pull_compression import PullDelta, SnapStep
from aggregator_service.server_momentum import ServerMomentum
from aggregator_service.validation import check_identifier, check_num_samples
from model.encodings import Encoding, TensorSpec, decode_terms, decode_weights
from model.plan import TrainingPlan


AGGREGATIONS = ("fedavg", "trimmed-mean", "median")


@dataclass(frozen=True)
class RoundConfig:
    """When rounds close and what they accept."""

    clients_per_round: int = 3
    min_clients: int = 2
    round_timeout_s: float = 300.0
    max_rounds: int = 0  # 0: run until stopped
    max_samples: int = 10_000_000
    plan: TrainingPlan = field(default_factory=TrainingPlan)
    # "fedavg" streams in O(model); "trimmed-mean" and "median" hold K updates.
    aggregation: str = "fedavg"
    trim_fraction: float = 0.1
    clip_norm: float = 0.0  # > 0: clip each update's distance from the global model
    # FedAvgM (aggregator_service/server_momentum.py); 0 and 1: plain FedAvg, exactly.
    server_momentum: float = 0.0
    server_learning_rate: float = 1.0
    # "fp16-delta" / "int8-delta": each new global is snapped to old + encoded delta, and clients
    # holding the old version may pull that delta (aggregator_service/pull_compression.py).
    pull_encoding: str = "float32"

    def __post_init__(self) -> None:
        if self.clients_per_round < 1:
            raise ValueError("clients_per_round must be >= 1")
        if not 1 <= self.min_clients <= self.clients_per_round:
            raise ValueError("min_clients must be between 1 and clients_per_round")
        if self.round_timeout_s <= 0:
            raise ValueError("round_timeout_s must be > 0")
        if self.max_rounds < 0:
            raise ValueError("max_rounds must be >= 0")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}")
        if not 0.0 <= self.trim_fraction < 0.5:
            raise ValueError("trim_fraction must be in [0, 0.5)")
        if self.clip_norm < 0:
            raise ValueError("clip_norm must be >= 0")
        if not 0.0 <= self.server_momentum < 1.0:
            raise ValueError("server_momentum must be in [0, 1)")
        if self.server_learning_rate <= 0:
            raise ValueError("server_learning_rate must be > 0")
        if self.pull_encoding not in {e.value for e in Encoding}:
            raise ValueError(f"pull_encoding must be one of {', '.join(e.value for e in Encoding)}")

    @property
    def uses_server_momentum(self) -> bool:
        return self.server_momentum != 0.0 or self.server_learning_rate != 1.0


@dataclass(frozen=True)
class UpdateMeta:
    """An update's header, as the round logic needs it."""

    client_id: str
    round: int
    num_samples: int
    update_id: str
    train_loss: float = 0.0
    train_accuracy: float = 0.0


@dataclass(frozen=True)
class AcceptResult:
    duplicate: bool
    round: int
    accepted_in_round: int
    clipped: bool = False


@dataclass(frozen=True)
class RoundSummary:
    """A closed round: who took part and what it produced."""

    round: int
    model_version: int
    participants: int
    samples: int
    duration_s: float
    train_loss: float
    train_accuracy: float
    closed_by: str  # "quorum" or "deadline"


@dataclass(frozen=True)
class RoundStatus:
    """A consistent snapshot of the open round."""

    round: int
    model_version: int
    finished: bool
    accepted: int
    deadline_unix: float
    overdue: bool


class RoundListener(Protocol):
    """Told about round transitions (metrics and logs live behind it)."""

    def round_opened(self, round: int, deadline_unix: float) -> None: ...

    def round_closed(self, summary: RoundSummary) -> None: ...

    def round_overdue(self, round: int, accepted: int, min_clients: int) -> None: ...

    def round_close_failed(self, round: int, error: Exception) -> None: ...

    def federation_finished(self, model_version: int) -> None: ...


class NullListener:
    def round_opened(self, round: int, deadline_unix: float) -> None:
        pass

    def round_closed(self, summary: RoundSummary) -> None:
        pass

    def round_overdue(self, round: int, accepted: int, min_clients: int) -> None:
        pass

    def round_close_failed(self, round: int, error: Exception) -> None:
        pass

    def federation_finished(self, model_version: int) -> None:
        pass


class RoundManager:
    """Owns the global model and the open round; thread-safe."""

    # Update ids are remembered this many rounds back, so a retry whose
    # acknowledgement was lost is recognised even after its round closed.
    UPDATE_ID_MEMORY_ROUNDS = 16
    EVALUATION_MEMORY_VERSIONS = 1000

    def __init__(
        self,
        config: RoundConfig,
        initial: Checkpoint,
        persist: Callable[[Checkpoint], object],
        num_classes: int,
        listener: RoundListener | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        writer: CheckpointWriter = write_in_memory,
        momentum_state: Mapping[str, np.ndarray] | None = None,
        save_momentum: Callable[[int, Mapping[str, np.ndarray]], object] | None = None,
    ) -> None:
        self.config = config
        self._write = writer
        self._save_momentum = save_momentum
        self._persist = persist
        self._num_classes = num_classes
        self._listener = listener or NullListener()
        self._clock = clock
        self._wall = wall_clock
        self._cond = threading.Condition()
        self._global = initial
        self._specs = {k: TensorSpec(v.dtype, v.shape) for k, v in initial.arrays.items()}
        self._pull_deltas: dict[int, PullDelta] = {}
        self._snap_residual: dict[str, np.ndarray] = {}  # what --pull-encoding's last snapping dropped (SnapStep)
        self._acc: Aggregator | None = None
        self._momentum = (ServerMomentum(self._specs, config.server_momentum, config.server_learning_rate,
                                         momentum_state) if config.uses_server_momentum else None)
        self._finished = bool(config.max_rounds) and initial.version >= config.max_rounds
        self._stopping = False
        self._history: list[RoundSummary] = []
        self._update_ids: OrderedDict[str, int] = OrderedDict()
        self._evaluations: OrderedDict[int, dict[str, EvalMetrics]] = OrderedDict()
        self._open_round()

    # -- reading state -------------------------------------------------
    @property
    def global_model(self) -> Checkpoint:
        with self._cond:
            return self._global

    def pull_delta(self, version: int) -> PullDelta | None:
        """The delta that leads from ``version - 1`` to ``version``, when pulls are compressed and it is kept."""
        with self._cond:
            return self._pull_deltas.get(version)

    @property
    def specs(self) -> Mapping[str, TensorSpec]:
        """Name -> dtype and shape of every tensor of the global model."""
        return self._specs

    def status(self) -> RoundStatus:
        with self._cond:
            return self._status_locked()

    def history(self) -> list[RoundSummary]:
        with self._cond:
            return list(self._history)

    def evaluations(self) -> list[tuple[int, int, EvalMetrics]]:
        """(model_version, reports, pooled metrics) for every version with reports, oldest first."""
        with self._cond:
            return [(v, len(r), pool(list(r.values()), self._num_classes)) for v, r in self._evaluations.items()]

    def wait_for_version(self, min_version: int, timeout_s: float) -> Checkpoint:
        """Block until the global version reaches ``min_version``, the run ends, or the timeout."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._global.version >= min_version or self._finished or self._stopping,
                timeout=max(0.0, timeout_s),
            )
            return self._global

    # -- updates -------------------------------------------------------
    def precheck(self, meta: UpdateMeta) -> AcceptResult | None:
        """Refuse early, before bulk data is read; an AcceptResult means 'already accepted'."""
        check_identifier(meta.client_id, "client_id")
        check_identifier(meta.update_id, "update_id")
        check_num_samples(meta.num_samples, self.config.max_samples)
        with self._cond:
            return self._check_locked(meta)

    def accept(
        self, meta: UpdateMeta, arrays: Mapping[str, np.ndarray], encoding: Encoding = Encoding.FLOAT32
    ) -> AcceptResult:
        """Fold a validated update (tensors as sent, in ``encoding``) into the open round; closes it at quorum.

        ``arrays`` may be views of a buffer the caller reuses: nothing here keeps them.
        """
        check_identifier(meta.client_id, "client_id")
        check_identifier(meta.update_id, "update_id")
        check_num_samples(meta.num_samples, self.config.max_samples)
        with self._cond:
            seen = self._check_locked(meta)
            if seen is not None:
                return seen
            clipped = False
            if isinstance(self._acc, FedAvgAccumulator) and self.config.clip_norm <= 0:
                # The fast path: fold the tensors as sent, never rebuilding w_k.
                self._acc.add_terms(decode_terms(arrays, self._specs, encoding), meta.num_samples, encoding.is_delta)
            else:
                if encoding.is_delta:
                    arrays = decode_weights(arrays, self._global.arrays, encoding)
                if self.config.clip_norm > 0:
                    arrays, norm = clip_update(arrays, self._global.arrays, self.config.clip_norm)
                    clipped = norm > self.config.clip_norm
                self._acc.add(arrays, meta.num_samples)
            self._contributors.add(meta.client_id)
            self._update_ids[meta.update_id] = self._round
            while len(self._update_ids) > 4096 and next(iter(self._update_ids.values())) < self._round - self.UPDATE_ID_MEMORY_ROUNDS:
                self._update_ids.popitem(last=False)
            self._loss_sum += meta.train_loss * meta.num_samples
            self._acc_sum += meta.train_accuracy * meta.num_samples
            result = AcceptResult(False, self._round, self._acc.updates, clipped)
            if self._acc.updates >= self.config.clients_per_round:
                self._try_close_locked("quorum")
            return result

    def tick(self) -> None:
        """Close the round if its deadline passed with enough updates; else mark it overdue.

        Also retries a quorum close whose checkpoint write failed.
        """
        with self._cond:
            if self._finished:
                return
            if self._acc.updates >= self.config.clients_per_round:
                self._try_close_locked("quorum")
                return
            if self._clock() < self._deadline:
                return
            if self._acc.updates >= self.config.min_clients:
                self._try_close_locked("deadline")
            elif not self._overdue:
                self._overdue = True
                self._listener.round_overdue(self._round, self._acc.updates, self.config.min_clients)

    def stop(self) -> None:
        """Wake every waiting pull so the server can shut down."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    # -- evaluation ----------------------------------------------------
    def record_evaluation(self, client_id: str, model_version: int, metrics: EvalMetrics) -> int:
        """Store a client's report for a version (a repeat replaces it); returns the report count."""
        check_identifier(client_id, "client_id")
        check_report(metrics, self._num_classes)
        with self._cond:
            if model_version > self._global.version:
                raise InvalidReportError(
                    f"model_version {model_version} does not exist yet (latest is {self._global.version})"
                )
            reports = self._evaluations.setdefault(model_version, {})
            reports[client_id] = metrics
            while len(self._evaluations) > self.EVALUATION_MEMORY_VERSIONS:
                self._evaluations.popitem(last=False)
            return len(reports)

    def pooled_evaluation(self, model_version: int) -> tuple[int, EvalMetrics] | None:
        with self._cond:
            reports = self._evaluations.get(model_version)
            if not reports:
                return None
            return len(reports), pool(list(reports.values()), self._num_classes)

    # -- internals (call with the lock held) ---------------------------
    def _status_locked(self) -> RoundStatus:
        return RoundStatus(
            round=self._round,
            model_version=self._global.version,
            finished=self._finished,
            accepted=self._acc.updates,
            deadline_unix=self._deadline_unix,
            overdue=self._overdue,
        )

    def _check_locked(self, meta: UpdateMeta) -> AcceptResult | None:
        if meta.update_id in self._update_ids:
            return AcceptResult(True, self._update_ids[meta.update_id], self._acc.updates)
        if self._finished:
            raise FederationFinishedError(f"the federation finished after round {self._global.version}")
        if meta.round != self._round:
            when = "stale" if meta.round < self._round else "from the future"
            raise WrongRoundError(f"update for round {meta.round} is {when}: round {self._round} is open")
        if meta.client_id in self._contributors:
            raise DuplicateClientError(f"client already contributed to round {self._round}")
        return None

    def _open_round(self) -> None:
        self._round = self._global.version + 1
        self._acc = self._new_aggregator()
        self._contributors: set[str] = set()
        self._loss_sum = 0.0
        self._acc_sum = 0.0
        self._opened_at = self._clock()
        self._deadline = self._opened_at + self.config.round_timeout_s
        self._deadline_unix = self._wall() + self.config.round_timeout_s
        self._overdue = False
        if self._finished:
            self._listener.federation_finished(self._global.version)
        else:
            self._listener.round_opened(self._round, self._deadline_unix)

    def _new_aggregator(self) -> Aggregator:
        if self.config.aggregation == "fedavg":
            # The closed round's sums are written out: its buffers serve the next round.
            previous = self._acc if isinstance(self._acc, FedAvgAccumulator) else None
            return FedAvgAccumulator(self._specs, previous)
        return StackedAggregator(self._specs, self.config.aggregation, self.config.trim_fraction)

    def _try_close_locked(self, closed_by: str) -> None:
        # The update that triggered the close is already counted; a failed
        # checkpoint write leaves the round open and tick() tries again.
        try:
            self._close_locked(closed_by)
        except OSError as exc:
            self._listener.round_close_failed(self._round, exc)

    def _close_locked(self, closed_by: str) -> None:
        new_version = self._global.version + 1
        # The average is streamed block by block into the new checkpoint: no model-sized temporary.
        blocks: BlockSource
        if isinstance(self._acc, FedAvgAccumulator):
            base = self._global.arrays if self._acc.delta_samples else None
            blocks = functools.partial(self._acc.result_blocks, base=base)
        else:
            result = self._acc.result(dtype=np.float32)

            def blocks(name: str) -> Iterator[np.ndarray]:
                yield result[name]
        step = None
        if self._momentum is not None:
            step = self._momentum.begin()
            aggregate, old = blocks, self._global.arrays
            blocks = lambda name: step.blocks(name, aggregate(name), old[name])  # noqa: E731
        snap = None
        pull_encoding = Encoding(self.config.pull_encoding)
        if pull_encoding.is_delta:
            snap = SnapStep(pull_encoding, self._global.arrays, self._specs, self._global.version, new_version,
                            self._snap_residual)
            unsnapped = blocks
            blocks = lambda name: snap.blocks(name, unsnapped)  # noqa: E731
        checkpoint = self._write(new_version, self._global_metadata(), self._specs, blocks)
        if step is not None:
            # Saved before the new version is served; a crash between the two files leaves a checkpoint
            # without its buffer, and the restarted aggregator starts that buffer from zero (logged).
            if self._save_momentum is not None:
                self._save_momentum(new_version, step.new_state)
            step.commit()
        # Persist before serving: a restart must never find a version clients saw but disk lost.
        self._persist(checkpoint)
        m = self._acc.total_samples
        summary = RoundSummary(
            round=self._round,
            model_version=new_version,
            participants=self._acc.updates,
            samples=m,
            duration_s=self._clock() - self._opened_at,
            train_loss=self._loss_sum / m,
            train_accuracy=self._acc_sum / m,
            closed_by=closed_by,
        )
        self._global = checkpoint
        self._pull_deltas = {new_version: snap.finish()} if snap is not None else {}
        self._snap_residual = snap.new_residual if snap is not None else {}
        self._history.append(summary)
        del self._history[: -self.EVALUATION_MEMORY_VERSIONS]
        if self.config.max_rounds and new_version >= self.config.max_rounds:
            self._finished = True
        self._listener.round_closed(summary)
        self._open_round()
        self._cond.notify_all()

    def _global_metadata(self) -> dict[str, str]:
        return {k: v for k, v in self._global.metadata.items() if k != "model_version"}
