"""The fast feature pipeline gives torchaudio's (and librosa's) numbers; the fast WAV reader gives soundfile's;
the feature cache's stat index saves hashing without ever returning a stale digest.

model/features.py computes the presets without torchaudio's transforms (polyphase resampling without
zero taps, a block-banded mel filterbank, worker threads); the references below are the transforms
themselves, as the presets used them before.
"""
from __future__ import annotations

import os
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF
import torchaudio.transforms as T

import model.feature_cache as fc
from model.audio import PCM16_SCALE, AudioReadError, read_audio, read_audio_soundfile, read_window
from model.feature_cache import CacheStats, FeatureCache
from model.features import NormalizedMfcc, PolyphaseResampler, SeedMfccMean, get_preset, map_chunks
from tests.test_feature_presets import _speechy


def _fit_reference(wave: np.ndarray, sr: int, rate: int, n: int) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    if sr != rate and x.numel():
        x = T.Resample(sr, rate)(x)
    return x[:n] if x.numel() >= n else torch.nn.functional.pad(x, (0, n - x.numel()))


def _seed_reference(preset: SeedMfccMean, waves) -> np.ndarray:
    mfcc = T.MFCC(sample_rate=preset.sample_rate, n_mfcc=preset.n_mfcc, norm="ortho", log_mels=False, melkwargs={
        "n_fft": preset.n_fft, "hop_length": preset.hop_length, "n_mels": preset.n_mels, "mel_scale": "slaney",
        "norm": "slaney", "center": True, "pad_mode": "constant"})
    batch = torch.stack([_fit_reference(w, sr, preset.sample_rate, preset.num_samples) for w, sr in waves]).unsqueeze(1)
    return mfcc(batch).mean(dim=2).numpy()


def _norm_reference(preset: NormalizedMfcc, waves) -> np.ndarray:
    mel = T.MelSpectrogram(sample_rate=preset.sample_rate, n_fft=preset.n_fft, hop_length=preset.hop_length,
                           n_mels=preset.n_mels, mel_scale="slaney", norm="slaney", center=True,
                           pad_mode="constant", power=2.0)
    dct = AF.create_dct(preset.n_mfcc, preset.n_mels, norm="ortho")
    batch = torch.stack([_fit_reference(w, sr, preset.sample_rate, preset.num_samples) for w, sr in waves]).unsqueeze(1)
    db = AF.amplitude_to_DB(mel(batch), multiplier=10.0, amin=preset.amin, db_multiplier=0.0, top_db=preset.top_db)
    m = torch.matmul(db.transpose(-1, -2), dct).transpose(-1, -2)
    out = (m - m.mean(dim=-1, keepdim=True)) / (m.std(dim=-1, unbiased=False, keepdim=True) + preset.eps)
    if preset.keep_level:
        out[:, :, 0, :] = (db.mean(dim=-2) - preset.level_center_db) / preset.level_scale_db
    return out.numpy()


def _waves(rng: np.random.Generator):
    """Rates the corpora use (TESS's odd 24,414 Hz too), windows shorter and longer than the presets', loud and quiet."""
    out = []
    for sr in (48000, 44100, 24414, 22050, 16000, 8000):
        for seconds in (0.3, 2.3, 3.4):
            amp = 10 ** rng.uniform(-3.5, -0.5)
            out.append((_speechy(sr, seconds, amp=amp, seed=int(rng.integers(1 << 30))), sr))
    out.append((np.zeros(0, np.float32), 48000))  # a file that ends before the window
    return out


# -- the presets' numbers ----------------------------------------------------------


@pytest.mark.parametrize("orig, new", [(48000, 22050), (48000, 16000), (44100, 22050), (16000, 22050),
                                       (24414, 22050), (22050, 16000), (8000, 16000)])
