"""Speaker-independent splits: every speaker's files go wholly to train or wholly to held-out."""
from __future__ import annotations

import hashlib
import math
from typing import Sequence

from model.ravdess import Utterance


class SplitError(ValueError):
    """The files cannot be split as asked (e.g. one speaker but a held-out share requested)."""


def speaker_split(
    utterances: Sequence[Utterance], heldout_fraction: float, seed: int = 0
) -> tuple[list[Utterance], list[Utterance]]:
    """Split by speaker: about ``heldout_fraction`` of the speakers (at least one) are held out.

    The choice depends only on the speaker names and ``seed`` (not on file order),
    so every run on the same folder holds out the same people.
    """
    if not 0.0 <= heldout_fraction < 1.0:
        raise SplitError("heldout_fraction must be in [0, 1)")
    speakers = sorted({u.speaker for u in utterances})
    if heldout_fraction == 0.0:
        return list(utterances), []
    if len(speakers) < 2:
        raise SplitError(
            f"a speaker-independent held-out set needs at least 2 speakers, found {len(speakers)}; "
            "use --heldout-fraction 0 to train without evaluation"
        )
    n_heldout = min(len(speakers) - 1, max(1, math.floor(len(speakers) * heldout_fraction + 0.5)))
    ranked = sorted(speakers, key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())
    heldout = set(ranked[:n_heldout])
    train = [u for u in utterances if u.speaker not in heldout]
    test = [u for u in utterances if u.speaker in heldout]
    return train, test
