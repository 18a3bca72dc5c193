"""The client's federated loop: pull, evaluate, train, push, wait for the next global model."""
from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass

import grpc
import torch

from edge_client.dataset import LocalData
from edge_client.errors import ModelMismatchError, RefusedError
from edge_client.training import TrainingInterrupted, evaluate, train_local
from edge_client.transport import AggregatorClient, PulledModel, Stopped
from fedser.v1 import aggregator_pb2 as pb
from model.encodings import Encoding, ErrorFeedback, to_proto
from model.eventlog import log_event
from model.network import DEFAULT_ARCHITECTURE, Architecture, UnknownArchitectureError, build_model, get_architecture
from model.plan import TrainingPlan
from model.serialization import arrays_to_bytes, load_arrays_into, module_to_arrays, xxh3_hex

log = logging.getLogger("fedser.client")

POLL_WAIT_S = 10.0


@dataclass(frozen=True)
class SessionConfig:
    client_id: str
    max_rounds: int  # 0: until the federation finishes
    device: torch.device
    seed: int = 0
    # The architecture whose features this client extracted; the aggregator's must match.
    architecture: str = DEFAULT_ARCHITECTURE
    # How updates travel: float32 weights, or fp16 / int8 deltas from the pulled model.
    encoding: Encoding = Encoding.FLOAT32


