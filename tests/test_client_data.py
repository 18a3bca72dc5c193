"""The client's data path: features come from the cache on a second start; the architecture must match."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from edge_client.dataset import load_local_data
from model.feature_cache import FeatureCache
from model.features import get_preset
from model.ravdess import SEED_CLASSES


def test_second_start_extracts_nothing(corpus: list[Path], tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path / "cache")
    preset = get_preset("seed")
    first = load_local_data(corpus[0], SEED_CLASSES, preset, 0.25, cache=cache)
    assert (cache.hits, cache.misses) == (0, 84)  # 3 speakers x 28 files
    again = load_local_data(corpus[0], SEED_CLASSES, preset, 0.25, cache=cache)
    assert (cache.hits, cache.misses) == (84, 84)
    assert (again.train_x == first.train_x).all() and (again.heldout_x == first.heldout_x).all()
    plain = load_local_data(corpus[0], SEED_CLASSES, preset, 0.25)
    assert (plain.train_x == first.train_x).all()


def test_client_refuses_a_model_it_did_not_prepare_for(aggregator, corpus: list[Path], tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "edge_client.main", "--server", f"127.0.0.1:{aggregator.port}", "--insecure",
         "--data", str(corpus[0]), "--architecture", "ser-cnn2d-v1", "--cache-dir", str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 3, result.stderr
    assert "aggregator trains 'seed-cnn-v1'" in result.stderr and "--architecture seed-cnn-v1" in result.stderr
    assert "Traceback" not in result.stderr
