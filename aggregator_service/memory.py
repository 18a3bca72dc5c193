"""Process-level memory settings for the aggregator.

Every gRPC worker thread that touches 1 MiB chunks gets its own glibc malloc
arena (up to 8 per core), and freed chunks stay resident in each. Two arenas
measured 40 MB less at 50 pushes of 100 MB in flight, at the same speed.
"""
from __future__ import annotations

import ctypes
import ctypes.util

M_ARENA_MAX = -8  # glibc's mallopt parameter number


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas; False where the C library is not glibc (nothing changes)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False
