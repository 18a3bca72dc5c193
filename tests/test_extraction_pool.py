"""Tests for the feature worker processes (model/extraction_pool.py) and the cache's use of them.

Real worker processes (from a fork server) extract real WAV files written to
tmp_path; their features must be the in-process features bit for bit.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from model.audio import AudioReadError
from model.extraction_pool import ExtractionPool, ExtractionPoolError
from model.feature_cache import FeatureCache
from model.features import NormalizedMfcc, SeedMfccMean

pytestmark = pytest.mark.timeout(180)  # a stuck worker must fail a test, never hang the run


def _corpus(folder: Path, n: int, rates=(48000, 16000, 44100)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    paths = []
    for i in range(n):
        sr = rates[i % len(rates)]
        t = np.arange(int(sr * (0.8 + 0.1 * (i % 5)))) / sr
        wave = 0.3 * np.sin(2 * np.pi * (150 + 20 * i) * t) * np.hanning(t.size) + 0.01 * rng.standard_normal(t.size)
        p = folder / f"clip{i:03d}.wav"
        sf.write(str(p), wave.astype(np.float32), sr, subtype="PCM_16")
        paths.append(p)
    return paths


@dataclasses.dataclass
class Sleepy(SeedMfccMean):
    """A preset whose extraction never finishes in time: stands in for a stuck worker."""

    sleep_s: float = 60.0

    def extract_files(self, paths):
        time.sleep(self.sleep_s)
        return super().extract_files(paths)


@pytest.fixture(scope="module")
def pool():
    with ExtractionPool(2, min_files=1) as p:
        p.start()
        yield p


@pytest.mark.parametrize("preset", [SeedMfccMean(), NormalizedMfcc()], ids=["seed", "mfcc40-norm"])
def test_workers_give_the_in_process_features_bit_for_bit_in_order(tmp_path, pool, preset):
    paths = _corpus(tmp_path, 45)
    want = preset.extract_files(paths)
    batches = [paths[0:20], paths[20:40], paths[40:45]]  # tasks split batches; the last one is short
    got = list(pool.imap(preset, batches))
    assert [g.shape[0] for g in got] == [20, 20, 5]
    np.testing.assert_array_equal(np.concatenate(got), want)
    assert len(pool.worker_pids()) == 2 and os.getpid() not in pool.worker_pids()


def test_an_unreadable_file_raises_its_error_and_the_pool_goes_on(tmp_path, pool):
    paths = _corpus(tmp_path, 20)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF not audio at all")
    with pytest.raises(AudioReadError, match="junk.wav"):
        list(pool.imap(SeedMfccMean(), [paths[:10] + [junk] + paths[10:]]))
    np.testing.assert_array_equal(np.concatenate(list(pool.imap(SeedMfccMean(), [paths]))),
                                  SeedMfccMean().extract_files(paths))


def test_cache_uses_the_workers_for_many_files_and_stores_what_they_return(tmp_path):
    paths = _corpus(tmp_path / "audio", 40)
    preset = SeedMfccMean()
    with ExtractionPool(2, min_files=30) as pool:
        cache = FeatureCache(tmp_path / "cache", batch_size=16, pool=pool)
        few = cache.extract(paths[:10], preset)  # under min_files: in this process
        assert pool.worker_pids() == []
        feats, stats = cache.extract_with_stats(paths, preset)
        assert len(pool.worker_pids()) == 2
        assert (stats.hits, stats.misses) == (10, 30)
    np.testing.assert_array_equal(feats, preset.extract_files(paths))
    np.testing.assert_array_equal(few, feats[:10])
    again, stats = FeatureCache(tmp_path / "cache").extract_with_stats(paths, preset)  # all rows from disk
    assert (stats.hits, stats.misses) == (40, 0)
    np.testing.assert_array_equal(again, feats)


def test_a_killed_worker_is_an_error_and_the_cache_extracts_the_rest_itself(tmp_path):
    paths = _corpus(tmp_path / "audio", 40)
    preset = SeedMfccMean()
    with ExtractionPool(2, min_files=1) as pool:
        victim = pool.start()[0]
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(ExtractionPoolError, match="died"):
            for _ in range(50):  # the executor notices the dead process within a few tasks
                list(pool.imap(preset, [paths[:8]]))
        assert not pool.worth_it(10_000) and pool.worker_pids() == []
        with pytest.raises(ExtractionPoolError):
            pool.start()
        # A cache holding the failed pool extracts in this process: same rows.
        feats, stats = FeatureCache(tmp_path / "cache", pool=pool).extract_with_stats(paths, preset)
    assert stats.misses == 40
    np.testing.assert_array_equal(feats, preset.extract_files(paths))


def test_a_stuck_worker_times_out_and_is_killed(tmp_path):
    paths = _corpus(tmp_path, 4)
    with ExtractionPool(2, min_files=1, task_timeout_s=3.0) as pool:
        pids = pool.start()
        t0 = time.monotonic()
        with pytest.raises(ExtractionPoolError, match="did not answer"):
            list(pool.imap(Sleepy(sleep_s=120.0), [paths]))
        assert time.monotonic() - t0 < 60
    for pid in pids:  # killed, not left sleeping
        with pytest.raises(ProcessLookupError):
            for _ in range(100):
                os.kill(pid, 0)
                time.sleep(0.05)


def test_when_workers_are_worth_starting():
    assert not ExtractionPool(1, min_files=1).worth_it(10_000)  # one CPU: threads in-process
    assert not ExtractionPool(2, min_files=512).worth_it(511)
    assert ExtractionPool(2, min_files=512).worth_it(512)
    with pytest.raises(ValueError):
        ExtractionPool(0)


def test_allocator_tuning_applies_on_glibc():
    import platform

    from model.allocator import keep_freed_memory

    assert keep_freed_memory() == (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")
