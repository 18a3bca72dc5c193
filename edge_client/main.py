"""`fedser-client`: train on this device's speech files in a fedser federation."""
from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
from pathlib import Path
from typing import Sequence

import grpc

from edge_client.backoff import BackoffPolicy
from edge_client.dataset import load_local_data
from edge_client.errors import ClientError
from edge_client.session import FederatedSession, SessionConfig
from edge_client.training import pick_device
from edge_client.transport import AggregatorClient, ChannelSecurity
from model.corpora import AUTO, DATASETS
from model.eventlog import log_event, setup_logging
from model.lifecycle import stop_on_signals
from model.features import extraction_workers, get_preset
from model.allocator import keep_freed_memory
from model.mkl_dispatch import mkl_paths
from model.extraction_pool import ExtractionPool
from model.feature_cache import FeatureCache
from model.encodings import Encoding
from model.network import ARCHITECTURES, DEFAULT_ARCHITECTURE, get_architecture

log = logging.getLogger("fedser.client")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedser-client",
        description="Train the federation's speech-emotion model on local RAVDESS-named WAV files; "
        "only model weights and scores leave the device.",
    )
    p.add_argument("--server", required=True, help="aggregator address HOST:PORT")
    p.add_argument("--data", required=True, type=Path, help="folder of local speech files (RAVDESS naming)")
    p.add_argument("--dataset", default=AUTO, choices=(AUTO, *DATASETS),
                   help="corpus layout of --data (default: auto, detected from the file names)")
    p.add_argument("--client-id", default=socket.gethostname(), help="stable id of this device (default: host name)")
    p.add_argument("--rounds", type=int, default=0, help="contribute to N rounds, then stop; 0: until the federation finishes")
    p.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda or cuda:N")
    p.add_argument("--heldout-fraction", type=float, default=0.25, help="share of local speakers held out for evaluation")
    p.add_argument("--seed", type=int, default=0, help="seed of the speaker split and batch order")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for torch, and feature extraction threads or worker processes; "
                   "0 keeps torch's default")
    p.add_argument("--skip-unreadable", action="store_true", help="leave out unreadable audio files instead of stopping")
    p.add_argument("--rpc-timeout", type=float, default=120.0, help="deadline of each RPC in seconds")
    p.add_argument("--max-backoff", type=float, default=30.0, help="longest wait between reconnect attempts")
    p.add_argument("--progress", action="store_true", default=sys.stderr.isatty(),
                   help="show a progress bar while extracting features (default: on a terminal)")
    p.add_argument("--architecture", default=DEFAULT_ARCHITECTURE, choices=sorted(ARCHITECTURES),
                   help="model the aggregator trains: fixes features and labels (default: %(default)s)")
    p.add_argument("--update-encoding", default=Encoding.FLOAT32.value, choices=[e.value for e in Encoding],
                   help="float32 weights, or fp16 / int8 deltas from the pulled model: 1/2 or 1/4 of the bytes "
                        "(default: %(default)s)")
    p.add_argument("--cache-dir", type=Path, default=default_cache_dir(),
                   help="feature cache, keyed by file content and preset (default: %(default)s)")
    p.add_argument("--no-cache", action="store_true", help="extract features without reading or writing the cache")
    p.add_argument("--log-level", default="info", help="debug, info, warning or error")
    sec = p.add_argument_group("security (TLS and token, or --insecure)")
    sec.add_argument("--tls-ca", type=Path, help="PEM CA that signed the aggregator's certificate")
    sec.add_argument("--tls-cert", type=Path, help="PEM client certificate, for mutual TLS")
    sec.add_argument("--tls-key", type=Path, help="PEM key of the client certificate")
    sec.add_argument("--tls-server-name", help="expected name in the aggregator's certificate, if not the host")
    sec.add_argument("--token-file", type=Path, help="file holding this client's bearer token")
    sec.add_argument("--insecure", action="store_true", help="plaintext without a token (local demos only)")
    return p