def test_polyphase_resampler_is_torchaudios(orig, new):
    rng = np.random.default_rng(orig + new)
    r = PolyphaseResampler(orig, new)
    reference = T.Resample(orig, new)
    waves = [(0.3 * rng.standard_normal(n)).astype(np.float32) for n in (orig, orig // 3 + 7, 1, 0, 2 * orig + 5)]
    n_out = r.output_length(orig) + 50  # past the end of the longest-but-one: zeros there
    got = r(waves, n_out)
    for w, row in zip(waves, got):
        want = reference(torch.from_numpy(w)) if w.size else torch.zeros(0)
        k = min(n_out, want.numel())
        assert r.output_length(w.size) == want.numel()
        np.testing.assert_allclose(row[:k].numpy(), want[:k].numpy(), atol=2e-6)
        assert not row[k:].any()


def test_polyphase_resampler_scales_int16():
    pcm = (np.random.default_rng(3).standard_normal(48000) * 3000).astype(np.int16)
    a = PolyphaseResampler(48000, 22050, scale=PCM16_SCALE)([pcm], 22050)
    b = PolyphaseResampler(48000, 22050)([pcm.astype(np.float32) * np.float32(PCM16_SCALE)], 22050)
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-7)


def test_seed_preset_matches_torchaudio_mfcc():
    preset = get_preset("seed")
    waves = _waves(np.random.default_rng(0))
    got = preset.extract_batch(waves)
    want = _seed_reference(preset, waves)
    assert got.shape == want.shape == (len(waves), 1, 97)
    # dB-scale values (-100..20): float32 rounding of a different summation order.
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=0)


@pytest.mark.parametrize("keep_level", [True, False])
def test_normalized_preset_matches_torchaudio(keep_level):
    preset = NormalizedMfcc(keep_level=keep_level)
    # Not TESS's 24,414 Hz here: torchaudio's 24,414 -> 16,000 Hz kernel is 8,000 x 12,245 taps (seconds to build).
    waves = [w for w in _waves(np.random.default_rng(1)) if w[0].size and w[1] != 24414]
    got = preset.extract_batch(waves)
    want = _norm_reference(preset, waves)
    assert got.shape == want.shape
    # Standardised values (about -5..5); rows over nearly flat stretches amplify rounding a little.
    np.testing.assert_allclose(got, want, atol=2e-3, rtol=0)
    assert np.abs(got - want).mean() < 1e-5


def test_seed_preset_is_close_to_librosa(tmp_path):
    librosa = pytest.importorskip("librosa")
    sr = 48000
    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.wav"
        sf.write(str(p), _speechy(sr, 3.5, amp=0.05 * (i + 1), seed=i), sr, subtype="PCM_16")
        paths.append(p)
    got = get_preset("seed").extract_files(paths)[:, 0]
    for p, row in zip(paths, got):
        y, s = librosa.load(str(p), sr=22050, offset=0.5, duration=2.25)
        want = librosa.feature.mfcc(y=y, sr=s, n_mfcc=40).mean(axis=0)
        # soxr's resampler against torchaudio's: the features agree to a small fraction of a dB.
        assert np.abs(row - want).max() < 0.2


@pytest.mark.parametrize("name", ["seed", "mfcc40-norm"])
def test_features_are_bitwise_independent_of_batch_and_threads(name, tmp_path):
    preset = get_preset(name)
    waves = [w for w in _waves(np.random.default_rng(2)) if name == "seed" or w[1] != 24414]
    together = preset.extract_batch(waves)
    for k in (0, 5, len(waves) - 1):
        np.testing.assert_array_equal(preset.extract_batch([waves[k]])[0], together[k])
    np.testing.assert_array_equal(preset.extract_batch(waves[3:10]), together[3:10])
    before = torch.get_num_threads()
    try:
        for n in (1, 2):  # in the caller's thread; on worker threads
            torch.set_num_threads(n)
            np.testing.assert_array_equal(preset.extract_batch(waves), together)
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def two_torch_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # so map_chunks uses its worker threads even where the tests run with one
    yield
    torch.set_num_threads(before)


def test_map_chunks_keeps_order_raises_and_restores_threads(two_torch_threads):
    before = torch.get_num_threads()
    names = set(map_chunks(lambda x: threading.current_thread().name, list(range(8))))
    assert all(n.startswith("fedser-features") for n in names)
    assert map_chunks(lambda x: x * 2, list(range(20))) == [x * 2 for x in range(20)]
    assert map_chunks(lambda x: x, []) == []

    def boom(x: int) -> int:
        if x == 7:
            raise ValueError("seven")
        return x

    with pytest.raises(ValueError, match="seven"):
        map_chunks(boom, list(range(20)))
    assert torch.get_num_threads() == before
    seen: list[int] = []
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert seen == [before]  # threads started later still get the process's count


