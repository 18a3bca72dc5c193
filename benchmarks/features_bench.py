"""Section 3: feature extraction, files per second, on a generated RAVDESS-layout corpus.

- the seed's way: librosa, file by file (``librosa.load(path, sr=22050, offset=0.5,
  duration=2.25)``, ``librosa.feature.mfcc(n_mfcc=40)``, mean over axis 0);
  librosa is a bench-only extra (``pip install -e '.[bench]'``): without it the
  row says so;
- fedser's way: ``model.features.get_preset(name).extract_files(paths)`` in batches
  of 64 (torch; torchaudio's kernels), for every preset in ``model.features.PRESETS``;
  inside a batch, ``model.features.extraction_workers()`` threads (one torch
  thread each) take chunks of a few files (read, resample, STFT, mel, dB);
- with ``model.feature_cache.FeatureCache`` (when the module exists): cold (a new
  cache folder: hash, extract, write every row) and warm (a second pass over the
  same folder with a new cache object: digests from the stat index, read every row).

The corpus is written just before, so every pass reads the files from the OS
page cache: "cold" means the feature cache is empty, not the disk cache. Each
pipeline first extracts a few files untimed (imports, numba JIT, FFT plans,
allocator: 4 files file by file, one batch of 64 batched); that warm-up time is
reported separately. fedser's batched pipeline runs at torch's default
intra-op thread count (what the client uses; extraction uses that many worker
threads) and, when that is more than one, at one thread too (librosa's work is
single-threaded numpy/soxr); the note says how many workers ran.
"""
from __future__ import annotations

import importlib
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from benchmarks.common import sig

BATCH = 64
SEED_SR, SEED_OFFSET_S, SEED_DURATION_S, SEED_N_MFCC = 22050, 0.5, 2.25, 40


def generate(out: Path, actors: int) -> tuple[list[Path], float]:
    from experiments.synthetic_corpus import CorpusSpec, generate_corpus

    t0 = time.perf_counter()
    paths = generate_corpus(out, range(1, actors + 1), CorpusSpec(seed=0))
    return sorted(paths), time.perf_counter() - t0


def seed_way(paths: list[Path]) -> np.ndarray:
    import librosa

    rows = []
    for p in paths:
        y, sr = librosa.load(str(p), sr=SEED_SR, offset=SEED_OFFSET_S, duration=SEED_DURATION_S)
        rows.append(librosa.feature.mfcc(y=y, sr=sr, n_mfcc=SEED_N_MFCC).mean(axis=0))
    width = max(len(r) for r in rows)
    return np.stack([np.pad(r, (0, width - len(r))) for r in rows]).astype(np.float32)


def batched(extract: Callable[[list[Path]], np.ndarray], paths: list[Path]) -> np.ndarray:
    return np.concatenate([extract(paths[i : i + BATCH]) for i in range(0, len(paths), BATCH)])


