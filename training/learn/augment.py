"""Augmentations of token sequences, for the training data loader.

- `Transposer` (typemoe.transpose, shared with the analysis): shift every pitch by k semitones on the ids; the key label and any
  Key_* control token move with it; a note pushed out of the pitch range is dropped with its velocity
  and duration, and a Position left without notes goes too. Equals re-tokenizing the transposed score.
- `shift_phase`: delay the music by 0-3 beats and re-tokenize, so Bar tokens fall at another phase of
  the notated bar and the model cannot read the meter from where bars start.

All take and return 1-D integer arrays (the uint16 rows of training/data/shards.py work as input).
"""

from __future__ import annotations

import numpy as np

from typemoe.transpose import Transposer

__all__ = ["Transposer", "shift_phase"]


def shift_phase(vocab, ids: np.ndarray, beats: int) -> np.ndarray:
    """Delay the music by `beats` (0-3) and re-tokenize; leading control tokens are kept as they are.

    Raises:
        ValueError: beats outside 0..BEATS_PER_BAR-1 (a whole bar would change nothing but length).
    """
    from typemoe.vocab import BEATS_PER_BAR, FAMILIES

    if not 0 <= beats < BEATS_PER_BAR:
        raise ValueError(f"beats must be in 0..{BEATS_PER_BAR - 1}, got {beats}")
    ids = np.asarray(ids, dtype=np.int64)
    control = FAMILIES.index("control")
    n_lead = (
        int(np.argmax(vocab.family_of[ids] != control))
        if (vocab.family_of[ids] != control).any()
        else len(ids)
    )
    score = vocab.decode(ids[n_lead:].tolist())
    if beats:
        score = score.shift_time(beats * score.ticks_per_quarter)
    body = vocab.encode_score(score) if score.note_num() else []
    return np.concatenate([ids[:n_lead], np.asarray(body, dtype=np.int64)])
