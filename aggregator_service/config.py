"""Aggregator configuration from flags, with FEDSER_* environment variables as defaults (for Kubernetes)."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from aggregator_service.rounds import RoundConfig
from aggregator_service.servicer import ServiceLimits
from model.architectures import ARCHITECTURES, DEFAULT_ARCHITECTURE
from model.plan import TrainingPlan


@dataclass(frozen=True)
class AggregatorConfig:
    """Everything the aggregator process needs to start."""

    host: str = "127.0.0.1"
    port: int = 50051
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9100
    checkpoint_dir: Path = Path("checkpoints")
    keep_checkpoints: int = 5
    architecture: str = DEFAULT_ARCHITECTURE
    seed: int = 0
    rounds: RoundConfig = field(default_factory=RoundConfig)
    limits: ServiceLimits = field(default_factory=ServiceLimits)
    max_workers: int = 64
    ready_file: Path | None = None
    log_level: str = "info"
    # Security: TLS + tokens unless insecure is asked for explicitly.
    insecure: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    tokens_file: Path | None = None
    # Plaintext port serving only grpc.health.v1, for kubelet gRPC probes (they cannot speak TLS).
    health_port: int | None = None


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """Flags; each default is read from FEDSER_<FLAG> (dashes as underscores) when set."""
    d = AggregatorConfig()
    r = d.rounds
    p = argparse.ArgumentParser(
        prog="fedser-aggregator",
        description="fedser aggregator: FedAvg over gRPC. Every flag can be set as FEDSER_<FLAG> (e.g. FEDSER_PORT).",
    )

    def add(flag: str, typ: type, default: object, help: str) -> None:
        # argparse converts string defaults with `type`, so a bad FEDSER_* value
        # is reported exactly like a bad flag.
        raw = env.get("FEDSER_" + flag[2:].replace("-", "_").upper())
        p.add_argument(flag, type=typ, default=default if raw is None else raw, help=help + " (default: %(default)s)")

    add("--host", str, d.host, "gRPC listen address; 0.0.0.0 in a container")
    add("--port", int, d.port, "gRPC port; 0 picks a free one")
    add("--metrics-host", str, d.metrics_host, "Prometheus /metrics listen address")
    add("--metrics-port", int, d.metrics_port, "Prometheus /metrics port; 0 picks a free one")
    add("--checkpoint-dir", Path, d.checkpoint_dir, "folder for global model checkpoints (resumed on start)")
    add("--keep-checkpoints", int, d.keep_checkpoints, "how many newest checkpoints to keep")
    add("--architecture", str, d.architecture, f"model architecture id ({', '.join(ARCHITECTURES)})")
    add("--seed", int, d.seed, "seed of the initial global model")
    add("--clients-per-round", int, r.clients_per_round, "accepted updates that close a round")
    add("--min-clients", int, None, "fewest updates that close a round at its deadline; "
        f"default {r.min_clients}, or clients-per-round if smaller")
    add("--round-timeout", float, r.round_timeout_s, "seconds from round open to its deadline")
    add("--rounds", int, r.max_rounds, "stop after this many rounds; 0 runs until stopped")
    add("--local-epochs", int, r.plan.local_epochs, "local epochs E in each client's plan")
    add("--batch-size", int, r.plan.batch_size, "batch size B in each client's plan")
    add("--learning-rate", float, r.plan.learning_rate, "learning rate in each client's plan")
    add("--proximal-mu", float, r.plan.proximal_mu,
        "FedProx: clients add mu / 2 * ||w - w_global||^2 to their loss; 0 is FedAvg's plain local training")
    add("--max-samples", int, r.max_samples, "largest n_k an update may declare")
    add("--max-workers", int, d.max_workers, "gRPC worker threads (each open stream holds one)")
    add("--max-streams-per-client", int, d.limits.max_streams_per_client, "open streams one client may hold")
    add("--max-chunk-bytes", int, d.limits.max_chunk_bytes, "largest chunk (and gRPC message) accepted")
    add("--size-margin-bytes", int, d.limits.size_margin_bytes,
        "an update may declare at most the model's byte size plus this")
    add("--receive-buffer-mb", int, d.limits.receive_buffer_bytes >> 20,
        "memory for pushes being read (one buffer of model size + margin each, at least two)")
    add("--max-pull-sends", int, d.limits.max_concurrent_pull_sends, "pulls that stream model bytes at once")
    add("--busy-wait", float, d.limits.max_buffer_wait_s,
        "seconds a push (pull) waits for a buffer (send slot) before it is refused as busy")
    add("--aggregation", str, r.aggregation, "fedavg (streaming), trimmed-mean or median (hold K updates)")
    add("--trim-fraction", float, r.trim_fraction, "share trimmed from each end by trimmed-mean")
    add("--clip-norm", float, r.clip_norm, "clip each update's L2 distance from the global model; 0: off")
    add("--server-momentum", float, r.server_momentum,
        "FedAvgM: momentum of the server's step, in [0, 1); 0 with --server-learning-rate 1 is plain FedAvg")
    add("--server-learning-rate", float, r.server_learning_rate, "FedAvgM: scale of the server's step")
    add("--pull-encoding", str, r.pull_encoding,
        "float32, fp16-delta or int8-delta: snap each new global to old + encoded delta and send clients "
        "that hold the old version only the delta")
    add("--tls-cert", Path, None, "PEM server certificate (chain)")
    add("--tls-key", Path, None, "PEM private key of the server certificate")
    add("--tls-client-ca", Path, None, "PEM CA of client certificates: turns on mutual TLS")
    add("--tokens-file", Path, None, "one 'client-id:token' per line (e.g. a mounted Secret)")
    add("--health-port", int, None, "plaintext port serving only the gRPC health service (kubelet probes); "
        "unset: off")
    p.add_argument(
        "--insecure", action="store_true",
        default=env.get("FEDSER_INSECURE", "").lower() in ("1", "true", "yes"),
        help="plaintext gRPC without tokens, for local demos only (default: off)",
    )
    add("--ready-file", Path, None, "write the bound ports here as JSON once serving")
    add("--log-level", str, d.log_level, "debug, info, warning or error")
    return p


def parse_config(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> AggregatorConfig:
    """Parse flags (and FEDSER_* variables) into a validated config; exits with a message on error."""
    env = os.environ if env is None else env
    parser = build_parser(env)
    a = parser.parse_args(argv)
    if a.architecture not in ARCHITECTURES:
        parser.error(f"unknown architecture {a.architecture!r}; known: {', '.join(ARCHITECTURES)}")
    if not a.insecure and not (a.tls_cert and a.tls_key and a.tokens_file):
        parser.error("serving needs --tls-cert, --tls-key and --tokens-file; "
                     "pass --insecure for plaintext without tokens (local demos only)")
    if bool(a.tls_cert) != bool(a.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if a.tls_client_ca and not a.tls_cert:
        parser.error("--tls-client-ca needs --tls-cert and --tls-key")
    if a.max_streams_per_client < 1 or a.max_chunk_bytes < 1024 or a.size_margin_bytes < 0:
        parser.error("--max-streams-per-client must be >= 1, --max-chunk-bytes >= 1024, --size-margin-bytes >= 0")
    if a.receive_buffer_mb < 0 or a.max_pull_sends < 1 or not a.busy_wait >= 0:
        parser.error("--receive-buffer-mb must be >= 0, --max-pull-sends >= 1, --busy-wait >= 0")
    for name in ("port", "metrics_port", "health_port"):
        if getattr(a, name) is not None and not 0 <= getattr(a, name) <= 65535:
            parser.error(f"--{name.replace('_', '-')} must be 0..65535")
    try:
        rounds = RoundConfig(
            clients_per_round=a.clients_per_round,
            min_clients=a.min_clients if a.min_clients is not None else min(RoundConfig().min_clients, a.clients_per_round),
            round_timeout_s=a.round_timeout,
            max_rounds=a.rounds,
            max_samples=a.max_samples,
            plan=TrainingPlan(a.local_epochs, a.batch_size, a.learning_rate, a.proximal_mu),
            aggregation=a.aggregation,
            trim_fraction=a.trim_fraction,
            clip_norm=a.clip_norm,
            server_momentum=a.server_momentum,
            server_learning_rate=a.server_learning_rate,
            pull_encoding=a.pull_encoding,
        )
    except ValueError as exc:
        parser.error(str(exc))
    return AggregatorConfig(
        host=a.host,
        port=a.port,
        metrics_host=a.metrics_host,
        metrics_port=a.metrics_port,
        checkpoint_dir=a.checkpoint_dir,
        keep_checkpoints=a.keep_checkpoints,
        architecture=a.architecture,
        seed=a.seed,
        rounds=rounds,
        limits=ServiceLimits(max_streams_per_client=a.max_streams_per_client, max_chunk_bytes=a.max_chunk_bytes,
                             size_margin_bytes=a.size_margin_bytes, receive_buffer_bytes=a.receive_buffer_mb << 20,
                             max_buffer_wait_s=a.busy_wait, max_concurrent_pull_sends=a.max_pull_sends),
        max_workers=max(4, a.max_workers),
        insecure=a.insecure,
        tls_cert=a.tls_cert,
        tls_key=a.tls_key,
        tls_client_ca=a.tls_client_ca,
        tokens_file=a.tokens_file,
        health_port=a.health_port,
        ready_file=a.ready_file,
        log_level=a.log_level,
    )
