"""TESS (Toronto emotional speech set) reader: ``OAF_back_angry.wav`` -> (path, label, speaker).

Names are ``<speaker>_<word>_<emotion>.wav``: speaker OAF (older) or YAF
(younger actress), the target word, and the emotion as the last underscore
field. Real releases are not uniform: folders are ``OAF_Fear``,
``YAF_pleasant_surprised`` and so on (folder names are ignored here), and
pleasant surprise is written ``ps`` in most files but ``pleasant_surprise`` /
``pleasant_surprised`` in some; case varies too. Only the file name is parsed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from model.ravdess import SEED_CLASSES, ScanResult, scan_names

EMOTIONS: dict[str, str] = {
    "angry": "angry",
    "disgust": "disgust",
    "fear": "fearful",
    "happy": "happy",
    "neutral": "neutral",
    "ps": "surprised",  # pleasant surprise
    "sad": "sad",
}
LABELS: tuple[str, ...] = tuple(dict.fromkeys(EMOTIONS.values()))
SPEAKERS: tuple[str, ...] = ("OAF", "YAF")

# speaker _ word _ emotion, where the emotion may itself be "pleasant_surprise(d)".
_NAME = re.compile(r"^([A-Za-z]{3})_([A-Za-z]+)_(pleasant_surprised?|[A-Za-z]+)\.wav$", re.IGNORECASE)


class TessNameError(ValueError):
    """A file name does not follow the TESS naming rule."""


@dataclass(frozen=True)
class TessInfo:
    speaker: str
    word: str
    emotion: str


def parse_name(name: str | Path) -> TessInfo:
    """Parse a TESS file name (bare name or path)."""
    base = Path(name).name
    m = _NAME.match(base)
    if m is None:
        raise TessNameError(f"{base}: not a TESS name (expected OAF|YAF_<word>_<emotion>.wav)")
    speaker, word, emotion = m.group(1).upper(), m.group(2).lower(), m.group(3).lower()
    if speaker not in SPEAKERS:
        raise TessNameError(f"{base}: unknown speaker {speaker!r} (TESS has OAF and YAF)")
    if emotion.startswith("pleasant_surprise"):
        emotion = "ps"
    if emotion not in EMOTIONS:
        raise TessNameError(f"{base}: unknown emotion {emotion!r}")
    return TessInfo(speaker=speaker, word=word, emotion=EMOTIONS[emotion])


def _label_and_speaker(name: str) -> tuple[str, str]:
    info = parse_name(name)
    return info.emotion, info.speaker


def scan(root: Path, classes: Iterable[str] | None = SEED_CLASSES) -> ScanResult:
    """The TESS files under ``root`` whose emotion is in ``classes`` (None: every emotion)."""
    return scan_names(root, _label_and_speaker, TessNameError, set(LABELS if classes is None else classes))
