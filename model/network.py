"""The networks: the seed's 1D CNN and a small 2D CNN (their registry is model.architectures)."""
from __future__ import annotations

import torch
from torch import nn

# Re-exported: callers that build networks import the registry from here too.
from model.architectures import (  # noqa: F401
    ARCHITECTURES,
    DEFAULT_ARCHITECTURE,
    Architecture,
    UnknownArchitectureError,
    get_architecture,
)


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


class SerCnn2d(nn.Module):
    """A small 2D CNN on the normalised MFCC matrix [1, 40, frames] ("mfcc40-norm").

    Four 3x3 conv blocks (GroupNorm, ReLU; 2x2 max-pool after the first three)
    widen 1 -> 24 -> 48 -> 96 -> 128 channels; the map is averaged over the
    coefficient axis and pooled over time as mean and standard deviation
    (statistics pooling), so any number of frames works; dropout, then one linear
    layer to the classes. GroupNorm instead of BatchNorm: no running statistics,
    so the state is parameters only and FedAvg averages nothing that depends on
    a client's batch composition.

    164,564 parameters (about half the seed's 333,700; 658 KB as float32). CPU
    inference, one thread, one utterance [1, 1, 40, 188]: median 4.3-4.5 ms per
    forward pass (seed-cnn-v1: 0.7 ms), plus 1.7 ms for its features from a
    48 kHz window (the seed preset: 3-4 ms); measured on a shared 2-core x86 VM.
    Held-out speakers of the synthetic corpus (18 train / 6 test actors, Adam
    1e-3, batch 16, 25 epochs; 2 splits x 2-3 seeds): accuracy 0.875, UAR 0.870
    on average, against 0.827 / 0.795 for seed-cnn-v1 on the "seed" preset.
    """

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()

        def block(cin: int, cout: int, pool: bool) -> list[nn.Module]:
            layers: list[nn.Module] = [
                nn.Conv2d(cin, cout, kernel_size=3, padding=1),
                nn.GroupNorm(num_groups=4, num_channels=cout),
                nn.ReLU(),
            ]
            if pool:
                layers.append(nn.MaxPool2d(2))
            return layers

        self.features = nn.Sequential(
            *block(1, 24, True),
            *block(24, 48, True),
            *block(48, 96, True),
            *block(96, 128, False),
        )
        self.dropout = nn.Dropout(0.3)
        self.classifier = nn.Linear(2 * 128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x).mean(dim=2)  # [N, 128, frames / 8]
        stats = torch.cat([h.mean(dim=-1), h.std(dim=-1, unbiased=False)], dim=1)
        return self.classifier(self.dropout(stats))


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
