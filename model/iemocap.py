r"""IEMOCAP reader: the ``Session1..Session5`` release tree -> (path, label, speaker).

Utterance audio is ``SessionN/sentences/wav/<dialog>/<utterance>.wav``; its
label is on the utterance's line of ``SessionN/dialog/EmoEvaluation/<dialog>.txt``::

    [6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]

The field's usual four classes are neutral, happy (``hap`` merged with
``exc``), sad and angry. The other codes map to canonical names too (``sur``
surprised, ``fea`` fearful, ``dis`` disgust, ``fru`` frustrated, ``oth``
other), so they are skipped as other labels unless asked for; ``xxx`` (no
majority among the annotators) is always skipped.

The speaker is the session plus the sex letter of the utterance's own speaker
(the first character of the last underscore field): ``Ses01F_impro01_M003`` was
spoken by ``Ses01M``, whichever actor leads the dialog.

Labels are read from every ``dialog/EmoEvaluation/*.txt`` under the root
(not the per-annotator ``Categorical``/``Attribute`` sub-folders), so the root
may be the release folder, one ``SessionN`` folder or a folder above them.
Only ``.wav`` files are counted: the release's transcripts, motion capture,
video and label files are part of the layout, not unrecognised files. A
``.wav`` that is not a labelled utterance (dialog-level recordings, an
utterance missing from the label files) counts as unrecognised.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from model.ravdess import SEED_CLASSES, ScanResult, Utterance

CODES: dict[str, str] = {
    "neu": "neutral",
    "hap": "happy",
    "exc": "happy",  # excited is merged into happy, as in most IEMOCAP SER work
    "sad": "sad",
    "ang": "angry",
    "sur": "surprised",
    "fea": "fearful",
    "dis": "disgust",
    "fru": "frustrated",
    "oth": "other",
}
NO_AGREEMENT = "xxx"
LABELS: tuple[str, ...] = tuple(dict.fromkeys(CODES.values()))

_UTTERANCE = re.compile(r"^(Ses\d\d)([FM])_(\w+)_([FM])(\d{3})$")
_LINE = re.compile(r"^\[\s*[\d.]+\s*-\s*[\d.]+\s*\]\s+(\S+)\s+(\S+)\s+\[")
LABEL_GLOB = "dialog/EmoEvaluation/*.txt"


class IemocapNameError(ValueError):
    """A name is not an IEMOCAP utterance id."""


@dataclass(frozen=True)
class IemocapInfo:
    session: str
    dialog: str
    speaker: str


def parse_utterance(name: str | Path) -> IemocapInfo:
    """Parse an utterance id or its file name: ``Ses01F_impro01_M003`` -> session Ses01, speaker Ses01M."""
    stem = Path(name).stem if str(name).lower().endswith(".wav") else Path(name).name
    m = _UTTERANCE.match(stem)
    if m is None:
        raise IemocapNameError(f"{stem}: not an IEMOCAP utterance id (expected SesNN[FM]_<dialog>_[FM]NNN)")
    session, lead, middle, sex, _ = m.groups()
    return IemocapInfo(session=session, dialog=f"{session}{lead}_{middle}", speaker=f"{session}{sex}")


def read_labels(root: Path) -> dict[str, str]:
    """Utterance id -> raw code (``neu``, ``exc``, ``xxx``, ...) from ``dialog/EmoEvaluation/*.txt`` files.

    ``root`` may be the release folder holding ``Session1..Session5``, one session
    folder, or a folder above them.
    """
    labels: dict[str, str] = {}
    for txt in sorted(Path(root).rglob(LABEL_GLOB)):
        if txt.name.startswith(".") or not txt.is_file():
            continue
        with open(txt, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                m = _LINE.match(line.strip())
                if m:
                    labels[m.group(1)] = m.group(2).lower()
    return labels


def scan(root: Path, classes: Iterable[str] | None = SEED_CLASSES) -> ScanResult:
    """The labelled utterances under ``root`` whose class is in ``classes`` (None: every class)."""
    wanted = set(LABELS if classes is None else classes)
    labels = read_labels(root)
    result = ScanResult(utterances=[])
    for path in sorted(Path(root).rglob("*")):
        if path.name.startswith(".") or path.suffix.lower() != ".wav" or not path.is_file():
            continue
        code = labels.get(path.stem)
        try:
            info = parse_utterance(path.name)
        except IemocapNameError:
            code = None
        if code is None:
            result.unrecognised += 1
        elif code == NO_AGREEMENT or CODES.get(code) not in wanted:
            result.skipped_other_label += 1
        else:
            result.utterances.append(Utterance(path=path, label=CODES[code], speaker=info.speaker))
    return result
