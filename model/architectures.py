"""The registry of architectures a federation can train, without importing torch.

An architecture id fixes the network, its feature preset and its label set:
two parties that agree on the id agree on every tensor name and shape. The
aggregator only needs this registry (and never the network code), which keeps
torch out of its process; the builders import model.network when called.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from model.ravdess import SEED_CLASSES

if TYPE_CHECKING:
    import numpy as np
    from torch import nn


@dataclass(frozen=True)
class Architecture:
    """A trainable model definition: network builder, feature preset and label set."""

    id: str
    preset: str
    classes: tuple[str, ...]
    build: Callable[[], "nn.Module"]


def _seed_cnn() -> "nn.Module":
    from model.network import SeedCNN

    return SeedCNN(num_classes=len(SEED_CLASSES))


def _ser_cnn2d() -> "nn.Module":
    from model.network import SerCnn2d

    return SerCnn2d(num_classes=len(SEED_CLASSES))


ARCHITECTURES: dict[str, Architecture] = {
    "seed-cnn-v1": Architecture(id="seed-cnn-v1", preset="seed", classes=SEED_CLASSES, build=_seed_cnn),
    "ser-cnn2d-v1": Architecture(id="ser-cnn2d-v1", preset="mfcc40-norm", classes=SEED_CLASSES, build=_ser_cnn2d),
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


def initial_weights(arch_id: str, seed: int) -> dict[str, "np.ndarray"]:
    """The seeded initial weights of ``arch_id`` as float32 arrays.

    Building a network needs torch (about 500 MB resident once imported). A
    process that has not imported it (the aggregator) builds the network in a
    forked child and reads the weights back, so torch never enters its memory.
    """
    if "torch" in sys.modules or not hasattr(os, "fork"):
        return _build_weights(arch_id, seed)
    get_architecture(arch_id)  # a clear error here, not in the child
    with tempfile.TemporaryDirectory(prefix="fedser-init-") as tmp:
        out = Path(tmp) / "initial.safetensors"
        child = multiprocessing.get_context("fork").Process(
            target=_write_weights, args=(arch_id, seed, out), name="fedser-initial-weights"
        )
        child.start()
        child.join()
        if child.exitcode != 0 or not out.exists():
            raise RuntimeError(f"building the initial {arch_id} weights failed (exit code {child.exitcode})")
        from model.serialization import view_arrays

        arrays, _ = view_arrays(out.read_bytes())
        return {k: v.copy() for k, v in arrays.items()}


def _build_weights(arch_id: str, seed: int) -> dict[str, "np.ndarray"]:
    from model.network import build_model
    from model.serialization import module_to_arrays

    return module_to_arrays(build_model(arch_id, seed=seed))


def _write_weights(arch_id: str, seed: int, out: Path) -> None:
    from model.serialization import arrays_to_bytes

    out.write_bytes(arrays_to_bytes(_build_weights(arch_id, seed)))
