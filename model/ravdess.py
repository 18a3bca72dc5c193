"""RAVDESS reader: turn a file name into labels and speaker, and scan a folder of such files.

Names are seven two-digit fields, e.g. ``03-01-05-02-01-01-12.wav``:
modality, vocal channel, emotion, intensity, statement, repetition, actor.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection

EMOTIONS: dict[str, str] = {
    "01": "neutral",
    "02": "calm",  # NOT happy: the seed notebook's bug was mapping 02 to 'happy'
    "03": "happy",
    "04": "sad",
    "05": "angry",
    "06": "fearful",
    "07": "disgust",
    "08": "surprised",
}
MODALITIES = {"01": "audio-video", "02": "video-only", "03": "audio-only"}
VOCAL_CHANNELS = {"01": "speech", "02": "song"}
INTENSITIES = {"01": "normal", "02": "strong"}
STATEMENTS = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}

# The seed paper's four classes, in the order of the model's output units.
SEED_CLASSES: tuple[str, ...] = ("neutral", "happy", "sad", "angry")

_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)\.wav$", re.IGNORECASE)


class RavdessNameError(ValueError):
    """A file name does not follow the RAVDESS naming rule."""


@dataclass(frozen=True)
class RavdessInfo:
    """Everything a RAVDESS file name says about its recording."""

    modality: str
    vocal_channel: str
    emotion: str
    intensity: str
    statement: str
    repetition: int
    actor: int

    @property
    def sex(self) -> str:
        """RAVDESS actors with odd numbers are male, even numbers female."""
        return "male" if self.actor % 2 == 1 else "female"

    @property
    def speaker(self) -> str:
        return f"actor{self.actor:02d}"


@dataclass(frozen=True)
class Utterance:
    """One labelled recording: where it is, its class, and who spoke it."""

    path: Path
    label: str
    speaker: str


@dataclass
class ScanResult:
    """What a folder scan found: the usable utterances and why other files were skipped."""

    utterances: list[Utterance]
    skipped_other_label: int = 0
    skipped_not_speech: int = 0
    unrecognised: int = 0


def _field(table: dict[str, str], code: str, what: str, name: str) -> str:
    try:
        return table[code]
    except KeyError:
        raise RavdessNameError(f"{name}: unknown {what} code {code!r}") from None


def parse_name(name: str) -> RavdessInfo:
    """Parse a RAVDESS file name (a bare name or a path) into its fields."""
    base = Path(name).name
    m = _NAME.match(base)
    if m is None:
        raise RavdessNameError(f"{base}: not a RAVDESS name (expected NN-NN-NN-NN-NN-NN-NN.wav)")
    mod, chan, emo, inten, stmt, rep, actor = m.groups()
    repetition, actor_n = int(rep), int(actor)
    if repetition not in (1, 2):
        raise RavdessNameError(f"{base}: repetition must be 01 or 02, got {rep}")
    if not 1 <= actor_n <= 99:
        raise RavdessNameError(f"{base}: actor must be 01..99, got {actor}")
    info = RavdessInfo(
        modality=_field(MODALITIES, mod, "modality", base),
        vocal_channel=_field(VOCAL_CHANNELS, chan, "vocal channel", base),
        emotion=_field(EMOTIONS, emo, "emotion", base),
        intensity=_field(INTENSITIES, inten, "intensity", base),
        statement=_field(STATEMENTS, stmt, "statement", base),
        repetition=repetition,
        actor=actor_n,
    )
    if info.emotion == "neutral" and info.intensity == "strong":
        raise RavdessNameError(f"{base}: RAVDESS has no strong intensity for neutral")
    return info


def scan_names(
    root: Path, parse: Callable[[str], tuple[str, str]], bad_name: type[Exception], wanted: Collection[str]
) -> ScanResult:
    """Files under ``root`` whose names ``parse`` into (label, speaker) with a wanted label; others counted.

    Shared by the readers of corpora whose file names carry everything (CREMA-D, TESS, EmoDB).
    """
    result = ScanResult(utterances=[])
    for path in sorted(Path(root).rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        try:
            label, speaker = parse(path.name)
        except bad_name:
            result.unrecognised += 1
            continue
        if label not in wanted:
            result.skipped_other_label += 1
        else:
            result.utterances.append(Utterance(path=path, label=label, speaker=speaker))
    return result


def scan(root: Path, classes: tuple[str, ...] = SEED_CLASSES) -> ScanResult:
    """Find the speech files under ``root`` whose emotion is in ``classes``."""
    result = ScanResult(utterances=[])
    for path in sorted(Path(root).rglob("*")):
        if not path.is_file() or path.name.startswith("."):
            continue
        try:
            info = parse_name(path.name)
        except RavdessNameError:
            result.unrecognised += 1
            continue
        if info.vocal_channel != "speech" or info.modality == "video-only":
            result.skipped_not_speech += 1
        elif info.emotion not in classes:
            result.skipped_other_label += 1
        else:
            result.utterances.append(Utterance(path=path, label=info.emotion, speaker=info.speaker))
    return result