# -- reading -----------------------------------------------------------------------


def _wav_with_chunks(path: Path, pcm: np.ndarray, sr: int, extensible: bool = False, extra: bytes = b"") -> None:
    """A 16-bit PCM WAV written by hand: optional WAVE_FORMAT_EXTENSIBLE header and chunks before the data."""
    channels = 1 if pcm.ndim == 1 else pcm.shape[1]
    data = pcm.astype("<i2").tobytes()
    if extensible:
        guid = b"\x01\x00" + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
        fmt = struct.pack("<HHIIHHHHI", 0xFFFE, channels, sr, sr * 2 * channels, 2 * channels, 16, 22, 16, 0) + guid
    else:
        fmt = struct.pack("<HHIIHH", 1, channels, sr, sr * 2 * channels, 2 * channels, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + extra + b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


@pytest.mark.parametrize("window", [(0.0, None), (0.5, 2.25), (0.25, 10.0), (5.0, 1.0)])
def test_window_reader_matches_libsndfiles_float_conversion(tmp_path, window):
    rng = np.random.default_rng(4)
    mono = (rng.standard_normal(48000 * 2) * 4000).astype(np.int16)
    stereo = (rng.standard_normal((44100, 2)) * 4000).astype(np.int16)
    odd = b"LIST" + struct.pack("<I", 5) + b"abcde" + b"\x00"  # an odd-sized chunk and its pad byte
    cases = {
        "mono.wav": lambda p: sf.write(str(p), mono, 48000, subtype="PCM_16"),
        "stereo.wav": lambda p: sf.write(str(p), stereo, 44100, subtype="PCM_16"),
        "ext.wav": lambda p: _wav_with_chunks(p, mono, 48000, extensible=True),
        "list.wav": lambda p: _wav_with_chunks(p, stereo, 16000, extra=odd),
        "float.wav": lambda p: sf.write(str(p), mono / 32768.0, 22050, subtype="FLOAT"),
        "pcm24.wav": lambda p: sf.write(str(p), mono / 32768.0, 22050, subtype="PCM_24"),
        "clip.flac": lambda p: sf.write(str(p), mono, 16000, subtype="PCM_16"),
    }
    for name, write in cases.items():
        path = tmp_path / name
        write(path)
        want, want_sr = read_audio_soundfile(path, *window)
        got, got_sr = read_audio(path, *window)
        assert got_sr == want_sr and got.dtype == np.float32
        np.testing.assert_array_equal(got, want, err_msg=name)
        raw, _ = read_window(path, *window)
        if name in ("mono.wav", "ext.wav"):
            assert raw.dtype == np.int16  # plain 16-bit PCM: no conversion
        np.testing.assert_array_equal(raw.astype(np.float32) * np.float32(PCM16_SCALE) if raw.dtype == np.int16
                                      else raw, want, err_msg=name)


def test_damaged_wav_falls_back_or_raises(tmp_path):
    pcm = (np.random.default_rng(5).standard_normal(16000) * 3000).astype(np.int16)
    whole = tmp_path / "whole.wav"
    _wav_with_chunks(whole, pcm, 16000)
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole.read_bytes()[:-1001])  # the data chunk claims more than the file holds
    try:
        want = read_audio_soundfile(cut)
    except AudioReadError:
        with pytest.raises(AudioReadError):
            read_audio(cut)
    else:
        np.testing.assert_array_equal(read_audio(cut)[0], want[0])
    for name, data in (("junk.wav", b"not audio at all"), ("empty.wav", b""), ("riff.wav", whole.read_bytes()[:30])):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(AudioReadError):
            read_audio(tmp_path / name)
    with pytest.raises(AudioReadError):
        read_window(tmp_path / "missing.wav")


# -- the cache's stat index -----------------------------------------------------------


