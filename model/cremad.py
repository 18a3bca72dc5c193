"""CREMA-D reader: ``1001_DFA_ANG_XX.wav`` -> (path, label, speaker).

Names are four underscore fields: actor id (1001-1091, the speaker), sentence
code (one of the 12 CREMA-D sentences), emotion (ANG, DIS, FEA, HAP, NEU, SAD)
and intensity level (LO, MD, HI, or XX for unspecified).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from model.ravdess import SEED_CLASSES, ScanResult, scan_names

EMOTIONS: dict[str, str] = {
    "ANG": "angry",
    "DIS": "disgust",
    "FEA": "fearful",
    "HAP": "happy",
    "NEU": "neutral",
    "SAD": "sad",
}
LABELS: tuple[str, ...] = tuple(EMOTIONS.values())
SENTENCES: dict[str, str] = {
    "IEO": "It's eleven o'clock",
    "TIE": "That is exactly what happened",
    "IOM": "I'm on my way to the meeting",
    "IWW": "I wonder what this is about",
    "TAI": "The airplane is almost full",
    "MTI": "Maybe tomorrow it will be cold",
    "IWL": "I would like a new alarm clock",
    "ITH": "I think I have a doctor's appointment",
    "DFA": "Don't forget a jacket",
    "ITS": "I think I've seen this before",
    "TSI": "The surface is slick",
    "WSI": "We'll stop in a couple of minutes",
}
LEVELS: dict[str, str] = {"LO": "low", "MD": "medium", "HI": "high", "XX": "unspecified"}
FIRST_ACTOR, LAST_ACTOR = 1001, 1091

_NAME = re.compile(r"^(\d{4})_([A-Za-z]{3})_([A-Za-z]{3})_([A-Za-z]{2})\.wav$", re.IGNORECASE)


class CremadNameError(ValueError):
    """A file name does not follow the CREMA-D naming rule."""


@dataclass(frozen=True)
class CremadInfo:
    actor: int
    sentence: str
    emotion: str
    level: str

    @property
    def speaker(self) -> str:
        return str(self.actor)


def parse_name(name: str | Path) -> CremadInfo:
    """Parse a CREMA-D file name (bare name or path)."""
    base = Path(name).name
    m = _NAME.match(base)
    if m is None:
        raise CremadNameError(f"{base}: not a CREMA-D name (expected NNNN_SSS_EEE_LL.wav)")
    actor, sentence, emotion, level = m.group(1), m.group(2).upper(), m.group(3).upper(), m.group(4).upper()
    if not FIRST_ACTOR <= int(actor) <= LAST_ACTOR:
        raise CremadNameError(f"{base}: actor must be {FIRST_ACTOR}..{LAST_ACTOR}, got {actor}")
    if sentence not in SENTENCES:
        raise CremadNameError(f"{base}: unknown sentence code {sentence!r}")
    if emotion not in EMOTIONS:
        raise CremadNameError(f"{base}: unknown emotion code {emotion!r}")
    if level not in LEVELS:
        raise CremadNameError(f"{base}: unknown level {level!r}")
    return CremadInfo(actor=int(actor), sentence=sentence, emotion=EMOTIONS[emotion], level=LEVELS[level])


def _label_and_speaker(name: str) -> tuple[str, str]:
    info = parse_name(name)
    return info.emotion, info.speaker


def scan(root: Path, classes: Iterable[str] | None = SEED_CLASSES) -> ScanResult:
    """The CREMA-D files under ``root`` whose emotion is in ``classes`` (None: every emotion)."""
    return scan_names(root, _label_and_speaker, CremadNameError, set(LABELS if classes is None else classes))
