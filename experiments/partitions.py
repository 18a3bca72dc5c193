"""How a simulation splits the training pool among K clients: IID, by speaker, or Dirichlet label skew."""
from __future__ import annotations

from typing import Sequence

import numpy as np

PARTITIONS = ("iid", "speaker", "dirichlet")


def iid(n: int, clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The seed's split: shuffle, then equal shares (sizes differ by at most one)."""
    return [np.sort(part) for part in np.array_split(rng.permutation(n), clients)]


def by_speaker(speakers: Sequence[str], clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Each client holds whole speakers (the natural federated case); speakers are dealt round-robin."""
    names = sorted(set(speakers))
    if len(names) < clients:
        raise ValueError(f"{clients} clients need at least {clients} speakers, found {len(names)}")
    order = [names[i] for i in rng.permutation(len(names))]
    owner = {name: k % clients for k, name in enumerate(order)}
    labels = np.array([owner[s] for s in speakers])
    return [np.flatnonzero(labels == k) for k in range(clients)]


def dirichlet(labels: Sequence[int], clients: int, alpha: float, rng: np.random.Generator,
              min_size: int = 2) -> list[np.ndarray]:
    """Label skew: each class is shared among clients by proportions drawn from Dir(alpha)."""
    if alpha <= 0:
        raise ValueError("alpha must be > 0")
    y = np.asarray(labels)
    for _ in range(100):  # redraw until every client has a few samples
        parts: list[list[int]] = [[] for _ in range(clients)]
        for c in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == c))
            cuts = (np.cumsum(rng.dirichlet(np.full(clients, alpha))) * len(idx)).astype(int)[:-1]
            for k, chunk in enumerate(np.split(idx, cuts)):
                parts[k].extend(chunk.tolist())
        if min(len(p) for p in parts) >= min_size:
            return [np.sort(np.array(p, dtype=np.int64)) for p in parts]
    raise ValueError(f"could not give every one of {clients} clients {min_size} samples with alpha={alpha}")


def partition(kind: str, labels: Sequence[int], speakers: Sequence[str], clients: int, seed: int,
              alpha: float = 0.5) -> list[np.ndarray]:
    """Index arrays, one per client, that together cover every sample exactly once."""
    rng = np.random.default_rng(seed)
    if kind == "iid":
        return iid(len(labels), clients, rng)
    if kind == "speaker":
        return by_speaker(speakers, clients, rng)
    if kind == "dirichlet":
        return dirichlet(labels, clients, alpha, rng)
    raise ValueError(f"unknown partition {kind!r}; known: {', '.join(PARTITIONS)}")
