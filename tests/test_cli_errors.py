"""Bad arguments and bad data give one clear error line and a non-zero exit, never a traceback."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aggregator_service.checkpoints import CheckpointStore, encode_checkpoint

UNUSED_SERVER = "127.0.0.1:9"  # never contacted: every case fails before connecting


def run(module: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=120, env=env)


def client(*args: str) -> subprocess.CompletedProcess:
    return run("edge_client.main", "--insecure", *args)


def assert_clean_error(result: subprocess.CompletedProcess, code: int, message: str) -> None:
    assert result.returncode == code, result.stderr
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.fixture
def speakers(corpus: list[Path], tmp_path: Path) -> Path:
    """A copy of one client's folder, safe to damage."""
    return Path(shutil.copytree(corpus[0], tmp_path / "data"))


def test_bad_arguments() -> None:
    assert_clean_error(client("--data", "x"), 2, "the following arguments are required: --server")
    assert_clean_error(client("--server", "nohost", "--data", "x"), 2, "--server must be HOST:PORT")
    assert_clean_error(client("--server", UNUSED_SERVER, "--data", "x", "--rounds", "-1"), 2, "--rounds must be >= 0")
    assert_clean_error(client("--server", UNUSED_SERVER, "--data", "x", "--heldout-fraction", "1.5"), 2,
                       "--heldout-fraction must be in [0, 1)")


def test_missing_empty_and_unknown_layout_folders(tmp_path: Path) -> None:
    assert_clean_error(client("--server", UNUSED_SERVER, "--data", str(tmp_path / "nope")), 2, "does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_clean_error(client("--server", UNUSED_SERVER, "--data", str(empty)), 2, "is empty")
    other = tmp_path / "other"
    other.mkdir()
    (other / "speech_001.wav").write_bytes(b"RIFF")
    assert_clean_error(client("--server", UNUSED_SERVER, "--data", str(other)), 2, "unknown file layout")


def test_only_calm_files_are_not_taken_as_happy(speakers: Path) -> None:
    for f in speakers.rglob("*.wav"):
        if f.name.split("-")[2] != "02":
            f.unlink()
    assert_clean_error(client("--server", UNUSED_SERVER, "--data", str(speakers)), 2,
                       "none of the classes neutral, happy, sad, angry")


def test_corrupt_audio_and_single_speaker(speakers: Path) -> None:
    victim = sorted(speakers.rglob("03-01-05-*.wav"))[0]
    victim.write_bytes(b"RIFF\x00\x00garbage" * 10)
    assert_clean_error(client("--server", UNUSED_SERVER, "--data", str(speakers)), 2,
                       f"{victim.name}: cannot read audio")
    one = speakers / "Actor_01"
    assert_clean_error(client("--server", UNUSED_SERVER, "--data", str(one)), 2, "needs at least 2 speakers")


def test_aggregator_bad_configuration(tmp_path: Path) -> None:
    env = {"FEDSER_PORT": "not-a-port", "PATH": "/usr/bin:/bin"}
    assert_clean_error(run("aggregator_service.main", env=env), 2, "argument --port: invalid int value")
    assert_clean_error(run("aggregator_service.main", "--insecure", "--clients-per-round", "2", "--min-clients", "3"), 2,
                       "min_clients must be between 1 and clients_per_round")
    store = CheckpointStore(tmp_path / "ckpt")
    store.save(encode_checkpoint(0, {}, {"architecture_id": "other-net"}))
    assert_clean_error(
        run("aggregator_service.main", "--insecure", "--port", "0", "--metrics-port", "0",
            "--checkpoint-dir", str(tmp_path / "ckpt")),
        1, "holds checkpoints of architecture 'other-net'")


def test_aggregator_port_in_use(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        common = ["--insecure", "--checkpoint-dir", str(tmp_path / "ckpt")]
        assert_clean_error(run("aggregator_service.main", *common, "--port", port, "--metrics-port", "0"), 1,
                           f"cannot listen for gRPC on 127.0.0.1:{port}")
        assert_clean_error(run("aggregator_service.main", *common, "--port", "0", "--metrics-port", port), 1,
                           f"cannot listen for metrics on 127.0.0.1:{port}: Address already in use")
