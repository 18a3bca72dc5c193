"""Assemble and run the aggregator: gRPC server, health, reflection, metrics endpoint, deadline ticker."""
from __future__ import annotations

import json
import logging
import os
import threading
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from aggregator_service import __version__
from aggregator_service.checkpoints import Checkpoint, CheckpointStore, encode_checkpoint
from aggregator_service.config import AggregatorConfig
from aggregator_service.metrics import AggregatorMetrics
from aggregator_service.rounds import RoundManager, RoundSummary
from aggregator_service.security import Authenticator, SecurityConfigError, TlsFiles, TokenTable, server_credentials
from aggregator_service.servicer import AggregatorServicer, ModelIdentity
from fedser.v1 import aggregator_pb2 as pb
from fedser.v1 import chunks
from model.eventlog import log_event
from model.architectures import get_architecture, initial_weights

log = logging.getLogger("fedser.aggregator")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Aggregator"].full_name
TICK_SECONDS = 0.25


class CheckpointMismatchError(Exception):
    """The checkpoint folder holds a model of another architecture."""


class LoggingListener:
    """Round transitions to structured logs and metrics."""

    def __init__(self, metrics: AggregatorMetrics) -> None:
        self._metrics = metrics

    def round_opened(self, round: int, deadline_unix: float) -> None:
        self._metrics.round_opened(round, round - 1)
        log_event(log, "round_opened", round=round, deadline_unix=round_s(deadline_unix))

    def round_closed(self, summary: RoundSummary) -> None:
        self._metrics.round_closed(summary)
        log_event(
            log,
            "round_closed",
            round=summary.round,
            model_version=summary.model_version,
            participants=summary.participants,
            samples=summary.samples,
            duration_s=round_s(summary.duration_s),
            closed_by=summary.closed_by,
        )

    def round_overdue(self, round: int, accepted: int, min_clients: int) -> None:
        self._metrics.round_overdue.set(1)
        log_event(
            log, "round_waiting", logging.WARNING, round=round, accepted=accepted, min_clients=min_clients,
            detail="deadline passed with fewer than min_clients updates; the round stays open",
        )

    def round_close_failed(self, round: int, error: Exception) -> None:
        log_event(log, "round_close_failed", logging.ERROR, round=round, detail=str(error))

    def federation_finished(self, model_version: int) -> None:
        self._metrics.finished.set(1)
        self._metrics.model_version.set(model_version)
        log_event(log, "federation_finished", model_version=model_version)


def round_s(x: float) -> float:
    return round(x, 3)


def initial_checkpoint(config: AggregatorConfig, store: CheckpointStore) -> Checkpoint:
    """Resume from the newest checkpoint, or create the seeded version 0 and store it."""
    arch = get_architecture(config.architecture)
    latest = store.latest()
    if latest is not None:
        found = latest.metadata.get("architecture_id")
        if found != arch.id:
            raise CheckpointMismatchError(
                f"{store.directory} holds checkpoints of architecture {found!r}, not {arch.id!r}; "
                "use another --checkpoint-dir or the matching --architecture"
            )
        log_event(log, "resumed", model_version=latest.version, path=str(latest.path))
        return latest
    metadata = {
        "architecture_id": arch.id,
        "labels": ",".join(arch.classes),
        "feature_preset": arch.preset,
        "seed": str(config.seed),
    }
    checkpoint = store.save(encode_checkpoint(0, initial_weights(arch.id, config.seed), metadata))
    log_event(log, "initialised", model_version=0, seed=config.seed)
    return checkpoint


@dataclass
class RunningAggregator:
    """A started aggregator: its ports and how to stop it."""

    port: int
    metrics_port: int
    manager: RoundManager
    checkpoints: CheckpointStore
    _server: grpc.Server
    _health: health.HealthServicer
    _health_server: grpc.Server | None
    _http: object
    _stop_tick: threading.Event
    _ticker: threading.Thread
    health_port: int | None = None

    def stop(self, grace_s: float = 5.0) -> None:
        """Refuse new RPCs, let running ones (and any checkpoint write) finish, then close."""
        self._health.enter_graceful_shutdown()
        self._stop_tick.set()
        self.manager.stop()
        self._server.stop(grace_s).wait()
        if self._health_server is not None:
            self._health_server.stop(0).wait()
        self._ticker.join(timeout=grace_s)
        self._http.shutdown()  # type: ignore[attr-defined]
        log_event(log, "stopped")

    def wait(self) -> None:
        self._server.wait_for_termination()


