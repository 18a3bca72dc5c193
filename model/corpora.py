"""Corpus readers by name, layout detection, and one entry point to scan a data folder.

Every reader turns a folder into labelled utterances ``(path, label, speaker)``
with canonical label names (``neutral``, ``happy``, ``sad``, ``angry``,
``calm``, ``fearful``, ``disgust``, ``surprised``, ``boredom``, ...), and
counts what it skipped in a :class:`~model.ravdess.ScanResult`. Feature
extraction is not their business.

========  ============================================================
name      layout
========  ============================================================
ravdess   ``Actor_12/03-01-05-02-01-01-12.wav`` (``model.ravdess``)
crema-d   ``1001_DFA_ANG_XX.wav`` (``model.cremad``)
tess      ``OAF_angry/OAF_back_angry.wav`` (``model.tess``)
emodb     ``03a01Fa.wav`` (``model.emodb``)
iemocap   ``SessionN/sentences/wav/<dialog>/<utt>.wav`` + ``SessionN/dialog/EmoEvaluation/<dialog>.txt``
manifest  ``manifest.csv`` with ``path,label,speaker`` (``model.manifest``)
========  ============================================================

Detection (``detect_layout``): a ``manifest.csv`` at the root wins (it is an
explicit choice); otherwise every reader scans the folder and the one that
recognises the most files wins (ties go to the earlier name above). A file is
recognised when its name (and, for IEMOCAP, its label line) fits the layout,
whatever its label, so a RAVDESS folder of only calm files is still RAVDESS.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable

from model import cremad, emodb, iemocap, manifest, ravdess, tess
from model.ravdess import ScanResult

AUTO = "auto"


@dataclass(frozen=True)
class Corpus:
    """A registered reader: its name, how its files look, the labels it can give, and its scan."""

    name: str
    title: str
    looks_for: str
    labels: tuple[str, ...] | None  # None: whatever the data says (manifest)
    scan: Callable[[Path, Iterable[str] | None], ScanResult]


def _scan_ravdess(root: Path, classes: Iterable[str] | None) -> ScanResult:
    return ravdess.scan(root, tuple(ravdess.EMOTIONS.values()) if classes is None else tuple(classes))


CORPORA: dict[str, Corpus] = {
    c.name: c
    for c in (
        Corpus("ravdess", "RAVDESS", "NN-NN-NN-NN-NN-NN-NN.wav, e.g. 03-01-05-01-01-01-12.wav",
               tuple(dict.fromkeys(ravdess.EMOTIONS.values())), _scan_ravdess),
        Corpus("crema-d", "CREMA-D", "NNNN_SSS_EEE_LL.wav, e.g. 1001_DFA_ANG_XX.wav", cremad.LABELS, cremad.scan),
        Corpus("tess", "TESS", "OAF|YAF_<word>_<emotion>.wav, e.g. OAF_back_angry.wav", tess.LABELS, tess.scan),
        Corpus("emodb", "EmoDB", "SSTTTEV.wav, e.g. 03a01Fa.wav", emodb.LABELS, emodb.scan),
        Corpus("iemocap", "IEMOCAP",
               "SessionN/sentences/wav/<dialog>/<utterance>.wav labelled in SessionN/dialog/EmoEvaluation/<dialog>.txt",
               iemocap.LABELS, iemocap.scan),
        Corpus("manifest", "manifest", f"{manifest.MANIFEST_NAME} with a header row path,label,speaker",
               None, manifest.scan),
    )
}
DATASETS: tuple[str, ...] = tuple(CORPORA)


class LayoutError(ValueError):
    """A folder cannot be read as the asked (or any known) corpus layout."""


class UnknownLayoutError(LayoutError):
    """No file under the folder fits the layout(s) looked for; ``files`` is how many files there are."""

    def __init__(self, message: str, files: int) -> None:
        super().__init__(message)
        self.files = files


@dataclass
class Detection:
    """What ``detect`` found: the chosen layout, its scan (every label kept) and each layout's count."""

    name: str
    result: ScanResult
    recognised: dict[str, int]


