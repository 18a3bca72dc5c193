"""MKL's code paths on AMD CPUs (model/mkl_dispatch.py): the decision, and its effect in real processes."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from model.extraction_pool import ExtractionPool
from model.mkl_dispatch import ENV_SWITCH, cpu_vendor_and_flags, decide, mkl_paths, shim_path

REPO = Path(__file__).resolve().parent.parent
AMD = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma avx512f\n"
INTEL = AMD.replace("AuthenticAMD", "GenuineIntel")
OLD_AMD = AMD.replace(" avx2 fma avx512f", " avx")
SHIM = Path("/somewhere/_mkl_intel_paths.so")


def test_cpuinfo_parsing_reads_the_first_processor() -> None:
    vendor, flags = cpu_vendor_and_flags(AMD + "\n" + INTEL)
    assert vendor == "AuthenticAMD"
    assert {"avx2", "fma", "avx512f"} <= flags and "sse4_2" not in flags


@pytest.mark.parametrize("env, machine, cpuinfo, torch_first, shim, active, why", [
    (None, "x86_64", AMD, False, SHIM, True, "answered"),
    ("1", "x86_64", AMD, False, SHIM, True, "answered"),
    ("0", "x86_64", AMD, False, SHIM, False, f"{ENV_SWITCH}=0"),
    (None, "aarch64", AMD, False, SHIM, False, "not an x86-64"),
    (None, "x86_64", None, False, SHIM, False, "vendor unknown"),
    (None, "x86_64", INTEL, False, SHIM, False, "not needed on GenuineIntel"),
    (None, "x86_64", OLD_AMD, False, SHIM, False, "without AVX2"),
    (None, "x86_64", AMD, True, SHIM, False, "torch was imported before model"),
    (None, "x86_64", AMD, False, None, False, "not compiled"),
])
def test_decision(env: str | None, machine: str, cpuinfo: str | None, torch_first: bool, shim: Path | None,
                  active: bool, why: str) -> None:
    verdict = decide(env, machine, cpuinfo, torch_first, shim)
    assert verdict.active is active
    assert why in verdict.reason


def _wanted_here() -> bool:
    """Whether the library should be active on this machine: an AMD x86-64 CPU with AVX2, and a C
    compiler for the install to build it with (where there is one, a missing library is a failure)."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return decide(None, os.uname().machine, cpuinfo, False, SHIM).active and shutil.which("cc") is not None


needs_amd = pytest.mark.skipif(not _wanted_here(), reason="only on AMD x86-64 CPUs, with a C compiler to build the library")


@needs_amd
def test_the_install_built_the_library() -> None:
    assert shim_path() is not None, "model/_mkl_intel_paths.c was not compiled: reinstall (pip install -e .) with a C compiler"

# Prints the state, then digests of an MKL FFT and MKL vector log10 of fixed inputs.
PROBE = """
import hashlib, model, torch
from model.mkl_dispatch import mkl_paths
torch.set_num_threads(1)
x = torch.randn(4, 2048, generator=torch.Generator().manual_seed(0))
p = mkl_paths()
print(p.active, hashlib.sha1(torch.fft.rfft(x).numpy().tobytes()).hexdigest(),
      hashlib.sha1(x.abs().log10().numpy().tobytes()).hexdigest(), p.reason, sep="|")
"""


def _probe(**env: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env={**os.environ, **env},
                         capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.strip().split("|")


@needs_amd
def test_the_library_changes_the_code_path_mkl_runs() -> None:
    """With the library, MKL's FFT and log10 take other code paths: the same inputs round differently."""
    on = _probe()
    off = _probe(**{ENV_SWITCH: "0"})
    assert on[0] == "True" and "answered" in on[3]
    assert off[0] == "False" and f"{ENV_SWITCH}=0" in off[3]
    assert on[1] != off[1], "the FFT's rounding did not change: MKL kept its generic path"
    assert on[2] != off[2], "log10's rounding did not change: MKL kept its generic path"
    assert _probe()[1:3] == on[1:3], "the fast path is not deterministic between processes"


def test_torch_first_leaves_mkl_alone() -> None:
    """A process that imports torch before model gets MKL's default paths, and says why."""
    code = "import torch, model\nfrom model.mkl_dispatch import mkl_paths\np = mkl_paths()\nprint(p.active, p.reason, sep='|')"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    active, reason = out.stdout.strip().split("|")
    assert active == "False"
    if _wanted_here():
        assert "torch was imported before model" in reason


@needs_amd
def test_this_process_and_the_extraction_workers_share_the_paths() -> None:
    """The test process (model imported before torch, as in every fedser entry point) and the
    extraction pool's workers both have the library mapped, so both compute the same numbers."""
    assert mkl_paths().active
    shim = shim_path()
    assert shim is not None
    with ExtractionPool(2) as pool:
        pids = pool.start()
        for pid in pids:
            assert str(shim) in Path(f"/proc/{pid}/maps").read_text()
