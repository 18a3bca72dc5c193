"""A real `fedser-client` process trains on each corpus layout it can read and pushes to a real aggregator.

For every layout (RAVDESS, CREMA-D, TESS, EmoDB, IEMOCAP, CSV manifest) the
client gets the small fixture tree of tests/corpus_trees.py with
``--data <tree> --dataset auto``, joins a one-round federation on 127.0.0.1
(plaintext, ports chosen at run time) and must: detect the layout, train on its
training speakers, push, evaluate on its held-out speaker, and exit 0. The
aggregator's only round must close with exactly that client's sample count.
"""
from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from experiments.processes import single_thread_env, start_aggregator, start_client, stop_process
from fedser.v1 import aggregator_pb2 as pb
from fedser.v1 import aggregator_pb2_grpc as pb_grpc
from model.corpora import CORPORA
from model.ravdess import SEED_CLASSES
from model.splits import speaker_split
from tests.corpus_trees import Tree, make_all

pytestmark = pytest.mark.e2e

LAYOUTS = ("ravdess", "crema-d", "tess", "emodb", "iemocap", "manifest")


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Tree]:
    """Every layout's fixture tree, generated once (tests must not modify them)."""
    return make_all(tmp_path_factory.mktemp("corpora"))


def expected_split(tree: Tree) -> tuple[int, int]:
    """(training files, held-out files) the client must end up with: readable audio, split by speaker.

    The held-out speakers are the reader's own speaker split at the client's defaults
    (fraction 0.25, seed 0); tests/test_corpora.py checks that split in detail.
    """
    _, test = speaker_split(CORPORA[tree.layout].scan(tree.root, SEED_CLASSES).utterances, 0.25, 0)
    held = {u.speaker for u in test}
    readable = tree.readable_by_speaker()
    heldout = sum(sum(c.values()) for s, c in readable.items() if s in held)
    return sum(sum(c.values()) for c in readable.values()) - heldout, heldout


def events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_client_trains_and_pushes_on_each_layout(tmp_path: Path, trees: dict[str, Tree], layout: str) -> None:
    tree = trees[layout]
    train, heldout = expected_split(tree)
    assert train > 0 and heldout > 0
    env = single_thread_env()
    agg = start_aggregator(tmp_path / "ckpt", tmp_path / "aggregator.log", env=env, args=[
        "--clients-per-round", "1", "--min-clients", "1", "--rounds", "1", "--round-timeout", "120",
        "--local-epochs", "1", "--batch-size", "4",
    ])
    client_log = tmp_path / "client.log"
    try:
        client = start_client(agg.target, tree.root, f"device-{layout}", client_log, [
            "--dataset", "auto", "--rounds", "1", "--threads", "1", "--skip-unreadable",
            "--cache-dir", str(tmp_path / "cache"),
        ], env=env)
        try:
            code = client.wait(timeout=180)
        finally:
            stop_process(client)
        log_text = client_log.read_text()
        assert code == 0, log_text[-3000:]
        assert "Traceback" not in log_text

        with grpc.insecure_channel(agg.target) as ch:
            st = pb_grpc.AggregatorStub(ch).GetStatus(pb.GetStatusRequest(), timeout=10)
        # The one round closed on this client's update, weighted by its training files.
        assert [(r.round, r.model_version, r.participants, r.samples) for r in st.rounds] == [(1, 1, 1, train)]
        assert st.model_version == 1 and st.finished
        # It scored the initial and the trained model on its held-out speaker.
        assert [(e.model_version, e.reports, e.metrics.examples) for e in st.evaluations] == [
            (0, 1, heldout), (1, 1, heldout)]

        ev = events(client_log)
        detected = [e for e in ev if e["event"] == "dataset_detected"]
        assert [e["dataset"] for e in detected] == [layout]
        ready = [e for e in ev if e["event"] == "data_ready"]
        assert [(e["train"], e["heldout"]) for e in ready] == [(train, heldout)]
        assert [e["samples"] for e in ev if e["event"] == "trained"] == [train]
        assert [e["round"] for e in ev if e["event"] == "update_pushed"] == [1]
        assert [e["file"] for e in ev if e["event"] == "file_skipped"] == [p.name for p in tree.unreadable]
    finally:
        assert agg.stop() == 0
