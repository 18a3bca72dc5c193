"""Feature extraction in forked worker processes: the same numbers as in-process, in order, with the same errors.

The workers are real processes forked from the test process, reading real WAV files.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from model.audio import AudioReadError
from model.extraction_pool import FILES_PER_TASK, ExtractionPoolError, fork_available
from model.features import get_preset

pytestmark = pytest.mark.skipif(not fork_available(), reason="worker processes are forked")


@pytest.fixture
def two_torch_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # extraction_workers() == 2 even where the tests run with one thread
    yield
    torch.set_num_threads(before)


@pytest.fixture
def clips(tmp_path: Path) -> list[Path]:
    """21 clips: three tasks' worth and a partial one, at three rates (48, 16 and 44.1 kHz)."""
    rng = np.random.default_rng(3)
    out = []
    for i in range(2 * FILES_PER_TASK + 5):
        sr = (48000, 16000, 44100)[i % 3]
        t = np.arange(int(sr * 1.2)) / sr
        wave = (0.05 + 0.04 * i) * np.sin(2 * np.pi * (150 + 20 * i) * t) + 0.01 * rng.standard_normal(t.size)
        path = tmp_path / f"clip{i:02d}.wav"
        sf.write(str(path), wave.astype(np.float32), sr, subtype="PCM_16")
        out.append(path)
    return out


def _workers(preset) -> list[int]:
    return list(preset._pool._executor._processes)  # the pids of the live workers


@pytest.mark.parametrize("name", ["seed", "mfcc40-norm"])
def test_workers_give_the_in_process_numbers_in_order(two_torch_threads, clips, name):
    preset = get_preset(name)
    try:
        here = preset._extract_here(clips)  # in this process
        pooled = preset.extract_files(clips)
        assert preset._pool is not None and len(_workers(preset)) == 2
        assert os.getpid() not in _workers(preset)
        np.testing.assert_array_equal(pooled, here)  # bit for bit: a clip's numbers never depend on its batch
        # Reversed input, reversed rows: results come back in the order asked for.
        np.testing.assert_array_equal(preset.extract_files(clips[::-1]), here[::-1])
    finally:
        preset.close()
    assert preset._pool is None


def test_one_thread_or_few_files_stay_in_process(clips):
    preset = get_preset("seed")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        preset.extract_files(clips)
        assert preset._pool is None
        torch.set_num_threads(2)
        preset.extract_files(clips[:FILES_PER_TASK])  # one task's files: not worth a process
        assert preset._pool is None
    finally:
        torch.set_num_threads(before)
        preset.close()


def test_unreadable_file_raises_its_audio_error_and_the_pool_goes_on(two_torch_threads, clips):
    bad = clips[FILES_PER_TASK + 1]
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio at all")
    preset = get_preset("seed")
    try:
        with pytest.raises(AudioReadError, match=bad.name):
            preset.extract_files(clips)
        good = [p for p in clips if p != bad]
        assert preset.extract_files(good).shape == (len(good), *preset.input_shape)
    finally:
        preset.close()


def test_a_killed_worker_is_a_clear_error_and_the_next_call_starts_new_workers(two_torch_threads, clips):
    preset = get_preset("seed")
    try:
        expected = preset.extract_files(clips)
        victim = _workers(preset)[0]
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(ExtractionPoolError, match="worker process died"):
            for _ in range(20):  # the executor notices the death on its next call at the latest
                preset.extract_files(clips)
        np.testing.assert_array_equal(preset.extract_files(clips), expected)
        assert victim not in _workers(preset)
    finally:
        preset.close()
