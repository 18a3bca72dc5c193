"""Tests for the "seed" feature preset (model/features.py) and the network registry (model/network.py).

Waveforms are synthetic (sines and seeded noise) and WAV files are written to
tmp_path with soundfile, so nothing depends on the RAVDESS corpus.
"""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from model.features import PRESETS, SeedMfccMean, get_preset
from model.network import (
    ARCHITECTURES,
    DEFAULT_ARCHITECTURE,
    SeedCNN,
    UnknownArchitectureError,
    build_model,
    count_parameters,
    get_architecture,
)


def _sine(sr: int, seconds: float, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _noise(sr: int, seconds: float, amp: float = 0.1, seed: int = 0) -> np.ndarray:
    return (amp * np.random.default_rng(seed).standard_normal(int(sr * seconds))).astype(np.float32)


@pytest.fixture(scope="module")
def preset() -> SeedMfccMean:
    return get_preset("seed")


# -- features ----------------------------------------------------------------


def test_seed_preset_settings(preset):
    assert isinstance(preset, SeedMfccMean)
    assert preset.name == "seed"
    assert preset.sample_rate == 22050
    assert preset.num_samples == 49612  # round(2.25 * 22050)
    assert preset.input_shape == (1, 97)  # 1 + 49612 // 512


def test_get_preset_returns_fresh_instances():
    assert get_preset("seed") is not get_preset("seed")


def test_unknown_preset_lists_known_ones():
    with pytest.raises(KeyError) as excinfo:
        get_preset("mel-80")
    message = excinfo.value.args[0]
    assert message == "unknown feature preset 'mel-80'; known: mfcc40-norm, seed"
    assert sorted(PRESETS) == ["mfcc40-norm", "seed"]


@pytest.mark.parametrize("sr", [48000, 44100, 22050, 16000])
def test_extract_batch_shapes_at_common_rates(preset, sr):
    waves = [(_sine(sr, 3.0), sr), (_noise(sr, 3.0), sr), (_sine(sr, 2.25, freq=220.0) + _noise(sr, 2.25, 0.01), sr)]
    feats = preset.extract_batch(waves)
    assert feats.dtype == np.float32
    assert feats.shape == (3, 1, 97)
    assert np.isfinite(feats).all()
    # Different signals give different feature series.
    assert not np.allclose(feats[0], feats[1])


def test_extract_batch_same_signal_same_features_across_rates(preset):
    # A 440 Hz sine at 48 kHz and at 22.05 kHz is the same sound: after
    # resampling, the features agree closely (not bit-exactly).
    a = preset.extract_batch([(_sine(48000, 3.0), 48000)])
    b = preset.extract_batch([(_sine(22050, 3.0), 22050)])
    assert np.max(np.abs(a - b)) < 0.1


def test_extract_batch_empty(preset):
    feats = preset.extract_batch([])
    assert feats.shape == (0, 1, 97)
    assert feats.dtype == np.float32


def test_short_waveform_is_padded(preset):
    short = _sine(22050, 0.3)  # far shorter than the 2.25 s window
    feats = preset.extract_batch([(short, 22050)])
    assert feats.shape == (1, 1, 97)
    assert np.isfinite(feats).all()
    # Explicit zero padding gives exactly the same features.
    padded = np.zeros(preset.num_samples, np.float32)
    padded[: short.size] = short
    np.testing.assert_array_equal(preset.extract_batch([(padded, 22050)]), feats)
    # The padded tail is silence: its frames sit at the dB floor and differ from the sound.
    assert feats[0, 0, 5] != feats[0, 0, 90]


def test_longer_waveform_is_cut_to_window(preset):
    long = _noise(22050, 4.0, seed=3)
    np.testing.assert_array_equal(
        preset.extract_batch([(long, 22050)]),
        preset.extract_batch([(long[: preset.num_samples], 22050)]),
    )


def test_louder_signal_has_larger_mean_feature(preset):
    quiet = preset.extract_batch([(_noise(22050, 3.0, amp=0.001, seed=1), 22050)])
    loud = preset.extract_batch([(_noise(22050, 3.0, amp=0.5, seed=1), 22050)])
    assert loud.mean() > quiet.mean() + 5.0
    assert not np.allclose(loud, quiet)


def test_features_do_not_depend_on_batch_companions(preset):
    quiet = _sine(48000, 3.0, amp=1e-4)
    loud = _sine(48000, 3.0, amp=0.9)
    alone = preset.extract_batch([(quiet, 48000)])
    together = preset.extract_batch([(quiet, 48000), (loud, 48000)])
    np.testing.assert_allclose(together[0], alone[0], atol=1e-4)


def _write_wav(path, data: np.ndarray, sr: int = 48000) -> None:
    sf.write(str(path), data, sr, subtype="PCM_16")


def test_extract_files_reads_mono_and_stereo_wav(preset, tmp_path):
    sr = 48000
    mono = _sine(sr, 3.0, freq=330.0, amp=0.4) + _noise(sr, 3.0, amp=0.02, seed=5)
    _write_wav(tmp_path / "mono.wav", mono, sr)
    _write_wav(tmp_path / "stereo.wav", np.stack([mono, mono], axis=1), sr)
    info = sf.info(str(tmp_path / "stereo.wav"))
    assert (info.channels, info.samplerate, info.subtype) == (2, 48000, "PCM_16")

    feats = preset.extract_files([tmp_path / "mono.wav", tmp_path / "stereo.wav"])
    assert feats.dtype == np.float32
    assert feats.shape == (2, 1, 97)
    assert np.isfinite(feats).all()
    # Both channels equal: the stereo file mixes down to the mono signal.
    np.testing.assert_allclose(feats[1], feats[0], atol=1e-4)
    # The file path reads the 0.5 s .. 2.75 s window of the (16-bit quantized) signal.
    quantized, _ = sf.read(str(tmp_path / "mono.wav"), dtype="float32")
    window = quantized[int(0.5 * sr) : int(2.75 * sr)]
    np.testing.assert_allclose(feats[0], preset.extract_batch([(window, sr)])[0], atol=1e-4)


def test_extract_files_short_file_is_padded(preset, tmp_path):
    _write_wav(tmp_path / "short.wav", _sine(48000, 1.0), 48000)
    feats = preset.extract_files([tmp_path / "short.wav"])
    assert feats.shape == (1, 1, 97)
    assert np.isfinite(feats).all()


# -- network -----------------------------------------------------------------


def test_seed_cnn_parameter_count():
    assert count_parameters(build_model("seed-cnn-v1")) == 333700
    assert count_parameters(SeedCNN()) == 333700


def test_count_parameters_ignores_frozen():
    model = SeedCNN()
    model.classifier.weight.requires_grad_(False)
    assert count_parameters(model) == 333700 - 4 * 1024


def test_registry():
    assert DEFAULT_ARCHITECTURE == "seed-cnn-v1"
    arch = get_architecture("seed-cnn-v1")
    assert arch.preset == "seed"
    assert arch.classes == ("neutral", "happy", "sad", "angry")
    assert set(ARCHITECTURES) == {"seed-cnn-v1", "ser-cnn2d-v1"}


@pytest.mark.parametrize("batch", [1, 5])
def test_output_shape(batch):
    model = build_model("seed-cnn-v1", seed=0).eval()
    with torch.no_grad():
        out = model(torch.randn(batch, 1, 97))
    assert out.shape == (batch, 4)
    assert torch.isfinite(out).all()


def test_input_shape_matches_preset():
    preset = get_preset(get_architecture("seed-cnn-v1").preset)
    model = build_model("seed-cnn-v1", seed=0).eval()
    with torch.no_grad():
        out = model(torch.from_numpy(preset.extract_batch([(_sine(22050, 2.25), 22050)])))
    assert out.shape == (1, 4)


def test_same_seed_same_weights_different_seed_different_weights():
    a = build_model("seed-cnn-v1", seed=42).state_dict()
    b = build_model("seed-cnn-v1", seed=42).state_dict()
    c = build_model("seed-cnn-v1", seed=43).state_dict()
    assert list(a) == list(b) == list(c)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert not torch.equal(a["features.0.weight"], c["features.0.weight"])
    assert not torch.equal(a["classifier.weight"], c["classifier.weight"])


def test_seeded_build_does_not_touch_global_rng():
    torch.manual_seed(1234)
    expected = torch.rand(5)
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    build_model("seed-cnn-v1", seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(torch.rand(5), expected)


def test_unseeded_build_uses_global_rng():
    torch.manual_seed(99)
    a = build_model("seed-cnn-v1").state_dict()["classifier.weight"]
    torch.manual_seed(99)
    b = build_model("seed-cnn-v1").state_dict()["classifier.weight"]
    assert torch.equal(a, b)


def test_unknown_architecture():
    with pytest.raises(UnknownArchitectureError) as excinfo:
        build_model("resnet-9000", seed=1)
    assert excinfo.value.args[0] == "unknown architecture 'resnet-9000'; known: seed-cnn-v1, ser-cnn2d-v1"
    assert isinstance(excinfo.value, KeyError)
    with pytest.raises(UnknownArchitectureError):
        get_architecture("")


def test_local_training_is_repeatable_with_the_same_seed() -> None:
    """Batch order and dropout masks both follow the seed."""
    from edge_client.training import train_local
    from model.plan import TrainingPlan

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 1, 97)).astype(np.float32)
    y = rng.integers(0, 4, size=40)
    results = []
    for seed in (3, 3, 4):
        model = build_model("seed-cnn-v1", seed=0)
        train_local(model, x, y, TrainingPlan(1, 8, 1e-3), torch.device("cpu"), seed=seed)
        results.append(model.classifier.weight.detach().clone())
    assert torch.equal(results[0], results[1])
    assert not torch.equal(results[0], results[2])