def _timed(fn: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _row(pipeline: str, preset: str, files: int, seconds: float | None, note: str = "", **extra: object) -> dict:
    return {
        "pipeline": pipeline,
        "preset": preset,
        "files": files,
        "seconds": None if seconds is None else sig(seconds),
        "files_per_s": None if not seconds else round(files / seconds, 1),
        "note": note,
        **extra,
    }


def feature_cache_class():
    """model.feature_cache.FeatureCache when it exists (it may land after this harness)."""
    try:
        return importlib.import_module("model.feature_cache").FeatureCache
    except (ImportError, AttributeError):
        return None


def run(workdir: Path, actors: int, use_librosa: bool = True, log=print) -> dict[str, object]:
    import torch

    from model.features import PRESETS, get_preset

    try:
        from model.features import CHUNK_FILES, extraction_workers
    except ImportError:  # an older model.features: torch's own intra-op threads
        CHUNK_FILES, extraction_workers = None, None

    root = Path(tempfile.mkdtemp(prefix="features-", dir=workdir))
    paths, gen_s = generate(root / "corpus", actors)
    n = len(paths)
    log(f"  [features] corpus: {actors} actors, {n} files in {gen_s:.1f} s")
    rows: list[dict] = []

    seed_feats = None
    if not use_librosa:
        rows.append(_row("seed's way: librosa, file by file", "seed", n, None, "skipped (--no-librosa)"))
    else:
        try:
            import librosa  # noqa: F401
        except ImportError:
            rows.append(_row("seed's way: librosa, file by file", "seed", n, None,
                             "n/a (librosa not installed: pip install -e '.[bench]')"))
        else:
            try:
                _, first = _timed(lambda: seed_way(paths[:4]))
                seed_feats, s = _timed(lambda: seed_way(paths))
            except Exception as exc:  # a broken librosa install must not cost fedser's rows
                rows.append(_row("seed's way: librosa, file by file", "seed", n, None, f"failed: {exc!r}"[:200]))
            else:
                rows.append(_row("seed's way: librosa, file by file", "seed", n, s, first_call_s=round(first, 3),
                                 librosa_version=librosa.__version__))
                log(f"  [features] librosa: {n / s:.1f} files/s")

    cache_cls = feature_cache_class()
    default_threads = torch.get_num_threads()
    thread_counts = [default_threads] + ([1] if default_threads > 1 else [])
    for name in PRESETS:
        preset = get_preset(name)
        for threads in thread_counts:
            torch.set_num_threads(threads)
            _, first = _timed(lambda: preset.extract_files(paths[:BATCH]))
            feats, s = _timed(lambda: batched(preset.extract_files, paths))
            extra: dict[str, object] = {"first_call_s": round(first, 3), "batch": BATCH, "torch_threads": threads}
            if name == "seed" and seed_feats is not None and seed_feats.shape == feats.reshape(n, -1).shape:
                # Same features two ways (soxr vs torchaudio resampling): how far apart, in the MFCC-mean's units.
                diff = np.abs(seed_feats - feats.reshape(n, -1))
                extra["max_abs_diff_vs_librosa"] = round(float(diff.max()), 4)
                extra["mean_abs_diff_vs_librosa"] = round(float(diff.mean()), 4)
            if extraction_workers is not None:
                workers = extraction_workers()
                how = (f"{workers} worker thread{'s' if workers > 1 else ''} x 1 torch thread, "
                       f"{CHUNK_FILES}-file chunks")
            else:
                how = f"torch intra-op threads {threads}"
            rows.append(_row(f"fedser: torchaudio, batched, {threads} thread{'s' if threads > 1 else ''}",
                             name, n, s, how, **extra))
            log(f"  [features] fedser {name} ({threads} thread{'s' if threads > 1 else ''}): {n / s:.1f} files/s")
        torch.set_num_threads(default_threads)
        if cache_cls is None:
            rows.append(_row("fedser + feature cache, cold", name, n, None, "n/a (cache not yet available)"))
            rows.append(_row("fedser + feature cache, warm", name, n, None, "n/a (cache not yet available)"))
            continue
        folder = root / f"cache-{name}"
        try:
            cold_cache = cache_cls(folder, batch_size=BATCH)
            cold, s_cold = _timed(lambda: cold_cache.extract(paths, preset))
            warm_cache = cache_cls(folder, batch_size=BATCH)  # a new object: nothing in memory, all from disk
            warm, s_warm = _timed(lambda: warm_cache.extract(paths, preset))
        except Exception as exc:  # the cache is being written beside this harness; its API may move
            for when in ("cold", "warm"):
                rows.append(_row(f"fedser + feature cache, {when}", name, n, None, f"failed: {exc!r}"[:200]))
            continue
        same = bool(np.array_equal(cold, warm))

        def hashed(cache) -> str:
            k = getattr(cache, "last_hashed", None)
            return "" if k is None else f"hashed {k} of {n} files (the rest: stat index)"

        rows.append(_row("fedser + feature cache, cold", name, n, s_cold, hashed(cold_cache),
                         hits=getattr(cold_cache, "hits", None), misses=getattr(cold_cache, "misses", None)))
        warm_note = "; ".join(x for x in (hashed(warm_cache), "" if same else "WARM ROWS DIFFER") if x)
        rows.append(_row("fedser + feature cache, warm", name, n, s_warm, warm_note,
                         hits=getattr(warm_cache, "hits", None), misses=getattr(warm_cache, "misses", None)))
        log(f"  [features] cache {name}: cold {n / s_cold:.1f}, warm {n / s_warm:.1f} files/s")

    seed_rate = next((r["files_per_s"] for r in rows if r["pipeline"].startswith("seed's way") and r["files_per_s"]), None)
    for r in rows:
        r["speedup_vs_seed_way"] = round(r["files_per_s"] / seed_rate, 2) if seed_rate and r["files_per_s"] else None
    return {
        "actors": actors,
        "files": n,
        "corpus_generation_s": round(gen_s, 2),
        "torch_threads": default_threads,
        "feature_cache_available": cache_cls is not None,
        "rows": rows,
    }
