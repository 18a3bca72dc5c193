"""Start and stop fedser processes on 127.0.0.1: used by the demo and the end-to-end tests."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Sequence


class ProcessStartError(RuntimeError):
    """A fedser process exited or timed out before it was ready."""


@dataclass
class AggregatorProcess:
    """A running `fedser-aggregator` with the ports it bound."""

    proc: subprocess.Popen
    port: int
    metrics_port: int
    log_path: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, timeout_s: float = 20.0) -> int:
        return stop_process(self.proc, timeout_s)


def _log_tail(path: Path, lines: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def start_aggregator(checkpoint_dir: Path, log_path: Path, args: Sequence[str] = (), port: int = 0,
                     ready_timeout_s: float = 60.0, env: dict[str, str] | None = None) -> AggregatorProcess:
    """Launch the aggregator on 127.0.0.1 (port 0: any free port) and wait until it serves."""
    ready = log_path.with_suffix(".ready.json")
    ready.unlink(missing_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # Local runs are plaintext unless the caller brings TLS files.
    security = [] if "--tls-cert" in args else ["--insecure"]
    cmd = [
        sys.executable, "-m", "aggregator_service.main",
        "--host", "127.0.0.1", "--port", str(port), "--metrics-host", "127.0.0.1", "--metrics-port", "0",
        "--checkpoint-dir", str(checkpoint_dir), "--ready-file", str(ready), *security, *args,
    ]
    log: IO[bytes] = open(log_path, "ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    log.close()
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if ready.exists():
            info = json.loads(ready.read_text())
            return AggregatorProcess(proc, info["port"], info["metrics_port"], log_path)
        if proc.poll() is not None:
            raise ProcessStartError(f"aggregator exited with code {proc.returncode}:\n{_log_tail(log_path)}")
        time.sleep(0.05)
    stop_process(proc)
    raise ProcessStartError(f"aggregator not ready after {ready_timeout_s:.0f} s:\n{_log_tail(log_path)}")


def start_client(target: str, data_dir: Path, client_id: str, log_path: Path, args: Sequence[str] = (),
                 env: dict[str, str] | None = None) -> subprocess.Popen:
    """Launch one `fedser-client` against ``target`` with its output in ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    security = [] if "--tls-ca" in args else ["--insecure"]
    cmd = [sys.executable, "-m", "edge_client.main", "--server", target, "--data", str(data_dir),
           "--client-id", client_id, *security, *args]
    with open(log_path, "ab") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def stop_process(proc: subprocess.Popen, timeout_s: float = 20.0) -> int:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def single_thread_env() -> dict[str, str]:
    """Environment for many processes sharing few cores: one math thread each."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
