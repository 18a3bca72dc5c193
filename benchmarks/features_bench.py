"""Section 3: feature extraction, files per second, on a generated RAVDESS-layout corpus.

- the seed's way: librosa, file by file (``librosa.load(path, sr=22050, offset=0.5,
  duration=2.25)``, ``librosa.feature.mfcc(n_mfcc=40)``, mean over axis 0);
  librosa is a bench-only extra (``pip install -e '.[bench]'``): without it the
  row says so;
- fedser's way: ``model.features.get_preset(name).extract_files(paths)`` in batches
  of 64 (torch; torchaudio's kernels), for every preset in ``model.features.PRESETS``;
  inside a batch, ``model.features.extraction_workers()`` threads (one torch
  thread each) take chunks of a few files (read, resample, STFT, mel, dB);
- the same batches through ``model.extraction_pool.ExtractionPool`` (when it
  exists): ``extraction_workers()`` worker processes, one torch thread each;
  their start (about 2 s, once) is in the row's warm-up time;
- with ``model.feature_cache.FeatureCache`` (when the module exists): cold (a new
  cache folder: hash, extract, write every row; with the worker pool as
  ``fedser-client`` gives it, which uses it from ``min_files`` uncached files) and
  warm (a second pass over the same folder with a new cache object: digests from
  the stat index, read every row).

fedser's rows run with ``model.allocator.keep_freed_memory()`` in effect, as in
``fedser-client`` (it is process-wide: set before the first pass, so the
librosa rows run under it too).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from benchmarks.common import median, sig

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


@dataclass
class _Pipeline:
    """One row of the table: how to run it over the whole corpus, and what each pass measured."""

    name: str
    preset: str
    run: Callable[[], np.ndarray]
    note: Callable[[], str] = lambda: ""
    setup: Callable[[], None] = lambda: None  # untimed, before each pass (a new cache folder, thread count)
    warm: Callable[[], object] | None = None  # untimed, once: imports, JIT, FFT plans, allocator
    extra: dict[str, object] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)
    output: np.ndarray | None = None


def run(workdir: Path, actors: int, use_librosa: bool = True, reps: int = 5, log=print) -> dict[str, object]:
    """Every pipeline ``reps`` times, interleaved (librosa, then each fedser row, then again), so that the
    machine's drift hits all rows alike; each row reports its median pass and the median of its per-pass
    ratios to the librosa pass of the same repetition."""
    import torch

    from model.features import PRESETS, get_preset

    try:
        from model.features import CHUNK_FILES, extraction_workers
    except ImportError:  # an older model.features: torch's own intra-op threads
        CHUNK_FILES, extraction_workers = None, None

    root = Path(tempfile.mkdtemp(prefix="features-", dir=workdir))
    paths, gen_s = generate(root / "corpus", actors)
    n = len(paths)
    log(f"  [features] corpus: {actors} actors, {n} files in {gen_s:.1f} s; {reps} interleaved passes per row")
    skipped: list[dict] = []
    pipelines: list[_Pipeline] = []
    seed_name = "seed's way: librosa, file by file"
    if not use_librosa:
        skipped.append(_row(seed_name, "seed", n, None, "skipped (--no-librosa)"))
    else:
        try:
            import librosa
        except ImportError:
            skipped.append(_row(seed_name, "seed", n, None, "n/a (librosa not installed: pip install -e '.[bench]')"))
        else:
            pipelines.append(_Pipeline(seed_name, "seed", lambda: seed_way(paths), warm=lambda: seed_way(paths[:4]),
                                       extra={"librosa_version": librosa.__version__}))

    try:
        from model.allocator import keep_freed_memory
    except ImportError:
        pass
    else:
        keep_freed_memory()
    try:
        from model.extraction_pool import FILES_PER_TASK, ExtractionPool
    except ImportError:
        ExtractionPool = None  # noqa: N806
    pool = None
    if ExtractionPool is not None and extraction_workers is not None and extraction_workers() > 1:
        pool = ExtractionPool(extraction_workers())

    cache_cls = feature_cache_class()
    default_threads = torch.get_num_threads()
    thread_counts = [default_threads] + ([1] if default_threads > 1 else [])

    def set_threads(k: int) -> Callable[[], None]:
        return lambda: torch.set_num_threads(k)

    for name in PRESETS:
        preset = get_preset(name)
        for threads in thread_counts:
            if extraction_workers is not None:
                workers = min(threads, extraction_workers()) if threads > 1 else 1
                how = f"{workers} worker thread{'s' if workers > 1 else ''} x 1 torch thread, {CHUNK_FILES}-file chunks"
            else:
                how = f"torch intra-op threads {threads}"
            pipe = _Pipeline(f"fedser: torchaudio, batched, {threads} thread{'s' if threads > 1 else ''}", name,
                             lambda preset=preset: batched(preset.extract_files, paths), note=lambda how=how: how,
                             setup=set_threads(threads), extra={"batch": BATCH, "torch_threads": threads},
                             warm=lambda preset=preset: preset.extract_files(paths[:BATCH]))
            pipelines.append(pipe)
        if pool is not None:
            def via_pool(preset=preset) -> np.ndarray:
                return np.concatenate(list(pool.imap(preset, [paths[i : i + BATCH] for i in range(0, len(paths), BATCH)])))

            def start_pool(preset=preset) -> object:
                pool.start()
                return list(pool.imap(preset, [paths[:BATCH]]))

            pipelines.append(_Pipeline(
                f"fedser: torchaudio, batched, {pool.workers} worker processes", name, via_pool,
                note=lambda: f"{pool.workers} processes x 1 torch thread, tasks of {FILES_PER_TASK} files",
                setup=set_threads(default_threads), warm=start_pool,
                extra={"batch": BATCH, "worker_processes": pool.workers}))
        if cache_cls is None:
            for when in ("cold", "warm"):
                skipped.append(_row(f"fedser + feature cache, {when}", name, n, None, "n/a (cache not yet available)"))
            continue
        state: dict[str, object] = {"pass": 0}

        def new_folder(state=state, name=name) -> None:
            torch.set_num_threads(default_threads)
            state["pass"] = int(state["pass"]) + 1  # type: ignore[arg-type]
            state["folder"] = root / f"cache-{name}-{state['pass']}"

        def cold(state=state, preset=preset) -> np.ndarray:
            kwargs = {} if pool is None else {"pool": pool}
            state["cold"] = cache_cls(state["folder"], batch_size=BATCH, **kwargs)
            return state["cold"].extract(paths, preset)  # type: ignore[union-attr]

        def warm(state=state, preset=preset) -> np.ndarray:
            state["warm"] = cache_cls(state["folder"], batch_size=BATCH)  # a new object: all from disk
            return state["warm"].extract(paths, preset)  # type: ignore[union-attr]

        def hashed(key: str, state=state) -> Callable[[], str]:
            def note() -> str:
                k = getattr(state.get(key), "last_hashed", None)
                how = f"hashed {k} of {n} files (the rest: stat index)"
                if key == "cold" and pool is not None:
                    how += f"; extracted by {pool.workers} worker processes" if pool.worth_it(n) else \
                        f"; extracted in-process (under the workers' {pool.min_files} files)"
                return "" if k is None else how
            return note

        # Warm runs right after its cold pass, over the folder that pass filled.
        pipelines.append(_Pipeline("fedser + feature cache, cold", name, cold, note=hashed("cold"), setup=new_folder))
        pipelines.append(_Pipeline("fedser + feature cache, warm", name, warm, note=hashed("warm"),
                                   setup=set_threads(default_threads)))

    try:
        for pipe in pipelines:
            pipe.setup()
            if pipe.warm is not None:
                _, first = _timed(pipe.warm)
                pipe.extra["first_call_s"] = round(first, 3)
        for rep in range(reps):
            for pipe in pipelines:
                pipe.setup()
                try:
                    out, s = _timed(pipe.run)
                except Exception as exc:  # a broken librosa or cache must not cost the other rows
                    pipe.extra["failed"] = f"failed: {exc!r}"[:200]
                    continue
                pipe.seconds.append(s)
                if pipe.output is None:
                    pipe.output = out
            log(f"  [features] pass {rep + 1}/{reps}: " + ", ".join(
                f"{p.preset} {p.name.split(':')[0].split(',')[0]}: {n / p.seconds[-1]:.0f}/s"
                for p in pipelines if p.seconds and len(p.seconds) == rep + 1)[:400])
    finally:
        torch.set_num_threads(default_threads)
        if pool is not None:
            pool.close()

    seed = next((p for p in pipelines if p.name == seed_name and p.seconds), None)
    rows: list[dict] = []
    for pipe in pipelines:
        if not pipe.seconds:
            rows.append(_row(pipe.name, pipe.preset, n, None, str(pipe.extra.get("failed", "not measured"))))
            continue
        extra = dict(pipe.extra)
        extra["passes_s"] = [sig(x) for x in pipe.seconds]
        if seed is not None and len(seed.seconds) == len(pipe.seconds):
            extra["speedup_vs_seed_way"] = round(median([a / b for a, b in zip(seed.seconds, pipe.seconds)]), 2)
        if pipe.preset == "seed" and seed is not None and pipe is not seed and pipe.output is not None \
                and seed.output is not None and seed.output.shape == pipe.output.reshape(n, -1).shape:
            # Same features two ways (soxr vs torchaudio resampling): how far apart, in the MFCC-mean's units.
            diff = np.abs(seed.output - pipe.output.reshape(n, -1))
            extra["max_abs_diff_vs_librosa"] = round(float(diff.max()), 4)
            extra["mean_abs_diff_vs_librosa"] = round(float(diff.mean()), 4)
        if pipe.name.endswith("warm"):
            cold_out = next((p.output for p in pipelines if p.preset == pipe.preset and p.name.endswith("cold")), None)
            if cold_out is not None and pipe.output is not None and not np.array_equal(cold_out, pipe.output):
                extra["note_suffix"] = "WARM ROWS DIFFER"
        note = "; ".join(x for x in (pipe.note(), str(extra.pop("note_suffix", ""))) if x)
        rows.append(_row(pipe.name, pipe.preset, n, median(pipe.seconds), note, **extra))
    rows += skipped
    for r in rows:
        if "speedup_vs_seed_way" not in r:
            r["speedup_vs_seed_way"] = 1.0 if r["pipeline"] == seed_name and r["files_per_s"] else None
    return {
        "actors": actors,
        "files": n,
        "passes": reps,
        "corpus_generation_s": round(gen_s, 2),
        "torch_threads": default_threads,
        "feature_cache_available": cache_cls is not None,
        "rows": rows,
    }
