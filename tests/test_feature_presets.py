"""Tests for the "mfcc40-norm" feature preset (model/features.py) and the "ser-cnn2d-v1" network (model/network.py).

Waveforms are synthetic (sines and seeded noise); WAV files are written to tmp_path with soundfile.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import soundfile as sf
import torch

from model.features import PRESETS, NormalizedMfcc, SeedMfccMean, get_preset
from model.network import ARCHITECTURES, SerCnn2d, build_model, count_parameters, get_architecture
from model.ravdess import SEED_CLASSES

SHAPE = (1, 40, 188)  # 40 MFCCs x (1 + 48000 // 256) frames of a 3 s window at 16 kHz


def _sine(sr: int, seconds: float, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _noise(sr: int, seconds: float, amp: float = 0.1, seed: int = 0) -> np.ndarray:
    return (amp * np.random.default_rng(seed).standard_normal(int(sr * seconds))).astype(np.float32)


def _speechy(sr: int, seconds: float, amp: float = 0.3, seed: int = 0) -> np.ndarray:
    """A gliding tone plus noise under a 3 Hz syllable-like envelope: features vary over time."""
    t = np.arange(int(sr * seconds)) / sr
    env = 0.5 * (1 - np.cos(2 * np.pi * 3.0 * t))
    tone = np.sin(2 * np.pi * (150 * t + 40 * t**2)) + 0.3 * np.sin(2 * np.pi * 900 * t)
    noise = np.random.default_rng(seed).standard_normal(t.size) * 0.2
    return (amp * env * (tone + noise) / 1.5).astype(np.float32)


@pytest.fixture(scope="module")
def preset() -> NormalizedMfcc:
    return get_preset("mfcc40-norm")


# -- preset ------------------------------------------------------------------


def test_preset_registered_with_its_settings(preset):
    assert isinstance(preset, NormalizedMfcc)
    assert set(PRESETS) >= {"seed", "mfcc40-norm"}
    assert PRESETS["seed"] is SeedMfccMean
    assert preset.name == "mfcc40-norm"
    assert (preset.sample_rate, preset.offset_s, preset.duration_s) == (16000, 0.5, 3.0)
    assert preset.num_samples == 48000
    assert preset.input_shape == SHAPE
    assert get_preset("mfcc40-norm") is not preset


def test_invalid_coefficient_count():
    with pytest.raises(ValueError, match="n_mfcc"):
        NormalizedMfcc(n_mfcc=80, n_mels=64)


@pytest.mark.parametrize(
    "sr, seconds", [(48000, 0.25), (48000, 4.5), (44100, 1.0), (22050, 3.0), (16000, 0.25), (16000, 3.0), (8000, 2.0)]
)
def test_shape_at_rates_and_lengths(preset, sr, seconds):
    feats = preset.extract_batch([(_speechy(sr, seconds), sr), (_noise(sr, seconds, seed=2), sr)])
    assert feats.dtype == np.float32
    assert feats.shape == (2, *SHAPE)
    assert np.isfinite(feats).all()
    assert not np.allclose(feats[0], feats[1])


def test_empty_batch(preset):
    feats = preset.extract_batch([])
    assert feats.shape == (0, *SHAPE) and feats.dtype == np.float32


def test_short_clip_is_zero_padded_and_long_clip_cut(preset):
    short = _speechy(16000, 0.7)
    padded = np.zeros(preset.num_samples, np.float32)
    padded[: short.size] = short
    np.testing.assert_array_equal(preset.extract_batch([(short, 16000)]), preset.extract_batch([(padded, 16000)]))
    long = _speechy(16000, 5.0, seed=4)
    np.testing.assert_array_equal(
        preset.extract_batch([(long, 16000)]), preset.extract_batch([(long[: preset.num_samples], 16000)])
    )


def test_coefficients_are_standardised_per_utterance(preset):
    feats = preset.extract_batch([(_speechy(48000, 3.0, seed=s), 48000) for s in range(3)] + [(_speechy(16000, 1.2), 16000)])
    coeffs = feats[:, 0, 1:, :]  # rows 1..39, every clip
    np.testing.assert_allclose(coeffs.mean(axis=-1), 0.0, atol=1e-4)
    np.testing.assert_allclose(coeffs.std(axis=-1), 1.0, atol=1e-3)


def test_level_row_keeps_loudness_and_the_rest_is_gain_invariant(preset):
    # 100x the amplitude is +40 dB: row 0 (mean log-mel level, /10 dB) rises by 4,
    # the standardised coefficients stay the same.
    quiet = _speechy(48000, 3.0, amp=0.005, seed=1)
    loud = quiet * 100.0
    fq, fl = preset.extract_batch([(quiet, 48000), (loud, 48000)])
    np.testing.assert_allclose(fl[0, 0].mean() - fq[0, 0].mean(), 4.0, atol=0.05)
    np.testing.assert_allclose(fl[0, 1:], fq[0, 1:], atol=2e-3)
    # Speech at -30 dBFS sits near the middle of the level row's scale.
    assert -3.0 < fl[0, 0].mean() < 3.0


def test_without_level_row_features_are_fully_gain_invariant(preset):
    flat = dataclasses.replace(preset, keep_level=False)
    assert flat.input_shape == SHAPE
    quiet = _speechy(48000, 3.0, amp=0.005, seed=1)
    fq, fl = flat.extract_batch([(quiet, 48000), (quiet * 100.0, 48000)])
    np.testing.assert_allclose(fl, fq, atol=2e-3)
    np.testing.assert_allclose(fq[0].mean(axis=-1), 0.0, atol=1e-4)  # row 0 standardised too
    # The coefficient rows are the same with and without the level row.
    np.testing.assert_array_equal(flat.extract_batch([(quiet, 48000)])[0, 0, 1:],
                                  preset.extract_batch([(quiet, 48000)])[0, 0, 1:])


def test_features_do_not_depend_on_batch_companions(preset):
    quiet = _speechy(48000, 3.0, amp=1e-4, seed=5)
    loud = _sine(48000, 3.0, amp=0.9) + _noise(48000, 3.0, amp=0.05)
    short = _speechy(22050, 0.8, seed=6)
    alone = preset.extract_batch([(quiet, 48000)])[0]
    together = preset.extract_batch([(loud, 48000), (quiet, 48000), (short, 22050)])
    np.testing.assert_allclose(together[1], alone, atol=1e-4)
    np.testing.assert_allclose(together[2], preset.extract_batch([(short, 22050)])[0], atol=1e-4)


def test_extract_files_reads_the_window(preset, tmp_path):
    sr = 48000
    data = _speechy(sr, 4.0, seed=8)
    sf.write(str(tmp_path / "a.wav"), data, sr, subtype="PCM_16")
    sf.write(str(tmp_path / "stereo.wav"), np.stack([data, data], axis=1), sr, subtype="PCM_16")
    sf.write(str(tmp_path / "short.wav"), data[: sr // 2], sr, subtype="PCM_16")  # ends at the window start
    feats = preset.extract_files([tmp_path / "a.wav", tmp_path / "stereo.wav", tmp_path / "short.wav"])
    assert feats.shape == (3, *SHAPE) and np.isfinite(feats).all()
    np.testing.assert_allclose(feats[1], feats[0], atol=1e-4)
    quantized, _ = sf.read(str(tmp_path / "a.wav"), dtype="float32")
    window = quantized[int(0.5 * sr) : int(3.5 * sr)]
    np.testing.assert_allclose(feats[0], preset.extract_batch([(window, sr)])[0], atol=1e-4)
    # Nothing inside the window: silence, standardised to 0, at the level row's floor.
    np.testing.assert_array_equal(feats[2, 0, 1:], 0.0)
    assert (feats[2, 0, 0] < -10).all()


# -- network -------------------------------------------------------------------


def test_architecture_registered():
    arch = get_architecture("ser-cnn2d-v1")
    assert arch.preset == "mfcc40-norm"
    assert arch.classes == SEED_CLASSES
    assert {"seed-cnn-v1", "ser-cnn2d-v1"} <= set(ARCHITECTURES)
    assert get_architecture("seed-cnn-v1").preset == "seed"


def test_parameter_count():
    assert count_parameters(build_model("ser-cnn2d-v1")) == 164564
    assert count_parameters(SerCnn2d()) == 164564


def test_state_is_parameters_only():
    # No BatchNorm buffers: everything FedAvg averages is a float32 parameter.
    model = build_model("ser-cnn2d-v1", seed=0)
    state = model.state_dict()
    assert set(state) == {name for name, _ in model.named_parameters()}
    assert all(t.dtype == torch.float32 for t in state.values())


@pytest.mark.parametrize("batch", [1, 3])
def test_output_shape_on_preset_features(preset, batch):
    model = build_model("ser-cnn2d-v1", seed=0).eval()
    feats = preset.extract_batch([(_speechy(48000, 3.0, seed=s), 48000) for s in range(batch)])
    with torch.no_grad():
        out = model(torch.from_numpy(feats))
    assert out.shape == (batch, len(SEED_CLASSES))
    assert torch.isfinite(out).all()
    with torch.no_grad():  # statistics pooling: other lengths work too
        assert model(torch.randn(2, 1, 40, 97)).shape == (2, 4)


def test_seeded_build_is_reproducible():
    a = build_model("ser-cnn2d-v1", seed=42).state_dict()
    b = build_model("ser-cnn2d-v1", seed=42).state_dict()
    c = build_model("ser-cnn2d-v1", seed=43).state_dict()
    assert list(a) == list(b) == list(c)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert not torch.equal(a["features.0.weight"], c["features.0.weight"])
    assert not torch.equal(a["classifier.weight"], c["classifier.weight"])


def test_weights_round_trip_through_safetensors():
    from model.serialization import arrays_to_bytes, bytes_to_arrays, load_arrays_into, module_to_arrays

    src = build_model("ser-cnn2d-v1", seed=1)
    dst = build_model("ser-cnn2d-v1", seed=2)
    load_arrays_into(dst, bytes_to_arrays(arrays_to_bytes(module_to_arrays(src))))
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        assert torch.equal(src.eval()(x), dst.eval()(x))
