"""`fedser simulate` on a tiny grid: real aggregator over 127.0.0.1, client threads, held-out evaluation."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

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
    rows = [line for line in table[2:] if line.startswith("|")]
    assert [line.split("|")[1].strip() for line in rows] == ["speaker", "iid"]
    # Below the table: per partition, how many runs are within 3 points of central UAR; then the run's times.
    assert [line.split(":")[0] for line in table if "within 3 points" in line] == [
        "speaker partition", "iid partition"]
    assert "rounds, learning rate" in table[-1] and "Wall" in table[-1]
    assert (out / "speaker.png").stat().st_size > 10_000 and (out / "iid.png").exists()


def test_runs_repeat_exactly_whatever_the_number_of_jobs(tmp_path: Path) -> None:
    """Client threads take turns to train (dropout draws from one generator per process), so a federated
    run is repeatable, and runs done in worker processes (--jobs 2) score exactly as in one process."""
    grid = ["--clients", "4", "--batch-sizes", "8", "--local-epochs", "2", "--partitions", "iid",
            "--rounds", "2", "--actors", "6"]
    assert main([*grid, "--jobs", "2", "--out", str(tmp_path / "a")]) == 0
    assert main([*grid, "--jobs", "1", "--data", str(tmp_path / "a" / "corpus"), "--out", str(tmp_path / "b")]) == 0
    for name in ("central-B8-E2", "iid-K4-B8-E2"):
        a, b = ([line.rsplit(",", 1)[0] for line in (tmp_path / d / "runs" / f"{name}.csv").read_text().splitlines()]
                for d in ("a", "b"))
        assert a == b and len(a) == 4  # header + rounds 0..2; every column but the seconds
    summary = (tmp_path / "a" / "results.md").read_text()
    assert "iid partition:" in summary and "2 job(s)" in summary and "load average" in summary


def test_pool_uses_only_the_actors_asked_for(tmp_path: Path) -> None:
    """A corpus folder left with more actors by an earlier, larger run does not leak them into a smaller one."""
    from experiments.simulate import GridConfig, load_pool

    big = load_pool(GridConfig(actors=4, heldout_fraction=0.25, out=tmp_path))
    small = load_pool(GridConfig(actors=3, heldout_fraction=0.4, out=tmp_path))
    assert len(set(big.speakers)) + big.test_speakers == 4
    assert len(set(small.speakers)) + small.test_speakers == 3
    assert "actor04" not in small.speakers
    assert len(small.y) + len(small.test_y) == 3 * 28  # the seed classes: 4 neutral + 3 x 8 per actor


def test_rounds_for_gives_each_e_its_own_rounds_for_fl_and_central_alike(tmp_path: Path) -> None:
    """The reduced grid gives E = 1 runs more rounds than E = 2 ones; each central baseline follows its E."""
    out = tmp_path / "sim"
    assert main(["--clients", "2", "--batch-sizes", "16", "--local-epochs", "1,2", "--partitions", "speaker",
                 "--rounds", "1", "--rounds-for", "1=3", "--actors", "6", "--out", str(out)]) == 0
    lengths = {name: len((out / "runs" / f"{name}.csv").read_text().splitlines()) - 1
               for name in ("central-B16-E1", "speaker-K2-B16-E1", "central-B16-E2", "speaker-K2-B16-E2")}
    assert lengths == {"central-B16-E1": 4, "speaker-K2-B16-E1": 4, "central-B16-E2": 2, "speaker-K2-B16-E2": 2}
    text = (out / "results.md").read_text()
    assert "1 rounds (E = 1: 3), learning rate" in text and "FedAvgM (server momentum 0.6)" in text


def test_rounds_text_names_the_rounds_of_each_e() -> None:
    from experiments.simulate import GridConfig, rounds_text

    d = GridConfig()
    assert (d.rounds_of(1), d.rounds_of(5)) == (40, 40) and rounds_text(d) == "40 rounds"
    g = GridConfig(rounds_for=((1, 80),))
    assert (g.rounds_of(1), g.rounds_of(5)) == (80, 40)
    assert rounds_text(g) == "40 rounds (E = 1: 80)"
    assert rounds_text(GridConfig(local_epochs=(5,), rounds_for=((1, 80),))) == "40 rounds"
    assert rounds_text(GridConfig(local_epochs=(1,), rounds_for=((1, 80),))) == "E = 1: 80 rounds"


def test_proximal_mu_reaches_the_clients_training_through_the_aggregator(tmp_path: Path) -> None:
    """--proximal-mu goes into the aggregator's plan, the clients train with it (scores move), the footer says so."""
    grid = ["--clients", "2", "--batch-sizes", "16", "--local-epochs", "2", "--partitions", "speaker",
            "--rounds", "2", "--actors", "6", "--no-central"]
    assert main([*grid, "--proximal-mu", "0", "--out", str(tmp_path / "plain")]) == 0
    assert main([*grid, "--proximal-mu", "5", "--data", str(tmp_path / "plain" / "corpus"),
                 "--out", str(tmp_path / "prox")]) == 0
    plain, prox = ([line.split(",")[:-1] for line in (tmp_path / d / "runs" / "speaker-K2-B16-E2.csv")
                    .read_text().splitlines()] for d in ("plain", "prox"))
    assert plain[:2] == prox[:2]  # header and round 0: the same initial model
    assert plain[2:] != prox[2:]  # rounds 1-2 trained under the proximal term
    assert "FedAvgM (server momentum 0.6) with FedProx (mu 5)" in (tmp_path / "prox" / "results.md").read_text()
    assert "FedProx" not in (tmp_path / "plain" / "results.md").read_text()


def test_a_negative_proximal_mu_is_a_usage_error(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--proximal-mu", "-1", "--out", str(tmp_path / "bad")])
    assert exc.value.code == 2
    assert "--proximal-mu must be a finite number >= 0" in capsys.readouterr().err
