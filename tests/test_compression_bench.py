"""The benchmark's encoding section (benchmarks/compression.py): real in-process federations, exact statistics."""
from __future__ import annotations

import math
import numpy as np
import pytest

from benchmarks.compression import (
    RunScores, Unit, mean_se, prepare_pool, prepare_seed, rounding_error, run_unit, summarize,
)
from experiments.demo import DemoConfig
from model.encodings import Encoding as E
from model.feature_cache import FeatureCache


def _scores(seed: int, update: E, pull: E, pool: list[float], demo: list[float],
            errors: dict[str, float] | None = None) -> RunScores:
    return RunScores(Unit(seed, update, pull), demo_accuracy=demo, demo_uar=demo, pool_accuracy=pool,
                     pool_uar=pool, rounding_error=errors or {}, seconds=1.0)


def test_losses_are_paired_per_seed_over_the_last_five_versions() -> None:
    f32, fp16 = (E.FLOAT32, E.FLOAT32), (E.FLOAT16_DELTA, E.FLOAT16_DELTA)
    runs = [
        # Seed 0: float32's last five average 0.80 (the first value is outside the tail), fp16's 0.79.
        _scores(0, *f32, [0.0, 0.8, 0.8, 0.8, 0.8, 0.8], [0.5] * 6, {"fp16-delta": 2e-8, "int8-delta": 1e-4}),
        _scores(0, *fp16, [0.99, 0.79, 0.79, 0.79, 0.79, 0.79], [0.5] * 6),
        # Seed 1: fp16 ahead by 3 points on the pool, behind by 1 on the demo's held-out speakers.
        _scores(1, *f32, [0.70] * 6, [0.60] * 6, {"fp16-delta": 4e-8, "int8-delta": 3e-4}),
        _scores(1, *fp16, [0.73] * 6, [0.59] * 6),
    ]
    rows = {r["encoding"]: r for r in summarize(runs, rounds=5)}
    assert rows["float32"]["pool_loss_per_seed"] == [0.0, 0.0]
    fp = rows["fp16-delta both ways"]
    assert fp["pool_loss_per_seed"] == pytest.approx([1.0, -3.0])
    assert fp["pool_loss_points"] == pytest.approx(-1.0)
    assert fp["pool_loss_se"] == pytest.approx(2.0)  # sd of (1, -3) is 2 * sqrt(2); over sqrt(2)
    assert fp["demo_loss_per_seed"] == pytest.approx([0.0, 1.0])
    assert fp["demo_loss_points"] == pytest.approx(0.5)
    assert fp["pool_accuracy"] == pytest.approx((0.79 + 0.73) / 2)
    assert fp["seeds"] == 2 and fp["seconds"] == 2.0
    assert fp["rounding_error"] == pytest.approx(3e-8) and rows["float32"]["rounding_error"] is None


def test_one_seed_has_no_standard_error() -> None:
    assert mean_se([1.5]) == (1.5, None)
    mean, se = mean_se([1.0, 2.0, 3.0])
    assert mean == 2.0 and se == pytest.approx(1 / math.sqrt(3))


def test_rounding_error_is_the_share_of_the_change_an_encoding_drops() -> None:
    old = {"w": np.zeros(2, np.float32), "b": np.ones(1, np.float32)}
    new = {"w": np.array([1.0, 0.3], np.float32), "b": np.ones(1, np.float32)}
    # int8: one step is 1 / 127; 0.3 is 38.1 steps and travels as 38.
    assert rounding_error(old, new, E.INT8_DELTA) == pytest.approx((0.3 - 38 / 127) ** 2 / 1.09, rel=1e-3)
    assert rounding_error(old, new, E.FLOAT16_DELTA) == pytest.approx(
        (0.3 - float(np.float16(0.3))) ** 2 / 1.09, rel=1e-3)
    assert rounding_error(old, old, E.INT8_DELTA) == 0.0


@pytest.fixture(scope="module")
def small_federation(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("compression")
    cache = FeatureCache(root / "cache")
    cfg = DemoConfig(clients=2, actors_per_client=2, rounds=2, seed=3, out=root / "seed-3")
    return cfg, prepare_seed(cfg, cache), prepare_pool(root / "pool", cache, speakers=1)


def test_a_run_repeats_exactly_and_scores_its_last_five_versions(small_federation) -> None:
    cfg, data, pool = small_federation
    cfg = DemoConfig(**{**cfg.__dict__, "rounds": 6})
    assert [c.client_id for c in data.clients] == ["client-1", "client-2"]
    assert all(len(c.data.heldout_y) == 0 and len(c.data.train_y) == 28 for c in data.clients)
    assert (data.heldout.speakers, len(data.heldout.y)) == (2, 56)  # one speaker of each client, 28 files each
    assert (pool.speakers, len(pool.y)) == (1, 28)
    unit = Unit(cfg.seed, E.INT8_DELTA, E.INT8_DELTA)
    first, again = run_unit(unit, data, pool, cfg), run_unit(unit, data, pool, cfg)
    assert len(first.demo_accuracy) == 5 and len(first.pool_accuracy) == 5  # versions 2..6
    assert (first.demo_accuracy, first.pool_accuracy, first.pool_uar) == (
        again.demo_accuracy, again.pool_accuracy, again.pool_uar)
    # Scores are fractions of the files: k / 56 on the demo's held-out speakers, k / 28 on the pool.
    assert all(float(a * 56).is_integer() for a in first.demo_accuracy)
    assert all(float(a * 28).is_integer() for a in first.pool_accuracy)


def test_the_initial_version_scores_the_same_whatever_the_encoding(small_federation) -> None:
    cfg, data, pool = small_federation
    f32 = run_unit(Unit(cfg.seed, E.FLOAT32, E.FLOAT32), data, pool, cfg)
    fp16 = run_unit(Unit(cfg.seed, E.FLOAT16_DELTA, E.FLOAT16_DELTA), data, pool, cfg)
    assert len(f32.demo_accuracy) == cfg.rounds + 1  # two rounds: every version is among the last five
    assert f32.demo_accuracy[0] == fp16.demo_accuracy[0]  # version 0: the aggregator's seeded initial model
    assert f32.pool_accuracy[0] == fp16.pool_accuracy[0]
    # The float32 run measures what each delta encoding would drop of its last round's change.
    assert set(f32.rounding_error) == {"fp16-delta", "int8-delta"} and fp16.rounding_error == {}
    assert 0 < f32.rounding_error["fp16-delta"] < f32.rounding_error["int8-delta"] < 1e-2
