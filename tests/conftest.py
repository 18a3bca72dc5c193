"""Shared fixtures: a generated RAVDESS-format corpus and a real in-process aggregator on 127.0.0.1."""
from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Iterator

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aggregator_service.config import AggregatorConfig
from aggregator_service.rounds import RoundConfig
from aggregator_service.server import RunningAggregator, start
from experiments.synthetic_corpus import CorpusSpec, generate_actor
from fedser.v1 import aggregator_pb2_grpc as pb_grpc


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three client folders of three synthetic speakers each (real 48 kHz WAV files)."""
    root = tmp_path_factory.mktemp("corpus")
    folders = []
    for k in range(3):
        folder = root / f"client-{k + 1}"
        for j in range(3):
            generate_actor(folder, k * 3 + j + 1, CorpusSpec(seed=7))
        folders.append(folder)
    return folders


def scrape(metrics_port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Read /metrics over HTTP into {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def aggregator(tmp_path: Path) -> Iterator[RunningAggregator]:
    """A real aggregator serving on a free 127.0.0.1 port: 2 clients per round, 1 minimum."""
    config = AggregatorConfig(
        host="127.0.0.1", port=0, metrics_port=0, checkpoint_dir=tmp_path / "ckpt", insecure=True,
        rounds=RoundConfig(clients_per_round=2, min_clients=1, round_timeout_s=600),
    )
    running = start(config)
    yield running
    running.stop(grace_s=1)


@pytest.fixture
def stub(aggregator: RunningAggregator) -> Iterator[pb_grpc.AggregatorStub]:
    with grpc.insecure_channel(f"127.0.0.1:{aggregator.port}") as channel:
        yield pb_grpc.AggregatorStub(channel)
