"""A device's local data: scan the folder (any registered corpus layout), split by speaker, extract features once."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from edge_client.errors import DataError
from model.audio import AudioReadError, read_audio
from model.corpora import AUTO, CORPORA, LayoutError, UnknownLayoutError, recognised, scan_dataset
from model.eventlog import log_event
from model.feature_cache import FeatureCache
from model.features import FeaturePreset
from model.manifest import ManifestError
from model.ravdess import Utterance
from model.splits import SplitError, speaker_split

log = logging.getLogger("fedser.client")

EXTRACT_BATCH = 64


@dataclass
class LocalData:
    """Features and label indices of the local train and held-out sets."""

    train_x: np.ndarray
    train_y: np.ndarray
    heldout_x: np.ndarray
    heldout_y: np.ndarray
    train_speakers: int
    heldout_speakers: int


def find_utterances(root: Path, classes: tuple[str, ...], dataset: str = AUTO) -> list[Utterance]:
    """The usable files under ``root`` read as ``dataset`` (``"auto"``: detect the layout).

    DataError when there are none, saying what was found instead.
    """
    if not root.exists():
        raise DataError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"data path {root} is not a folder")
    try:
        name, found = scan_dataset(root, dataset, classes)
    except UnknownLayoutError as exc:
        if exc.files == 0:
            raise DataError(f"data folder {root} is empty") from None
        raise DataError(str(exc)) from None
    except (LayoutError, ManifestError) as exc:
        raise DataError(str(exc)) from None
    corpus = CORPORA[name]
    if dataset == AUTO:
        log_event(log, "dataset_detected", dataset=name, files=recognised(found))
    missing, invalid = getattr(found, "missing", []), getattr(found, "invalid", [])
    if missing:
        log_event(log, "manifest_files_missing", logging.WARNING, count=len(missing), first=missing[:5])
    if invalid:
        log_event(log, "manifest_rows_invalid", logging.WARNING, count=len(invalid), first=invalid[:5])
    if not found.utterances:
        if found.skipped_other_label or found.skipped_not_speech:
            raise DataError(
                f"{root}: {corpus.title} files found, but none of the classes {', '.join(classes)} "
                f"({found.skipped_other_label} of other emotions, {found.skipped_not_speech} not speech)"
            )
        if missing:
            raise DataError(f"{root}: none of the {len(missing)} files listed in the manifest exists "
                            f"(first: {missing[0]})")
        if invalid:
            raise DataError(f"{root}: no usable manifest rows ({invalid[0]})")
        raise DataError(f"{root}: no {corpus.title} files found ({corpus.looks_for})")
    log_event(
        log, "data_scanned", dataset=name, files=len(found.utterances), skipped_other_label=found.skipped_other_label,
        skipped_not_speech=found.skipped_not_speech, unrecognised=found.unrecognised,
    )
    return found.utterances


def extract(
    utterances: list[Utterance], preset: FeaturePreset, skip_unreadable: bool,
    progress: Callable[[int], None] | None = None, cache: FeatureCache | None = None,
) -> tuple[np.ndarray, list[Utterance]]:
    """Features of ``utterances`` in batches; returns them with the utterances actually used."""
    if cache is not None:
        return _extract_cached(utterances, preset, skip_unreadable, progress, cache)
    feats, kept = [], []
    window = (getattr(preset, "offset_s", 0.0), getattr(preset, "duration_s", None))
    for start in range(0, len(utterances), EXTRACT_BATCH):
        batch = utterances[start : start + EXTRACT_BATCH]
        waves = []
        for u in batch:
            try:
                waves.append(read_audio(u.path, *window))
                kept.append(u)
            except AudioReadError as exc:
                if not skip_unreadable:
                    raise DataError(f"{exc} (use --skip-unreadable to leave such files out)") from None
                log_event(log, "file_skipped", logging.WARNING, file=u.path.name, reason="unreadable")
        feats.append(preset.extract_batch(waves))
        if progress:
            progress(len(batch))
    return np.concatenate(feats) if feats else np.zeros((0, *preset.input_shape), np.float32), kept


def _extract_cached(
    utterances: list[Utterance], preset: FeaturePreset, skip_unreadable: bool,
    progress: Callable[[int], None] | None, cache: FeatureCache,
) -> tuple[np.ndarray, list[Utterance]]:
    try:
        feats, stats = cache.extract_with_stats([u.path for u in utterances], preset, progress)
        log_event(log, "features_ready", files=len(utterances), cached=stats.hits, extracted=stats.misses)
        return feats, list(utterances)
    except AudioReadError as exc:
        if not skip_unreadable:
            raise DataError(f"{exc} (use --skip-unreadable to leave such files out)") from None
    # Some file is unreadable: go one by one (rows extracted above are cached by now).
    rows, kept = [], []
    for u in utterances:
        try:
            rows.append(cache.extract([u.path], preset))
            kept.append(u)
        except AudioReadError:
            log_event(log, "file_skipped", logging.WARNING, file=u.path.name, reason="unreadable")
    return (np.concatenate(rows) if rows else np.zeros((0, *preset.input_shape), np.float32)), kept


def load_local_data(
    root: Path,
    classes: tuple[str, ...],
    preset: FeaturePreset,
    heldout_fraction: float,
    seed: int = 0,
    skip_unreadable: bool = False,
    progress: Callable[[int], None] | None = None,
    dataset: str = AUTO,
    cache: FeatureCache | None = None,
) -> LocalData:
    """Everything the client trains and evaluates on, ready as arrays.

    ``dataset`` names the corpus layout (``model.corpora.DATASETS``) or is
    ``"auto"`` to detect it.
    """
    utterances = find_utterances(root, classes, dataset)
    try:
        train, heldout = speaker_split(utterances, heldout_fraction, seed)
    except SplitError as exc:
        raise DataError(f"{root}: {exc}") from None
    index = {c: i for i, c in enumerate(classes)}
    train_x, train_used = extract(train, preset, skip_unreadable, progress, cache)
    heldout_x, heldout_used = extract(heldout, preset, skip_unreadable, progress, cache)
    if len(train_used) == 0:
        raise DataError(f"{root}: no readable training files")
    return LocalData(
        train_x=train_x,
        train_y=np.array([index[u.label] for u in train_used], dtype=np.int64),
        heldout_x=heldout_x,
        heldout_y=np.array([index[u.label] for u in heldout_used], dtype=np.int64),
        train_speakers=len({u.speaker for u in train_used}),
        heldout_speakers=len({u.speaker for u in heldout_used}),
    )
