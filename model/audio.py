"""Audio file reading with soundfile: mono float32 samples plus their sample rate."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf


class AudioReadError(Exception):
    """A file could not be read as audio."""


def read_audio(path: Path, start_s: float = 0.0, duration_s: float | None = None) -> tuple[np.ndarray, int]:
    """Read ``path`` as mono float32 in [-1, 1], optionally only a window of it.

    Reading just the window keeps feature extraction from decoding whole files.
    """
    try:
        info = sf.info(str(path))
        start = min(int(round(start_s * info.samplerate)), info.frames)
        stop = None if duration_s is None else min(start + int(round(duration_s * info.samplerate)), info.frames)
        data, sr = sf.read(str(path), start=start, stop=stop, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as exc:
        raise AudioReadError(f"{Path(path).name}: cannot read audio ({exc})") from exc
    return data.mean(axis=1), int(sr)
