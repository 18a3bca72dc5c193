"""The training plan the aggregator hands out each round: local epochs, batch size, learning rate, FedProx's mu."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class TrainingPlan:
    """What clients are asked to do locally in a round."""

    local_epochs: int = 2
    batch_size: int = 16
    learning_rate: float = 1e-3
    # FedProx: each client minimises loss + mu / 2 * ||w - w_global||^2; 0 is plain local training.
    proximal_mu: float = 0.0

    def __post_init__(self) -> None:
        if self.local_epochs < 1 or self.batch_size < 1 or not self.learning_rate > 0:
            raise ValueError("local_epochs and batch_size must be >= 1 and learning_rate > 0")
        if not (self.proximal_mu >= 0 and math.isfinite(self.proximal_mu)):
            raise ValueError("proximal_mu must be a finite number >= 0")
