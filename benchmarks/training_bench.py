"""Section 4: local training throughput (samples per second) of every architecture, CPU and CUDA.

``edge_client.training.train_local`` (Adam, cross-entropy, the production loop)
on random float32 inputs of the architecture's preset ``input_shape`` with
random labels, batch size 16 (the aggregator's default plan), one epoch. A
short untimed warm-up run comes first; the timed run's sample count is sized
from it so that it lasts about ``target_s`` seconds (at least 4 batches).
CUDA is measured only when ``torch.cuda.is_available()``.

On the CPU each architecture runs with torch's default intra-op thread count
(what ``fedser-client`` uses) and, when that is more than one, with one thread:
on a small, shared machine OpenMP threads waiting for each other can cost more
than they bring, and the two rows show which way it goes.
"""
from __future__ import annotations

import time

import numpy as np

BATCH = 16
MIN_BATCHES = 4
MAX_SAMPLES = 1 << 15


def _train_once(arch_id: str, x: np.ndarray, y: np.ndarray, device, batch: int) -> float:
    import torch

    from edge_client.training import train_local
    from model.network import build_model
    from model.plan import TrainingPlan

    model = build_model(arch_id, seed=0)
    plan = TrainingPlan(local_epochs=1, batch_size=batch, learning_rate=1e-3)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    train_local(model, x, y, plan, device, seed=0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def run(target_s: float, use_cuda: bool = True, batch: int = BATCH, log=print) -> dict[str, object]:
    import torch

    from model.features import get_preset
    from model.network import ARCHITECTURES, build_model, count_parameters

    default_threads = torch.get_num_threads()
    settings = [(torch.device("cpu"), default_threads)]
    if default_threads > 1:
        settings.append((torch.device("cpu"), 1))
    if use_cuda and torch.cuda.is_available():
        settings.append((torch.device("cuda"), default_threads))
    rows = []
    rng = np.random.default_rng(0)
    for arch_id, arch in ARCHITECTURES.items():
        if arch_id.startswith("bench-"):
            continue  # synthetic payload models of the round benchmark are not networks
        shape = tuple(get_preset(arch.preset).input_shape)
        params = count_parameters(build_model(arch_id, seed=0))
        for device, threads in settings:
            torch.set_num_threads(threads)
            warm_n = 2 * batch
            xw = rng.standard_normal((warm_n, *shape), dtype=np.float32)
            yw = rng.integers(0, len(arch.classes), warm_n).astype(np.int64)
            _train_once(arch_id, xw, yw, device, batch)  # untimed: allocator, kernels, autotuning
            warm_s = _train_once(arch_id, xw, yw, device, batch)
            per_sample = warm_s / warm_n
            n = int(min(MAX_SAMPLES, max(MIN_BATCHES * batch, target_s / max(per_sample, 1e-9))))
            n = max(batch, n // batch * batch)
            x = rng.standard_normal((n, *shape), dtype=np.float32)
            y = rng.integers(0, len(arch.classes), n).astype(np.int64)
            s = _train_once(arch_id, x, y, device, batch)
            rows.append({
                "architecture": arch_id,
                "preset": arch.preset,
                "input_shape": list(shape),
                "params": params,
                "device": str(device) if device.type == "cpu" else f"cuda ({torch.cuda.get_device_name(device)})",
                "cpu_threads": threads,
                "batch": batch,
                "samples": n,
                "seconds": round(s, 3),
                "samples_per_s": round(n / s, 1),
            })
            log(f"  [train] {arch_id} on {device} ({threads} thread{'s' if threads > 1 else ''}): {n / s:.1f} samples/s ({n} samples)")
    torch.set_num_threads(default_threads)
    return {
        "torch": torch.__version__,
        "torch_threads": default_threads,
        "cuda_available": torch.cuda.is_available(),
        "rows": rows,
    }
