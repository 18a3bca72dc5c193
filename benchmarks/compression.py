"""Section 6: what each update encoding costs in held-out accuracy on the demo task.

Runs `fedser demo` (real aggregator and client processes, the demo's synthetic
corpus and schedule) once per encoding with the same seeds, so the runs differ
only in --update-encoding, and reads the held-out scores of every round.
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


def run(workdir: Path, rounds: int, log=print) -> dict[str, object]:
    """One demo run per encoding; the first (float32) is the reference."""
    out = workdir / "compression"
    rows: list[dict[str, object]] = []
    base = DemoConfig(rounds=rounds, out=out)
    for encoding in Encoding:
        cfg = DemoConfig(**{**base.__dict__, "update_encoding": encoding.value})
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            code = run_demo(cfg)  # reuses the corpus and the feature cache of the first run
        if code != 0:
            raise RuntimeError(f"demo with {encoding.value} failed: {printed.getvalue()[-500:]}")
        per_round = _rows(out / "results.csv")
        last5 = per_round[-5:]
        rows.append({
            "encoding": encoding.value, "rounds": len(per_round),
            "accuracy_last5": round(sum(r["heldout_accuracy"] for r in last5) / len(last5), 4),
            "uar_last5": round(sum(r["heldout_uar"] for r in last5) / len(last5), 4),
            "accuracy_final": per_round[-1]["heldout_accuracy"], "uar_final": per_round[-1]["heldout_uar"],
            "seconds": round(time.perf_counter() - started, 1),
        })
        log(f"  [compression] {encoding.value}: accuracy {rows[-1]['accuracy_last5']:.3f} (last 5 rounds)")
    reference = rows[0]["accuracy_last5"]
    for r in rows:
        r["accuracy_loss_points"] = round(100 * (reference - r["accuracy_last5"]), 2)  # type: ignore[operator]
    d = base
    return {"setup": f"{d.clients} clients x {d.actors_per_client} speakers, {rounds} rounds, E={d.local_epochs}, "
                     f"B={d.batch_size}, seed-cnn-v1", "rows": rows}
