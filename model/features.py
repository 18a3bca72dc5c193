"""Feature presets: waveform -> fixed-shape model input, computed with torchaudio.

A preset owns every choice that changes the numbers (sample rate, window,
transform), so its name is enough to say which features a model expects.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch
import torchaudio.functional as AF
import torchaudio.transforms as T

from model.audio import read_audio


class FeaturePreset(Protocol):
    """What a feature preset offers to readers, trainers and the aggregator."""

    name: str

    @property
    def input_shape(self) -> tuple[int, ...]: ...

    def extract_batch(self, waves: Sequence[tuple[np.ndarray, int]]) -> np.ndarray: ...

    def extract_files(self, paths: Sequence[Path]) -> np.ndarray: ...


@dataclass
class SeedMfccMean:
    """The seed's features: 40 MFCCs of a 2.25 s window at 22,050 Hz, averaged over coefficients.

    Matches librosa's defaults (n_fft 2048, hop 512, 128 Slaney mels, dB with
    top_db 80, orthonormal DCT-II) so the series has the seed's 97 steps.
    """

    name: str = "seed"
    sample_rate: int = 22050
    offset_s: float = 0.5
    duration_s: float = 2.25
    n_mfcc: int = 40
    n_fft: int = 2048
    hop_length: int = 512
    n_mels: int = 128
    _mfcc: T.MFCC = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._mfcc = T.MFCC(
            sample_rate=self.sample_rate,
            n_mfcc=self.n_mfcc,
            norm="ortho",
            log_mels=False,
            melkwargs={
                "n_fft": self.n_fft,
                "hop_length": self.hop_length,
                "n_mels": self.n_mels,
                "mel_scale": "slaney",
                "norm": "slaney",
                "center": True,
                "pad_mode": "constant",
            },
        )

    @property
    def num_samples(self) -> int:
        return int(round(self.duration_s * self.sample_rate))

    @property
    def input_shape(self) -> tuple[int, ...]:
        # One channel, 1 + num_samples // hop frames (centre-padded STFT).
        return (1, 1 + self.num_samples // self.hop_length)

    def _fit(self, wave: np.ndarray, sr: int) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
        if sr != self.sample_rate:
            x = AF.resample(x, sr, self.sample_rate)
        n = self.num_samples
        if x.numel() >= n:
            return x[:n]
        return torch.nn.functional.pad(x, (0, n - x.numel()))

    def extract_batch(self, waves: Sequence[tuple[np.ndarray, int]]) -> np.ndarray:
        """Features for already-windowed mono waveforms, as float32 [N, 1, 97]."""
        if not waves:
            return np.zeros((0, *self.input_shape), dtype=np.float32)
        # [N, 1, samples]: the extra axis makes torchaudio's top_db floor apply per
        # clip; on a [N, samples] batch it is shared, so quiet clips would depend on loud ones.
        batch = torch.stack([self._fit(w, sr) for w, sr in waves]).unsqueeze(1)
        with torch.inference_mode():
            mfcc = self._mfcc(batch)  # [N, 1, n_mfcc, frames]
        return mfcc.mean(dim=2).numpy().astype(np.float32)

    def extract_files(self, paths: Sequence[Path]) -> np.ndarray:
        """Read each file's window with soundfile and extract its features in one batch."""
        waves = [read_audio(p, self.offset_s, self.duration_s) for p in paths]
        return self.extract_batch(waves)


PRESETS: dict[str, type] = {"seed": SeedMfccMean}


def get_preset(name: str) -> FeaturePreset:
    """A fresh preset instance by name; raises KeyError listing the known names."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise KeyError(f"unknown feature preset {name!r}; known: {', '.join(sorted(PRESETS))}") from None