def _clips(folder: Path, n: int = 4, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"c{i}.wav"
        sf.write(str(p), _speechy(16000, 0.6, seed=seed + i), 16000, subtype="PCM_16")
        out.append(p)
    return out


@pytest.fixture
def short_preset() -> SeedMfccMean:
    return SeedMfccMean(duration_s=0.5, offset_s=0.0)


@pytest.fixture
def count_hashes(monkeypatch) -> list[str]:
    hashed: list[str] = []
    real = fc.file_digest

    def counting(path):
        hashed.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(fc, "file_digest", counting)
    return hashed


def test_stat_index_skips_hashing_unchanged_files(tmp_path, monkeypatch, short_preset, count_hashes):
    monkeypatch.setattr(fc, "RACY_SECONDS", 0.0)  # the clips were written just now
    files = _clips(tmp_path / "audio")
    cold = FeatureCache(tmp_path / "cache").extract(files, short_preset)
    assert sorted(count_hashes) == sorted(p.name for p in files)
    count_hashes.clear()
    warm_cache = FeatureCache(tmp_path / "cache")
    warm = warm_cache.extract(files, short_preset)
    assert count_hashes == [] and warm_cache.last_hashed == 0 and warm_cache.last == CacheStats(4, 0)
    np.testing.assert_array_equal(warm, cold)

    # New bytes of the same size with the old mtime put back: ctime still tells.
    st = files[1].stat()
    other = _clips(tmp_path / "other", 2, seed=100)[1]
    assert other.stat().st_size == st.st_size
    files[1].write_bytes(other.read_bytes())
    os.utime(files[1], ns=(st.st_atime_ns, st.st_mtime_ns))
    again = warm_cache.extract(files, short_preset)
    assert count_hashes == ["c1.wav"] and warm_cache.last == CacheStats(3, 1)
    np.testing.assert_array_equal(again[1], short_preset.extract_files([files[1]])[0])


def test_files_younger_than_the_racy_margin_are_always_hashed(tmp_path, short_preset, count_hashes):
    files = _clips(tmp_path / "audio")
    cache = FeatureCache(tmp_path / "cache")
    cache.extract(files, short_preset)
    count_hashes.clear()
    cache.extract(files, short_preset)  # written less than RACY_SECONDS ago: not trusted to the index
    assert sorted(count_hashes) == sorted(p.name for p in files)
    assert cache.last == CacheStats(4, 0)


@pytest.mark.parametrize("damage", [b"", b"{not json", b'{"format": 1, "files": {"x": [1, 2]}}', b"[1, 2, 3]"])
def test_damaged_or_foreign_index_is_ignored_and_rewritten(tmp_path, monkeypatch, short_preset, count_hashes, damage):
    monkeypatch.setattr(fc, "RACY_SECONDS", 0.0)
    files = _clips(tmp_path / "audio")
    good = FeatureCache(tmp_path / "cache").extract(files, short_preset)
    (tmp_path / "cache" / fc.INDEX_NAME).write_bytes(damage)
    count_hashes.clear()
    cache = FeatureCache(tmp_path / "cache")
    np.testing.assert_array_equal(cache.extract(files, short_preset), good)
    assert len(count_hashes) == 4 and cache.last == CacheStats(4, 0)
    count_hashes.clear()
    np.testing.assert_array_equal(FeatureCache(tmp_path / "cache").extract(files, short_preset), good)
    assert count_hashes == []


def test_index_can_be_switched_off(tmp_path, monkeypatch, short_preset, count_hashes):
    monkeypatch.setattr(fc, "RACY_SECONDS", 0.0)
    files = _clips(tmp_path / "audio")
    cache = FeatureCache(tmp_path / "cache", use_stat_index=False)
    cache.extract(files, short_preset)
    cache.extract(files, short_preset)
    assert len(count_hashes) == 8
    assert not (tmp_path / "cache" / fc.INDEX_NAME).exists()


def test_unreadable_file_keeps_what_was_learned(tmp_path, monkeypatch, short_preset, count_hashes):
    monkeypatch.setattr(fc, "RACY_SECONDS", 0.0)
    files = _clips(tmp_path / "audio")
    cache = FeatureCache(tmp_path / "cache")
    with pytest.raises(AudioReadError):
        cache.extract([*files, tmp_path / "missing.wav"], short_preset)
    count_hashes.clear()
    cache.extract(files, short_preset)
    assert count_hashes == []  # the readable files' digests were kept in the index
    assert cache.last == CacheStats(0, 4)