class FederatedSession:
    """Runs rounds against one aggregator until done, finished, or stopped."""

    def __init__(self, config: SessionConfig, data: LocalData, classes: tuple[str, ...], client: AggregatorClient,
                 stop: threading.Event) -> None:
        self.config = config
        self.data = data
        self.classes = classes
        self.client = client
        self.stop = stop
        self.rounds_done = 0
        # The last accepted push, kept until its round closes: an aggregator that
        # restarted from its checkpoint lost it, and the same update id makes a re-push safe.
        self._pending: tuple[pb.UpdateHeader, bytes, int] | None = None
        self._feedback = ErrorFeedback()  # what fp16 / int8 rounding dropped, sent next round

    def run(self) -> int:
        """Returns the number of rounds this client contributed to."""
        try:
            self._run()
        except Stopped:
            log_event(log, "stopped", rounds_done=self.rounds_done)
        return self.rounds_done

    def _run(self) -> None:
        cid = self.config.client_id
        current = self.client.with_retry("PullModel", lambda: self.client.pull(cid))
        arch = self._check_model(current.header)
        model = build_model(arch.id)
        self._evaluate_and_report(model, current)
        while not current.header.finished and not self._done():
            if self.stop.is_set():
                raise Stopped()
            self._contribute(model, current)
            current = self._wait_for_next(current)
            self._evaluate_and_report(model, current)
        log_event(log, "finished", rounds_done=self.rounds_done, model_version=current.header.model_version)

    def _done(self) -> bool:
        return bool(self.config.max_rounds) and self.rounds_done >= self.config.max_rounds

    def _check_model(self, header: pb.ModelHeader) -> Architecture:
        try:
            arch = get_architecture(header.architecture_id)
        except UnknownArchitectureError as exc:
            raise ModelMismatchError(f"aggregator trains {exc.args[0]}") from None
        if arch.id != self.config.architecture:
            raise ModelMismatchError(
                f"aggregator trains {arch.id!r}, this client prepared features for {self.config.architecture!r}; "
                f"start it with --architecture {arch.id}"
            )
        if tuple(header.labels) != self.classes or tuple(arch.classes) != self.classes:
            raise ModelMismatchError(
                f"aggregator's model predicts labels {list(header.labels)}, this client's data has {list(self.classes)}"
            )
        return arch

    def _wait_for_next(self, current: PulledModel) -> PulledModel:
        """The next version; ``current`` lets a compressing aggregator send only the delta."""
        cid = self.config.client_id
        min_version = current.header.model_version + 1
        while True:
            # wait_s is read per attempt: after an outage the pull answers at once, so a
            # pending update is re-pushed without first sitting out a whole long poll.
            pulled = self.client.with_retry(
                "PullModel", lambda: self.client.pull(cid, min_version=min_version, wait_s=self._poll_wait(),
                                                      have=current)
            )
            if pulled.arrays is not None:
                self._pending = None
                return pulled
            if self.stop.is_set():
                raise Stopped()
            self._repush_after_outage(pulled.header)

    def _poll_wait(self) -> float:
        if self._pending is not None and self.client.outages != self._pending[2]:
            return 0.0
        return POLL_WAIT_S

    def _repush_after_outage(self, header: pb.ModelHeader) -> None:
        if self._pending is None:
            return
        update, payload, outages = self._pending
        if self.client.outages == outages:
            return
        self._pending = (update, payload, self.client.outages)  # handled: polls wait normally again
        if header.round != update.round:
            return
        log_event(log, "update_repushed", round=update.round, reason="aggregator was unreachable")
        self._push(update, payload)

    def _push(self, header: pb.UpdateHeader, payload: bytes) -> bool:
        """Push with retries; False when the round is over or already has this client."""
        try:
            reply = self.client.with_retry("PushUpdate", lambda: self.client.push(header, payload))
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS):
                # Too late (the round closed without us) or already counted: join the next round.
                log_event(log, "update_refused", logging.WARNING, round=header.round, code=exc.code().name,
                          detail=exc.details())
                return False
            raise RefusedError(f"aggregator refused the update: {exc.code().name}: {exc.details()}") from None
        log_event(log, "update_pushed", round=header.round, duplicate=reply.duplicate,
                  accepted_in_round=reply.accepted_in_round, clients_per_round=reply.clients_per_round)
        return True

    def _contribute(self, model: torch.nn.Module, pulled: PulledModel) -> None:
        """Train on the pulled model and push the update (experiments.simulate wraps this to take turns)."""
        h = pulled.header
        load_arrays_into(model, pulled.arrays)
        plan = TrainingPlan(h.plan.local_epochs, h.plan.batch_size, h.plan.learning_rate, h.plan.proximal_mu)
        try:
            result = train_local(model, self.data.train_x, self.data.train_y, plan, self.config.device,
                                 seed=self.config.seed * 100003 + h.round, stop=self.stop)
        except TrainingInterrupted:
            raise Stopped() from None
        log_event(log, "trained", round=h.round, samples=result.num_samples, loss=round(result.loss, 4),
                  accuracy=round(result.accuracy, 4))
        payload = arrays_to_bytes(self._feedback.encode(module_to_arrays(model), pulled.arrays, self.config.encoding))
        header = pb.UpdateHeader(
            client_id=self.config.client_id,
            round=h.round,
            num_samples=result.num_samples,
            update_id=uuid.uuid4().hex,  # reused by every retry of this push
            total_bytes=len(payload),
            xxh3_128=xxh3_hex(payload),
            train_loss=result.loss,
            train_accuracy=result.accuracy,
            base_version=h.model_version,
            encoding=to_proto(self.config.encoding),
        )
        outages = self.client.outages
        if self._push(header, payload):
            self.rounds_done += 1
            self._pending = (header, payload, outages)

    def _evaluate_and_report(self, model: torch.nn.Module, pulled: PulledModel) -> None:
        if len(self.data.heldout_y) == 0:
            return
        load_arrays_into(model, pulled.arrays)
        result = evaluate(model, self.data.heldout_x, self.data.heldout_y, len(self.classes), self.config.device)
        s = result.scores
        request = pb.ReportEvaluationRequest(
            client_id=self.config.client_id,
            model_version=pulled.header.model_version,
            metrics=pb.EvaluationMetrics(examples=s.examples, loss=result.loss, accuracy=s.accuracy, uar=s.uar,
                                         confusion=[int(v) for v in s.confusion.ravel()]),
        )
        self.client.with_retry("ReportEvaluation", lambda: self.client.report(request))
        log_event(log, "evaluated", model_version=pulled.header.model_version, examples=s.examples,
                  loss=round(result.loss, 4), accuracy=round(s.accuracy, 4), uar=round(s.uar, 4))
