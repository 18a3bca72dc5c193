"""Tests for the on-disk feature cache (model/feature_cache.py).

A counting wrapper around a real preset tells how many files were extracted;
WAV files are small synthetic clips written to tmp_path.
"""
from __future__ import annotations

import dataclasses
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from model.audio import AudioReadError
from model.feature_cache import CacheStats, FeatureCache, file_digest, preset_identity, preset_key
from model.features import NormalizedMfcc, SeedMfccMean

SR = 16000


@dataclasses.dataclass
class Counting(SeedMfccMean):
    """The seed preset on a short window (fast), counting the files it extracts."""

    duration_s: float = 0.5
    offset_s: float = 0.0
    extracted: list = dataclasses.field(default_factory=list, init=False, repr=False, compare=False)

    def extract_files(self, paths):
        self.extracted.extend(Path(p).name for p in paths)
        return super().extract_files(paths)


def _write(path: Path, seed: int, amp: float = 0.2) -> Path:
    rng = np.random.default_rng(seed)
    data = (amp * rng.standard_normal(SR // 2) * np.hanning(SR // 2)).astype(np.float32)
    sf.write(str(path), data, SR, subtype="PCM_16")
    return path


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "audio"
    folder.mkdir()
    return [_write(folder / f"clip{i}.wav", seed=i, amp=0.05 + 0.1 * i) for i in range(5)]


def test_cold_run_extracts_all_warm_run_none(tmp_path, files):
    preset = Counting()
    cache = FeatureCache(tmp_path / "cache", batch_size=2)
    progress: list[int] = []
    cold = cache.extract(files, preset, progress=progress.append)
    assert cache.last == CacheStats(hits=0, misses=5)
    assert sorted(preset.extracted) == sorted(p.name for p in files)
    assert progress == [2, 2, 1]  # batches of 2
    assert cold.dtype == np.float32 and cold.shape == (5, *preset.input_shape)
    # The cached rows are the preset's own features.
    np.testing.assert_array_equal(cold, Counting().extract_files(files))

    preset.extracted.clear()
    progress.clear()
    warm, stats = FeatureCache(tmp_path / "cache").extract_with_stats(files, preset, progress=progress.append)
    assert stats == CacheStats(hits=5, misses=0)
    assert preset.extracted == []
    assert progress == [5]
    np.testing.assert_array_equal(warm, cold)
    # Counts add up over the cache object's life.
    cache.extract(files[::-1], preset)
    assert (cache.hits, cache.misses) == (5, 5)
    assert cache.last == CacheStats(5, 0)


def test_order_follows_the_paths_and_empty_input(tmp_path, files):
    preset = Counting()
    cache = FeatureCache(tmp_path / "cache")
    forward = cache.extract(files, preset)
    backward = cache.extract(files[::-1], preset)
    np.testing.assert_array_equal(backward, forward[::-1])
    empty = cache.extract([], preset)
    assert empty.shape == (0, *preset.input_shape) and empty.dtype == np.float32


def test_editing_one_file_misses_once(tmp_path, files):
    preset = Counting()
    cache = FeatureCache(tmp_path / "cache")
    before = cache.extract(files, preset)
    _write(files[2], seed=99)  # new bytes, same name
    preset.extracted.clear()
    after = cache.extract(files, preset)
    assert cache.last == CacheStats(hits=4, misses=1)
    assert preset.extracted == ["clip2.wav"]
    np.testing.assert_array_equal(np.delete(after, 2, axis=0), np.delete(before, 2, axis=0))
    assert not np.array_equal(after[2], before[2])


def test_renamed_or_copied_file_hits(tmp_path, files):
    preset = Counting()
    cache = FeatureCache(tmp_path / "cache")
    first = cache.extract(files[:1], preset)
    moved = tmp_path / "elsewhere.wav"
    shutil.copy(files[0], moved)
    preset.extracted.clear()
    again = cache.extract([moved, files[0]], preset)
    assert cache.last == CacheStats(hits=2, misses=0)
    assert preset.extracted == []
    np.testing.assert_array_equal(again, np.concatenate([first, first]))


def test_same_bytes_twice_in_one_call_extracted_once(tmp_path, files):
    twin = tmp_path / "twin.wav"
    shutil.copy(files[1], twin)
    preset = Counting()
    cache = FeatureCache(tmp_path / "cache")
    feats = cache.extract([files[1], twin, files[3]], preset)
    assert cache.last == CacheStats(hits=0, misses=3)
    assert sorted(preset.extracted) == ["clip1.wav", "clip3.wav"]
    np.testing.assert_array_equal(feats[0], feats[1])


def test_a_different_preset_misses(tmp_path, files):
    cache = FeatureCache(tmp_path / "cache")
    cache.extract(files, Counting())
    # Another parameter value (the same class and name) is another key.
    other = Counting(n_mfcc=20)
    assert preset_key(other) != preset_key(Counting())
    cache.extract(files, other)
    assert cache.last == CacheStats(hits=0, misses=5)
    assert other.extracted and len(other.extracted) == 5
    # Another preset class altogether, with its own shape.
    norm = NormalizedMfcc(duration_s=0.5, offset_s=0.0)
    feats = cache.extract(files[:2], norm)
    assert cache.last == CacheStats(hits=0, misses=2)
    assert feats.shape == (2, *norm.input_shape)
    # The original preset still hits.
    cache.extract(files, Counting())
    assert cache.last == CacheStats(hits=5, misses=0)


def test_preset_identity_covers_every_field():
    ident = preset_identity(NormalizedMfcc())
    assert ident["class"] == "model.features.NormalizedMfcc"
    assert ident["params"]["name"] == "mfcc40-norm"
    assert set(ident["params"]) == {f.name for f in dataclasses.fields(NormalizedMfcc) if f.init}
    assert preset_key(NormalizedMfcc()) == preset_key(NormalizedMfcc())
    assert preset_key(NormalizedMfcc()) != preset_key(NormalizedMfcc(keep_level=False))
    assert preset_key(NormalizedMfcc()) != preset_key(NormalizedMfcc(eps=1e-6))

    class Opaque:
        name = "opaque"
        input_shape = (1, 2)

    with pytest.raises(TypeError, match="dataclass or define cache_identity"):
        preset_identity(Opaque())


def test_cache_files_hold_no_pickles(tmp_path, files):
    cache = FeatureCache(tmp_path / "cache")
    feats = cache.extract(files, Counting())
    rows = sorted((tmp_path / "cache").rglob("*.npy"))
    assert len(rows) == 5
    digests = {file_digest(p) for p in files}
    assert {r.stem for r in rows} == digests
    for row in rows:
        arr = np.load(row, allow_pickle=False)  # plain .npy: no object arrays, no pickle
        assert arr.dtype == np.float32 and arr.shape == Counting().input_shape
        assert row.read_bytes()[:6] == b"\x93NUMPY"
    np.testing.assert_array_equal(np.load(rows[0]), feats[[file_digest(p) for p in files].index(rows[0].stem)])
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_damaged_row_is_extracted_again(tmp_path, files):
    preset = Counting()
    cache = FeatureCache(tmp_path / "cache")
    good = cache.extract(files, preset)
    row = next((tmp_path / "cache").rglob(f"{file_digest(files[0])}.npy"))
    row.write_bytes(row.read_bytes()[:40])  # truncated, as after a crash without rename
    again = cache.extract(files, preset)
    assert cache.last == CacheStats(hits=4, misses=1)
    np.testing.assert_array_equal(again, good)
    assert cache.extract(files, preset) is not None and cache.last == CacheStats(5, 0)


def test_unreadable_file_raises_audio_read_error(tmp_path, files):
    cache = FeatureCache(tmp_path / "cache")
    with pytest.raises(AudioReadError):
        cache.extract([files[0], tmp_path / "missing.wav"], Counting())
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    with pytest.raises(AudioReadError):
        cache.extract([bad], Counting())


def test_concurrent_writers_do_not_corrupt(tmp_path, files):
    expected = Counting().extract_files(files)
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def work(k: int) -> None:
        try:
            start.wait()
            # Separate cache objects on one folder: as two processes would use it.
            results[k] = FeatureCache(tmp_path / "cache", batch_size=2).extract(files, Counting())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for k in range(3):
        np.testing.assert_array_equal(results[k], expected)
    assert not list((tmp_path / "cache").rglob("*.tmp"))
    warm = FeatureCache(tmp_path / "cache")
    np.testing.assert_array_equal(warm.extract(files, Counting()), expected)
    assert warm.last == CacheStats(hits=5, misses=0)