def start(config: AggregatorConfig) -> RunningAggregator:
    """Start serving; resumes from ``config.checkpoint_dir`` and writes ``config.ready_file``."""
    arch = get_architecture(config.architecture)
    # Security files are read first: a bad one stops start-up before anything listens.
    if not config.insecure and (config.tokens_file is None or config.tls_cert is None or config.tls_key is None):
        raise SecurityConfigError("TLS certificate, key and tokens file are required unless insecure mode is asked for")
    tokens = None if config.insecure else TokenTable.from_file(config.tokens_file)
    credentials = None
    if config.tls_cert is not None and config.tls_key is not None:
        credentials = server_credentials(TlsFiles(config.tls_cert, config.tls_key, config.tls_client_ca))
    store = CheckpointStore(config.checkpoint_dir, keep=config.keep_checkpoints)
    metrics = AggregatorMetrics()
    metrics.set_build(__version__, arch.id)
    initial = initial_checkpoint(config, store)
    momentum = None
    if config.rounds.uses_server_momentum and initial.version > 0:
        momentum = store.load_momentum(initial.version)
        if momentum is None:
            log_event(log, "momentum_reset", logging.WARNING, model_version=initial.version,
                      detail="no server-momentum buffer saved with this checkpoint; it starts from zero")
    manager = RoundManager(
        config.rounds, initial, persist=lambda checkpoint: None, num_classes=len(arch.classes),
        listener=LoggingListener(metrics), writer=store.write_stream,
        momentum_state=momentum, save_momentum=store.save_momentum,
    )
    message_limit = config.limits.max_chunk_bytes + (64 << 10)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_receive_message_length", message_limit),
            ("grpc.max_send_message_length", message_limit),
            # BDP probing grows each stream's receive window to several MiB; with
            # many pushes waiting for a receive buffer that was ~6 MiB of resident
            # memory per waiting stream, for no gain in throughput on a LAN.
            ("grpc.http2.bdp_probe", 0),
        ],
        maximum_concurrent_rpcs=config.max_workers * 4,
    )
    identity = ModelIdentity(arch.id, arch.classes, arch.preset)
    servicer = AggregatorServicer(manager, metrics, identity, config.limits, Authenticator(tokens))
    chunks.add_servicer(servicer, server)  # the generated registration, with copy-free chunk codecs
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"{config.host}:{config.port}"
    try:
        if credentials is None:
            log_event(log, "insecure_mode", logging.WARNING,
                      detail="plaintext gRPC without client tokens: anyone who reaches the port can take part")
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError:  # grpc's way of saying the bind failed
        port = 0
    if port == 0:
        raise OSError(f"cannot listen for gRPC on {address} (in use, or not an address of this host)")
    try:
        http, _ = start_http_server(config.metrics_port, addr=config.metrics_host, registry=metrics.registry)
    except OSError as exc:
        server.stop(0)
        raise OSError(f"cannot listen for metrics on {config.metrics_host}:{config.metrics_port}: {exc.strerror}") from None
    metrics_port = http.server_port
    health_server, health_port = _start_health_server(config, health_servicer)
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

    stop_tick = threading.Event()

    def tick() -> None:
        while not stop_tick.wait(TICK_SECONDS):
            manager.tick()

    ticker = threading.Thread(target=tick, name="round-ticker", daemon=True)
    ticker.start()
    log_event(
        log, "serving", host=config.host, port=port, metrics_port=metrics_port, health_port=health_port,
        architecture=arch.id,
        tls=credentials is not None, mutual_tls=config.tls_client_ca is not None, clients_with_tokens=len(tokens or ()),
        aggregation=config.rounds.aggregation, server_momentum=config.rounds.server_momentum,
        server_learning_rate=config.rounds.server_learning_rate, pull_encoding=config.rounds.pull_encoding,
        model_version=initial.version, round=manager.status().round,
        clients_per_round=config.rounds.clients_per_round, min_clients=config.rounds.min_clients,
    )
    if config.ready_file is not None:
        tmp = config.ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"port": port, "metrics_port": metrics_port, "health_port": health_port,
                                   "pid": os.getpid()}))
        os.replace(tmp, config.ready_file)
    return RunningAggregator(port, metrics_port, manager, store, server, health_servicer, health_server, http,
                             stop_tick, ticker, health_port)


def _start_health_server(
    config: AggregatorConfig, health_servicer: health.HealthServicer
) -> tuple[grpc.Server | None, int | None]:
    """A plaintext server with only the health service (the same servicer object, so shutdown shows on both)."""
    if config.health_port is None:
        return None, None
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="health"))
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"{config.host}:{config.health_port}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if port == 0:
        raise OSError(f"cannot listen for health checks on {address}")
    server.start()
    return server, port
