"""CSV manifest reader, for any corpus without its own reader.

``manifest.csv`` at the folder root, with a header row naming (at least) the
columns ``path``, ``label`` and ``speaker``::

    path,label,speaker
    clips/a001.wav,happy,spk01
    /mnt/audio/b.wav,Angry,spk02

Relative paths are relative to the folder holding the manifest; absolute paths
are used as they are. Labels are compared case-free after trimming, and a few
common spellings map to the canonical names (``anger`` -> ``angry``, ``fear``
-> ``fearful``, ``happiness`` -> ``happy``, ...). Rows whose file does not
exist are reported in ``ManifestScanResult.missing``; malformed rows (empty
path, label or speaker, a path listed twice) are counted as unrecognised and
described in ``ManifestScanResult.invalid``.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from model.ravdess import SEED_CLASSES, ScanResult, Utterance

MANIFEST_NAME = "manifest.csv"
COLUMNS: tuple[str, ...] = ("path", "label", "speaker")

# Common spellings of the canonical label names used by fedser's readers.
ALIASES: dict[str, str] = {
    "neu": "neutral",
    "hap": "happy", "happiness": "happy", "joy": "happy",
    "sadness": "sad",
    "ang": "angry", "anger": "angry",
    "fear": "fearful", "fea": "fearful",
    "disgusted": "disgust", "dis": "disgust",
    "surprise": "surprised", "sur": "surprised", "ps": "surprised",
    "bored": "boredom",
}


class ManifestError(ValueError):
    """The manifest cannot be read at all (missing, not UTF-8, no header with the needed columns)."""


@dataclass
class ManifestScanResult(ScanResult):
    """A ScanResult plus the manifest's own problems, for reporting."""

    missing: list[str] = field(default_factory=list)  # "line N: PATH" of rows whose file does not exist
    invalid: list[str] = field(default_factory=list)  # "line N: why" of malformed rows (counted in unrecognised)


def canonical_label(label: str) -> str:
    """Trim, lower-case and map common spellings to the canonical names."""
    key = label.strip().lower()
    return ALIASES.get(key, key)


def scan(root: Path, classes: Iterable[str] | None = SEED_CLASSES) -> ManifestScanResult:
    """The rows of ``root/manifest.csv`` whose file exists and whose label is in ``classes`` (None: all)."""
    root = Path(root)
    wanted = None if classes is None else set(classes)
    manifest = root / MANIFEST_NAME
    result = ManifestScanResult(utterances=[])
    try:
        with open(manifest, encoding="utf-8-sig", newline="") as fh:
            rows = list(csv.reader(fh))
    except FileNotFoundError:
        raise ManifestError(f"{root}: no {MANIFEST_NAME}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ManifestError(f"{manifest}: cannot read ({exc})") from None
    if not rows:
        raise ManifestError(f"{manifest}: empty; expected a header row {','.join(COLUMNS)}")
    header = [h.strip().lower() for h in rows[0]]
    absent = [c for c in COLUMNS if c not in header]
    if absent:
        raise ManifestError(
            f"{manifest}: header must name the columns {','.join(COLUMNS)}; missing {', '.join(absent)}"
        )
    col = {c: header.index(c) for c in COLUMNS}
    seen: set[Path] = set()
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        values = {c: (row[i].strip() if i < len(row) else "") for c, i in col.items()}
        empty = [c for c in COLUMNS if not values[c]]
        if empty:
            result.unrecognised += 1
            result.invalid.append(f"line {line}: empty {', '.join(empty)}")
            continue
        path = Path(values["path"])
        if not path.is_absolute():
            path = root / path
        if path in seen:
            result.unrecognised += 1
            result.invalid.append(f"line {line}: {values['path']} listed twice")
            continue
        seen.add(path)
        if not path.is_file():
            result.missing.append(f"line {line}: {values['path']}")
            continue
        label = canonical_label(values["label"])
        if wanted is not None and label not in wanted:
            result.skipped_other_label += 1
        else:
            result.utterances.append(Utterance(path=path, label=label, speaker=values["speaker"]))
    return result
