"""Section 6: what each encoding costs in held-out accuracy on the demo task.

Each run is the demo's federation (experiments.demo: its corpus, clients,
speaker split, initial model and schedule) through the production aggregator
and client loop, in one process (experiments.federation), so that a run
repeats exactly and one run goes on each core. The runs of one seed differ
only in the clients' --update-encoding and the aggregator's --pull-encoding.

Two held-out sets score every run: the demo's own held-out speakers (what
`fedser demo` reports: 8 speakers) and a pool of 40 further synthetic speakers
that no run trains on. One run's accuracy moves by about 2 points with any
perturbation of its trajectory, so the cost of an encoding is the mean over
seeds of the paired difference to float32, given with its standard error.
"""
from __future__ import annotations

import logging
import math
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from aggregator_service.rounds import RoundConfig
from edge_client.dataset import LocalData, extract, find_utterances, load_local_data
from edge_client.main import build_parser as client_parser
from edge_client.training import evaluate
from experiments.demo import DemoConfig, client_folders, corpus_jobs
from experiments.federation import ClientSpec, run_in_process
from experiments.synthetic_corpus import CorpusSpec, ensure_actors
from model.cpus import usable_cpus
from model.eventlog import setup_logging
from model.encodings import Encoding, decode_weights, encode_update
from model.feature_cache import FeatureCache
from model.features import get_preset
from model.network import DEFAULT_ARCHITECTURE, get_architecture
from model.plan import TrainingPlan
from model.serialization import module_to_arrays

POOL_SPEAKERS = 40
# A corpus seed no demo run uses: the pool's speakers are new to every run.
POOL_SEED = 1_000_003
TAIL = 5  # a run's score: the mean of its last TAIL global versions


@dataclass(frozen=True)
class Heldout:
    x: np.ndarray
    y: np.ndarray
    speakers: int


@dataclass(frozen=True)
class SeedData:
    """One seed's demo federation: the clients' training data, and their held-out files together."""

    clients: list[ClientSpec]
    heldout: Heldout


@dataclass(frozen=True)
class Unit:
    seed: int
    update: Encoding
    pull: Encoding

    @property
    def label(self) -> str:
        return self.update.value if self.pull is Encoding.FLOAT32 else f"{self.update.value} both ways"


@dataclass
class RunScores:
    """One run: accuracy and UAR of its last TAIL global versions on the demo's held-out speakers and on the pool."""

    unit: Unit
    demo_accuracy: list[float] = field(default_factory=list)
    demo_uar: list[float] = field(default_factory=list)
    pool_accuracy: list[float] = field(default_factory=list)
    pool_uar: list[float] = field(default_factory=list)
    # float32 runs only: each delta encoding's rounding error on the last round's change of the global
    # model, as a share of that change's sum of squares.
    rounding_error: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def combinations(update_only: bool) -> list[tuple[Encoding, Encoding]]:
    """(update encoding, pull encoding) pairs: float32, each delta encoding both ways, and optionally update-only."""
    deltas = [e for e in Encoding if e.is_delta]
    update_rows = [(e, Encoding.FLOAT32) for e in deltas] if update_only else []
    return [(Encoding.FLOAT32, Encoding.FLOAT32)] + update_rows + [(e, e) for e in deltas]


def prepare_pool(folder: Path, cache: FeatureCache, speakers: int = POOL_SPEAKERS) -> Heldout:
    """The pool's features: ``speakers`` synthetic speakers from POOL_SEED's corpus."""
    arch = get_architecture(DEFAULT_ARCHITECTURE)
    ensure_actors([(folder, actor) for actor in range(1, speakers + 1)], CorpusSpec(POOL_SEED, arch.classes))
    utterances = find_utterances(folder, arch.classes)
    x, used = extract(utterances, get_preset(arch.preset), False, cache=cache)
    index = {c: i for i, c in enumerate(arch.classes)}
    return Heldout(x, np.array([index[u.label] for u in used], np.int64), len({u.speaker for u in used}))


