"""Performer-style augmentation of REMI training windows, on token ids.

Every source leaves a signature in its tokens: the music21 conversion writes every velocity as 80,
POP909 and EMOPIA are transcribed performances, ABC tunes are melody-only and exactly quantized. A head
that reads the signature instead of the music fails on anyone else's MIDI (the first shipped meter head
answered 4/4 for any tune not at velocity 80). So each training window is redrawn as a performer might
have played it, with a fresh draw per window and per source alike:

  velocity   one of: a random constant (the "every note at 90" export), a random smooth curve across the
             window (phrasing), the original velocities with per-note noise and an offset (a different
             player), or unchanged;
  timing     onsets moved by one grid step (a sixteenth) for a random share of the notes: what +-1/8-beat
             performance jitter leaves after quantization; durations scaled legato or staccato and
             jittered by a grid step;
  polyphony  sometimes only the top voice (a melody-only window from a polyphonic piece).

A window is parsed into notes (onset tick, pitch, velocity rank, duration ticks), changed, and written
back in the tokenizer's canonical order (onset, duration, pitch, velocity), with one note per pitch and
onset, and with the window's Bar count kept. The window must start at a Bar token; leading control
tokens are not allowed here (the caller adds them after).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from typemoe.remi_notes import RemiNotes
from typemoe.vocab import TypedVocab


@dataclass(frozen=True, kw_only=True)
class HumanizeConfig:
    """Probabilities of each change, drawn per window."""

    p_const_velocity: float = 0.3
    p_curve_velocity: float = 0.25
    p_noisy_velocity: float = 0.3
    """The rest of the mass keeps the velocities as they are."""
    p_timing: float = 0.5
    """Move some onsets by one grid step."""
    max_moved: float = 0.3
    """Largest share of notes moved in a timing-jittered window (drawn uniformly up to this)."""
    p_articulation: float = 0.5
    """Scale every duration by a legato/staccato factor in [0.5, 1.6] and jitter it."""
    p_top_voice: float = 0.1
    """Keep only the highest note of each onset (melody-only window)."""


class Humanizer(RemiNotes):
    """Vocabulary tables built once (typemoe.remi_notes); call with (music ids, rng) per window."""

    def __init__(self, vocab: TypedVocab, cfg: HumanizeConfig | None = None):
        super().__init__(vocab)
        self.cfg = cfg or HumanizeConfig()

    # ------------------------------------------------------------------------------------------ change

    def _velocity(self, notes: np.ndarray, rng: np.random.Generator) -> None:
        c, n_vel = self.cfg, len(self.vel_ids)
        u = rng.random()
        if u < c.p_const_velocity:  # constant, anywhere in ~30..120
            notes[:, 2] = rng.integers(3, n_vel - 1)
        elif u < c.p_const_velocity + c.p_curve_velocity:  # smooth curve across the window
            span = max(int(notes[:, 0].max()) - int(notes[:, 0].min()), 1)
            x = (notes[:, 0] - notes[:, 0].min()) / span
            base, amp = rng.uniform(4, n_vel - 4), rng.uniform(1, 5)
            phase, cycles = rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 3)
            curve = base + amp * np.sin(2 * np.pi * cycles * x + phase) + rng.normal(0, 0.7, len(notes))
            notes[:, 2] = np.clip(np.rint(curve), 1, n_vel - 1)
        elif u < c.p_const_velocity + c.p_curve_velocity + c.p_noisy_velocity:  # another player
            moved = notes[:, 2] + rng.integers(-4, 5) + np.rint(rng.normal(0, 1.5, len(notes)))
            notes[:, 2] = np.clip(moved, 1, n_vel - 1)

    def _timing(self, notes: np.ndarray, rng: np.random.Generator) -> bool:
        """Jitter onsets and rescale durations (each with its probability); True if either was drawn."""
        c = self.cfg
        timing = rng.random() < c.p_timing
        if timing:
            moved = rng.random(len(notes)) < rng.uniform(0.05, c.max_moved)
            notes[moved, 0] += rng.choice((-1, 1), size=int(moved.sum()))
            notes[:, 0] = np.maximum(notes[:, 0], 0)
        articulation = rng.random() < c.p_articulation
        if articulation:
            scaled = notes[:, 3] * np.exp(rng.uniform(np.log(0.5), np.log(1.6)))
            scaled += rng.integers(-1, 2, len(notes)) * (rng.random(len(notes)) < 0.3)
            notes[:, 3] = np.clip(np.rint(scaled), self.dur_ticks[0], self.dur_ticks[-1])
        return timing or articulation

    def _top_voice(self, notes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() >= self.cfg.p_top_voice or len(notes) == 0:
            return notes
        order = np.lexsort((-notes[:, 1], notes[:, 0]))  # by onset, highest pitch first
        notes = notes[order]
        first = np.ones(len(notes), dtype=bool)
        first[1:] = notes[1:, 0] != notes[:-1, 0]
        return notes[first]

    def __call__(self, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A humanized copy of a music window (starting at a Bar); a window without notes comes back as is."""
        return self.humanize(ids, rng)[0]

    def humanize(self, ids: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
        """(the humanized copy, whether its rhythm was redrawn: onsets jittered or durations rescaled).

        A redrawn rhythm is the touch of a performer to read, not a rhythm to write: training can keep the
        window for the heads and for the next pitch while not teaching the decoder its Positions and
        Durations (training/learn/data.py, `rhythm_targets`)."""
        notes, n_bars = self.notes(ids)
        if len(notes) == 0:
            return np.asarray(ids, dtype=np.int64), False
        notes = self._top_voice(notes, rng)
        self._velocity(notes, rng)
        redrawn = self._timing(notes, rng)
        return self.tokens(notes, n_bars), redrawn
