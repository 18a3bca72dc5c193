"""EmoDB (Berlin Database of Emotional Speech) reader: ``03a01Fa.wav`` -> (path, label, speaker).

Names are seven characters: speaker (2 digits: 03, 08, 09, 10, 11, 12, 13, 14,
15, 16), text code (``a01``..``b10``), emotion letter (German initial) and
version letter. The emotion letter is upper case and the version lower case,
so ``03a01Fa`` is happy (Freude), version a.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from model.ravdess import SEED_CLASSES, ScanResult, scan_names

EMOTIONS: dict[str, str] = {
    "W": "angry",    # Ärger (Wut)
    "L": "boredom",  # Langeweile
    "E": "disgust",  # Ekel
    "A": "fearful",  # Angst
    "F": "happy",    # Freude
    "T": "sad",      # Trauer
    "N": "neutral",
}
LABELS: tuple[str, ...] = tuple(EMOTIONS.values())
SPEAKERS: tuple[str, ...] = ("03", "08", "09", "10", "11", "12", "13", "14", "15", "16")
TEXTS: tuple[str, ...] = ("a01", "a02", "a04", "a05", "a07", "b01", "b02", "b03", "b09", "b10")

# Case matters in the stem (emotion upper, version lower); only the extension is case-free.
_NAME = re.compile(r"^(\d\d)([ab]\d\d)([A-Z])([a-z])\.(?i:wav)$")


class EmodbNameError(ValueError):
    """A file name does not follow the EmoDB naming rule."""


@dataclass(frozen=True)
class EmodbInfo:
    speaker: str
    text: str
    emotion: str
    version: str


def parse_name(name: str | Path) -> EmodbInfo:
    """Parse an EmoDB file name (bare name or path)."""
    base = Path(name).name
    m = _NAME.match(base)
    if m is None:
        raise EmodbNameError(f"{base}: not an EmoDB name (expected SSTTTEV.wav, e.g. 03a01Fa.wav)")
    speaker, text, emotion, version = m.groups()
    if speaker not in SPEAKERS:
        raise EmodbNameError(f"{base}: unknown speaker {speaker!r}")
    if text not in TEXTS:
        raise EmodbNameError(f"{base}: unknown text code {text!r}")
    if emotion not in EMOTIONS:
        raise EmodbNameError(f"{base}: unknown emotion letter {emotion!r}")
    return EmodbInfo(speaker=speaker, text=text, emotion=EMOTIONS[emotion], version=version)


def _label_and_speaker(name: str) -> tuple[str, str]:
    info = parse_name(name)
    return info.emotion, info.speaker


def scan(root: Path, classes: Iterable[str] | None = SEED_CLASSES) -> ScanResult:
    """The EmoDB files under ``root`` whose emotion is in ``classes`` (None: every emotion)."""
    return scan_names(root, _label_and_speaker, EmodbNameError, set(LABELS if classes is None else classes))
