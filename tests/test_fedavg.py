"""Tests for the streaming FedAvg accumulator (aggregator_service/fedavg.py).

The expected averages are worked out by hand and written as literals, so the
tests do not re-implement w = sum_k (n_k / m) w_k.
"""
from __future__ import annotations

import numpy as np
import pytest

from aggregator_service.fedavg import FedAvgAccumulator

TEMPLATE = {"w": np.zeros((2, 2), np.float32), "b": np.zeros(1, np.float32)}

# Three clients with n = 1, 3, 6 (m = 10).
CLIENTS = [
    ({"w": np.array([[1.0, 2.0], [3.0, 4.0]], np.float32), "b": np.array([10.0], np.float32)}, 1),
    ({"w": np.array([[0.0, 0.0], [10.0, 20.0]], np.float32), "b": np.array([0.0], np.float32)}, 3),
    ({"w": np.array([[5.0, -5.0], [0.0, 1.0]], np.float32), "b": np.array([-10.0], np.float32)}, 6),
]
# By hand:  w[0,0] = (1*1 + 3*0  + 6*5)  / 10 =  31/10 =  3.1
#           w[0,1] = (1*2 + 3*0  + 6*-5) / 10 = -28/10 = -2.8
#           w[1,0] = (1*3 + 3*10 + 6*0)  / 10 =  33/10 =  3.3
#           w[1,1] = (1*4 + 3*20 + 6*1)  / 10 =  70/10 =  7.0
#           b[0]   = (1*10 + 3*0 + 6*-10) / 10 = -50/10 = -5.0
EXPECTED_W = np.array([[3.1, -2.8], [3.3, 7.0]], np.float32)
EXPECTED_B = np.array([-5.0], np.float32)


def _fed(updates) -> FedAvgAccumulator:
    acc = FedAvgAccumulator(TEMPLATE)
    for arrays, n in updates:
        acc.add(arrays, n)
    return acc


def test_weighted_average_matches_hand_computation():
    acc = _fed(CLIENTS)
    out = acc.result()
    assert set(out) == {"w", "b"}
    np.testing.assert_array_equal(out["w"], EXPECTED_W)
    np.testing.assert_array_equal(out["b"], EXPECTED_B)
    assert acc.total_samples == 10
    assert acc.updates == 3


def test_unweighted_mean_would_differ():
    # Guard against a plain mean: (1 + 0 + 5) / 3 = 2.0 for w[0,0], not 3.1.
    out = _fed(CLIENTS).result()
    assert out["w"][0, 0] != np.float32(2.0)


def test_result_dtype_is_float32_by_default_and_shapes_kept():
    out = _fed(CLIENTS).result()
    assert out["w"].dtype == np.float32 and out["w"].shape == (2, 2)
    assert out["b"].dtype == np.float32 and out["b"].shape == (1,)
    as64 = _fed(CLIENTS).result(dtype=np.float64)
    assert as64["w"].dtype == np.float64
    assert as64["w"][1, 1] == 7.0


def test_order_of_updates_does_not_matter():
    out = _fed(list(reversed(CLIENTS))).result()
    np.testing.assert_array_equal(out["w"], EXPECTED_W)
    np.testing.assert_array_equal(out["b"], EXPECTED_B)


def test_accumulation_is_float64_cancellation():
    # 1*1 + 2**24*1 + 2**24*(-1) = 1 exactly in float64; in float32, 1 + 2**24
    # rounds to 2**24 and the sum cancels to 0. m = 2**25 + 1 = 33,554,433.
    acc = FedAvgAccumulator({"w": np.zeros(1, np.float32)})
    acc.add({"w": np.array([1.0], np.float32)}, 1)
    acc.add({"w": np.array([1.0], np.float32)}, 2**24)
    acc.add({"w": np.array([-1.0], np.float32)}, 2**24)
    assert acc.total_samples == 33_554_433
    assert acc.result(dtype=np.float64)["w"][0] == 1.0 / 33_554_433
    assert acc.result()["w"][0] == np.float32(2.9802322e-08)
    assert acc.result()["w"][0] != 0.0


