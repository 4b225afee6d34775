"""Transposition of REMI token ids, torch-free: shared by training's augmentation and the analysis that
reads a piece in several transpositions (typemoe.listening).

`Transposer` shifts every pitch by k semitones directly on the ids (no decode); any Key_* control token
moves with it; a note pushed out of the pitch range is dropped with its velocity and duration, and a
Position left without notes goes too. Equals re-tokenizing the transposed score (tests/test_prepare.py).
"""

from __future__ import annotations

import numpy as np

from typemoe import analysis
from typemoe.grammar_tables import tables_of

_PITCH, _VELOCITY, _DURATION, _POSITION = "Pitch", "Velocity", "Duration", "Position"


class Transposer:
    """Id-level lookup tables for one vocabulary (build once, reuse for every sample)."""

    def __init__(self, vocab) -> None:
        toks = vocab.tokens
        self.vocab = vocab
        self.size = len(toks)
        tables = tables_of(vocab)  # the decoder's per-id tables: one parse of Pitch_ and Key_ ids
        self.pitch_of = tables.pitch_of  # (V,) MIDI pitch of a Pitch id, else -1
        self.key_of = tables.key_of  # (V,) key class of a Key_* control id, else -1
        self.kind = np.zeros(self.size, dtype=np.int8)  # (V,) 1 Pitch, 2 Velocity, 3 Duration, 4 Position
        vel: list[tuple[int, int]] = []
        for i, t in enumerate(toks):
            prefix, _, value = t.partition("_")
            if prefix == _PITCH:
                self.kind[i] = 1
            elif prefix == _VELOCITY:
                self.kind[i] = 2
                vel.append((int(value), i))
            elif prefix == _DURATION:
                self.kind[i] = 3
            elif prefix == _POSITION:
                self.kind[i] = 4
        self.is_control = np.asarray(vocab.type_of == vocab.type_names.index("control"))  # (V,) bool
        self.pitch_id = {int(p): i for i, p in enumerate(self.pitch_of) if p >= 0}
        self.key_id = {int(k): i for i, k in enumerate(self.key_of) if k >= 0}
        self.velocity_ids = np.asarray([i for _, i in sorted(vel)], dtype=np.int64)  # ascending velocity
        self.velocity_rank = np.full(self.size, -1, dtype=np.int64)
        self.velocity_rank[self.velocity_ids] = np.arange(len(self.velocity_ids))
        # the range encode_score keeps (lo <= pitch <= hi, inclusive as in miditok), so transposing == re-tokenizing a transposed score
        self.lo, self.hi = vocab.tokenizer.config.pitch_range

    def transpose(self, ids: np.ndarray, k: int, key: int = -1) -> tuple[np.ndarray, int, int]:
        """Move every pitch by `k` semitones.

        Args:
            ids: (T,) token ids of one sequence (music and, optionally, leading control tokens).
            k: semitones, positive = up.
            key: the sequence's key class, or -1 when unlabelled.

        Returns:
            (new ids (T',) int64, the transposed key or -1, how many notes fell out of range and were dropped).
        """
        ids = np.asarray(ids, dtype=np.int64)
        pitch = self.pitch_of[ids]  # (T,)
        is_pitch = pitch >= 0
        out_of_range = is_pitch & ((pitch + k < self.lo) | (pitch + k > self.hi))
        drop = out_of_range.copy()
        for offset, kind in ((1, 2), (2, 3)):  # REMI note = Pitch, Velocity, Duration
            at = np.flatnonzero(out_of_range) + offset
            assert (at < len(ids)).all() and (self.kind[ids[at]] == kind).all(), (
                "a Pitch not followed by Velocity, Duration"
            )
            drop[at] = True
        new = ids.copy()
        new[is_pitch & ~drop] = [self.pitch_id[int(p) + k] for p in pitch[is_pitch & ~drop]]
        keys = self.key_of[ids] >= 0
        new[keys] = [self.key_id[analysis.transpose_key(int(c), k)] for c in self.key_of[ids[keys]]]
        new = new[~drop]
        if out_of_range.any():  # a Position whose notes all went has nothing to place any more
            kind = self.kind[new]
            nxt = np.append(kind[1:], 0)
            new = new[~((kind == 4) & (nxt != 1))]
            # and Bars after the last remaining note would not exist in a re-tokenization either
            last_note = np.flatnonzero(self.kind[new] == 3)
            new = new[: last_note[-1] + 1] if len(last_note) else new[self.is_control[new]]
        return new, (analysis.transpose_key(key, k) if key >= 0 else -1), int(out_of_range.sum())
