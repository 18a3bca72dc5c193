"""Tests for the corpus readers, the registry and layout detection, and the client's use of them.

Readers: model/cremad.py, model/tess.py, model/emodb.py, model/iemocap.py,
model/manifest.py (RAVDESS: model/ravdess.py, see tests/test_ravdess.py);
registry and detection: model/corpora.py; client: edge_client/dataset.py and
``fedser-client --dataset``. The fixture trees (tests/corpus_trees.py) follow
each corpus's real naming rules and hold real WAV files.
"""
from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from edge_client.dataset import find_utterances, load_local_data
from edge_client.errors import DataError
from edge_client.main import build_parser
from model import cremad, emodb, iemocap, manifest, tess
from model.corpora import (
    CORPORA,
    DATASETS,
    LayoutError,
    UnknownLayoutError,
    detect,
    detect_layout,
    restrict,
    scan_dataset,
)
from model.features import get_preset
from model.ravdess import EMOTIONS, SEED_CLASSES, ScanResult, Utterance
from model.splits import speaker_split
from tests.corpus_trees import Tree, make_all, write_wav

LAYOUTS = ("ravdess", "crema-d", "tess", "emodb", "iemocap", "manifest")


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Tree]:
    """Every layout's fixture tree, generated once (tests must not modify them)."""
    return make_all(tmp_path_factory.mktemp("corpora"))


@pytest.fixture(scope="module")
def preset():
    return get_preset("seed")


def triples(result: ScanResult) -> list[tuple[Path, str, str]]:
    return [(u.path, u.label, u.speaker) for u in result.utterances]


def names_labels_speakers(result: ScanResult) -> list[tuple[str, str, str]]:
    return [(u.path.name, u.label, u.speaker) for u in result.utterances]


# ---------------------------------------------------------------- registry


def test_registry_names_and_label_vocabulary():
    assert DATASETS == LAYOUTS
    assert set(CORPORA) == set(LAYOUTS)
    # Every reader speaks the seed classes with exactly the architecture's names.
    for name in ("ravdess", "crema-d", "tess", "emodb", "iemocap"):
        assert set(SEED_CLASSES) <= set(CORPORA[name].labels), name
    assert CORPORA["manifest"].labels is None
    assert set(cremad.LABELS) == {"angry", "disgust", "fearful", "happy", "neutral", "sad"}
    assert set(tess.LABELS) == {"angry", "disgust", "fearful", "happy", "neutral", "surprised", "sad"}
    assert set(emodb.LABELS) == {"angry", "boredom", "disgust", "fearful", "happy", "sad", "neutral"}
    assert {"neutral", "happy", "sad", "angry"} <= set(iemocap.LABELS)
    assert "excited" not in iemocap.LABELS  # exc is merged into happy


# ---------------------------------------------------------------- name parsers


