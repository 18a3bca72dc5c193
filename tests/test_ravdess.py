"""Tests for the RAVDESS name parser and folder scan (model/ravdess.py).

Includes the calm/happy trap: emotion code 02 is "calm" and 03 is "happy";
the seed notebook mapped 02 to happy, which silently mislabels a whole class.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from model.ravdess import (
    EMOTIONS,
    SEED_CLASSES,
    RavdessInfo,
    RavdessNameError,
    ScanResult,
    Utterance,
    parse_name,
    scan,
)


def test_parse_real_name():
    info = parse_name("03-01-05-02-01-01-12.wav")
    assert info == RavdessInfo(
        modality="audio-only",
        vocal_channel="speech",
        emotion="angry",
        intensity="strong",
        statement="Kids are talking by the door",
        repetition=1,
        actor=12,
    )
    assert info.sex == "female"
    assert info.speaker == "actor12"


def test_parse_second_statement_and_repetition():
    info = parse_name("03-01-04-01-02-02-07.wav")
    assert (info.emotion, info.intensity, info.statement, info.repetition, info.actor) == (
        "sad",
        "normal",
        "Dogs are sitting by the door",
        2,
        7,
    )
    assert info.sex == "male"
    assert info.speaker == "actor07"


def test_parse_accepts_paths_and_upper_case_extension():
    info = parse_name("/data/Actor_01/03-01-03-01-01-01-01.WAV")
    assert info.emotion == "happy"
    assert info.speaker == "actor01"
    assert parse_name(Path("Actor_24") / "03-02-06-01-02-01-24.wav").vocal_channel == "song"


def test_emotion_table_calm_is_not_happy():
    assert EMOTIONS["02"] == "calm"
    assert EMOTIONS["03"] == "happy"
    assert parse_name("03-01-02-01-01-01-01.wav").emotion == "calm"
    assert parse_name("03-01-03-01-01-01-01.wav").emotion == "happy"
    assert SEED_CLASSES == ("neutral", "happy", "sad", "angry")


def test_scan_keeps_happy_and_skips_calm(tmp_path):
    (tmp_path / "03-01-02-01-01-01-01.wav").touch()  # calm
    (tmp_path / "03-01-02-02-02-02-01.wav").touch()  # calm, strong
    (tmp_path / "03-01-03-01-01-01-01.wav").touch()  # happy
    result = scan(tmp_path)
    assert [(u.path.name, u.label) for u in result.utterances] == [("03-01-03-01-01-01-01.wav", "happy")]
    assert result.skipped_other_label == 2
    assert result.skipped_not_speech == 0
    assert result.unrecognised == 0


@pytest.mark.parametrize(
    "actor, sex",
    [(1, "male"), (2, "female"), (11, "male"), (12, "female"), (23, "male"), (24, "female")],
)
def test_odd_actors_male_even_female(actor, sex):
    info = parse_name(f"03-01-01-01-01-01-{actor:02d}.wav")
    assert info.sex == sex
    assert info.speaker == f"actor{actor:02d}"


@pytest.mark.parametrize(
    "name, message",
    [
        ("03-01-05-02-01-01.wav", "not a RAVDESS name"),
        ("03-01-05-02-01-01-12-01.wav", "not a RAVDESS name"),
        ("3-1-5-2-1-1-12.wav", "not a RAVDESS name"),
        ("03-01-05-02-01-01-12.mp4", "not a RAVDESS name"),
        ("notes.txt", "not a RAVDESS name"),
        ("03-01-09-01-01-01-01.wav", "unknown emotion code '09'"),
        ("03-01-00-01-01-01-01.wav", "unknown emotion code '00'"),
        ("04-01-03-01-01-01-01.wav", "unknown modality code '04'"),
        ("03-03-03-01-01-01-01.wav", "unknown vocal channel code '03'"),
        ("03-01-03-03-01-01-01.wav", "unknown intensity code '03'"),
        ("03-01-03-01-03-01-01.wav", "unknown statement code '03'"),
        ("03-01-05-02-01-03-12.wav", "repetition must be 01 or 02, got 03"),
        ("03-01-05-02-01-00-12.wav", "repetition must be 01 or 02, got 00"),
        ("03-01-05-02-01-01-00.wav", "actor must be 01..99, got 00"),
        ("03-01-01-02-01-01-01.wav", "no strong intensity for neutral"),
    ],
)
def test_bad_names_raise(name, message):
    with pytest.raises(RavdessNameError, match=message) as excinfo:
        parse_name(name)
    assert str(excinfo.value).startswith(Path(name).name + ":")


def test_name_error_is_value_error():
    assert issubclass(RavdessNameError, ValueError)


def _touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def test_scan_counts_every_kind_of_file(tmp_path):
    _touch(
        tmp_path,
        # usable: neutral, happy, sad, angry across two actors in sub-folders
        "Actor_02/03-01-05-01-01-01-02.wav",
        "Actor_02/03-01-01-01-01-01-02.wav",
        "Actor_01/03-01-04-02-02-02-01.wav",
        "Actor_01/03-01-03-01-01-01-01.wav",
        # other emotions: calm, fearful, disgust, surprised
        "Actor_01/03-01-02-01-01-01-01.wav",
        "Actor_01/03-01-06-01-01-01-01.wav",
        "Actor_02/03-01-07-01-01-01-02.wav",
        "Actor_02/03-01-08-01-01-01-02.wav",
        # song (vocal channel 02), even with a seed emotion; and video-only
        "Actor_01/03-02-03-01-01-01-01.wav",
        "Actor_02/03-02-05-02-01-01-02.wav",
        "Actor_01/02-01-03-01-01-01-01.wav",
        # unrecognised names
        "Actor_01/readme.txt",
        "Actor_01/03-01-09-01-01-01-01.wav",
        "Actor_02/03-01-01-02-01-01-02.wav",
        # hidden files are ignored, not counted
        "Actor_01/.03-01-03-01-01-01-01.wav",
        ".DS_Store",
    )
    result = scan(tmp_path)
    assert isinstance(result, ScanResult)
    assert result.skipped_other_label == 4
    assert result.skipped_not_speech == 3
    assert result.unrecognised == 3
    assert result.utterances == [
        Utterance(tmp_path / "Actor_01/03-01-03-01-01-01-01.wav", "happy", "actor01"),
        Utterance(tmp_path / "Actor_01/03-01-04-02-02-02-01.wav", "sad", "actor01"),
        Utterance(tmp_path / "Actor_02/03-01-01-01-01-01-02.wav", "neutral", "actor02"),
        Utterance(tmp_path / "Actor_02/03-01-05-01-01-01-02.wav", "angry", "actor02"),
    ]


def test_scan_returns_sorted_paths(tmp_path):
    names = ["03-01-05-01-01-01-09.wav", "03-01-01-01-01-01-03.wav", "03-01-04-01-02-01-05.wav"]
    _touch(tmp_path, *names)
    result = scan(tmp_path)
    assert [u.path.name for u in result.utterances] == sorted(names)
    assert [u.speaker for u in result.utterances] == ["actor03", "actor05", "actor09"]
    assert [u.label for u in result.utterances] == ["neutral", "sad", "angry"]


def test_scan_with_custom_classes(tmp_path):
    _touch(tmp_path, "03-01-02-01-01-01-01.wav", "03-01-03-01-01-01-01.wav", "03-01-05-01-01-01-01.wav")
    result = scan(tmp_path, classes=("calm", "angry"))
    assert [u.label for u in result.utterances] == ["calm", "angry"]
    assert result.skipped_other_label == 1


def test_scan_empty_folder(tmp_path):
    assert scan(tmp_path) == ScanResult(utterances=[], skipped_other_label=0, skipped_not_speech=0, unrecognised=0)
