"""Launch the production aggregator with a benchmark-only synthetic architecture registered.

The aggregator only serves architectures in ``model.network.ARCHITECTURES``. The
round-overhead benchmark needs models of exact sizes (333,700 and 25,000,000
float32 parameters), so this launcher registers one before handing over to the
unmodified ``aggregator_service.main.main``::

    python -m benchmarks.aggregator_process --bench-params 25000000 -- --insecure --port 0 ...

Without ``--bench-params`` the arguments go to the aggregator unchanged (the wire
benchmark starts real architectures this way).

The architecture id is ``bench-flat-<params>`` (see :func:`architecture_id`).
Its network holds two float32 tensors, ``a_big`` (params - 64 elements) and
``z_delta`` (64 elements); safetensors orders tensors by name, so ``z_delta``'s
bytes are the last of a payload. The lightweight benchmark clients change only
``z_delta`` per client, which keeps their hashing cheap (see
benchmarks/round_overhead.py). Nothing here is imported by production code.
"""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import torch

from model.architectures import ARCHITECTURES, Architecture
from model.ravdess import SEED_CLASSES

SMALL_TENSOR = 64  # elements of the per-client tensor ``z_delta``


def architecture_id(params: int) -> str:
    return f"bench-flat-{params}"


def flat_model(params: int) -> "torch.nn.Module":
    """``params`` float32 parameters in two flat tensors; not a network, only a payload of a known size.

    torch is imported here, not at the top: the aggregator builds its initial
    model in a child process and must not load torch itself.
    """
    import torch
    from torch import nn

    if params <= SMALL_TENSOR:
        raise ValueError(f"params must be > {SMALL_TENSOR}, got {params}")
    model = nn.Module()
    model.a_big = nn.Parameter(torch.randn(params - SMALL_TENSOR) * 0.01)
    model.z_delta = nn.Parameter(torch.randn(SMALL_TENSOR) * 0.01)
    return model


def register(params: int) -> str:
    """Add ``bench-flat-<params>`` to ARCHITECTURES (idempotent); returns its id."""
    arch_id = architecture_id(params)
    ARCHITECTURES.setdefault(
        arch_id,
        Architecture(id=arch_id, preset="seed", classes=SEED_CLASSES, build=lambda: flat_model(params)),
    )
    return arch_id


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.aggregator_process")
    parser.add_argument("--bench-params", type=int, default=None,
                        help="float32 parameters of the synthetic model (without it: the aggregator as it is)")
    ours, rest = parser.parse_known_args(argv)
    if rest and rest[0] == "--":
        rest = rest[1:]
    from aggregator_service.main import main as aggregator_main

    if ours.bench_params is None:
        return aggregator_main(rest)
    return aggregator_main(["--architecture", register(ours.bench_params), *rest])


if __name__ == "__main__":
    sys.exit(main())