def prepare_seed(cfg: DemoConfig, cache: FeatureCache) -> SeedData:
    """The demo's corpus for ``cfg.seed`` and each client's data as `fedser-client` would load it."""
    arch = get_architecture(DEFAULT_ARCHITECTURE)
    # The demo's files, less the ones its clients skip (calm): a file depends only on its seed, actor and name.
    ensure_actors(corpus_jobs(cfg), CorpusSpec(cfg.seed, arch.classes))
    heldout_fraction = client_parser().get_default("heldout_fraction")
    clients, hx, hy, speakers = [], [], [], 0
    for k, folder in enumerate(client_folders(cfg)):
        data = load_local_data(folder, arch.classes, get_preset(arch.preset), heldout_fraction, cfg.seed, cache=cache)
        # Held-out scores are the evaluator's (accuracy over all clients' held-out files is the
        # demo's sample-weighted mean of their reports), so clients train only.
        train_only = LocalData(data.train_x, data.train_y, data.train_x[:0], data.train_y[:0], data.train_speakers, 0)
        clients.append(ClientSpec(f"client-{k + 1}", cfg.seed, train_only))
        hx.append(data.heldout_x)
        hy.append(data.heldout_y)
        speakers += data.heldout_speakers
    return SeedData(clients, Heldout(np.concatenate(hx), np.concatenate(hy), speakers))


def rounding_error(old: dict[str, np.ndarray], new: dict[str, np.ndarray], encoding: Encoding) -> float:
    """What ``encoding`` loses of the change ``new - old``, as a share of the change's sum of squares."""
    sent = decode_weights(encode_update(new, old, encoding), old, encoding)
    lost = sum(float(np.sum(np.square(sent[k] - new[k], dtype=np.float64))) for k in new)
    change = sum(float(np.sum(np.square(new[k] - old[k], dtype=np.float64))) for k in new)
    return lost / change if change else 0.0


def run_unit(unit: Unit, data: SeedData, pool: Heldout, cfg: DemoConfig) -> RunScores:
    """One demo federation with ``unit``'s encodings, scored on both held-out sets."""
    arch = get_architecture(DEFAULT_ARCHITECTURE)
    scores = RunScores(unit)
    started = time.perf_counter()
    last_two: list[dict[str, np.ndarray]] = []

    def score(version: int, model: torch.nn.Module) -> None:
        if unit.update is Encoding.FLOAT32 and version >= cfg.rounds - 1:
            last_two.append(module_to_arrays(model))
        if version <= cfg.rounds - TAIL:
            return  # only the last TAIL versions are scored
        demo = evaluate(model, data.heldout.x, data.heldout.y, len(arch.classes), torch.device("cpu")).scores
        scores.demo_accuracy.append(demo.accuracy)
        scores.demo_uar.append(demo.uar)
        s = evaluate(model, pool.x, pool.y, len(arch.classes), torch.device("cpu")).scores
        scores.pool_accuracy.append(s.accuracy)
        scores.pool_uar.append(s.uar)

    rounds = RoundConfig(clients_per_round=cfg.clients, min_clients=cfg.clients, round_timeout_s=3600,
                         max_rounds=cfg.rounds, plan=TrainingPlan(cfg.local_epochs, cfg.batch_size, cfg.learning_rate),
                         pull_encoding=unit.pull.value)
    run_in_process(rounds, arch.id, unit.seed, data.clients, score, unit.update)
    if len(last_two) == 2:
        scores.rounding_error = {e.value: rounding_error(*last_two, e) for e in Encoding if e.is_delta}
    scores.seconds = time.perf_counter() - started
    return scores


# A worker process's pool and demo settings, set once by _init_worker.
_WORKER: tuple[Heldout, DemoConfig] | None = None


def _init_worker(pool: Heldout, cfg: DemoConfig) -> None:
    global _WORKER
    torch.set_num_threads(1)
    setup_logging("warning")
    # The in-process aggregator runs plaintext on 127.0.0.1 by design; its warning is noise here.
    logging.getLogger("fedser.aggregator").setLevel(logging.ERROR)
    _WORKER = (pool, cfg)


def _run_in_worker(unit: Unit, data: SeedData) -> RunScores:
    assert _WORKER is not None
    return run_unit(unit, data, *_WORKER)


def mean_se(xs: list[float]) -> tuple[float, float | None]:
    """The mean and its standard error (None for fewer than two values)."""
    if len(xs) < 2:
        return statistics.fmean(xs), None
    return statistics.fmean(xs), statistics.stdev(xs) / math.sqrt(len(xs))


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def _tail(xs: list[float]) -> float:
    return float(np.mean(xs[-TAIL:]))


