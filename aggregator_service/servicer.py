"""The gRPC face of the aggregator: validate, hand off to the round logic, translate errors.

Every refusal is logged (one line, with its reason), counted in
fedser_updates_total, and answered with a status code and message.
"""
from __future__ import annotations

import logging
import threading
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from aggregator_service.errors import (
    BusyError,
    DuplicateClientError,
    FederationFinishedError,
    InvalidReportError,
    InvalidUpdateError,
    RejectedError,
    TooManyStreamsError,
    WrongBaseError,
    WrongRoundError,
)
from aggregator_service.evaluations import EvalMetrics
from aggregator_service.metrics import AggregatorMetrics
from aggregator_service.pull_compression import PullDelta
from aggregator_service.receive import ReceiveBuffers, Slots, receive_into
from aggregator_service.rounds import AcceptResult, RoundManager, UpdateMeta
from aggregator_service.security import Authenticator, PermissionDeniedError, UnauthenticatedError
from aggregator_service.validation import check_declared_size, check_tensors
from fedser.v1 import aggregator_pb2 as pb
from fedser.v1 import aggregator_pb2_grpc as pb_grpc
from fedser.v1.chunks import PushMessage
from model.eventlog import log_event
from model.encodings import expected_layout, from_proto, to_proto
from model.serialization import MalformedTensorsError, view_arrays

log = logging.getLogger("fedser.aggregator")

STATUS_FOR_ERROR: dict[type[RejectedError], grpc.StatusCode] = {
    InvalidUpdateError: grpc.StatusCode.INVALID_ARGUMENT,
    InvalidReportError: grpc.StatusCode.INVALID_ARGUMENT,
    WrongRoundError: grpc.StatusCode.FAILED_PRECONDITION,
    FederationFinishedError: grpc.StatusCode.FAILED_PRECONDITION,
    DuplicateClientError: grpc.StatusCode.ALREADY_EXISTS,
    TooManyStreamsError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    BusyError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    WrongBaseError: grpc.StatusCode.FAILED_PRECONDITION,
    UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
}