def _reference_fedprox(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, plan, seed: int) -> None:
    """FedProx as the paper writes it: the proximal term in the loss, differentiated by autograd."""
    anchor = [p.detach().clone() for p in model.parameters()]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=plan.learning_rate)
        gen = torch.Generator().manual_seed(seed)
        xs, ys = torch.from_numpy(x), torch.from_numpy(y)
        for _ in range(plan.local_epochs):
            order = torch.randperm(len(xs), generator=gen)
            for start in range(0, len(xs), plan.batch_size):
                idx = order[start : start + plan.batch_size]
                opt.zero_grad(set_to_none=True)
                loss = torch.nn.functional.cross_entropy(model(xs[idx]), ys[idx])
                prox = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor))
                (loss + 0.5 * plan.proximal_mu * prox).backward()
                opt.step()


def test_fedprox_local_training_matches_the_proximal_loss_and_stays_nearer_the_global_model() -> None:
    from edge_client.training import train_local
    from model.plan import TrainingPlan

    rng = np.random.default_rng(1)
    x = rng.normal(size=(48, 1, 97)).astype(np.float32)
    y = rng.integers(0, 4, size=48)
    start = torch.cat([p.detach().flatten() for p in build_model("seed-cnn-v1", seed=0).parameters()])

    def trained(mu: float) -> torch.Tensor:
        model = build_model("seed-cnn-v1", seed=0)
        train_local(model, x, y, TrainingPlan(3, 8, 1e-3, proximal_mu=mu), torch.device("cpu"), seed=5)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    reference = build_model("seed-cnn-v1", seed=0)
    _reference_fedprox(reference, x, y, TrainingPlan(3, 8, 1e-3, proximal_mu=0.5), seed=5)
    expected = torch.cat([p.detach().flatten() for p in reference.parameters()])
    got = trained(0.5)
    assert torch.allclose(got, expected, rtol=0, atol=2e-5), float((got - expected).abs().max())
    # The larger mu, the shorter the step away from the pulled global model.
    distances = [float((trained(mu) - start).norm()) for mu in (0.0, 0.5, 50.0)]
    assert distances[0] > distances[1] > distances[2] > 0


def test_a_negative_or_infinite_proximal_mu_is_refused() -> None:
    from model.plan import TrainingPlan

    for bad in (-0.1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="proximal_mu must be a finite number >= 0"):
            TrainingPlan(proximal_mu=bad)
