"""Client partitions for simulations: IID, by speaker, Dirichlet label skew."""
from __future__ import annotations

import numpy as np
import pytest

from experiments.partitions import partition


def covers_once(parts: list[np.ndarray], n: int) -> bool:
    joined = np.concatenate(parts)
    return len(joined) == n and len(np.unique(joined)) == n


def test_iid_equal_shares() -> None:
    parts = partition("iid", labels=[0] * 103, speakers=["a"] * 103, clients=5, seed=1)
    assert sorted(len(p) for p in parts) == [20, 20, 21, 21, 21]
    assert covers_once(parts, 103)
    assert all(np.array_equal(a, b) for a, b in zip(parts, partition("iid", [0] * 103, ["a"] * 103, 5, seed=1)))


def test_speaker_partition_keeps_speakers_whole() -> None:
    speakers = [f"s{i % 7}" for i in range(70)]
    parts = partition("speaker", labels=[0] * 70, speakers=speakers, clients=3, seed=0)
    assert covers_once(parts, 70)
    owners = [{speakers[i] for i in p} for p in parts]
    assert sorted(len(o) for o in owners) == [2, 2, 3]  # 7 speakers dealt to 3 clients
    assert not (owners[0] & owners[1]) and not (owners[1] & owners[2]) and not (owners[0] & owners[2])
    with pytest.raises(ValueError, match="need at least 8 speakers"):
        partition("speaker", [0] * 70, speakers, clients=8, seed=0)


def test_dirichlet_skews_labels() -> None:
    labels = [c for c in range(4) for _ in range(100)]
    skewed = partition("dirichlet", labels, ["a"] * 400, clients=4, seed=3, alpha=0.1)
    even = partition("dirichlet", labels, ["a"] * 400, clients=4, seed=3, alpha=1000.0)
    assert covers_once(skewed, 400) and covers_once(even, 400)

    def max_share(parts: list[np.ndarray]) -> float:
        y = np.array(labels)
        return float(np.mean([np.bincount(y[p], minlength=4).max() / len(p) for p in parts]))

    assert max_share(skewed) > 0.6 > 0.3 > max_share(even)
    with pytest.raises(ValueError, match="unknown partition"):
        partition("random", labels, ["a"] * 400, 4, 0)