@dataclass(frozen=True)
class ServiceLimits:
    """Bounds enforced before bulk data is read."""

    chunk_bytes: int = 1 << 20
    max_chunk_bytes: int = 4 << 20
    size_margin_bytes: int = 64 << 10
    max_wait_s: float = 30.0
    max_streams_per_client: int = 2
    # Pushes in flight hold one buffer of (model bytes + margin) each; this
    # budget bounds them all (but at least min_receive_buffers, so that big
    # updates still overlap), whatever the number of clients.
    receive_buffer_bytes: int = 64 << 20
    min_receive_buffers: int = 2
    max_buffer_wait_s: float = 60.0
    # Pulls streaming model bytes at once: gRPC holds a few MiB per sending stream.
    max_concurrent_pull_sends: int = 16

    def receive_buffers(self, buffer_bytes: int) -> int:
        """How many receive buffers of ``buffer_bytes`` the budget allows."""
        return max(self.min_receive_buffers, 1, self.receive_buffer_bytes // buffer_bytes)


@dataclass(frozen=True)
class ModelIdentity:
    architecture_id: str
    labels: tuple[str, ...]
    feature_preset: str


class AggregatorServicer(pb_grpc.AggregatorServicer):
    """Implements fedser.v1.Aggregator on top of a RoundManager."""

    def __init__(
        self, manager: RoundManager, metrics: AggregatorMetrics, identity: ModelIdentity, limits: ServiceLimits,
        auth: Authenticator | None = None,
    ) -> None:
        self._manager = manager
        self._metrics = metrics
        self._identity = identity
        self._limits = limits
        self._auth = auth or Authenticator(None)
        self._streams: Counter[str] = Counter()
        buffer_bytes = manager.global_model.size + limits.size_margin_bytes
        self._buffers = ReceiveBuffers(buffer_bytes, limits.receive_buffers(buffer_bytes))
        self._send_slots = Slots(limits.max_concurrent_pull_sends)
        self._streams_lock = threading.Lock()

    @contextmanager
    def _stream_slot(self, client_id: str) -> Iterator[None]:
        """Bound the streams one client holds open at once (each holds a worker thread)."""
        with self._streams_lock:
            if self._streams[client_id] >= self._limits.max_streams_per_client:
                raise TooManyStreamsError(
                    f"client already has {self._limits.max_streams_per_client} streams open"
                )
            self._streams[client_id] += 1
        try:
            yield
        finally:
            with self._streams_lock:
                self._streams[client_id] -= 1
                if not self._streams[client_id]:
                    del self._streams[client_id]

    def _authorize(self, context: grpc.ServicerContext, client_id: str | None, rpc: str) -> None:
        """Check the caller's token (and that it belongs to ``client_id``); abort with the right code."""
        try:
            identity = self._auth.identify(context)
            if client_id is not None:
                self._auth.authorize(identity, client_id)
        except RejectedError as exc:
            self._metrics.auth_failures.labels(rpc=rpc, reason=exc.reason).inc()
            log_event(log, "request_rejected", logging.WARNING, rpc=rpc, reason=exc.reason)
            _abort(context, STATUS_FOR_ERROR[type(exc)], str(exc))

    # -- PullModel -----------------------------------------------------
    def PullModel(self, request: pb.PullModelRequest, context: grpc.ServicerContext) -> Iterator[pb.PullModelResponse | bytes]:
        self._authorize(context, request.client_id, "PullModel")
        try:
            with self._stream_slot(request.client_id):
                yield from self._pull(request, context)
        except (TooManyStreamsError, BusyError) as exc:
            log_event(log, "pull_refused", logging.WARNING, reason=exc.reason, client=request.client_id)
            _abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))

    def _pull(self, request: pb.PullModelRequest, context: grpc.ServicerContext) -> Iterator[pb.PullModelResponse | bytes]:
        wait = min(max(request.wait_seconds, 0.0), self._limits.max_wait_s)
        remaining = context.time_remaining()
        if remaining is not None:
            wait = min(wait, max(0.0, remaining - 1.0))
        model = (
            self._manager.wait_for_version(request.min_version, wait)
            if request.min_version
            else self._manager.global_model
        )
        status = self._manager.status()
        cfg = self._manager.config
        delta = self._delta_for(request, model.version)
        source = delta if delta is not None else model
        # A round that opened after `model` was read belongs to a newer model;
        # the header names the round that trains on this model's version.
        header = pb.ModelHeader(
            round=model.version + 1,
            model_version=model.version,
            architecture_id=self._identity.architecture_id,
            labels=list(self._identity.labels),
            feature_preset=self._identity.feature_preset,
            plan=pb.TrainingPlan(
                local_epochs=cfg.plan.local_epochs,
                batch_size=cfg.plan.batch_size,
                learning_rate=cfg.plan.learning_rate,
                proximal_mu=cfg.plan.proximal_mu,
                deadline=_timestamp(status.deadline_unix),
            ),
            total_bytes=source.size,
            sha256=source.sha256,
            xxh3_128=source.xxh3_128,
            encoding=to_proto(delta.encoding) if delta is not None else pb.UPDATE_ENCODING_UNSPECIFIED,
            base_version=delta.base_version if delta is not None else 0,
            model_data_xxh3_128=model.data_xxh3_128,
            finished=status.finished and model.version == status.model_version,
            payload_omitted=model.version < request.min_version and not status.finished,
        )
        if header.payload_omitted:
            yield pb.PullModelResponse(header=header)
            return
        with self._send_slots.acquire(self._limits.max_buffer_wait_s):
            yield pb.PullModelResponse(header=header)
            for offset in range(0, source.size, self._limits.chunk_bytes):
                chunk = source.read(offset, self._limits.chunk_bytes)
                self._metrics.bytes_sent.inc(len(chunk))
                yield chunk  # fedser.v1.chunks serializes it as a chunk message

    def _delta_for(self, request: pb.PullModelRequest, version: int) -> PullDelta | None:
        """The kept delta to ``version`` when the client holds ``version - 1`` and can apply its encoding."""
        if not request.HasField("have_version") or request.have_version + 1 != version:
            return None
        delta = self._manager.pull_delta(version)
        if delta is None or to_proto(delta.encoding) not in request.accept_encodings:
            return None
        return delta

    # -- PushUpdate ----------------------------------------------------
    def PushUpdate(self, request_iterator: Iterable[PushMessage], context: grpc.ServicerContext) -> pb.PushUpdateResponse:
        header: pb.UpdateHeader | None = None
        try:
            identity = self._auth.identify(context)  # before reading anything from the stream
            first = next(iter(request_iterator), None)
            if not isinstance(first, pb.PushUpdateRequest) or first.WhichOneof("payload") != "header":
                raise InvalidUpdateError("the first message of a push must be the header", reason="bad_header")
            header = first.header
            self._auth.authorize(identity, header.client_id)
            with self._stream_slot(header.client_id):
                return self._push(request_iterator, header)
        except RejectedError as exc:
            self._reject(context, exc, header)
            raise AssertionError("unreachable")  # context.abort raises

    def _push(self, request_iterator: Iterable[PushMessage], h: pb.UpdateHeader) -> pb.PushUpdateResponse:
        """Header checks first, then the bulk bytes into a pooled buffer, then the tensors, then the round logic."""
        meta = UpdateMeta(
            client_id=h.client_id,
            round=h.round,
            num_samples=h.num_samples,
            update_id=h.update_id,
            train_loss=h.train_loss if _finite(h.train_loss) else 0.0,
            train_accuracy=h.train_accuracy if _finite(h.train_accuracy) else 0.0,
        )
        encoding = from_proto(h.encoding)
        if encoding is None:
            raise InvalidUpdateError(f"unsupported update encoding {h.encoding}", reason="bad_header")
        check_declared_size(h.total_bytes, h.sha256, h.xxh3_128, self._buffers.size)
        seen = self._manager.precheck(meta)
        if seen is not None:
            return self._acknowledge(meta, seen)
        if encoding.is_delta and h.base_version != self._manager.global_model.version:
            raise WrongBaseError(
                f"a delta update must start from global version {self._manager.global_model.version}, "
                f"not {h.base_version}"
            )
        with self._buffers.acquire(self._limits.max_buffer_wait_s) as buf:
            payload = receive_into(
                request_iterator, buf, h.total_bytes, self._limits.max_chunk_bytes, h.sha256, h.xxh3_128,
                self._metrics.bytes_received.inc,
            )
            try:
                arrays, _ = view_arrays(payload)  # views of buf: folded below, never kept
            except MalformedTensorsError as exc:
                raise InvalidUpdateError(str(exc), reason="malformed") from None
            check_tensors(arrays, expected_layout(self._manager.specs, encoding))
            result = self._manager.accept(meta, arrays, encoding)
            del arrays, payload
        return self._acknowledge(meta, result)

    def _acknowledge(self, meta: UpdateMeta, result: AcceptResult) -> pb.PushUpdateResponse:
        self._metrics.update_accepted(result.accepted_in_round, result.duplicate)
        if result.clipped:
            self._metrics.updates_clipped.inc()
        log_event(
            log,
            "update_duplicate" if result.duplicate else "update_accepted",
            client=meta.client_id,
            round=result.round,
            num_samples=meta.num_samples,
            accepted_in_round=result.accepted_in_round,
            clipped=result.clipped,
        )
        return pb.PushUpdateResponse(
            accepted=True,
            duplicate=result.duplicate,
            round=result.round,
            accepted_in_round=result.accepted_in_round,
            clients_per_round=self._manager.config.clients_per_round,
        )

    def _reject(self, context: grpc.ServicerContext, exc: RejectedError, header: pb.UpdateHeader | None) -> None:
        self._metrics.update_rejected(exc.reason)
        if isinstance(exc, (UnauthenticatedError, PermissionDeniedError)):
            self._metrics.auth_failures.labels(rpc="PushUpdate", reason=exc.reason).inc()
        log_event(
            log,
            "update_rejected",
            logging.WARNING,
            reason=exc.reason,
            detail=_bounded(str(exc)),
            # Ids reach the log only once they passed the id check (no control characters).
            client=header.client_id if header is not None and exc.reason != "bad_header" else None,
            round=header.round if header is not None else None,
        )
        _abort(context, STATUS_FOR_ERROR.get(type(exc), grpc.StatusCode.INVALID_ARGUMENT), str(exc))

    # -- ReportEvaluation ----------------------------------------------
    def ReportEvaluation(self, request: pb.ReportEvaluationRequest, context: grpc.ServicerContext) -> pb.ReportEvaluationResponse:
        self._authorize(context, request.client_id, "ReportEvaluation")
        m = request.metrics
        metrics = EvalMetrics(m.examples, m.loss, m.accuracy, m.uar, tuple(m.confusion))
        try:
            reports = self._manager.record_evaluation(request.client_id, request.model_version, metrics)
        except RejectedError as exc:
            self._metrics.evaluation_reports.labels(status="rejected").inc()
            log_event(log, "evaluation_rejected", logging.WARNING, reason=exc.reason, detail=_bounded(str(exc)))
            _abort(context, STATUS_FOR_ERROR.get(type(exc), grpc.StatusCode.INVALID_ARGUMENT), str(exc))
        pooled = self._manager.pooled_evaluation(request.model_version)
        if pooled is not None:
            self._metrics.evaluation(request.model_version, pooled[1])
        log_event(
            log,
            "evaluation_reported",
            client=request.client_id,
            model_version=request.model_version,
            examples=m.examples,
            accuracy=round(m.accuracy, 4),
            uar=round(m.uar, 4),
        )
        return pb.ReportEvaluationResponse(reports=reports)

    # -- GetStatus -----------------------------------------------------
    def GetStatus(self, request: pb.GetStatusRequest, context: grpc.ServicerContext) -> pb.GetStatusResponse:
        self._authorize(context, None, "GetStatus")
        status = self._manager.status()
        cfg = self._manager.config
        return pb.GetStatusResponse(
            round=status.round,
            model_version=status.model_version,
            finished=status.finished,
            accepted_in_round=status.accepted,
            clients_per_round=cfg.clients_per_round,
            min_clients=cfg.min_clients,
            deadline=_timestamp(status.deadline_unix),
            overdue=status.overdue,
            architecture_id=self._identity.architecture_id,
            labels=list(self._identity.labels),
            max_rounds=cfg.max_rounds,
            rounds=[
                pb.RoundSummary(
                    round=s.round,
                    model_version=s.model_version,
                    participants=s.participants,
                    samples=s.samples,
                    duration_seconds=s.duration_s,
                    train_loss=s.train_loss,
                    train_accuracy=s.train_accuracy,
                )
                for s in self._manager.history()
            ],
            evaluations=[
                pb.VersionEvaluation(
                    model_version=v,
                    reports=n,
                    metrics=pb.EvaluationMetrics(
                        examples=e.examples, loss=e.loss, accuracy=e.accuracy, uar=e.uar, confusion=list(e.confusion)
                    ),
                )
                for v, n, e in self._manager.evaluations()
            ],
        )


MAX_STATUS_MESSAGE = 512


def _bounded(message: str) -> str:
    """Refusal texts can quote what a client sent; keep them short enough for gRPC's metadata limit."""
    return message if len(message) <= MAX_STATUS_MESSAGE else message[: MAX_STATUS_MESSAGE - 3] + "..."


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str) -> None:
    context.abort(code, _bounded(message))


def _timestamp(unix_s: float) -> Timestamp:
    ts = Timestamp()
    ts.FromNanoseconds(int(unix_s * 1e9))
    return ts


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")
