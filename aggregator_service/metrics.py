"""Prometheus metrics of the aggregator, in a registry of its own (no global state)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from aggregator_service.evaluations import EvalMetrics
from aggregator_service.rounds import RoundSummary

ROUND_DURATION_BUCKETS = (1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)


class AggregatorMetrics:
    """Every metric the aggregator exports; names follow Prometheus conventions."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.round = Gauge("fedser_round", "Round currently open for updates.", registry=r)
        self.model_version = Gauge("fedser_model_version", "Version of the served global model.", registry=r)
        self.rounds_completed = Counter(
            "fedser_rounds_completed", "Rounds closed by this process.", ["closed_by"], registry=r
        )
        self.round_duration = Histogram(
            "fedser_round_duration_seconds", "Time from round open to close.", buckets=ROUND_DURATION_BUCKETS, registry=r
        )
        self.round_participants = Gauge(
            "fedser_round_participants", "Clients whose updates formed the last closed round.", registry=r
        )
        self.round_samples = Gauge("fedser_round_samples", "Training samples (m_t) behind the last closed round.", registry=r)
        self.round_accepted = Gauge("fedser_round_accepted_updates", "Updates accepted so far in the open round.", registry=r)
        self.finished = Gauge("fedser_federation_finished", "1 once the configured number of rounds has run.", registry=r)
        self.round_overdue = Gauge(
            "fedser_round_overdue", "1 while the open round is past its deadline with too few updates.", registry=r
        )
        self.updates = Counter(
            "fedser_updates", "Pushed updates by outcome and reason.", ["status", "reason"], registry=r
        )
        self.updates_clipped = Counter(
            "fedser_updates_clipped", "Accepted updates whose norm was clipped to --clip-norm.", registry=r
        )
        self.auth_failures = Counter(
            "fedser_auth_failures", "Requests refused for a missing, unknown or foreign token.", ["rpc", "reason"],
            registry=r,
        )
        self.evaluation_reports = Counter(
            "fedser_evaluation_reports", "Evaluation reports by outcome.", ["status"], registry=r
        )
        self.bytes_received = Counter("fedser_bytes_received", "Update payload bytes received.", registry=r)
        self.bytes_sent = Counter("fedser_bytes_sent", "Model payload bytes sent.", registry=r)
        self.global_loss = Gauge("fedser_global_loss", "Held-out loss of the newest evaluated global model.", registry=r)
        self.global_accuracy = Gauge("fedser_global_accuracy", "Held-out accuracy (0-1) of the newest evaluated global model.", registry=r)
        self.global_uar = Gauge("fedser_global_uar", "Held-out unweighted average recall (0-1).", registry=r)
        self.global_examples = Gauge("fedser_global_evaluation_examples", "Held-out examples behind the global scores.", registry=r)
        self.global_evaluated_version = Gauge(
            "fedser_global_evaluated_version", "Model version the global scores belong to.", registry=r
        )
        self.build = Info("fedser_build", "fedser build and model identity.", registry=r)
        self._evaluated_version = -1
        # Known label values start at 0, so rate() and increase() have a series from the first scrape on.
        for closed_by in ("quorum", "deadline"):
            self.rounds_completed.labels(closed_by=closed_by)
        for status in ("accepted", "duplicate"):
            self.updates.labels(status=status, reason="")
        for status in ("accepted", "rejected"):
            self.evaluation_reports.labels(status=status)

    def set_build(self, version: str, architecture: str) -> None:
        self.build.info({"version": version, "architecture": architecture})

    def round_opened(self, round: int, model_version: int) -> None:
        self.round.set(round)
        self.model_version.set(model_version)
        self.round_accepted.set(0)
        self.round_overdue.set(0)

    def round_closed(self, summary: RoundSummary) -> None:
        self.rounds_completed.labels(closed_by=summary.closed_by).inc()
        self.model_version.set(summary.model_version)
        self.round_duration.observe(summary.duration_s)
        self.round_participants.set(summary.participants)
        self.round_overdue.set(0)
        self.round_accepted.set(0)
        self.round_samples.set(summary.samples)

    def update_accepted(self, accepted_in_round: int, duplicate: bool) -> None:
        self.updates.labels(status="duplicate" if duplicate else "accepted", reason="").inc()
        if not duplicate:
            self.round_accepted.set(accepted_in_round)

    def update_rejected(self, reason: str) -> None:
        self.updates.labels(status="rejected", reason=reason).inc()

    def evaluation(self, version: int, pooled: EvalMetrics) -> None:
        """Count a report; the global gauges follow the newest version that has reports."""
        self.evaluation_reports.labels(status="accepted").inc()
        if version >= self._evaluated_version:
            self._evaluated_version = version
            self.global_evaluated_version.set(version)
            self.global_loss.set(pooled.loss)
            self.global_accuracy.set(pooled.accuracy)
            self.global_uar.set(pooled.uar)
            self.global_examples.set(pooled.examples)
