"""`fedser simulate` on a tiny grid: real aggregator over 127.0.0.1, client threads, held-out evaluation."""
from __future__ import annotations

import csv
from pathlib import Path

from experiments.simulate import main


def test_tiny_grid_writes_runs_figure_and_table(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    rc = main(["--clients", "2", "--batch-sizes", "16", "--local-epochs", "1", "--partitions", "speaker,iid",
               "--rounds", "2", "--actors", "6", "--out", str(out)])
    assert rc == 0
    for name in ("central-B16-E1", "speaker-K2-B16-E1", "iid-K2-B16-E1"):
        with open(out / "runs" / f"{name}.csv") as fh:
            rows = list(csv.DictReader(fh))
        assert [int(r["round"]) for r in rows] == [0, 1, 2]
        assert all(0.0 <= float(r["heldout_uar"]) <= 1.0 for r in rows)
    # Every run starts from the same seeded initial model: round 0 scores agree.
    firsts = {open(out / "runs" / f"{n}.csv").read().splitlines()[1].split(",")[1]
              for n in ("central-B16-E1", "speaker-K2-B16-E1", "iid-K2-B16-E1")}
    assert len(firsts) == 1
    table = (out / "results.md").read_text().splitlines()
    assert table[0].startswith("| partition | K | B | E | final acc | final UAR | final macro-F1 | UAR, last 5 |")
    confusion = (out / "runs" / "speaker-K2-B16-E1.confusion.txt").read_text()
    assert "neutral" in confusion and "angry" in confusion
    assert [line.split("|")[1].strip() for line in table[2:]] == ["speaker", "iid"]
    assert (out / "speaker.png").stat().st_size > 10_000 and (out / "iid.png").exists()