def test_cremad_names():
    info = cremad.parse_name("AudioWAV/1001_DFA_ANG_XX.wav")
    assert (info.actor, info.sentence, info.emotion, info.level, info.speaker) == (
        1001, "DFA", "angry", "unspecified", "1001")
    assert cremad.parse_name("1091_ITS_FEA_HI.WAV").emotion == "fearful"
    assert [cremad.parse_name(f"1050_IEO_{c}_LO.wav").emotion for c in ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")] \
        == ["angry", "disgust", "fearful", "happy", "neutral", "sad"]
    for bad, why in [("1000_DFA_ANG_XX.wav", "actor must be 1001..1091"), ("1092_DFA_ANG_XX.wav", "actor must be"),
                     ("1001_ABC_ANG_XX.wav", "unknown sentence"), ("1001_DFA_CLM_XX.wav", "unknown emotion"),
                     ("1001_DFA_ANG_ZZ.wav", "unknown level"), ("1001_DFA_ANG.wav", "not a CREMA-D name"),
                     ("1001_DFA_ANG_XX.mp3", "not a CREMA-D name")]:
        with pytest.raises(cremad.CremadNameError, match=why):
            cremad.parse_name(bad)


def test_tess_names():
    assert tess.parse_name("OAF_angry/OAF_back_angry.wav") == tess.TessInfo("OAF", "back", "angry")
    assert tess.parse_name("YAF_dog_neutral.wav") == tess.TessInfo("YAF", "dog", "neutral")
    assert tess.parse_name("OAF_back_ps.wav").emotion == "surprised"
    assert tess.parse_name("YAF_dog_pleasant_surprise.wav").emotion == "surprised"
    assert tess.parse_name("YAF_germ_Pleasant_Surprised.WAV").emotion == "surprised"
    assert tess.parse_name("OAF_back_fear.wav").emotion == "fearful"
    assert tess.parse_name("yaf_Back_HAPPY.wav") == tess.TessInfo("YAF", "back", "happy")
    for bad, why in [("XAF_back_angry.wav", "unknown speaker"), ("OAF_back_excited.wav", "unknown emotion"),
                     ("OAF_back.wav", "not a TESS name"), ("OAF_back_angry.txt", "not a TESS name")]:
        with pytest.raises(tess.TessNameError, match=why):
            tess.parse_name(bad)


def test_emodb_names_german_letters():
    letters = {"W": "angry", "L": "boredom", "E": "disgust", "A": "fearful", "F": "happy", "T": "sad", "N": "neutral"}
    for letter, label in letters.items():
        assert emodb.parse_name(f"03a01{letter}a.wav").emotion == label
    assert emodb.parse_name("03a01Wa.wav") == emodb.EmodbInfo("03", "a01", "angry", "a")  # W (Wut) is angry
    assert emodb.parse_name("10a05Ab.wav").emotion == "fearful"  # A (Angst) is fear, not anger
    assert emodb.parse_name("16b10Fc.WAV").speaker == "16"
    for bad, why in [("02a01Fa.wav", "unknown speaker"), ("03a03Fa.wav", "unknown text"),
                     ("03a01Xa.wav", "unknown emotion letter"), ("03a01fa.wav", "not an EmoDB name"),
                     ("03a01Fa.lab", "not an EmoDB name")]:
        with pytest.raises(emodb.EmodbNameError, match=why):
            emodb.parse_name(bad)


def test_iemocap_speaker_is_the_utterance_speaker():
    assert iemocap.parse_utterance("Ses01F_impro01_F000") == iemocap.IemocapInfo("Ses01", "Ses01F_impro01", "Ses01F")
    assert iemocap.parse_utterance("Ses01F_impro01_M003.wav").speaker == "Ses01M"
    assert iemocap.parse_utterance("Ses05M_script02_1b_F012.wav") == iemocap.IemocapInfo(
        "Ses05", "Ses05M_script02_1b", "Ses05F")
    for bad in ("Ses01F_impro01.wav", "Ses01F_impro01_X000.wav", "ses01F_impro01_F000.wav"):
        with pytest.raises(iemocap.IemocapNameError):
            iemocap.parse_utterance(bad)


# ---------------------------------------------------------------- reader scans on the fixture trees


@pytest.mark.parametrize("layout", LAYOUTS)
def test_reader_finds_exactly_the_expected_files(trees, layout):
    tree = trees[layout]
    result = CORPORA[layout].scan(tree.root, SEED_CLASSES)
    assert triples(result) == tree.kept
    assert (result.skipped_other_label, result.skipped_not_speech, result.unrecognised) == (
        tree.other_label, tree.not_speech, tree.unrecognised)


# Hand-counted numbers of each tree (kept, other label, not speech, unrecognised, speakers), so the
# test does not rely on the generator's bookkeeping alone.
COUNTS = {
    "ravdess": (15, 3, 1, 2, {"actor01": 4, "actor02": 3, "actor03": 2, "actor04": 6}),
    "crema-d": (15, 2, 0, 4, {"1001": 4, "1002": 2, "1015": 4, "1091": 5}),
    "tess": (9, 5, 0, 4, {"OAF": 5, "YAF": 4}),
    "emodb": (15, 3, 0, 5, {"03": 4, "08": 2, "10": 3, "16": 6}),
    "iemocap": (15, 4, 0, 2, {"Ses01F": 5, "Ses01M": 2, "Ses02F": 3, "Ses02M": 5}),
    "manifest": (15, 1, 0, 2, {"spk1": 3, "spk2": 2, "spk3": 4, "spk4": 6}),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_reader_counts_by_hand(trees, layout):
    result = CORPORA[layout].scan(trees[layout].root, SEED_CLASSES)
    kept, other, not_speech, unrecognised, speakers = COUNTS[layout]
    assert len(result.utterances) == kept
    counts = (result.skipped_other_label, result.skipped_not_speech, result.unrecognised)
    assert counts == (other, not_speech, unrecognised)
    assert Counter(u.speaker for u in result.utterances) == speakers
    assert {u.label for u in result.utterances} <= set(SEED_CLASSES)


def test_ravdess_calm_is_not_happy_and_all_eight_emotions_on_request(trees):
    root = trees["ravdess"].root
    seed = CORPORA["ravdess"].scan(root, SEED_CLASSES)
    assert all(u.path.name.split("-")[2] != "02" for u in seed.utterances)  # no calm file labelled anything
    assert [u.path.name for u in seed.utterances if u.label == "happy"] == [
        "03-01-03-01-01-01-01.wav", "03-01-03-02-01-01-02.wav", "03-01-03-01-02-01-04.wav"]
    everything = CORPORA["ravdess"].scan(root, tuple(EMOTIONS.values()))
    labels = Counter(u.label for u in everything.utterances)
    assert labels == {"neutral": 4, "happy": 3, "sad": 3, "angry": 5, "calm": 2, "fearful": 1}
    assert {u.path.name for u in everything.utterances if u.label == "calm"} == {
        "03-01-02-01-01-01-01.wav", "03-01-02-02-02-02-02.wav"}
    assert everything.skipped_other_label == 0 and everything.skipped_not_speech == 1


def test_cremad_labels_and_other_emotions(trees):
    root = trees["crema-d"].root
    res = cremad.scan(root, SEED_CLASSES)
    assert ("1001_DFA_ANG_HI.wav", "angry", "1001") in names_labels_speakers(res)
    assert ("1091_TIE_SAD_HI.wav", "sad", "1091") in names_labels_speakers(res)
    full = cremad.scan(root, None)
    assert Counter(u.label for u in full.utterances) == {
        "angry": 4, "happy": 4, "neutral": 3, "sad": 4, "disgust": 1, "fearful": 1}
    assert full.skipped_other_label == 0 and full.unrecognised == 4


def test_tess_ps_is_surprised_and_fear_is_fearful(trees):
    full = tess.scan(trees["tess"].root, None)
    by_name = {u.path.name: (u.label, u.speaker) for u in full.utterances}
    assert by_name["OAF_back_ps.wav"] == ("surprised", "OAF")
    assert by_name["YAF_dog_pleasant_surprise.wav"] == ("surprised", "YAF")
    assert by_name["OAF_back_fear.wav"] == ("fearful", "OAF")
    assert by_name["YAF_Back_Happy.wav"] == ("happy", "YAF")  # case-free
    assert by_name["YAF_dog_neutral.wav"] == ("neutral", "YAF")  # outside an emotion folder
    assert len(full.utterances) == 14 and full.unrecognised == 4
    only_surprise = tess.scan(trees["tess"].root, ("surprised",))
    assert sorted(u.path.name for u in only_surprise.utterances) == [
        "OAF_back_ps.wav", "YAF_dog_pleasant_surprise.wav"]
    assert only_surprise.skipped_other_label == 12


def test_emodb_w_is_angry(trees):
    res = emodb.scan(trees["emodb"].root, SEED_CLASSES)
    angry = sorted(u.path.name for u in res.utterances if u.label == "angry")
    assert angry == ["03a01Wa.wav", "08a01Wa.wav", "10b10Wa.wav", "16a01Wb.wav", "16b09Wb.wav"]
    full = emodb.scan(trees["emodb"].root, None)
    assert {u.path.name: u.label for u in full.utterances if u.label not in SEED_CLASSES} == {
        "03a01La.wav": "boredom", "08a02Ea.wav": "disgust", "10a05Ab.wav": "fearful"}


def test_iemocap_hap_and_exc_merge_and_other_codes_skip(trees):
    res = iemocap.scan(trees["iemocap"].root, SEED_CLASSES)
    happy = sorted(u.path.stem for u in res.utterances if u.label == "happy")
    assert happy == ["Ses01F_impro01_F001", "Ses01F_impro01_M000", "Ses02F_impro02_F001", "Ses02F_impro02_M001"]
    speakers = {u.path.stem: u.speaker for u in res.utterances}
    assert speakers["Ses01F_impro01_M000"] == "Ses01M"  # the M actor in an F-led dialog
    assert speakers["Ses01M_script01_1_F000"] == "Ses01F"  # and the other way round
    stems = {u.path.stem for u in res.utterances}
    assert not stems & {"Ses01F_impro01_M001", "Ses01F_impro01_M002", "Ses01M_script01_1_M001",
                        "Ses02M_impro03_F000", "Ses01F_impro01_F003"}  # fru, xxx, sur, dis, no label line
    full = iemocap.scan(trees["iemocap"].root, None)
    assert Counter(u.label for u in full.utterances) == {
        "neutral": 5, "happy": 4, "sad": 2, "angry": 4, "frustrated": 1, "surprised": 1, "disgust": 1}
    assert full.skipped_other_label == 1  # xxx (no agreement) is never a class
    # The release folder, one session folder or a folder above the release all work.
    one = iemocap.scan(trees["iemocap"].root / "Session2", SEED_CLASSES)
    assert Counter(u.speaker for u in one.utterances) == {"Ses02F": 3, "Ses02M": 5}
    assert triples(iemocap.scan(trees["iemocap"].root.parent, SEED_CLASSES)) == trees["iemocap"].kept


def test_iemocap_label_line_format():
    line = "[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]"
    m = iemocap._LINE.match(line)
    assert m and m.groups() == ("Ses01F_impro01_F000", "neu")
    assert iemocap._LINE.match("% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]") is None
    assert iemocap._LINE.match("C-E1:\tNeutral;\t()") is None


def test_manifest_relative_absolute_missing_and_invalid(trees):
    tree = trees["manifest"]
    res = manifest.scan(tree.root, SEED_CLASSES)
    assert isinstance(res, manifest.ManifestScanResult)
    assert triples(res) == tree.kept
    paths = [u.path for u in res.utterances]
    assert tree.root / "clips" / "s1_a.wav" in paths  # relative to the manifest's folder
    external = tree.root.parent / "manifest-external"
    assert [p.name for p in paths if p.parent == external] == ["s3_0.wav", "s3_1.wav", "s3_2.wav", "s3_3.wav"]
    assert [u.label for u in res.utterances[:3]] == ["happy", "angry", "angry"]  # "Angry", " anger "
    assert res.missing == ["line 18: clips/gone.wav", f"line 19: {external / 'gone2.wav'}"]
    assert res.invalid == ["line 20: clips/s1_a.wav listed twice", "line 21: empty label"]
    assert (res.skipped_other_label, res.unrecognised) == (1, 2)
    assert all(u.path.name not in ("unlisted.wav", "03-01-05-01-01-01-01.wav") for u in res.utterances)


def test_manifest_header_and_column_order(tmp_path):
    write_wav(tmp_path / "a.wav", 16000, 0.6, seed=1)
    (tmp_path / "manifest.csv").write_text("\ufeffSpeaker, Label ,PATH,notes\nspkA,Neutral,a.wav,hello\n")
    res = manifest.scan(tmp_path, SEED_CLASSES)
    assert triples(res) == [(tmp_path / "a.wav", "neutral", "spkA")]
    (tmp_path / "manifest.csv").write_text("file,emotion,speaker\na.wav,neutral,s\n")
    with pytest.raises(manifest.ManifestError, match="missing path, label"):
        manifest.scan(tmp_path, SEED_CLASSES)
    (tmp_path / "manifest.csv").write_text("")
    with pytest.raises(manifest.ManifestError, match="empty; expected a header row path,label,speaker"):
        manifest.scan(tmp_path, SEED_CLASSES)
    (tmp_path / "manifest.csv").write_bytes(b"path,label,speaker\n\xff\xfe\xfa,x,y\n")
    with pytest.raises(manifest.ManifestError, match="cannot read"):
        manifest.scan(tmp_path, SEED_CLASSES)


def test_restrict_moves_other_labels_to_skipped():
    us = [Utterance(Path("a"), "happy", "s"), Utterance(Path("b"), "calm", "s"), Utterance(Path("c"), "sad", "t")]
    res = restrict(ScanResult(list(us), skipped_other_label=2, skipped_not_speech=1, unrecognised=3), ("happy", "sad"))
    assert res == ScanResult([us[0], us[2]], skipped_other_label=3, skipped_not_speech=1, unrecognised=3)


# ---------------------------------------------------------------- detection


@pytest.mark.parametrize("layout", LAYOUTS)
def test_detect_layout_of_each_tree(trees, layout):
    assert detect_layout(trees[layout].root) == layout
    name, result = scan_dataset(trees[layout].root, "auto", SEED_CLASSES)
    assert name == layout
    assert triples(result) == trees[layout].kept
    assert result.skipped_other_label == trees[layout].other_label


def test_detection_counts_files_whatever_their_label(tmp_path):
    # Only calm RAVDESS files: still RAVDESS (so the client can say "none of the classes").
    for actor in (1, 2):
        (tmp_path / f"03-01-02-01-01-01-{actor:02d}.wav").touch()
    found = detect(tmp_path)
    assert (found.name, found.recognised) == ("ravdess", {"ravdess": 2})
    name, res = scan_dataset(tmp_path, "auto", SEED_CLASSES)
    assert (name, res.utterances, res.skipped_other_label) == ("ravdess", [], 2)


def test_detection_picks_the_layout_with_most_files(trees, tmp_path):
    mixed = Path(shutil.copytree(trees["crema-d"].root, tmp_path / "mixed"))
    for actor in (1, 2, 3):
        (mixed / f"03-01-05-01-01-01-{actor:02d}.wav").touch()
    (mixed / "03a01Wa.wav").touch()
    found = detect(mixed)
    assert found.name == "crema-d"
    assert found.recognised == {"crema-d": 15 + 2, "ravdess": 3, "emodb": 1}
    name, res = scan_dataset(mixed, "auto", SEED_CLASSES)
    assert name == "crema-d" and len(res.utterances) == 15
    assert res.unrecognised == 4 + 4  # the other corpora's files are unrecognised here
    for actor in range(4, 30):
        (mixed / f"03-01-01-01-01-01-{actor:02d}.wav").touch()
    assert detect_layout(mixed) == "ravdess"


def test_manifest_wins_when_present(trees, tmp_path):
    root = Path(shutil.copytree(trees["ravdess"].root, tmp_path / "r"))
    (root / "manifest.csv").write_text("path,label,speaker\nActor_01/03-01-02-01-01-01-01.wav,happy,x\n")
    found = detect(root)
    assert (found.name, found.recognised) == ("manifest", {"manifest": 1})
    name, res = scan_dataset(root, "auto", SEED_CLASSES)
    assert triples(res) == [(root / "Actor_01/03-01-02-01-01-01-01.wav", "happy", "x")]  # its author's choice
    assert scan_dataset(root, "ravdess", SEED_CLASSES)[1].skipped_other_label == 3  # still readable as RAVDESS


def test_unknown_layout_error_lists_what_was_looked_for(tmp_path):
    (tmp_path / "speech_001.wav").write_bytes(b"RIFF")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UnknownLayoutError) as exc:
        detect_layout(tmp_path)
    msg = str(exc.value)
    assert exc.value.files == 2
    assert "unknown file layout" in msg and "none of the 2 files matches a known layout" in msg
    for what in ("RAVDESS (NN-NN-NN-NN-NN-NN-NN.wav", "CREMA-D (NNNN_SSS_EEE_LL.wav", "TESS (OAF|YAF_",
                 "EmoDB (SSTTTEV.wav", "IEMOCAP (SessionN/sentences/wav/", "manifest (manifest.csv with a header"):
        assert what in msg, what


def test_explicit_dataset_and_bad_names(trees, tmp_path):
    # An explicit layout is scanned as asked, even when another would fit better ...
    name, res = scan_dataset(trees["tess"].root, "tess", ("surprised",))
    assert name == "tess" and len(res.utterances) == 2
    # ... and a folder of another corpus is an unknown layout for it.
    with pytest.raises(UnknownLayoutError, match="none of the 18 files matches the CREMA-D layout") as exc:
        scan_dataset(trees["tess"].root, "crema-d", SEED_CLASSES)
    assert "TESS" not in str(exc.value)
    with pytest.raises(LayoutError, match="unknown dataset 'timit'; known: auto, ravdess, crema-d"):
        scan_dataset(trees["tess"].root, "timit", SEED_CLASSES)
    with pytest.raises(manifest.ManifestError, match="no manifest.csv"):
        scan_dataset(trees["tess"].root, "manifest", SEED_CLASSES)
    with pytest.raises(LayoutError, match="does not exist"):
        detect_layout(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnknownLayoutError) as empty:
        detect_layout(tmp_path / "empty")
    assert empty.value.files == 0


# ---------------------------------------------------------------- the client's data path


HELDOUT = {"ravdess": 0.25, "crema-d": 0.25, "tess": 0.5, "emodb": 0.25, "iemocap": 0.25, "manifest": 0.25}
READABLE = {  # per speaker, kept files that are real audio (the garbage file is dropped)
    "ravdess": {"actor01": 4, "actor02": 3, "actor03": 2, "actor04": 5},
    "crema-d": {"1001": 4, "1002": 2, "1015": 3, "1091": 5},
    "tess": {"OAF": 5, "YAF": 3},
    "emodb": {"03": 4, "08": 2, "10": 3, "16": 5},
    "iemocap": {"Ses01F": 4, "Ses01M": 2, "Ses02F": 3, "Ses02M": 5},
    "manifest": {"spk1": 3, "spk2": 2, "spk3": 4, "spk4": 5},
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_load_local_data_auto_speaker_independent(trees, preset, layout, caplog):
    """Train/held-out arrays of the right sizes, split by speaker, garbage audio dropped.

    TESS has only two speakers (OAF, YAF): any held-out fraction > 0 holds out one
    of them (here 0.5); the others hold out 1 of 4 speakers at the default 0.25.
    """
    tree = trees[layout]
    readable = tree.readable_by_speaker()
    assert {s: sum(c.values()) for s, c in readable.items()} == READABLE[layout]
    with caplog.at_level(logging.INFO, logger="fedser.client"):
        data = load_local_data(tree.root, SEED_CLASSES, preset, HELDOUT[layout], seed=0, skip_unreadable=True,
                               dataset="auto")
    detected = [r for r in caplog.records if r.getMessage() == "dataset_detected"]
    assert [r.fields for r in detected] == [{"dataset": layout, "files": COUNTS[layout][0] + COUNTS[layout][1]
                                             + COUNTS[layout][2]}]
    skipped = [r.fields["file"] for r in caplog.records if r.getMessage() == "file_skipped"]
    assert skipped == [p.name for p in tree.unreadable]

    n_speakers = len(readable)
    assert (data.train_speakers, data.heldout_speakers) == (n_speakers - 1, 1)
    # Which speaker was held out? Exactly one choice fits the held-out size and label counts.
    y_test = Counter(SEED_CLASSES[i] for i in data.heldout_y)
    y_train = Counter(SEED_CLASSES[i] for i in data.train_y)
    fits = [s for s in readable if readable[s] == y_test]
    assert len(fits) == 1, (y_test, readable)
    held = fits[0]
    assert y_train == sum((c for s, c in readable.items() if s != held), Counter())
    # The reader's own split agrees (same speakers, seed 0).
    train_u, test_u = speaker_split(CORPORA[layout].scan(tree.root, SEED_CLASSES).utterances, HELDOUT[layout], 0)
    assert {u.speaker for u in test_u} == {held}
    assert not {u.speaker for u in train_u} & {u.speaker for u in test_u}

    for x, y in ((data.train_x, data.train_y), (data.heldout_x, data.heldout_y)):
        assert x.dtype == np.float32 and x.shape == (len(y), *preset.input_shape) == (len(y), 1, 97)
        assert np.isfinite(x).all()
    assert data.train_x.std(axis=0).mean() > 0.1  # real, different clips, not padding


def test_unreadable_audio_stops_without_skip(trees, preset):
    with pytest.raises(DataError, match=r"16a01Wb\.wav: cannot read audio .*\(use --skip-unreadable"):
        load_local_data(trees["emodb"].root, SEED_CLASSES, preset, 0.0, dataset="emodb")


def test_find_utterances_errors(trees, tmp_path, caplog):
    other = tmp_path / "other"
    other.mkdir()
    (other / "speech_001.wav").write_bytes(b"RIFF")
    with pytest.raises(DataError, match="unknown file layout: none of the 1 file matches a known layout; looked for"):
        find_utterances(other, SEED_CLASSES)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is empty"):
        find_utterances(tmp_path / "empty", SEED_CLASSES)
    with pytest.raises(DataError, match="EmoDB files found, but none of the classes calm "):
        find_utterances(trees["emodb"].root, ("calm",), "emodb")
    with pytest.raises(DataError, match="unknown file layout: .* matches the IEMOCAP layout"):
        find_utterances(trees["emodb"].root, SEED_CLASSES, "iemocap")
    m = tmp_path / "m"
    m.mkdir()
    (m / "manifest.csv").write_text("path,label,speaker\nnot-there.wav,happy,a\n")
    with pytest.raises(DataError, match="none of the 1 files listed in the manifest exists"):
        find_utterances(m, SEED_CLASSES)
    (m / "manifest.csv").write_text("path,label\n")
    with pytest.raises(DataError, match="missing speaker"):
        find_utterances(m, SEED_CLASSES)
    # An explicit dataset logs no detection.
    with caplog.at_level(logging.INFO, logger="fedser.client"):
        assert len(find_utterances(trees["tess"].root, SEED_CLASSES, "tess")) == 9
    assert "dataset_detected" not in [r.getMessage() for r in caplog.records]
    assert [r.fields for r in caplog.records if r.getMessage() == "data_scanned"] == [
        {"dataset": "tess", "files": 9, "skipped_other_label": 5, "skipped_not_speech": 0, "unrecognised": 4}]


def test_files_shorter_than_the_feature_offset(tmp_path, preset):
    from edge_client.dataset import extract

    write_wav(tmp_path / "1001_DFA_ANG_XX.wav", 16000, 0.3, seed=1)
    feats, kept = extract([Utterance(tmp_path / "1001_DFA_ANG_XX.wav", "angry", "1001")], preset, True)
    assert feats.shape == (1, 1, 97) and len(kept) == 1


# ---------------------------------------------------------------- fedser-client --dataset


def test_dataset_option_parses():
    base = ["--server", "127.0.0.1:9", "--data", "x", "--insecure"]
    assert build_parser().parse_args(base).dataset == "auto"
    for name in LAYOUTS:
        assert build_parser().parse_args([*base, "--dataset", name]).dataset == name
    with pytest.raises(SystemExit):
        build_parser().parse_args([*base, "--dataset", "timit"])


def _client(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_client.main", "--insecure", "--server", "127.0.0.1:9", *args],
                          capture_output=True, text=True, timeout=120)


def test_client_cli_passes_dataset_through(trees):
    # TESS files read as CREMA-D: only the --dataset choice reaching the reader makes this fail
    # (auto would detect TESS and go on to connect). One clean line, no detection logged.
    res = _client("--data", str(trees["tess"].root), "--dataset", "crema-d")
    assert res.returncode == 2, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("fedser-client: error: ")
    assert "unknown file layout: none of the 18 files matches the CREMA-D layout" in last
    assert "dataset_detected" not in res.stderr and "Traceback" not in res.stderr


def test_fixture_speakers_are_distinguishable():
    # The load tests identify the held-out speaker by its file count: counts differ within every tree.
    for layout, counts in READABLE.items():
        assert len(set(counts.values())) == len(counts), layout
