"""Let the MKL inside torch use its AVX2 / AVX-512 code paths on AMD CPUs.

torch's x86 wheels carry Intel's MKL for FFTs, vector math and some BLAS. MKL
asks ``mkl_serv_intel_cpu_true()`` whether the CPU is Intel's and, on any other
vendor's, runs generic code paths whatever the CPU supports: on the 2-core AMD
EPYC VM the seed preset's FFTs took 0.23-0.28 ms a file that way and 0.11-0.14
with MKL's own AVX-512 path (timed alone), and feature extraction with two worker processes
went from 8.6-8.7x to 11.3x the seed's librosa path in the same hour.

``model/_mkl_intel_paths.c`` defines that one function, answering yes; loaded
into the process's global symbol scope before torch is, it is what torch's MKL
calls, and MKL then picks its path from the CPU's feature bits as it does on
Intel. It must come before torch, so ``model/__init__.py`` calls
``enable_mkl_fast_paths()``: every fedser process imports ``model`` before
anything that imports torch (the extraction pool's fork server too). Nothing
changes on Intel or ARM CPUs, where torch was imported first, without the
compiled library (no C compiler at install), or with ``FEDSER_MKL_FAST_PATHS=0``.
Results agree with the generic paths to float32 rounding (features to ~2e-4 dB).
"""
from __future__ import annotations

import ctypes
import importlib.machinery
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

ENV_SWITCH = "FEDSER_MKL_FAST_PATHS"  # "0" keeps MKL's generic paths on AMD CPUs
_LIBRARY_STEM = "_mkl_intel_paths"


@dataclass(frozen=True)
class MklPaths:
    """Whether MKL's vendor check is answered (``active``) and why, for logs and benchmark metadata."""

    active: bool
    reason: str


_ACTIVE = MklPaths(True, "MKL's vendor check answered: its AVX2/AVX-512 paths on this AMD CPU")
_TORCH_FIRST = MklPaths(False, "torch was imported before model: MKL's vendor check was already bound")


def shim_path() -> Path | None:
    """The compiled ``_mkl_intel_paths`` library beside this module, or None when the install did not build it."""
    here = Path(__file__).resolve().parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = here / f"{_LIBRARY_STEM}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _loaded(path: Path) -> bool:
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return False
    return str(path) in maps


def cpu_vendor_and_flags(cpuinfo: str) -> tuple[str, frozenset[str]]:
    """The first processor's ``vendor_id`` and ``flags`` from /proc/cpuinfo text."""
    vendor, flags = "", frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "vendor_id" and not vendor:
            vendor = value.strip()
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
        if vendor and flags:
            break
    return vendor, flags


def decide(env_value: str | None, machine: str, cpuinfo: str | None, torch_imported: bool,
           shim: Path | None) -> MklPaths:
    """Whether to load the library, from the facts (pure: ``enable_mkl_fast_paths`` gathers them)."""
    if env_value is not None and env_value.strip() == "0":
        return MklPaths(False, f"off ({ENV_SWITCH}=0)")
    if machine.lower() not in ("x86_64", "amd64"):
        return MklPaths(False, f"not an x86-64 CPU ({machine})")
    if cpuinfo is None:
        return MklPaths(False, "CPU vendor unknown (no /proc/cpuinfo)")
    vendor, flags = cpu_vendor_and_flags(cpuinfo)
    if vendor != "AuthenticAMD":
        return MklPaths(False, f"not needed on {vendor or 'this CPU'}")
    if not {"avx2", "fma"} <= flags:
        return MklPaths(False, "AMD CPU without AVX2/FMA: MKL's generic paths are its best there")
    if torch_imported:
        return _TORCH_FIRST
    if shim is None:
        return MklPaths(False, f"model/{_LIBRARY_STEM}.c was not compiled at install (no C compiler?)")
    return _ACTIVE


def _current(torch_imported: bool) -> tuple[MklPaths, Path | None, bool]:
    """(verdict, library, already loaded) for this process."""
    shim = shim_path()
    if shim is not None and _loaded(shim):
        return _ACTIVE, shim, True
    try:
        cpuinfo: str | None = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = None
    return decide(os.environ.get(ENV_SWITCH), platform.machine(), cpuinfo, torch_imported, shim), shim, False


def enable_mkl_fast_paths() -> MklPaths:
    """Load the library into the global symbol scope when it helps and torch is not loaded yet; idempotent."""
    verdict, shim, loaded = _current(torch_imported="torch" in sys.modules)
    if not verdict.active or loaded or shim is None:
        return verdict
    try:
        ctypes.CDLL(str(shim), mode=os.RTLD_GLOBAL)
    except OSError as exc:
        return MklPaths(False, f"could not load {shim.name}: {exc}")
    return verdict


def mkl_paths() -> MklPaths:
    """What ``enable_mkl_fast_paths`` achieved in this process, and why not where it did not (changes nothing)."""
    verdict, _, loaded = _current(torch_imported=False)
    if verdict.active and not loaded:  # it would have helped, but torch came first
        return _TORCH_FIRST
    return verdict
