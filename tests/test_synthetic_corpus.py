"""Tests for the synthetic RAVDESS-style corpus: names, format, determinism and voice/emotion cues."""
from __future__ import annotations

import collections
import hashlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy import signal

from experiments.synthetic_corpus import (
    EMOTION_CODES,
    CorpusSpec,
    generate_actor,
    ensure_actors,
    generate_corpus,
    main,
)
from model.ravdess import parse_name, scan


@pytest.fixture(scope="module")
def two_actors(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Actors 1 (male) and 2 (female) with the default spec, shared by the read-only tests."""
    root = tmp_path_factory.mktemp("corpus")
    generate_corpus(root, [1, 2])
    return root


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rms(path: Path) -> float:
    x, _ = sf.read(str(path))
    return float(np.sqrt(np.mean(x**2)))


def _median_f0(path: Path) -> float:
    """Median autocorrelation pitch over the loud, clearly periodic 40 ms frames."""
    x, sr = sf.read(str(path))
    # Low-passing below F2 keeps formant peaks from winning the autocorrelation.
    y = signal.sosfiltfilt(signal.butter(4, 900, fs=sr, output="sos"), x)
    n, hop = int(0.04 * sr), int(0.01 * sr)
    frames = np.lib.stride_tricks.sliding_window_view(y, n)[::hop]
    energy = (frames**2).mean(axis=1)
    lo, hi = int(sr / 400), int(sr / 60)
    f0s = []
    for frame in frames[energy > 0.1 * energy.max()]:
        frame = frame - frame.mean()
        ac = np.fft.irfft(np.abs(np.fft.rfft(frame, 2 * n)) ** 2)[:n]
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.5 * ac[0]:  # voiced frames only
            f0s.append(sr / lag)
    assert len(f0s) >= 20, f"{path.name}: too few voiced frames ({len(f0s)})"
    return float(np.median(f0s))


def test_names_parse_with_right_emotion_actor_and_sex(two_actors: Path) -> None:
    for actor, sex in ((1, "male"), (2, "female")):
        files = sorted((two_actors / f"Actor_{actor:02d}").glob("*.wav"))
        assert files
        for path in files:
            info = parse_name(path.name)
            assert info.modality == "audio-only"
            assert info.vocal_channel == "speech"
            assert info.actor == actor
            assert info.sex == sex
            assert EMOTION_CODES[info.emotion] == path.name.split("-")[2]


def test_default_spec_gives_36_files_per_actor_with_ravdess_takes(two_actors: Path) -> None:
    for actor in (1, 2):
        infos = [parse_name(p.name) for p in (two_actors / f"Actor_{actor:02d}").glob("*.wav")]
        assert len(infos) == 36
        per_emotion = collections.Counter(i.emotion for i in infos)
        assert per_emotion == {"neutral": 4, "calm": 8, "happy": 8, "sad": 8, "angry": 8}
        assert {i.intensity for i in infos if i.emotion == "neutral"} == {"normal"}
        strong = collections.Counter(i.emotion for i in infos if i.intensity == "strong")
        assert strong == {"calm": 4, "happy": 4, "sad": 4, "angry": 4}
        takes = {(i.emotion, i.intensity, i.statement, i.repetition) for i in infos}
        assert len(takes) == 36


def test_reader_keeps_four_classes_and_skips_calm(two_actors: Path) -> None:
    result = scan(two_actors)
    assert len(result.utterances) == 2 * 28
    assert result.skipped_other_label == 2 * 8
    assert result.unrecognised == 0
    assert {u.label for u in result.utterances} == {"neutral", "happy", "sad", "angry"}
    assert {u.speaker for u in result.utterances} == {"actor01", "actor02"}


def test_files_are_mono_16bit_48k_and_3_to_4_seconds(two_actors: Path) -> None:
    for path in sorted(two_actors.rglob("*.wav")):
        info = sf.info(str(path))
        assert info.samplerate == 48000
        assert info.channels == 1
        assert info.subtype == "PCM_16"
        assert info.format == "WAV"
        assert 3.0 <= info.duration <= 4.0
        x, sr = sf.read(str(path))
        assert np.max(np.abs(x)) <= 0.99 + 1 / 32768
        # RAVDESS-like lead-in: the first 0.3 s is near-silence, far below the loudest speech.
        lead = np.sqrt(np.mean(x[: int(0.3 * sr)] ** 2))
        frames = x[: len(x) // 4800 * 4800].reshape(-1, 4800)
        loudest = np.sqrt((frames**2).mean(axis=1).max())
        assert 20 * np.log10(loudest / lead) > 25.0, path.name
        # Speech spans the seed's feature window (0.5 s to 2.75 s), pauses aside.
        voiced = np.sqrt((frames[5:27] ** 2).mean(axis=1)) > 10 * lead
        assert voiced[:7].any() and voiced[-7:].any() and voiced.mean() >= 0.4, path.name


def test_same_actor_is_byte_identical_across_folders_and_subsets(two_actors: Path, tmp_path: Path) -> None:
    again = generate_actor(tmp_path / "again", 2)
    subset = generate_corpus(tmp_path / "subset", [3, 2])
    reference = {p.name: _digest(p) for p in (two_actors / "Actor_02").glob("*.wav")}
    assert {p.name: _digest(p) for p in again} == reference
    assert {p.name: _digest(p) for p in subset if p.parent.name == "Actor_02"} == reference
    assert len([p for p in subset if p.parent.name == "Actor_03"]) == 36


def test_different_actors_and_takes_differ(two_actors: Path, tmp_path: Path) -> None:
    actor3 = {p.name[:-7]: p for p in generate_actor(tmp_path, 3)}
    for path in (two_actors / "Actor_01").glob("*.wav"):
        take = path.name[:-7]  # name without the actor field
        other = two_actors / "Actor_02" / f"{take}-02.wav"
        assert _digest(path) != _digest(other)
        assert _digest(path) != _digest(actor3[take])
    digests = [_digest(p) for p in (two_actors / "Actor_01").glob("*.wav")]
    assert len(set(digests)) == 36


def test_seed_changes_the_corpus(two_actors: Path, tmp_path: Path) -> None:
    other = generate_actor(tmp_path, 1, CorpusSpec(seed=1, emotions=("neutral",)))
    assert len(other) == 4
    for path in other:
        assert _digest(path) != _digest(two_actors / "Actor_01" / path.name)


def test_male_actor_has_lower_pitch_than_female(two_actors: Path) -> None:
    male = np.median([_median_f0(p) for p in (two_actors / "Actor_01").glob("03-01-01-*.wav")])
    female = np.median([_median_f0(p) for p in (two_actors / "Actor_02").glob("03-01-01-*.wav")])
    assert 80.0 < male < 170.0
    assert 150.0 < female < 300.0
    assert male < female


def test_angry_is_louder_than_sad(two_actors: Path) -> None:
    folder = two_actors / "Actor_01"
    angry = np.mean([_rms(p) for p in folder.glob("03-01-05-*.wav")])
    sad = np.mean([_rms(p) for p in folder.glob("03-01-04-*.wav")])
    neutral = np.mean([_rms(p) for p in folder.glob("03-01-01-*.wav")])
    assert angry > 2.0 * sad  # more than 6 dB apart on average
    assert sad < neutral < angry


def test_emotion_subset_and_unknown_emotion(tmp_path: Path) -> None:
    paths = generate_actor(tmp_path, 4, CorpusSpec(emotions=("neutral", "sad")))
    assert sorted(parse_name(p.name).emotion for p in paths) == ["neutral"] * 4 + ["sad"] * 8
    with pytest.raises(ValueError, match="unknown emotions"):
        CorpusSpec(emotions=("fearful",))


def test_progress_reports_after_each_actor(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    spec = CorpusSpec(emotions=("neutral",))
    paths = generate_corpus(tmp_path, [5, 6], spec, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 2), (2, 2)]
    assert len(paths) == 8


def test_threads_write_the_same_files_in_the_same_order(tmp_path: Path) -> None:
    spec = CorpusSpec(emotions=("neutral", "angry"))
    one = generate_corpus(tmp_path / "one", [4, 3, 5], spec, workers=1)
    two = generate_corpus(tmp_path / "two", [4, 3, 5], spec, workers=2)
    assert [p.relative_to(tmp_path / "one") for p in one] == [p.relative_to(tmp_path / "two") for p in two]
    assert [_digest(p) for p in one] == [_digest(p) for p in two]


def test_ensure_actors_generates_only_what_is_not_marked_complete(tmp_path: Path) -> None:
    spec = CorpusSpec(seed=3, emotions=("neutral",))
    a, b = tmp_path / "a", tmp_path / "b"
    calls: list[tuple[int, int]] = []
    ensure_actors([(a, 1), (b, 2)], spec, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 2), (2, 2)]
    assert (a / "Actor_01" / ".complete-seed3").exists() and (b / "Actor_02" / ".complete-seed3").exists()
    kept = sorted((a / "Actor_01").glob("*.wav"))
    assert len(kept) == 4
    kept[0].unlink()  # a complete actor is not looked at again ...
    (b / "Actor_02" / ".complete-seed3").unlink()  # ... one without its marker is written again
    for path in (b / "Actor_02").glob("*.wav"):
        path.unlink()
    ensure_actors([(a, 1), (b, 2)], spec)
    assert len(list((a / "Actor_01").glob("*.wav"))) == 3
    assert len(list((b / "Actor_02").glob("*.wav"))) == 4
    ensure_actors([(a, 1)], CorpusSpec(seed=4, emotions=("neutral",)))  # another seed is not complete
    assert len(list((a / "Actor_01").glob("*.wav"))) == 4


def test_main_writes_actors_and_prints_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--out", str(tmp_path), "--actors", "1", "--seed", "7"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "36 files" in lines[0]
    assert len(list((tmp_path / "Actor_01").glob("*.wav"))) == 36