def recognised(result: ScanResult) -> int:
    """Files a scan identified as belonging to its layout, whatever their label."""
    return len(result.utterances) + result.skipped_other_label + result.skipped_not_speech


def count_files(root: Path) -> int:
    """Non-hidden files under ``root``."""
    return sum(1 for p in Path(root).rglob("*") if not p.name.startswith(".") and p.is_file())


def restrict(result: ScanResult, classes: Iterable[str] | None) -> ScanResult:
    """``result`` with utterances outside ``classes`` moved to ``skipped_other_label`` (None: keep all)."""
    if classes is None:
        return result
    wanted = set(classes)
    keep = [u for u in result.utterances if u.label in wanted]
    return replace(result, utterances=keep,
                   skipped_other_label=result.skipped_other_label + len(result.utterances) - len(keep))


def describe_layouts(names: Iterable[str] = DATASETS) -> str:
    """'RAVDESS (NN-...), CREMA-D (...), ...': for error messages."""
    return ", ".join(f"{CORPORA[n].title} ({CORPORA[n].looks_for})" for n in names)


def _check_folder(root: Path) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root} is not a folder" if root.exists() else f"{root} does not exist")
    return root


def _unknown(root: Path, names: Iterable[str]) -> UnknownLayoutError:
    files = count_files(root)
    names = list(names)
    if files == 0:
        return UnknownLayoutError(f"{root}: no files", 0)
    what = "files matches" if files != 1 else "file matches"
    return UnknownLayoutError(
        f"{root}: unknown file layout: none of the {files} {what} "
        + (f"the {CORPORA[names[0]].title} layout" if len(names) == 1 else "a known layout")
        + f"; looked for {describe_layouts(names)}",
        files,
    )


def detect(root: Path) -> Detection:
    """Find the layout of ``root``; UnknownLayoutError (listing what was looked for) when none fits."""
    root = _check_folder(root)
    if (root / manifest.MANIFEST_NAME).is_file():
        result = manifest.scan(root, None)
        return Detection("manifest", result, {"manifest": recognised(result)})
    scans = {name: c.scan(root, None) for name, c in CORPORA.items() if name != "manifest"}
    counts = {name: recognised(r) for name, r in scans.items()}
    best = max(counts, key=lambda n: counts[n])  # first of the highest: registry order breaks ties
    if counts[best] == 0:
        raise _unknown(root, DATASETS)
    return Detection(best, scans[best], {n: k for n, k in counts.items() if k})


def detect_layout(root: Path) -> str:
    """The name of ``root``'s layout (one of ``DATASETS``); UnknownLayoutError when none fits."""
    return detect(root).name


def scan_dataset(root: Path, dataset: str, classes: Iterable[str] | None) -> tuple[str, ScanResult]:
    """Scan ``root`` as ``dataset`` (a name in ``DATASETS``, or ``"auto"`` to detect it).

    Returns the layout's name and the scan with only ``classes`` kept (None: every
    label). Raises UnknownLayoutError when no file fits the layout (``files == 0``:
    the folder is empty), LayoutError for an unknown dataset name or a missing
    folder, and ``manifest.ManifestError`` for an unreadable manifest.
    """
    root = _check_folder(root)
    if dataset == AUTO:
        found = detect(root)
        return found.name, restrict(found.result, classes)
    if dataset not in CORPORA:
        raise LayoutError(f"unknown dataset {dataset!r}; known: {', '.join((AUTO, *DATASETS))}")
    result = CORPORA[dataset].scan(root, None if classes is None else tuple(classes))
    if dataset != "manifest" and recognised(result) == 0:  # a manifest's problems are in its result
        raise _unknown(root, [dataset])
    return dataset, result
