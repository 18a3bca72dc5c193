"""Small fixture trees of the corpora fedser reads, with their real naming rules and real WAV files.

Each ``make_*`` function writes one corpus under a folder and returns a
:class:`Tree` saying what a reader must find there for the seed classes
(neutral, happy, sad, angry): the kept files with label and speaker, how many
files of other emotions, not-speech files and unrecognised names it must
count, and which kept files hold garbage bytes instead of audio (the readers
parse names only, so they keep those; feature extraction must drop them with
``skip_unreadable=True``).

Audio: 0.6-0.9 s tones or noise at several sample rates (16000, 22050, 44100,
48000 Hz), mono 16-bit. Every kept file is longer than the seed preset's
0.5 s offset so its features carry signal (shorter files hit a features.py
limitation, see tests/test_corpora.py). Per-speaker counts of readable kept
files are all different, so a held-out set's size tells which speakers it holds.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

GARBAGE = b"RIFF\x00\x00garbage, not audio" * 8

# Expectation markers for entries that are not kept.
OTHER = "other"            # a known emotion outside the seed classes: skipped_other_label
NOT_SPEECH = "not-speech"  # RAVDESS song / video-only: skipped_not_speech
UNRECOGNISED = "unrecognised"
IGNORED = "ignored"        # not counted at all (hidden files, IEMOCAP's non-audio files, unlisted files)


@dataclass
class Tree:
    """A generated corpus and what its reader must report for the seed classes."""

    layout: str
    root: Path
    kept: list[tuple[Path, str, str]] = field(default_factory=list)  # (path, label, speaker), reader's order
    unreadable: list[Path] = field(default_factory=list)  # kept by the reader, unreadable as audio
    other_label: int = 0
    not_speech: int = 0
    unrecognised: int = 0

    def readable_by_speaker(self) -> dict[str, Counter]:
        """Speaker -> Counter of labels over the kept files that are real audio."""
        out: dict[str, Counter] = {}
        for path, label, speaker in self.kept:
            if path not in self.unreadable:
                out.setdefault(speaker, Counter())[label] += 1
        return out


def write_wav(path: Path, sr: int, seconds: float, seed: int, noise: bool = False) -> None:
    """A mono 16-bit WAV: a tone (with a little noise) or plain noise."""
    rng = np.random.default_rng(seed)
    n = int(round(sr * seconds))
    t = np.arange(n) / sr
    if noise:
        wave = 0.2 * rng.standard_normal(n)
    else:
        f0 = 110.0 + 40.0 * (seed % 9)
        wave = 0.4 * np.sin(2 * np.pi * f0 * t) + 0.2 * np.sin(2 * np.pi * 2.1 * f0 * t) + 0.01 * rng.standard_normal(n)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.clip(wave, -1, 1).astype(np.float32), sr, subtype="PCM_16")


def _populate(tree: Tree, entries: list[tuple[str, object]], rates: tuple[int, ...]) -> Tree:
    """Write ``entries`` = (relative path, expectation) under ``tree.root``.

    An expectation is (label, speaker) for a kept audio file, ("garbage", label,
    speaker) for a kept file of garbage bytes, or one of the markers above.
    Non-.wav entries are written as text.
    """
    for i, (rel, what) in enumerate(entries):
        path = tree.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(what, tuple) and what[0] == "garbage":
            path.write_bytes(GARBAGE)
            tree.kept.append((path, what[1], what[2]))
            tree.unreadable.append(path)
            continue
        if path.suffix.lower() == ".wav":
            write_wav(path, rates[i % len(rates)], 0.6 + 0.1 * (i % 4), seed=i, noise=i % 5 == 4)
        else:
            path.write_text("not audio\n")
        if isinstance(what, tuple):
            tree.kept.append((path, what[0], what[1]))
        elif what == OTHER:
            tree.other_label += 1
        elif what == NOT_SPEECH:
            tree.not_speech += 1
        elif what == UNRECOGNISED:
            tree.unrecognised += 1
    tree.kept.sort(key=lambda k: k[0])
    return tree


def make_ravdess(root: Path) -> Tree:
    """4 actors (readable kept 4/3/2/5), calm files (the calm/happy trap), song, bad names, a garbage file."""
    def r(emo: str, inten: str, stmt: str, rep: str, actor: int, chan: str = "01") -> str:
        return f"Actor_{actor:02d}/03-{chan}-{emo}-{inten}-{stmt}-{rep}-{actor:02d}.wav"

    entries = [
        (r("01", "01", "01", "01", 1), ("neutral", "actor01")),
        (r("03", "01", "01", "01", 1), ("happy", "actor01")),
        (r("04", "02", "02", "01", 1), ("sad", "actor01")),
        (r("05", "01", "01", "02", 1), ("angry", "actor01")),
        (r("02", "01", "01", "01", 1), OTHER),  # calm, NOT happy
        (r("01", "01", "02", "01", 2), ("neutral", "actor02")),
        (r("03", "02", "01", "01", 2), ("happy", "actor02")),
        (r("05", "02", "02", "02", 2), ("angry", "actor02")),
        (r("02", "02", "02", "02", 2), OTHER),  # calm, strong
        (r("04", "01", "01", "01", 3), ("sad", "actor03")),
        (r("05", "01", "02", "01", 3), ("angry", "actor03")),
        (r("06", "01", "01", "01", 3), OTHER),  # fearful
        (r("01", "01", "01", "01", 4), ("neutral", "actor04")),
        (r("01", "01", "01", "02", 4), ("neutral", "actor04")),
        (r("03", "01", "02", "01", 4), ("happy", "actor04")),
        (r("04", "01", "01", "02", 4), ("sad", "actor04")),
        (r("05", "01", "01", "01", 4), ("angry", "actor04")),
        (r("05", "02", "01", "01", 4), ("garbage", "angry", "actor04")),
        (r("03", "01", "01", "01", 4, chan="02"), NOT_SPEECH),  # song
        ("Actor_01/03-01-09-01-01-01-01.wav", UNRECOGNISED),  # no emotion 09
        ("Actor_02/notes.txt", UNRECOGNISED),
        ("Actor_03/.03-01-03-01-01-01-03.wav", IGNORED),  # hidden
    ]
    return _populate(Tree("ravdess", root), entries, (48000, 16000, 48000, 44100))


def make_cremad(root: Path) -> Tree:
    """CREMA-D: actors 1001/1002/1015/1091 (readable kept 4/2/3/5), DIS/FEA, bad names, a garbage file."""
    a = "AudioWAV/"
    entries = [
        (a + "1001_DFA_ANG_HI.wav", ("angry", "1001")),
        (a + "1001_IEO_HAP_LO.wav", ("happy", "1001")),
        (a + "1001_TIE_NEU_XX.wav", ("neutral", "1001")),
        (a + "1001_IOM_SAD_MD.wav", ("sad", "1001")),
        (a + "1001_DFA_DIS_XX.wav", OTHER),
        (a + "1002_IWW_ANG_XX.wav", ("angry", "1002")),
        (a + "1002_TAI_HAP_XX.wav", ("happy", "1002")),
        (a + "1002_ITS_FEA_HI.wav", OTHER),
        (a + "1015_MTI_NEU_XX.wav", ("neutral", "1015")),
        (a + "1015_IWL_SAD_XX.wav", ("sad", "1015")),
        (a + "1015_ITH_HAP_MD.wav", ("happy", "1015")),
        (a + "1015_WSI_ANG_HI.wav", ("garbage", "angry", "1015")),
        (a + "1091_TSI_ANG_LO.wav", ("angry", "1091")),
        (a + "1091_DFA_HAP_HI.wav", ("happy", "1091")),
        (a + "1091_ITS_NEU_XX.wav", ("neutral", "1091")),
        (a + "1091_IEO_SAD_LO.wav", ("sad", "1091")),
        (a + "1091_TIE_SAD_HI.wav", ("sad", "1091")),
        (a + "1092_DFA_ANG_XX.wav", UNRECOGNISED),  # actor out of 1001-1091
        (a + "1001_XYZ_ANG_XX.wav", UNRECOGNISED),  # no such sentence
        (a + "1001_DFA_ANG_ZZ.wav", UNRECOGNISED),  # no such level
        ("README.txt", UNRECOGNISED),
    ]
    return _populate(Tree("crema-d", root), entries, (16000, 16000, 44100))


def make_tess(root: Path) -> Tree:
    """TESS: OAF and YAF (readable kept 5/3), mixed folder case, ps and pleasant_surprise, a flat file."""
    entries = [
        ("OAF_angry/OAF_back_angry.wav", ("angry", "OAF")),
        ("OAF_angry/OAF_dog_angry.wav", ("angry", "OAF")),
        ("OAF_happy/OAF_back_happy.wav", ("happy", "OAF")),
        ("OAF_neutral/OAF_back_neutral.wav", ("neutral", "OAF")),
        ("OAF_Sad/OAF_back_sad.wav", ("sad", "OAF")),
        ("OAF_Fear/OAF_back_fear.wav", OTHER),
        ("OAF_Pleasant_surprise/OAF_back_ps.wav", OTHER),
        ("OAF_disgust/OAF_back_disgust.wav", OTHER),
        ("YAF_angry/YAF_back_angry.wav", ("angry", "YAF")),
        ("YAF_happy/YAF_Back_Happy.wav", ("happy", "YAF")),
        ("YAF_dog_neutral.wav", ("neutral", "YAF")),
        ("YAF_sad/YAF_dog_sad.wav", ("garbage", "sad", "YAF")),
        ("YAF_pleasant_surprised/YAF_dog_pleasant_surprise.wav", OTHER),
        ("YAF_fear/YAF_dog_fear.wav", OTHER),
        ("XAF_back_angry.wav", UNRECOGNISED),  # no such speaker
        ("OAF_angry/OAF_back_excited.wav", UNRECOGNISED),  # no such emotion
        ("OAF_back.wav", UNRECOGNISED),
        ("notes.txt", UNRECOGNISED),
    ]
    # Real TESS is 24,414 Hz; resampling that rate to 22,050 Hz takes torchaudio over a second per
    # file (gcd 6), too slow for a unit test, so these files use 22,050 and 44,100 Hz.
    return _populate(Tree("tess", root), entries, (22050, 44100))


def make_emodb(root: Path) -> Tree:
    """EmoDB: speakers 03/08/10/16 (readable kept 4/2/3/5), boredom/disgust/fear, bad names, a garbage file."""
    w = "wav/"
    entries = [
        (w + "03a01Wa.wav", ("angry", "03")),
        (w + "03a01Fa.wav", ("happy", "03")),
        (w + "03a01Nc.wav", ("neutral", "03")),
        (w + "03a02Ta.wav", ("sad", "03")),
        (w + "03a01La.wav", OTHER),  # boredom
        (w + "08a01Wa.wav", ("angry", "08")),
        (w + "08b01Fa.wav", ("happy", "08")),
        (w + "08a02Ea.wav", OTHER),  # disgust
        (w + "10a04Nb.wav", ("neutral", "10")),
        (w + "10b02Ta.wav", ("sad", "10")),
        (w + "10b10Wa.wav", ("angry", "10")),
        (w + "10a05Ab.wav", OTHER),  # fear (Angst), not angry
        (w + "16a05Fa.wav", ("happy", "16")),
        (w + "16a07Nb.wav", ("neutral", "16")),
        (w + "16b03Tc.wav", ("sad", "16")),
        (w + "16b09Wb.wav", ("angry", "16")),
        (w + "16b10Fa.wav", ("happy", "16")),
        (w + "16a01Wb.wav", ("garbage", "angry", "16")),
        (w + "02a01Fa.wav", UNRECOGNISED),  # no speaker 02
        (w + "03a01Xa.wav", UNRECOGNISED),  # no emotion X
        (w + "03a03Fa.wav", UNRECOGNISED),  # no text a03
        ("extra/03a01fa.wav", UNRECOGNISED),  # emotion letter must be upper case
        ("lablaut/03a01Fa.lab", UNRECOGNISED),  # same stem, not audio
    ]
    return _populate(Tree("emodb", root), entries, (16000, 16000, 48000))


# IEMOCAP dialogs: dialog -> [(utterance, code)]; None as code: a .wav without a label line.
IEMOCAP_DIALOGS: dict[str, list[tuple[str, str | None]]] = {
    "Ses01F_impro01": [("F000", "neu"), ("M000", "exc"), ("F001", "hap"), ("M001", "fru"), ("F002", "sad"),
                       ("M002", "xxx"), ("F003", None), ("F004", "neu")],
    "Ses01M_script01_1": [("M000", "ang"), ("F000", "ang"), ("M001", "sur")],
    "Ses02F_impro02": [("F000", "ang"), ("M000", "neu"), ("M001", "hap"), ("F001", "exc"), ("F002", "neu")],
    "Ses02M_impro03": [("M000", "sad"), ("F000", "dis"), ("M001", "ang"), ("M002", "neu")],
}
_IEMOCAP_SEED = {"neu": "neutral", "hap": "happy", "exc": "happy", "sad": "sad", "ang": "angry"}


def make_iemocap(root: Path) -> Tree:
    """IEMOCAP Session1/Session2 (speakers Ses01F/Ses01M/Ses02F/Ses02M, readable kept 4/2/3/5).

    hap and exc both become happy; fru, sur, dis and xxx are skipped; a dialog-level
    wav and an utterance without a label line are unrecognised; Ses01F_impro01_F004 is garbage.
    """
    entries: list[tuple[str, object]] = []
    for dialog, utts in IEMOCAP_DIALOGS.items():
        session = f"Session{int(dialog[3:5])}"
        lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
        for k, (utt, code) in enumerate(utts):
            uid = f"{dialog}_{utt}"
            spk = f"{dialog[:5]}{utt[0]}"
            if code is not None:
                lines += [f"[{6.29 + 3 * k:.4f} - {8.24 + 3 * k:.4f}]\t{uid}\t{code}\t[2.5000, 2.5000, 2.5000]",
                          "C-E1:\tNeutral;\t()", "A-E2:\tval 3; act 2; dom  2;\t()", ""]
            rel = f"{session}/sentences/wav/{dialog}/{uid}.wav"
            if code is None:
                what: object = UNRECOGNISED
            elif uid == "Ses01F_impro01_F004":
                what = ("garbage", _IEMOCAP_SEED[code], spk)
            elif code in _IEMOCAP_SEED:
                what = (_IEMOCAP_SEED[code], spk)
            else:
                what = OTHER
            entries.append((rel, what))
        label_file = root / session / "dialog" / "EmoEvaluation" / f"{dialog}.txt"
        label_file.parent.mkdir(parents=True, exist_ok=True)
        label_file.write_text("\n".join(lines) + "\n")
        # Per-annotator files in a sub-folder are not the label source (and disagree here).
        cat = root / session / "dialog" / "EmoEvaluation" / "Categorical" / f"{dialog}_e1_cat.txt"
        cat.parent.mkdir(parents=True, exist_ok=True)
        cat.write_text("".join(f"{dialog}_{u} :Frustration; ()\n" for u, _ in utts))
    entries += [
        ("Session1/dialog/wav/Ses01F_impro01.wav", UNRECOGNISED),  # the whole dialog, not an utterance
        ("Session1/dialog/transcriptions/Ses01F_impro01.txt", IGNORED),
        ("Session1/sentences/wav/Ses01F_impro01/._Ses01F_impro01_F000.wav", IGNORED),
    ]
    return _populate(Tree("iemocap", root), entries, (16000,))


def make_manifest(root: Path, external: Path) -> Tree:
    """A manifest.csv with relative paths and absolute paths outside ``root``.

    Speakers spk1..spk4 (readable kept 3/2/4/5), a label outside the seed classes,
    two rows naming missing files, a duplicate row, a row with an empty label,
    files on disk that the manifest does not list, and a garbage file.
    """
    tree = Tree("manifest", root)
    rows = ["path,label,speaker"]
    files: list[tuple[Path, object]] = []

    def row(path: Path, label: str, speaker: str, what: object, relative: bool = True, write: bool = True) -> None:
        rows.append(f"{path.relative_to(root) if relative else path},{label},{speaker}")
        if write:
            files.append((path, what))

    c = root / "clips"
    row(c / "s1_a.wav", "happy", "spk1", ("happy", "spk1"))
    row(c / "s1_b.wav", "Angry", "spk1", ("angry", "spk1"))  # case is ignored
    row(c / "s1_c.wav", " anger ", "spk1", ("angry", "spk1"))  # alias, spaces trimmed
    row(c / "s2_a.wav", "neutral", "spk2", ("neutral", "spk2"))
    row(c / "s2_b.wav", "sad", "spk2", ("sad", "spk2"))
    row(c / "s2_x.wav", "fearful", "spk2", OTHER)
    for k, label in enumerate(("sad", "happy", "neutral", "angry")):
        row(external / f"s3_{k}.wav", label, "spk3", (label, "spk3"), relative=False)
    for k, label in enumerate(("neutral", "neutral", "sad", "happy", "angry")):
        row(c / "spk4" / f"s4_{k}.wav", label, "spk4", (label, "spk4"))
    row(c / "spk4" / "s4_bad.wav", "angry", "spk4", ("garbage", "angry", "spk4"))
    row(c / "gone.wav", "happy", "spk1", None, write=False)  # missing (relative)
    row(external / "gone2.wav", "sad", "spk3", None, relative=False, write=False)  # missing (absolute)
    rows.append("clips/s1_a.wav,happy,spk1")  # listed twice
    rows.append("clips/s2_b.wav,,spk2")  # empty label (and a duplicate path: reported once, as empty)
    rows.append("")
    (c / "unlisted.wav").parent.mkdir(parents=True, exist_ok=True)
    write_wav(c / "unlisted.wav", 16000, 0.6, seed=99)  # on disk, not listed: ignored
    write_wav(c / "03-01-05-01-01-01-01.wav", 16000, 0.6, seed=98)  # RAVDESS name, not listed: ignored
    rates = (44100, 22050)
    for i, (path, what) in enumerate(files):
        if isinstance(what, tuple) and what[0] == "garbage":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(GARBAGE)
            tree.kept.append((path, what[1], what[2]))
            tree.unreadable.append(path)
            continue
        write_wav(path, rates[i % 2], 0.6 + 0.1 * (i % 4), seed=200 + i)
        if isinstance(what, tuple):
            tree.kept.append((path, what[0], what[1]))
        elif what == OTHER:
            tree.other_label += 1
    tree.unrecognised = 2  # the duplicate row and the empty-label row
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    return tree  # kept in manifest order


def make_all(base: Path) -> dict[str, Tree]:
    """Every layout's tree under ``base``, by layout name."""
    return {
        "ravdess": make_ravdess(base / "ravdess"),
        "crema-d": make_cremad(base / "crema-d"),
        "tess": make_tess(base / "tess"),
        "emodb": make_emodb(base / "emodb"),
        "iemocap": make_iemocap(base / "iemocap"),
        "manifest": make_manifest(base / "manifest", base / "manifest-external"),
    }
