"""Shared pieces: process statistics from /proc, the aggregator launcher, timing helpers."""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Sequence

from experiments.processes import stop_process
from model.mkl_dispatch import mkl_paths

REPO_ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def sig(x: float | None, digits: int = 4) -> float | None:
    """``x`` rounded to ``digits`` significant digits (small timings keep their precision)."""
    if x is None or x != x or x == 0:
        return x
    return float(f"{x:.{digits}g}")


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def proc_status_kib(pid: int, field: str) -> int | None:
    """A ``VmXXX:`` line of /proc/<pid>/status in KiB (None where /proc is not available)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def proc_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (all its threads), from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            text = fh.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def machine_info() -> dict[str, object]:
    info: dict[str, object] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }
    try:
        info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as fh:
            info["mem_total_gib"] = round(int(fh.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    paths = mkl_paths()  # on AMD CPUs the feature FFTs take about half the time when active
    info["mkl_fast_paths"] = {"active": paths.active, "reason": paths.reason}
    return info


class AggregatorStartError(RuntimeError):
    pass


@dataclass
class BenchAggregator:
    """A production aggregator process (via benchmarks.aggregator_process) and its bound ports."""

    proc: subprocess.Popen
    port: int
    metrics_port: int
    log_path: Path
    start_s: float

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def peak_rss_kib(self) -> int | None:
        return proc_status_kib(self.pid, "VmHWM")

    def rss_kib(self) -> int | None:
        return proc_status_kib(self.pid, "VmRSS")

    def cpu_seconds(self) -> float | None:
        return proc_cpu_seconds(self.pid)

    def log_tail(self, lines: int = 10) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> int:
        return stop_process(self.proc, timeout_s=30)


def start_bench_aggregator(params: int | None, workdir: Path, args: Sequence[str],
                           ready_timeout_s: float = 120.0) -> BenchAggregator:
    """Start ``python -m benchmarks.aggregator_process`` (plaintext, free ports) and wait for its ready file.

    ``params``: size of the synthetic ``bench-flat-<params>`` model; None serves ``args``' --architecture.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    ready = workdir / "aggregator.ready.json"
    ready.unlink(missing_ok=True)
    log_path = workdir / "aggregator.log"
    cmd = [
        sys.executable, "-m", "benchmarks.aggregator_process",
        *([] if params is None else ["--bench-params", str(params)]), "--",
        "--insecure", "--host", "127.0.0.1", "--port", "0", "--metrics-host", "127.0.0.1", "--metrics-port", "0",
        "--checkpoint-dir", str(workdir / "checkpoints"), "--ready-file", str(ready), *args,
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    t0 = time.perf_counter()
    log: IO[bytes] = open(log_path, "ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO_ROOT))
    log.close()
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if ready.exists():
            info = json.loads(ready.read_text())
            return BenchAggregator(proc, info["port"], info["metrics_port"], log_path, time.perf_counter() - t0)
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    stop_process(proc)
    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-10:])
    raise AggregatorStartError(f"benchmark aggregator did not become ready (exit {proc.returncode}):\n{tail}")