def test_many_large_updates_average_exactly():
    # 1000 clients all sending 0.1 with n_k = 1,000,003: the average must be
    # float32(0.1) exactly (a float32 running sum drifts to ~0.09999973).
    acc = FedAvgAccumulator({"w": np.zeros(1, np.float32)})
    update = {"w": np.array([0.1], np.float32)}
    for _ in range(1000):
        acc.add(update, 1_000_003)
    assert acc.total_samples == 1_000_003_000
    assert acc.result()["w"][0] == np.float32(0.1)


def test_merge_equals_single_accumulator():
    left = _fed(CLIENTS[:1])
    right = _fed(CLIENTS[1:])
    left.merge(right)
    assert left.total_samples == 10
    assert left.updates == 3
    out = left.result()
    np.testing.assert_array_equal(out["w"], EXPECTED_W)
    np.testing.assert_array_equal(out["b"], EXPECTED_B)
    # The merged-from accumulator is left as it was (n = 3 + 6).
    assert right.total_samples == 9 and right.updates == 2


def test_merge_with_empty_accumulator_is_identity():
    acc = _fed(CLIENTS)
    acc.merge(FedAvgAccumulator(TEMPLATE))
    assert acc.total_samples == 10 and acc.updates == 3
    np.testing.assert_array_equal(acc.result()["w"], EXPECTED_W)


@pytest.mark.parametrize("n", [0, -1, -100])
def test_add_rejects_non_positive_num_samples(n):
    acc = FedAvgAccumulator(TEMPLATE)
    with pytest.raises(ValueError, match="num_samples must be positive"):
        acc.add(CLIENTS[0][0], n)
    assert acc.total_samples == 0 and acc.updates == 0


def test_result_without_updates_raises():
    with pytest.raises(ValueError, match="no updates accumulated"):
        FedAvgAccumulator(TEMPLATE).result()


def test_add_does_not_modify_inputs():
    arrays = {"w": np.array([[1.5, -2.5], [3.0, 4.0]], np.float32), "b": np.array([7.0], np.float32)}
    before = {k: v.copy() for k, v in arrays.items()}
    acc = FedAvgAccumulator(TEMPLATE)
    acc.add(arrays, 4)
    acc.add(arrays, 6)
    for k in arrays:
        np.testing.assert_array_equal(arrays[k], before[k])
        assert arrays[k].dtype == np.float32
    np.testing.assert_array_equal(acc.result()["w"], before["w"])


def test_result_is_not_aliased_to_internal_state():
    acc = _fed(CLIENTS)
    out = acc.result()
    out["w"][:] = 99.0
    np.testing.assert_array_equal(acc.result()["w"], EXPECTED_W)


def test_reused_buffers_start_from_nothing_and_the_old_accumulator_lets_go():
    """A new round's accumulator takes the last one's buffers; its first update is written, not added."""
    first = FedAvgAccumulator({"w": np.zeros(70_000, np.float32), "b": np.zeros(3, np.float32)})
    first.add({"w": np.full(70_000, 5.0, np.float32), "b": np.full(3, 1.0, np.float32)}, 2)
    buffer = first._sums["w"]
    second = FedAvgAccumulator({"w": np.zeros(70_000, np.float32), "b": np.zeros(3, np.float32)}, reuse=first)
    assert second._sums["w"] is buffer and first._sums == {}
    second.add({"w": np.full(70_000, 1.0, np.float32), "b": np.full(3, 2.0, np.float32)}, 1)
    second.add({"w": np.full(70_000, 4.0, np.float32), "b": np.full(3, -1.0, np.float32)}, 3)
    out = second.result()
    np.testing.assert_array_equal(out["w"], np.full(70_000, 3.25, np.float32))  # (1 + 12) / 4
    np.testing.assert_array_equal(out["b"], np.full(3, -0.25, np.float32))  # (2 - 3) / 4


def test_merge_into_an_empty_accumulator_copies():
    a = FedAvgAccumulator({"w": np.zeros(4, np.float32)})
    b = FedAvgAccumulator({"w": np.zeros(4, np.float32)})
    b.add({"w": np.arange(4, dtype=np.float32)}, 2)
    a.merge(b)
    np.testing.assert_array_equal(a.result()["w"], np.arange(4, dtype=np.float32))