def _validate(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    host, sep, port = a.server.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        p.error(f"--server must be HOST:PORT, got {a.server!r}")
    if a.rounds < 0:
        p.error("--rounds must be >= 0")
    if not 0.0 <= a.heldout_fraction < 1.0:
        p.error("--heldout-fraction must be in [0, 1)")
    if a.threads < 0 or a.rpc_timeout <= 0 or a.max_backoff <= 0:
        p.error("--threads must be >= 0, --rpc-timeout and --max-backoff > 0")
    if a.insecure and (a.tls_ca or a.token_file):
        p.error("--insecure cannot be combined with --tls-ca or --token-file")
    if not a.insecure and not (a.tls_ca and a.token_file):
        p.error("connecting needs --tls-ca and --token-file; pass --insecure for plaintext (local demos only)")
    if bool(a.tls_cert) != bool(a.tls_key):
        p.error("--tls-cert and --tls-key go together")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _validate(parser, args)
    setup_logging(args.log_level)
    stop = stop_on_signals(log)
    try:
        return run(args, stop)
    except ClientError as exc:
        log_event(log, "error", logging.ERROR, detail=str(exc))
        print(f"fedser-client: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except grpc.RpcError as exc:
        print(f"fedser-client: error: aggregator answered {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 4
    except ValueError as exc:
        print(f"fedser-client: error: {exc}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace, stop: threading.Event) -> int:
    if args.threads:
        torch_threads(args.threads)
    device = pick_device(args.device)
    # The label set and preset come from the architecture the client was built for;
    # the aggregator's first answer is checked against them before any training.
    arch = get_architecture(args.architecture)
    preset = get_preset(arch.preset)
    progress = None
    bar = None
    if args.progress:
        from tqdm import tqdm

        bar = tqdm(desc="features", unit="file", file=sys.stderr)
        progress = bar.update
    keep_freed_memory()  # extraction reuses its buffers instead of faulting fresh pages in per file
    # Worker processes only start for many uncached files (ExtractionPool.min_files) and stop once data is loaded.
    with ExtractionPool(extraction_workers()) as pool:
        cache = None if args.no_cache else FeatureCache(args.cache_dir, pool=pool)
        data = load_local_data(args.data, arch.classes, preset, args.heldout_fraction, args.seed,
                               args.skip_unreadable, progress, dataset=args.dataset, cache=cache)
    if bar is not None:
        bar.close()
    log_event(log, "data_ready", train=len(data.train_y), heldout=len(data.heldout_y),
              train_speakers=data.train_speakers, heldout_speakers=data.heldout_speakers, device=str(device),
              mkl_fast_paths=mkl_paths().active)
    client = AggregatorClient(args.server, stop, BackoffPolicy(max_s=args.max_backoff), args.rpc_timeout,
                              security=read_security(args))
    try:
        session = FederatedSession(
            SessionConfig(args.client_id, args.rounds, device, args.seed, arch.id, Encoding(args.update_encoding)),
            data, arch.classes, client, stop
        )
        session.run()
    finally:
        client.close()
    return 0


def read_security(args: argparse.Namespace) -> ChannelSecurity:
    """Load TLS files and the token named on the command line; DataError-like errors on unreadable files."""
    if args.insecure:
        log_event(log, "insecure_mode", logging.WARNING, detail="plaintext without a token")
        return ChannelSecurity()

    def read(path: Path | None, what: str) -> bytes | None:
        if path is None:
            return None
        try:
            return path.read_bytes()
        except OSError as exc:
            raise ClientError(f"cannot read {what} {path}: {exc.strerror}") from None

    token = (read(args.token_file, "token file") or b"").decode("utf-8", "replace").strip()
    if not token:
        raise ClientError(f"token file {args.token_file} is empty")
    return ChannelSecurity(read(args.tls_ca, "TLS CA"), read(args.tls_cert, "TLS certificate"),
                           read(args.tls_key, "TLS key"), token, args.tls_server_name)


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/fedser/features, or ~/.cache/fedser/features."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fedser" / "features"


def torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)


if __name__ == "__main__":
    sys.exit(main())
