"""Update-norm clipping and the robust aggregators (median, trimmed mean), on hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest

from aggregator_service.checkpoints import encode_checkpoint
from aggregator_service.rounds import RoundConfig, RoundManager, UpdateMeta
from aggregator_service.robust import StackedAggregator, clip_update, update_norm

TEMPLATE = {"w": np.zeros(3, np.float32)}


def test_update_norm_and_clipping() -> None:
    ref = {"w": np.array([1.0, 1.0, 1.0], np.float32)}
    upd = {"w": np.array([4.0, 5.0, 1.0], np.float32)}  # delta (3, 4, 0): norm 5
    assert update_norm(upd, ref) == 5.0
    clipped, norm = clip_update(upd, ref, 2.5)
    assert norm == 5.0
    np.testing.assert_array_equal(clipped["w"], np.array([2.5, 3.0, 1.0], np.float32))  # ref + delta / 2
    same, norm = clip_update(upd, ref, 10.0)
    assert norm == 5.0 and same["w"] is upd["w"]


def test_median_and_trimmed_mean_resist_an_outlier() -> None:
    values = [1.0, 2.0, 3.0, 4.0, 1000.0]
    med = StackedAggregator(TEMPLATE, "median")
    trim = StackedAggregator(TEMPLATE, "trimmed-mean", trim_fraction=0.2)
    for i, v in enumerate(values):
        upd = {"w": np.array([v, -v, v * (i % 2)], np.float32)}
        med.add(upd, num_samples=10 + i)
        trim.add(upd, num_samples=10 + i)
    np.testing.assert_array_equal(med.result()["w"], np.array([3.0, -3.0, 0.0], np.float32))
    # Trim one value from each end per coordinate: mean(2, 3, 4) = 3; coordinate 3: values 0,2,0,4,0 -> mean(0,0,2)
    np.testing.assert_allclose(trim.result()["w"], np.array([3.0, -3.0, 2 / 3], np.float32), rtol=1e-7)
    assert (med.updates, med.total_samples) == (5, 60)
    with pytest.raises(ValueError):
        StackedAggregator(TEMPLATE, "mean")
    with pytest.raises(ValueError):
        StackedAggregator(TEMPLATE, "trimmed-mean", trim_fraction=0.5)


def _manager(**cfg) -> RoundManager:
    initial = encode_checkpoint(0, {"w": np.zeros(3, np.float32)}, {"architecture_id": "test"})
    return RoundManager(RoundConfig(min_clients=1, **cfg), initial, persist=lambda c: None, num_classes=4)


def test_round_manager_with_median_ignores_a_poisoned_update() -> None:
    m = _manager(clients_per_round=3, aggregation="median")
    for cid, v in (("a", 1.0), ("b", 2.0), ("evil", 1e6)):
        m.accept(UpdateMeta(cid, 1, 1000 if cid == "evil" else 1, f"u-{cid}"), {"w": np.full(3, v, np.float32)})
    np.testing.assert_array_equal(m.global_model.arrays["w"], np.full(3, 2.0, np.float32))


def test_round_manager_clips_before_averaging() -> None:
    m = _manager(clients_per_round=2, clip_norm=math.sqrt(3))  # clip to length 1 per coordinate
    r1 = m.accept(UpdateMeta("a", 1, 1, "u1"), {"w": np.full(3, 0.5, np.float32)})  # norm 0.87: kept
    r2 = m.accept(UpdateMeta("b", 1, 1, "u2"), {"w": np.full(3, 100.0, np.float32)})  # clipped to 1.0 each
    assert (r1.clipped, r2.clipped) == (False, True)
    np.testing.assert_allclose(m.global_model.arrays["w"], np.full(3, 0.75, np.float32), rtol=1e-6)


def test_bad_robust_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="aggregation must be one of"):
        RoundConfig(aggregation="mode")
    with pytest.raises(ValueError, match="clip_norm"):
        RoundConfig(clip_norm=-1)
