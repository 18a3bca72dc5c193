"""Section 6: what each encoding costs in held-out accuracy on the demo task.

Runs `fedser demo` (real aggregator and client processes, the demo's synthetic
corpus and schedule) per seed once per combination of --update-encoding and
--pull-encoding, so that paired runs differ only in those, and reads the
held-out scores of every round.
"""
from __future__ import annotations

import contextlib
import csv
import io
import time
from pathlib import Path

from experiments.demo import DemoConfig, run as run_demo
from model.encodings import Encoding


def _rows(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def _one(cfg: DemoConfig) -> dict[str, float]:
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()) as printed, contextlib.redirect_stderr(io.StringIO()) as errors:
        code = run_demo(cfg)  # reuses the corpus and the feature cache of the seed's first run
    if code != 0:
        # The demo's own account of the failure (which client, how it exited, its last log lines):
        # the logs themselves go with the benchmark's temporary folder.
        raise RuntimeError(f"demo with {cfg.update_encoding} / {cfg.pull_encoding} failed:\n"
                           f"{printed.getvalue()[-300:]}\n{errors.getvalue()[-3000:]}")
    per_round = _rows(cfg.out / "results.csv")
    last5 = per_round[-5:]
    return {
        "rounds": len(per_round),
        "accuracy_last5": sum(r["heldout_accuracy"] for r in last5) / len(last5),
        "uar_last5": sum(r["heldout_uar"] for r in last5) / len(last5),
        "accuracy_final": per_round[-1]["heldout_accuracy"], "uar_final": per_round[-1]["heldout_uar"],
        "seconds": time.perf_counter() - started,
    }


def combinations(update_only: bool) -> list[tuple[Encoding, Encoding]]:
    """(update encoding, pull encoding) pairs: float32, each delta encoding both ways, and optionally update-only."""
    deltas = [e for e in Encoding if e.is_delta]
    update_rows = [(e, Encoding.FLOAT32) for e in deltas] if update_only else []
    return [(Encoding.FLOAT32, Encoding.FLOAT32)] + update_rows + [(e, e) for e in deltas]


def run(workdir: Path, rounds: int, seeds: int = 3, update_only: bool = True, log=print) -> dict[str, object]:
    """``seeds`` demo runs per encoding (corpus, split and initial model differ by seed); float32 is the reference.

    Only the both-ways rows cut a round's bytes by the encoding's factor (an
    update-only encoding leaves the float32 pull), so ``update_only=False``
    skips the update-only rows to save two thirds of the section's time.

    One run's held-out accuracy moves by about 2 points with any perturbation
    (fp16 rounding alone moved it by that much), so the loss is the mean over
    seeds of the paired difference to float32 with the same seed.
    """
    combos = combinations(update_only)
    label = {c: c[0].value if c[1] is Encoding.FLOAT32 else f"{c[0].value} both ways" for c in combos}
    runs: dict[str, list[dict[str, float]]] = {label[c]: [] for c in combos}
    for seed in range(seeds):
        base = DemoConfig(rounds=rounds, seed=seed, out=workdir / "compression" / f"seed-{seed}")
        for c in combos:
            cfg = DemoConfig(**{**base.__dict__, "update_encoding": c[0].value, "pull_encoding": c[1].value})
            runs[label[c]].append(_one(cfg))
            log(f"  [compression] seed {seed} {label[c]}: accuracy {runs[label[c]][-1]['accuracy_last5']:.3f} "
                "(last 5 rounds)")
    rows: list[dict[str, object]] = []
    reference = runs[Encoding.FLOAT32.value]
    for name, rs in runs.items():
        def mean(key: str, xs: list[dict[str, float]] = rs) -> float:
            return round(sum(r[key] for r in xs) / len(xs), 4)

        losses = [100 * (f["accuracy_last5"] - r["accuracy_last5"]) for f, r in zip(reference, rs)]
        rows.append({
            "encoding": name, "rounds": int(rs[0]["rounds"]), "seeds": len(rs),
            "accuracy_last5": mean("accuracy_last5"), "uar_last5": mean("uar_last5"),
            "accuracy_final": mean("accuracy_final"), "uar_final": mean("uar_final"),
            "accuracy_loss_points": round(sum(losses) / len(losses), 2),
            "loss_per_seed": [round(x, 2) for x in losses],
            "seconds": round(sum(r["seconds"] for r in rs), 1),
        })
    d = DemoConfig()
    return {"setup": f"{d.clients} clients x {d.actors_per_client} speakers, {rounds} rounds, E={d.local_epochs}, "
                     f"B={d.batch_size}, seed-cnn-v1, {seeds} seeds", "rows": rows}
