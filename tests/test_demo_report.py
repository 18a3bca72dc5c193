"""How `fedser demo` accounts for a client that failed: its exit (or the signal that ended it) and its last log lines."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from experiments.demo import _exit_text
from experiments.processes import stop_process


def _spawn(code: str, log_path: Path) -> subprocess.Popen:
    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT)


def test_a_client_that_exited_with_an_error_is_reported_with_its_code_and_log_tail(tmp_path: Path) -> None:
    log_path = tmp_path / "client-2.log"
    proc = _spawn("import sys\nfor i in range(8): print('line', i)\nsys.exit(4)", log_path)
    proc.wait(30)
    assert stop_process(proc) == 4  # already gone: its own code, no signal sent
    text = _exit_text(2, proc.returncode, log_path)
    assert text.startswith("  client-2: exit code 4; last lines of its log:")
    assert "line 7" in text and "line 3" in text and "line 2" not in text  # the last five lines only


def test_a_client_that_ignored_sigterm_is_reported_as_killed(tmp_path: Path) -> None:
    log_path = tmp_path / "client-1.log"
    proc = _spawn("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\n"
                  "time.sleep(60)", log_path)
    while "ready" not in log_path.read_text():
        assert proc.poll() is None
    assert stop_process(proc, timeout_s=0.5) == -9
    assert _exit_text(1, proc.returncode, log_path) == "  client-1: killed by SIGKILL; last lines of its log:\n    ready"


def test_a_missing_log_does_not_hide_the_exit(tmp_path: Path) -> None:
    assert _exit_text(3, 1, tmp_path / "nothing.log") == "  client-3: exit code 1; last lines of its log:\n    (no log)"
