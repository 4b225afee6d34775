"""REMI ids <-> note arrays on the tokenizer's grid, torch-free: one parser for training augmentation,
the meter's rhythm features and anything else that needs the notes of a token window.

A note row is [onset tick, Pitch id, velocity rank, duration ticks], ticks on the sixteenth grid from the
first Bar token of the ids. Writing back gives the tokenizer's canonical order (onset, duration, pitch,
velocity), one note per pitch and onset, and at least the Bar count asked for.
"""

from __future__ import annotations

import numpy as np

from typemoe.vocab import BEATS_PER_BAR, FAMILIES, TypedVocab

_BAR, _POS, _PITCH, _VEL, _DUR = (
    FAMILIES.index(f) for f in ("Bar", "Position", "Pitch", "Velocity", "Duration")
)


class RemiNotes:
    """Vocabulary tables built once; notes(ids) and tokens(notes, n_bars)."""

    def __init__(self, vocab: TypedVocab):
        toks = vocab.tokens
        self.family = np.asarray(vocab.family_of)
        self.bar = vocab.id("Bar_None")
        pos = {i: int(t.split("_")[1]) for i, t in enumerate(toks) if t.startswith("Position_")}
        self.pos_lo, self.n_pos = min(pos), len(pos)
        self.ticks_per_beat = self.n_pos // BEATS_PER_BAR
        self.value = np.zeros(
            len(toks), dtype=np.int64
        )  # (V,) position index / velocity rank / duration ticks
        self.value[list(pos)] = list(pos.values())
        vel = sorted((int(t.split("_")[1]), i) for i, t in enumerate(toks) if t.startswith("Velocity_"))
        self.vel_ids = np.asarray([i for _, i in vel], dtype=np.int64)  # rank -> id, ascending velocity
        self.value[self.vel_ids] = np.arange(len(vel))
        dur = []
        for i, t in enumerate(toks):
            if t.startswith("Duration_"):
                a, b, res = (int(x) for x in t.split("_")[1].split("."))
                dur.append((a * self.ticks_per_beat + b * self.ticks_per_beat // res, i))
        dur.sort()
        self.dur_ticks = np.asarray([d for d, _ in dur], dtype=np.int64)  # ascending
        self.dur_ids = np.asarray([i for _, i in dur], dtype=np.int64)
        self.value[self.dur_ids] = self.dur_ticks

    def beats(self, ids) -> tuple[np.ndarray, np.ndarray]:
        """(onsets, durations) in beats of the whole notes in ids."""
        notes, _ = self.notes(ids)
        return notes[:, 0] / self.ticks_per_beat, notes[:, 3] / self.ticks_per_beat

    def notes(self, ids: np.ndarray) -> tuple[np.ndarray, int]:
        """(notes (N, 4) int64 [tick, pitch id, velocity rank, duration ticks], Bar tokens in ids)."""
        ids = np.asarray(ids, dtype=np.int64)
        fam = self.family[ids]
        n_bars = int((fam == _BAR).sum())
        at = np.flatnonzero(fam == _PITCH)
        at = at[at + 2 < len(ids)]
        at = at[
            (fam[at + 1] == _VEL) & (fam[at + 2] == _DUR)
        ]  # whole notes only (a cut window may end mid-note)
        idx = np.arange(len(ids))
        bar_of = np.cumsum(fam == _BAR) - 1  # (T,) bar index of each token
        last_pos = np.maximum.accumulate(np.where(fam == _POS, idx, -1))  # (T,) index of the latest Position
        pos = np.where(last_pos[at] >= 0, self.value[ids[np.maximum(last_pos[at], 0)]], 0)
        tick = np.maximum(bar_of[at], 0) * self.n_pos + pos
        notes = np.stack([tick, ids[at], self.value[ids[at + 1]], self.value[ids[at + 2]]], axis=1)
        return notes.astype(np.int64), n_bars

    def tokens(self, notes: np.ndarray, n_bars: int) -> np.ndarray:
        """REMI ids of notes (canonical order, one note per pitch and onset), at least n_bars Bars."""
        if len(notes):
            order = np.lexsort((notes[:, 2], notes[:, 1], notes[:, 3], notes[:, 0]))
            notes = notes[order]
            keep = np.ones(len(notes), dtype=bool)  # drop a second note of the same pitch at the same onset
            seen: set[tuple[int, int]] = set()
            for j, (t, p) in enumerate(notes[:, :2].tolist()):
                keep[j] = (t, p) not in seen
                seen.add((t, p))
            notes = notes[keep]
        out: list[int] = []
        bar, last_tick = -1, -1
        dur_at = np.searchsorted(self.dur_ticks, notes[:, 3]) if len(notes) else []
        for (tick, pitch, vel, _), d in zip(notes.tolist(), dur_at):
            while bar < tick // self.n_pos:
                out.append(self.bar)
                bar += 1
            if tick != last_tick:
                out.append(self.pos_lo + tick % self.n_pos)
                last_tick = tick
            out += [pitch, int(self.vel_ids[vel]), int(self.dur_ids[min(int(d), len(self.dur_ids) - 1)])]
        while bar < n_bars - 1:
            out.append(self.bar)
            bar += 1
        return np.asarray(out, dtype=np.int64)
