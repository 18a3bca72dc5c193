"""The seed's 1D CNN and the registry of architectures a federation can train.

An architecture id fixes the network, its feature preset and its label set:
two parties that agree on the id agree on every tensor name and shape.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from model.ravdess import SEED_CLASSES


class SeedCNN(nn.Module):
    """Latif et al.'s network: 333,700 parameters on a [1, 97] MFCC-mean series."""

    def __init__(self, num_classes: int = 4, input_steps: int = 97) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, 256, kernel_size=5, padding=2),  # Keras padding='same'
            nn.ReLU(),
            nn.Conv1d(256, 128, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.MaxPool1d(8),
            nn.Conv1d(128, 128, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.Conv1d(128, 128, kernel_size=5),  # padding='valid'
            nn.ReLU(),
            nn.Flatten(),
        )
        flat = 128 * (input_steps // 8 - 4)
        self.classifier = nn.Linear(flat, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@dataclass(frozen=True)
class Architecture:
    """A trainable model definition: network builder, feature preset and label set."""

    id: str
    preset: str
    classes: tuple[str, ...]
    build: Callable[[], nn.Module]


ARCHITECTURES: dict[str, Architecture] = {
    "seed-cnn-v1": Architecture(
        id="seed-cnn-v1",
        preset="seed",
        classes=SEED_CLASSES,
        build=lambda: SeedCNN(num_classes=len(SEED_CLASSES)),
    ),
}
DEFAULT_ARCHITECTURE = "seed-cnn-v1"


class UnknownArchitectureError(KeyError):
    """An architecture id that this build of fedser does not know."""


def get_architecture(arch_id: str) -> Architecture:
    """Look up an architecture by id."""
    try:
        return ARCHITECTURES[arch_id]
    except KeyError:
        raise UnknownArchitectureError(
            f"unknown architecture {arch_id!r}; known: {', '.join(sorted(ARCHITECTURES))}"
        ) from None


def build_model(arch_id: str, seed: int | None = None) -> nn.Module:
    """Build the network for ``arch_id``; with ``seed`` its initial weights are reproducible."""
    arch = get_architecture(arch_id)
    if seed is None:
        return arch.build()
    # A private generator state keeps seeding from leaking into the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return arch.build()


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
