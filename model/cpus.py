"""The number of CPUs this process may use (its affinity mask), not the machine's; no torch import."""
from __future__ import annotations

import os


def usable_cpus() -> int:
    """CPUs in this process's affinity mask (os.cpu_count() where there is none); at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
