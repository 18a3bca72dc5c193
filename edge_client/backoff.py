"""Exponential backoff with full jitter, for reconnecting to an unreachable aggregator."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator


@dataclass(frozen=True)
class BackoffPolicy:
    """Delay before retry i is uniform in [0, min(max_s, initial_s * multiplier**i)]."""

    initial_s: float = 0.5
    multiplier: float = 2.0
    max_s: float = 30.0

    def delays(self, rng: random.Random) -> Iterator[float]:
        """An endless series of jittered delays (full jitter spreads reconnecting clients apart)."""
        ceiling = min(self.max_s, self.initial_s)
        while True:
            yield rng.uniform(0.0, ceiling)
            ceiling = min(self.max_s, ceiling * self.multiplier)
