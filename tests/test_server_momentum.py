"""FedAvgM through the real aggregator: the step over gRPC, and the buffer across a restart."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from aggregator_service.checkpoints import CheckpointStore
from aggregator_service.config import AggregatorConfig
from aggregator_service.rounds import RoundConfig
from aggregator_service.server import start
from model.serialization import arrays_to_bytes
from tests.helpers_push import channel, pull, push, stub_for


def _config(folder: Path) -> AggregatorConfig:
    return AggregatorConfig(
        host="127.0.0.1", port=0, metrics_port=0, checkpoint_dir=folder, insecure=True,
        rounds=RoundConfig(clients_per_round=2, min_clients=2, round_timeout_s=600, server_momentum=0.5),
    )


def _round(target: str, round: int, deltas: tuple[float, float]) -> dict[str, np.ndarray]:
    """Two clients push global + delta with n_k = 1 and 3; returns the global they started from."""
    with channel(target) as ch:
        stub = stub_for(ch)
        header, w, _ = pull(stub)
        assert header.round == round
        for client, n, d in (("a", 1, deltas[0]), ("b", 3, deltas[1])):
            reply = push(stub, client, round, n, arrays_to_bytes({k: (v + np.float32(d)).astype(np.float32)
                                                                  for k, v in w.items()}))
            assert reply.accepted
    return w


def test_momentum_step_and_buffer_survive_a_restart(tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    agg = start(_config(folder))
    try:
        w0 = _round(f"127.0.0.1:{agg.port}", 1, (0.1, 0.5))  # avg step 0.4 -> v = 0.4, w1 = w0 + 0.4
    finally:
        agg.stop(grace_s=1)
    store = CheckpointStore(folder)
    assert store.versions()[-1] == 1 and store.momentum_path(1).exists()
    saved = store.load_momentum(1)
    for name, v in saved.items():
        np.testing.assert_allclose(v, 0.4, rtol=1e-6)

    agg = start(_config(folder))  # resumes version 1 with its buffer
    try:
        target = f"127.0.0.1:{agg.port}"
        w1 = _round(target, 2, (0.2, 0.2))  # avg step 0.2 -> v = 0.5 * 0.4 + 0.2 = 0.4, w2 = w1 + 0.4
        with channel(target) as ch:
            _, w2, _ = pull(stub_for(ch))
    finally:
        agg.stop(grace_s=1)
    for name in w0:
        np.testing.assert_allclose(w1[name], w0[name] + 0.4, atol=2e-6)
        # Without the saved buffer (a fresh v = 0) the step would have been 0.2.
        np.testing.assert_allclose(w2[name], w1[name] + 0.4, atol=2e-6)


def test_store_keeps_two_buffers_and_skips_a_damaged_one(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    for version in (1, 2, 3):
        store.save_momentum(version, {"w": np.full(4, version, np.float32)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["momentum-v00000002.safetensors",
                                                          "momentum-v00000003.safetensors"]
    np.testing.assert_array_equal(store.load_momentum(3)["w"], np.full(4, 3, np.float32))
    store.momentum_path(3).write_bytes(b"\x00" * 10)
    assert store.load_momentum(3) is None and store.load_momentum(7) is None
    assert store.versions() == []  # buffers are not checkpoints