def summarize(runs: list[RunScores], rounds: int) -> list[dict[str, object]]:
    """One row per encoding: mean scores over seeds, and the paired loss to float32 in points (mean, se, per seed)."""
    by_label: dict[str, dict[int, RunScores]] = {}
    for r in runs:
        by_label.setdefault(r.unit.label, {})[r.unit.seed] = r
    reference = by_label[Encoding.FLOAT32.value]
    rows = []
    for label, per_seed in by_label.items():
        seeds = sorted(per_seed)
        rs = [per_seed[s] for s in seeds]

        def losses(metric: str) -> list[float]:
            return [100 * (_tail(getattr(reference[s], metric)) - _tail(getattr(per_seed[s], metric))) for s in seeds]

        pool_loss, demo_loss = losses("pool_accuracy"), losses("demo_accuracy")
        errors = [reference[s].rounding_error.get(rs[0].unit.update.value) for s in seeds]
        pool_mean, pool_se = mean_se(pool_loss)
        demo_mean, demo_se = mean_se(demo_loss)
        rows.append({
            "encoding": label, "rounds": rounds, "seeds": len(rs),
            "pool_accuracy": round(float(np.mean([_tail(r.pool_accuracy) for r in rs])), 4),
            "pool_uar": round(float(np.mean([_tail(r.pool_uar) for r in rs])), 4),
            "demo_accuracy": round(float(np.mean([_tail(r.demo_accuracy) for r in rs])), 4),
            "demo_uar": round(float(np.mean([_tail(r.demo_uar) for r in rs])), 4),
            "demo_accuracy_final": round(float(np.mean([r.demo_accuracy[-1] for r in rs])), 4),
            "pool_loss_points": round(pool_mean, 2), "pool_loss_se": _round(pool_se),
            "pool_loss_per_seed": [round(x, 2) for x in pool_loss],
            "demo_loss_points": round(demo_mean, 2), "demo_loss_se": _round(demo_se),
            "demo_loss_per_seed": [round(x, 2) for x in demo_loss],
            "rounding_error": float(f"{np.mean(errors):.3g}") if None not in errors else None,
            "seconds": round(sum(r.seconds for r in rs), 1),
        })
    return rows


def run(workdir: Path, rounds: int, seeds: int = 4, update_only: bool = False, log: Callable[[str], None] = print,
        jobs: int | None = None) -> dict[str, object]:
    """``seeds`` demo federations per encoding pair, ``jobs`` at once (default: one per usable CPU)."""
    started = time.perf_counter()
    base = DemoConfig(rounds=rounds)
    folder = workdir / "compression"
    cache = FeatureCache(folder / "cache")
    pool = prepare_pool(folder / "pool", cache)
    data = {s: prepare_seed(DemoConfig(**{**base.__dict__, "seed": s, "out": folder / f"seed-{s}"}), cache)
            for s in range(seeds)}
    prepared = time.perf_counter() - started
    log(f"  [compression] pool of {len(pool.y)} files from {pool.speakers} speakers and {seeds} seeds' corpora "
        f"ready in {prepared:.0f} s")
    units = [Unit(s, u, p) for s in data for u, p in combinations(update_only)]
    jobs = max(1, min(jobs or usable_cpus(), len(units)))
    runs: list[RunScores] = []
    # spawn: gRPC and torch threads do not survive fork.
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                             initargs=(pool, base)) as ex:
        futures = {ex.submit(_run_in_worker, u, data[u.seed]): u for u in units}
        for fut in as_completed(futures):
            r = fut.result()
            runs.append(r)
            log(f"  [compression] seed {r.unit.seed} {r.unit.label}: accuracy (last {TAIL}) pool "
                f"{_tail(r.pool_accuracy):.3f}, demo held-out {_tail(r.demo_accuracy):.3f} ({r.seconds:.0f} s) "
                f"[{len(runs)}/{len(units)}]")
    order = {label: i for i, label in enumerate(Unit(0, u, p).label for u, p in combinations(update_only))}
    rows = sorted(summarize(runs, rounds), key=lambda row: order[str(row["encoding"])])
    return {
        "setup": f"{base.clients} clients x {base.actors_per_client} speakers, {rounds} rounds, "
                 f"E={base.local_epochs}, B={base.batch_size}, {DEFAULT_ARCHITECTURE}, {seeds} seeds",
        "pool": {"speakers": pool.speakers, "files": len(pool.y), "corpus_seed": POOL_SEED},
        "demo_heldout": {"speakers": data[0].heldout.speakers, "files": len(data[0].heldout.y)},
        "tail_rounds": TAIL, "jobs": jobs, "prepare_seconds": round(prepared, 1),
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
