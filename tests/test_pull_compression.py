"""Compressed pulls (--pull-encoding): the snapped global, and clients that rebuild it from a delta."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from aggregator_service.config import AggregatorConfig
from aggregator_service.rounds import RoundConfig
from aggregator_service.server import start
from edge_client.backoff import BackoffPolicy
from edge_client.transport import AggregatorClient, PulledModel
from fedser.v1 import aggregator_pb2 as pb
from model.encodings import Encoding, apply_delta, from_proto
from model.serialization import arrays_to_bytes, bytes_to_arrays, data_xxh3, xxh3_hex
from tests.helpers_push import channel, pull, stub_for, weighted_average

ENCODINGS = [Encoding.FLOAT16_DELTA, Encoding.INT8_DELTA]


def _start(tmp_path: Path, encoding: Encoding):
    return start(AggregatorConfig(
        host="127.0.0.1", port=0, metrics_port=0, checkpoint_dir=tmp_path / "ckpt", insecure=True,
        rounds=RoundConfig(clients_per_round=2, min_clients=2, round_timeout_s=600, pull_encoding=encoding.value),
    ))


def _client(port: int) -> AggregatorClient:
    return AggregatorClient(f"127.0.0.1:{port}", threading.Event(), BackoffPolicy(max_s=0.1), rpc_timeout_s=30)


def _push_round(client: AggregatorClient, base: PulledModel, seed: int) -> list[tuple[int, dict[str, np.ndarray]]]:
    """Two clients push base + noise (float32 weights); returns (n_k, weights) for the expected average."""
    rng = np.random.default_rng(seed)
    sent = []
    for cid, n in (("a", 3), ("b", 5)):
        w = {k: (v + rng.normal(0, 1e-2, v.shape)).astype(np.float32) for k, v in base.arrays.items()}
        body = arrays_to_bytes(w)
        reply = client.push(pb.UpdateHeader(client_id=cid, round=base.header.round, num_samples=n,
                                            update_id=f"{cid}-{seed}", total_bytes=len(body), xxh3_128=xxh3_hex(body),
                                            base_version=base.header.model_version,
                                            encoding=pb.UPDATE_ENCODING_FLOAT32), body)
        assert reply.accepted
        sent.append((n, w))
    return sent


@pytest.mark.parametrize("encoding", ENCODINGS, ids=lambda e: e.value)
def test_a_client_rebuilds_the_served_model_bit_for_bit_from_the_delta(tmp_path: Path, encoding: Encoding) -> None:
    agg = _start(tmp_path, encoding)
    client = _client(agg.port)
    try:
        v0 = client.pull("a")
        assert from_proto(v0.header.encoding) is Encoding.FLOAT32  # nothing to delta from yet
        carried = {k: np.zeros_like(v) for k, v in v0.arrays.items()}  # what the last snapping dropped
        for rnd in (1, 2, 3):
            base = v0 if rnd == 1 else v1
            sent = _push_round(client, base, seed=rnd)
            v1 = client.pull("a", min_version=rnd, wait_s=10, have=base)
            # The delta came, from the version held, in the aggregator's encoding, at a fraction of the size.
            assert from_proto(v1.header.encoding) is encoding and v1.header.base_version == rnd - 1
            whole = len(arrays_to_bytes(base.arrays))
            assert v1.header.total_bytes < whole * (0.55 if encoding is Encoding.FLOAT16_DELTA else 0.3)
            # A client without a base (the generated stub, as older clients) gets the whole model: the same bits.
            with channel(f"127.0.0.1:{agg.port}") as ch:
                header, full, _ = pull(stub_for(ch))
            assert header.model_version == rnd and header.encoding == pb.UPDATE_ENCODING_UNSPECIFIED
            for name in full:
                np.testing.assert_array_equal(v1.arrays[name], full[name])
            assert data_xxh3(full) == header.model_data_xxh3_128
            # Error feedback: the served model is the exact average plus what the previous round's
            # snapping dropped, up to one rounding step of that change; the new residual is carried on.
            exact = weighted_average(sent)
            for name in full:
                target = exact[name] + carried[name]
                step = np.abs(target - base.arrays[name]).max()
                tol = step / 127 * 1.01 if encoding is Encoding.INT8_DELTA else step * 2e-3
                assert np.abs(full[name] - target).max() <= tol + 1e-7
                if rnd > 1:
                    assert np.abs(carried[name]).max() > 0  # a residual was really carried
                carried[name] = target - full[name]
        # The aggregator keeps only the delta to its newest version: a client two versions behind
        # (or claiming a version it cannot hold) gets the whole model.
        stale = client.pull("a", min_version=2, have=v0)
        assert from_proto(stale.header.encoding) is Encoding.FLOAT32
        for name in stale.arrays:
            np.testing.assert_array_equal(stale.arrays[name], v1.arrays[name])
    finally:
        client.close()
        agg.stop(grace_s=1)


def test_a_client_whose_base_is_damaged_falls_back_to_the_whole_model(tmp_path: Path) -> None:
    agg = _start(tmp_path, Encoding.INT8_DELTA)
    client = _client(agg.port)
    try:
        v0 = client.pull("a")
        _push_round(client, v0, seed=3)
        damaged = PulledModel(v0.header, {k: v + np.float32(1e-3) for k, v in v0.arrays.items()})
        v1 = client.pull("a", min_version=1, wait_s=10, have=damaged)
        assert from_proto(v1.header.encoding) is Encoding.FLOAT32  # the second, whole pull
        with channel(f"127.0.0.1:{agg.port}") as ch:
            _, full, _ = pull(stub_for(ch))
        for name in full:
            np.testing.assert_array_equal(v1.arrays[name], full[name])
    finally:
        client.close()
        agg.stop(grace_s=1)


def test_without_pull_compression_a_base_changes_nothing(tmp_path: Path) -> None:
    agg = start(AggregatorConfig(host="127.0.0.1", port=0, metrics_port=0, checkpoint_dir=tmp_path / "c",
                                 insecure=True, rounds=RoundConfig(clients_per_round=2, min_clients=2)))
    client = _client(agg.port)
    try:
        v0 = client.pull("a")
        sent = _push_round(client, v0, seed=4)
        v1 = client.pull("a", min_version=1, wait_s=10, have=v0)
        assert from_proto(v1.header.encoding) is Encoding.FLOAT32
        for name, want in weighted_average(sent).items():
            np.testing.assert_array_equal(v1.arrays[name], want)  # plain FedAvg, exact
    finally:
        client.close()
        agg.stop(grace_s=1)


def test_apply_delta_is_elementwise_float32() -> None:
    base = {"w": np.array([1.0, -2.0, 0.5], np.float32)}
    q = {"w": np.array([127, -1, 0], np.int8), "w:scale": np.array([0.01], np.float32)}
    got = apply_delta(base, q, Encoding.INT8_DELTA)["w"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, base["w"] + np.array([127, -1, 0], np.float32) * np.float32(0.01))
    with pytest.raises(ValueError):
        apply_delta(base, q, Encoding.FLOAT32)
