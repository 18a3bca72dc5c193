"""`fedser demo`: a whole federation on 127.0.0.1 with the built-in synthetic corpus.

Generates the corpus (each client its own speakers), starts one aggregator and
K client processes, prints each round as it closes with held-out scores, then
writes a plot and says where the final checkpoint is.
"""
from __future__ import annotations

import argparse
import csv
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import grpc

from experiments.processes import ProcessStartError, start_aggregator, start_client, single_thread_env, stop_process
from experiments.synthetic_corpus import CorpusSpec, ensure_actors
from fedser.v1 import aggregator_pb2 as pb
from fedser.v1 import aggregator_pb2_grpc as pb_grpc
from model.encodings import Encoding


@dataclass(frozen=True)
class DemoConfig:
    clients: int = 4
    actors_per_client: int = 6
    rounds: int = 40
    local_epochs: int = 2
    batch_size: int = 16
    learning_rate: float = 1e-3
    seed: int = 0
    out: Path = Path("demo-output")
    update_encoding: str = "float32"
    pull_encoding: str = "float32"


@dataclass
class RoundRow:
    version: int
    participants: int
    samples: int
    duration_s: float
    loss: float
    accuracy: float
    uar: float


def build_parser() -> argparse.ArgumentParser:
    d = DemoConfig()
    p = argparse.ArgumentParser(prog="fedser demo", description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=d.clients, help="edge-client processes K (default: %(default)s)")
    p.add_argument("--actors-per-client", type=int, default=d.actors_per_client,
                   help="synthetic speakers on each client (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=d.rounds, help="federated rounds (default: %(default)s)")
    p.add_argument("--local-epochs", type=int, default=d.local_epochs, help="local epochs E (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="batch size B (default: %(default)s)")
    p.add_argument("--learning-rate", type=float, default=d.learning_rate, help="(default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="corpus and model seed (default: %(default)s)")
    p.add_argument("--out", type=Path, default=d.out, help="output folder (default: %(default)s)")
    p.add_argument("--update-encoding", default=d.update_encoding, choices=[e.value for e in Encoding],
                   help="how clients send updates: float32, fp16-delta or int8-delta (default: %(default)s)")
    p.add_argument("--pull-encoding", default=d.pull_encoding, choices=[e.value for e in Encoding],
                   help="how the aggregator sends the global model to clients that hold the previous one "
                        "(its --pull-encoding; default: %(default)s)")
    return p


def client_folders(cfg: DemoConfig) -> list[Path]:
    """Each client's folder of synthetic speakers, in client order."""
    return [cfg.out / "data" / f"client-{k + 1}" for k in range(cfg.clients)]


def corpus_jobs(cfg: DemoConfig) -> list[tuple[Path, int]]:
    """(folder, actor) for every speaker of the demo: client k holds actors k * A + 1 .. (k + 1) * A."""
    return [(folder, k * cfg.actors_per_client + j + 1)
            for k, folder in enumerate(client_folders(cfg)) for j in range(cfg.actors_per_client)]


def prepare_corpus(cfg: DemoConfig) -> list[Path]:
    """Each client's folder of synthetic speakers; reuses files already generated with the same spec."""
    ensure_actors(corpus_jobs(cfg), CorpusSpec(seed=cfg.seed),
                  progress=lambda done, total: print(f"\r  corpus: {done}/{total} speakers", end="", flush=True))
    print()
    return client_folders(cfg)


def _fmt(row: RoundRow, rounds: int) -> str:
    head = f"  round {row.version:>3}/{rounds}" if row.version else "  initial    "
    train = f"{row.participants} clients, {row.samples:>4} samples, {row.duration_s:5.1f} s" if row.version else " " * 33
    return f"{head} | {train} | held-out loss {row.loss:.3f}  acc {row.accuracy:6.1%}  UAR {row.uar:6.1%}"


def plot(rows: list[RoundRow], path: Path) -> None:
    """Held-out accuracy and UAR against rounds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    x = [r.version for r in rows]
    ax.plot(x, [100 * r.accuracy for r in rows], marker="o", ms=3, label="accuracy")
    ax.plot(x, [100 * r.uar for r in rows], marker="s", ms=3, label="UAR")
    ax.axhline(25, color="grey", ls="--", lw=1, label="chance (4 classes)")
    ax.set_xlabel("federated round")
    ax.set_ylabel("held-out speakers (%)")
    ax.set_ylim(0, 100)
    ax.set_title("fedser demo: global model on held-out speakers")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(cfg: DemoConfig) -> int:
    started = time.monotonic()
    out = cfg.out
    logs = out / "logs"
    checkpoints = out / "checkpoints"
    print(f"fedser demo: {cfg.clients} clients x {cfg.actors_per_client} speakers, {cfg.rounds} rounds, "
          f"E={cfg.local_epochs}, B={cfg.batch_size}")
    folders = prepare_corpus(cfg)
    # A demo always starts from round 0: old checkpoints would make it resume.
    for old in checkpoints.glob("*.safetensors"):
        old.unlink()
    for old in logs.glob("*.log"):
        old.unlink()
    env = single_thread_env()
    try:
        agg = start_aggregator(checkpoints, logs / "aggregator.log", env=env, args=[
            "--clients-per-round", str(cfg.clients), "--min-clients", str(max(1, cfg.clients - 1)),
            "--round-timeout", "300", "--rounds", str(cfg.rounds), "--seed", str(cfg.seed),
            "--local-epochs", str(cfg.local_epochs), "--batch-size", str(cfg.batch_size),
            "--learning-rate", str(cfg.learning_rate), "--pull-encoding", cfg.pull_encoding,
        ])
    except ProcessStartError as exc:
        print(f"fedser demo: error: {exc}", file=sys.stderr)
        return 1
    print(f"  aggregator on {agg.target}, metrics on http://127.0.0.1:{agg.metrics_port}/metrics")
    clients = [
        start_client(agg.target, folder, f"client-{k + 1}", logs / f"client-{k + 1}.log",
                     args=["--threads", "1", "--seed", str(cfg.seed), "--cache-dir", str(out / "cache"),
                           "--update-encoding", cfg.update_encoding], env=env)
        for k, folder in enumerate(folders)
    ]
    rows: list[RoundRow] = []
    try:
        rows = _follow(agg.target, cfg, clients, logs)
    except KeyboardInterrupt:
        print("\n  interrupted")
    finally:
        for c in clients:
            stop_process(c)
        agg.stop()
    failed = [k + 1 for k, c in enumerate(clients) if c.returncode not in (0, -15)]
    if failed or not rows or rows[-1].version < cfg.rounds:
        print(f"fedser demo: the run did not complete (clients failed: {failed or 'none'}); logs in {logs}",
              file=sys.stderr)
        for k in failed:
            print(_exit_text(k, clients[k - 1].returncode, logs / f"client-{k}.log"), file=sys.stderr)
        return 1
    _write_results(rows, out)
    final = rows[-1]
    best = max(rows, key=lambda r: r.uar)
    print(f"\nDone in {time.monotonic() - started:.0f} s. Final global model after {final.version} rounds, "
          f"held-out speakers: accuracy {final.accuracy:.1%}, UAR {final.uar:.1%} (chance 25%); "
          f"best UAR {best.uar:.1%} at round {best.version}.")
    print(f"  plot:       {out / 'results.png'}")
    print(f"  per round:  {out / 'results.csv'}")
    print(f"  checkpoint: {checkpoints / f'global-v{final.version:08d}.safetensors'}")
    print(f"  logs:       {logs}/")
    return 0


def _exit_text(k: int, code: int, log_path: Path) -> str:
    """One failed client's exit, as the demo reports it: the code (a signal, if it had to be killed) and its last lines."""
    how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
    try:
        tail = log_path.read_text(errors="replace").splitlines()[-5:]
    except OSError:
        tail = ["(no log)"]
    return f"  client-{k}: {how}; last lines of its log:\n    " + "\n    ".join(tail)


def _follow(target: str, cfg: DemoConfig, clients: list, logs: Path) -> list[RoundRow]:
    """Poll the aggregator's status and print each version once all clients reported on it."""
    rows: list[RoundRow] = []
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.AggregatorStub(channel)
        shown = -1
        last_progress = time.monotonic()
        while True:
            status = stub.GetStatus(pb.GetStatusRequest(), timeout=10)
            summaries = {s.model_version: s for s in status.rounds}
            evals = {e.model_version: e for e in status.evaluations}
            live = sum(c.poll() is None for c in clients)
            for v in range(shown + 1, status.model_version + 1):
                e = evals.get(v)
                # Wait for every live client's report, but never stall on one that left.
                if e is None or (e.reports < live and v == status.model_version and not status.finished):
                    break
                s = summaries.get(v)
                row = RoundRow(v, s.participants if s else 0, s.samples if s else 0, s.duration_seconds if s else 0.0,
                               e.metrics.loss, e.metrics.accuracy, e.metrics.uar)
                rows.append(row)
                print(_fmt(row, cfg.rounds), flush=True)
                shown = v
                last_progress = time.monotonic()
            if status.finished and shown >= status.model_version:
                return rows
            if live == 0 and shown < status.model_version:
                return rows
            if any(c.poll() not in (None, 0) for c in clients):
                bad = next(k for k, c in enumerate(clients) if c.poll() not in (None, 0))
                log = (logs / f"client-{bad + 1}.log").read_text(errors="replace").splitlines()[-5:]
                print(f"  client-{bad + 1} failed:\n    " + "\n    ".join(log), file=sys.stderr)
                return rows
            if time.monotonic() - last_progress > 600:
                print("  no progress for 10 minutes; giving up", file=sys.stderr)
                return rows
            time.sleep(0.5)


def _write_results(rows: list[RoundRow], out: Path) -> None:
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["round", "participants", "samples", "round_seconds", "heldout_loss", "heldout_accuracy", "heldout_uar"])
        for r in rows:
            w.writerow([r.version, r.participants, r.samples, f"{r.duration_s:.3f}", f"{r.loss:.5f}",
                        f"{r.accuracy:.5f}", f"{r.uar:.5f}"])
    plot(rows, out / "results.png")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    if a.clients < 1 or a.actors_per_client < 2 or a.rounds < 1:
        parser.error("--clients >= 1, --actors-per-client >= 2 (one is held out) and --rounds >= 1")
    cfg = DemoConfig(a.clients, a.actors_per_client, a.rounds, a.local_epochs, a.batch_size, a.learning_rate,
                     a.seed, a.out, a.update_encoding, a.pull_encoding)
    return run(cfg)
