"""`python -m benchmarks` (`make bench`): run the sections, write JSON + markdown.

Modes (section settings below; any can be overridden by a flag):
    --quick   a check of the harness, under 3 minutes: 3 small combos, 3 rounds, 72-file corpus,
              no accuracy-per-encoding runs
    default   the issue's matrix, under 20 minutes on 2 cores: N in {10, 50, 200} x {333,700, 25M}
              parameters, 5 rounds each (200 x 25M alone moves 37 GiB per round: ~7 of the minutes);
              section 6 on float32 and fp16 / int8 both ways
    --full    the default's rounds plus a 3x larger feature corpus, longer training runs,
              2 repetitions of the reference after each round, the synthetic sizes on the wire
              and every encoding combination in section 6
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from benchmarks.common import REPO_ROOT, machine_info

SECTIONS = ("round", "rss", "features", "train", "wire", "compression")
SMALL, LARGE = 333_700, 25_000_000
DEFAULT_RESULTS = REPO_ROOT / "benchmarks" / "results"
DEFAULT_DOC = REPO_ROOT / "docs" / "PERFORMANCE.md"

MODES: dict[str, dict[str, object]] = {
    "quick": {
        "combos": [(SMALL, 10), (SMALL, 50), (LARGE, 10)],
        "rounds": 3, "reference_reps": 1, "actors": 2, "train_seconds": 1.5, "wire_sizes": [LARGE],
        "compression_rounds": 0, "compression_seeds": 1, "compression_combos": "targets", "feature_passes": 2,
    },
    "default": {
        "combos": [(p, n) for p in (SMALL, LARGE) for n in (10, 50, 200)],
        "rounds": 5, "reference_reps": 1, "actors": 8, "train_seconds": 8.0, "wire_sizes": [],
        "compression_rounds": 30, "compression_seeds": 4, "compression_combos": "targets", "feature_passes": 5,
    },
    "full": {
        "combos": [(p, n) for p in (SMALL, LARGE) for n in (10, 50, 200)],
        "rounds": 5, "reference_reps": 2, "actors": 24, "train_seconds": 20.0, "wire_sizes": [SMALL, LARGE],
        "compression_rounds": 40, "compression_seeds": 4, "compression_combos": "all", "feature_passes": 7,
    },
}
ALL_COMBOS = MODES["full"]["combos"]


def _ints(text: str) -> list[int]:
    return [int(x.replace("_", "")) for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="harness check, under 3 minutes")
    mode.add_argument("--full", action="store_true",
                      help="a 3x larger feature corpus, longer training runs, 2 reference repetitions a round")
    p.add_argument("--only", default=",".join(SECTIONS),
                   help=f"comma-separated sections to run: {', '.join(SECTIONS)} (round and rss share their runs)")
    p.add_argument("--params", type=_ints, help="model sizes for round/rss, e.g. 333700,25000000 "
                   "(with --clients: every pair is run)")
    p.add_argument("--clients", type=_ints, help="client counts N for round/rss, e.g. 10,50,200")
    p.add_argument("--rounds", type=int, help="rounds per combo")
    p.add_argument("--push-concurrency", type=int, help="client-side bound on concurrent pushes (default: "
                   "none; the aggregator bounds the pushes it reads by its receive buffers)")
    p.add_argument("--reference-reps", type=int, help="repetitions of the reference after each round (median; "
                   "default 1, --full 2)")
    p.add_argument("--actors", type=int, help="synthetic actors of the feature corpus (36 files each)")
    p.add_argument("--feature-passes", type=int, help="interleaved passes of every feature pipeline (median; "
                   "default 5, --quick 2, --full 7)")
    p.add_argument("--no-librosa", action="store_true", help="skip the seed's librosa pipeline")
    p.add_argument("--train-seconds", type=float, help="target seconds of each timed training run")
    p.add_argument("--compression-seeds", type=int,
                   help="demo federations per combination in section 6, one per usable CPU at a time (default: 4)")
    p.add_argument("--compression-rounds", type=int,
                   help="demo rounds per run in section 6 (default: 30, --full 40; --quick: 0 = skipped)")
    p.add_argument("--no-cuda", action="store_true", help="train on the CPU only even when CUDA is present")
    p.add_argument("--compression-combos", choices=["targets", "all"],
                   help="section 6's encodings: 'targets' = float32 and fp16 / int8 both ways, the ones that cut "
                        "a round's bytes 2x / 3.5x (default); 'all' adds fp16 / int8 updates with float32 pulls (--full)")
    p.add_argument("--wire-sizes", type=_ints, help="synthetic model sizes for the wire section besides the registered "
                   "architectures (default: none; --quick 25M; --full 333,700 and 25M)")
    p.add_argument("--wire-architectures", help="registered architectures for the wire section "
                   "(comma-separated, 'none' for none; default: all)")
    p.add_argument("--out", type=Path, default=DEFAULT_RESULTS, help="results folder (default: benchmarks/results)")
    p.add_argument("--name", help="results file name without .json (default: <mode>-<UTC timestamp>)")
    p.add_argument("--workdir", type=Path, help="scratch folder for corpora and checkpoints (default: system temp)")
    p.add_argument("--update-docs", action="store_true",
                   help="also replace the table between the bench markers in docs/PERFORMANCE.md")
    p.add_argument("--note", help="a line stored with the results and shown above the table")
    return p


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    mode = "quick" if a.quick else "full" if a.full else "default"
    cfg = dict(MODES[mode])
    only = [s.strip() for s in a.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown sections {unknown}; known: {', '.join(SECTIONS)}")
    combos: list[tuple[int, int]] = list(cfg["combos"])  # type: ignore[arg-type]
    if a.params or a.clients:
        params = a.params or sorted({p for p, _ in combos})
        clients = a.clients or sorted({n for _, n in combos})
        combos = [(p, n) for p in params for n in clients]
    skipped = [c for c in ALL_COMBOS if c not in combos] if not (a.params or a.clients) else []
    rounds = a.rounds or cfg["rounds"]
    reps = a.reference_reps or cfg["reference_reps"]
    actors = a.actors or cfg["actors"]
    feature_passes = a.feature_passes or cfg["feature_passes"]
    train_s = a.train_seconds if a.train_seconds is not None else cfg["train_seconds"]
    wire_sizes = a.wire_sizes if a.wire_sizes is not None else cfg["wire_sizes"]
    compression_rounds = a.compression_rounds if a.compression_rounds is not None else cfg["compression_rounds"]
    compression_seeds = a.compression_seeds or cfg["compression_seeds"]
    compression_combos = a.compression_combos or cfg["compression_combos"]
    if min([rounds, reps, actors, feature_passes]) < 1 or any(p <= 64 for p, _ in combos) or any(n < 1 for _, n in combos):
        parser.error("rounds, reference reps, actors and feature passes must be >= 1, params > 64, clients >= 1")

    started = datetime.now(timezone.utc)
    name = a.name or f"{mode}-{started.strftime('%Y%m%dT%H%M%SZ')}"
    t_start = time.perf_counter()
    result: dict[str, object] = {
        "meta": {
            "mode": mode,
            "started": started.strftime("%Y-%m-%d %H:%M UTC"),
            "command": "python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv),
            "machine": machine_info(),
            "settings": {"sections": only, "combos": combos, "rounds": rounds, "reference_reps": reps,
                         "actors": actors, "feature_passes": feature_passes, "train_seconds": train_s, "wire_sizes": wire_sizes,
                         "compression_rounds": compression_rounds, "compression_seeds": compression_seeds,
                         "compression_combos": compression_combos,
                         "push_concurrency": a.push_concurrency},
            "note": a.note,
        },
        "sections": {},
    }
    sections: dict[str, object] = result["sections"]  # type: ignore[assignment]
    failures: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix="fedser-bench-", dir=a.workdir))
    try:
        if "round" in only or "rss" in only:
            from benchmarks.round_overhead import run_combo

            done, errors = [], []
            for params, clients in combos:
                log(f"round: {params:,} params, N={clients}, {rounds} rounds")
                try:
                    done.append(run_combo(params, clients, rounds, workdir, a.push_concurrency, reps, log=log))
                    c = done[-1]
                    log(f"round: median {c['median_round_s']} s, reference {c['reference_s']} s, "
                        f"ratio {c['ratio']}, peak RSS {c['aggregator_peak_rss_mib']} MiB")
                except Exception as exc:  # one failed combo must not lose the others
                    traceback.print_exc()
                    errors.append(f"{params:,} x N={clients}: {exc!r}"[:500])
            sections["round"] = {"combos": done, "skipped": skipped, "errors": errors}
            failures += errors
        if "features" in only:
            from benchmarks import features_bench

            log(f"features: {actors} actors")
            sections["features"] = _guard(failures, "features",
                                          lambda: features_bench.run(workdir, actors, not a.no_librosa,
                                                                             feature_passes, log=log))
        if "train" in only:
            from benchmarks import training_bench

            log("train")
            sections["train"] = _guard(failures, "train",
                                       lambda: training_bench.run(train_s, use_cuda=not a.no_cuda, log=log))
        if "wire" in only:
            from benchmarks import wire

            archs = None if a.wire_architectures is None else (
                [] if a.wire_architectures == "none" else a.wire_architectures.split(","))
            log("wire")
            sections["wire"] = _guard(failures, "wire", lambda: wire.run(workdir, wire_sizes, archs, log=log))
        if "compression" in only and compression_rounds:
            from benchmarks import compression

            log(f"compression: {compression_rounds} demo rounds per encoding")
            sections["compression"] = _guard(failures, "compression",
                                             lambda: compression.run(workdir, compression_rounds, compression_seeds,
                                                                     compression_combos == "all", log=log))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    sections = {k: v for k, v in sections.items() if v is not None}
    result["sections"] = sections
    meta = result["meta"]  # type: ignore[assignment]
    meta["duration_s"] = round(time.perf_counter() - t_start, 1)
    try:
        meta["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    meta["failures"] = failures

    from benchmarks.report import render, update_doc

    a.out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2) + "\n"
    (a.out / f"{name}.json").write_text(text)
    (a.out / "latest.json").write_text(text)
    table = render(result)
    (a.out / "latest.md").write_text(table)
    log(f"wrote {a.out / (name + '.json')} and {a.out / 'latest.md'} ({meta['duration_s']:.0f} s in all)")
    if a.update_docs:
        if update_doc(DEFAULT_DOC, table):
            log(f"updated the table in {DEFAULT_DOC}")
        else:
            log(f"{DEFAULT_DOC} has no bench markers: not updated")
    print(table)
    return 1 if failures else 0


def _guard(failures: list[str], what: str, fn):
    try:
        return fn()
    except Exception as exc:
        traceback.print_exc()
        failures.append(f"{what}: {exc!r}"[:500])
        return None
