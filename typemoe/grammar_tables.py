"""What each token id means to the decoder: grammar rows, grid positions, pitches, bars, controls; scales
and meters. Torch-free (numpy); typemoe.decoding reads these tables, and re-exports the names.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from typemoe import analysis
from typemoe.vocab import BEATS_PER_BAR, FAMILIES, TICKS_PER_BEAT

_BAR, _POSITION, _PITCH, _VELOCITY, _DURATION, _CONTROL = (
    FAMILIES.index(f) for f in ("Bar", "Position", "Pitch", "Velocity", "Duration", "control")
)
# Scale steps above the tonic. Minor is the natural minor plus the raised 7th (harmonic minor's leading
# tone), because minor-key music uses it at nearly every cadence and key finders expect it.
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10, 11)}


class Tables:
    """Per-id lookups the decoder needs: grammar rows and what each id means on the time grid."""

    def __init__(self, next_allowed: np.ndarray, family_of: np.ndarray, *, vocab: Any = None):
        self.next_allowed = np.asarray(next_allowed, dtype=bool)  # (G, V)
        self.family_of = np.asarray(family_of, dtype=np.int64)  # (V,)
        V = self.family_of.shape[0]
        if self.next_allowed.ndim != 2 or self.next_allowed.shape[1] != V:
            raise ValueError(f"next_allowed {self.next_allowed.shape} must be (G, {V}) for family_of ({V},)")
        if V and not 0 <= self.family_of.min() <= self.family_of.max() < self.next_allowed.shape[0]:
            raise ValueError(f"family ids must lie in 0..{self.next_allowed.shape[0] - 1}")
        self.position_of = np.full(V, -1, dtype=np.int64)  # grid position of each Position_<p>, else -1
        self.pitch_of = np.full(V, -1, dtype=np.int64)  # MIDI pitch of each Pitch_<p>, else -1
        self.duration_of = np.full(V, -1, dtype=np.int64)  # grid ticks of each Duration_<b.t.res>, else -1
        self.velocity_of = np.full(V, -1, dtype=np.int64)  # MIDI velocity of each Velocity_<v>, else -1
        self.is_bar = np.zeros(V, dtype=bool)
        self.is_control = np.zeros(V, dtype=bool)  # BOS, Key_, Meter_, ...: the conditioning prefix
        self.key_of = np.full(V, -1, dtype=np.int64)  # key class (analysis.KEYS) of each Key_ id, else -1
        # meter class (analysis.METERS) of each Meter_ id, else -1
        self.meter_of = np.full(V, -1, dtype=np.int64)
        self.bos_id = None
        self.positions_per_beat, self.beats_per_bar = TICKS_PER_BEAT, BEATS_PER_BAR
        if vocab is not None:
            for i in np.flatnonzero(self.family_of == _POSITION):
                self.position_of[i] = int(vocab.token(int(i)).split("_", 1)[1])
            for i in np.flatnonzero(self.family_of == _PITCH):
                self.pitch_of[i] = int(vocab.token(int(i)).split("_", 1)[1])
            for i in np.flatnonzero(self.family_of == _VELOCITY):
                self.velocity_of[i] = int(vocab.token(int(i)).split("_", 1)[1])
            for i in np.flatnonzero(self.family_of == _DURATION):
                beats, ticks, res = (int(x) for x in vocab.token(int(i)).split("_", 1)[1].split("."))
                self.duration_of[i] = (beats * res + ticks) * TICKS_PER_BEAT // res
            self.is_bar = self.family_of == _BAR
            self.is_control = self.family_of == _CONTROL
            self.bos_id = int(vocab.bos_id)
            for i in np.flatnonzero(self.is_control):  # Key_<tonic>_<mode> (typemoe.transpose reads these)
                prefix, _, value = vocab.token(int(i)).partition("_")
                if prefix == "Key":
                    self.key_of[i] = analysis.parse_key(value.replace("_", " "))
                elif prefix == "Meter":
                    self.meter_of[i] = analysis.parse_meter(value)

    @classmethod
    def unconstrained(cls, size: int) -> Tables:
        """Any id may follow any id (no grammar)."""
        return cls(np.ones((1, size), dtype=bool), np.zeros(size, dtype=np.int64))


_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def tables_of(vocab) -> Tables:
    """The (cached) Tables of a TypedVocab."""
    t = _TABLES.get(vocab)
    if t is None:
        t = _TABLES[vocab] = Tables(vocab.next_allowed, vocab.family_of, vocab=vocab)
    return t


def leading_control(tokens, is_control: np.ndarray, value_of: np.ndarray) -> int | None:
    """value_of[i] of the first id i among the stream's leading control tokens with value_of[i] >= 0 (the
    Key control's key class with key_of, the Meter control's meter class with meter_of), or None."""
    for i in tokens:
        if not is_control[i]:
            return None
        if value_of[i] >= 0:
            return int(value_of[i])
    return None


def scale_pitch_classes(key: str | int) -> np.ndarray:
    """(12,) bool: the pitch classes of a key's scale (SCALES). Raises ValueError naming a bad key."""
    k = analysis.parse_key(key)
    tonic, mode = k % 12, analysis.MODES[k // 12]
    out = np.zeros(12, dtype=bool)
    out[[(tonic + s) % 12 for s in SCALES[mode]]] = True
    return out


def meter_beats(meter: str | int) -> float:
    """Quarter-note beats in one bar of a meter: 3/4 -> 3, 6/8 -> 3, 12/8 -> 6. Raises ValueError."""
    name = analysis.meter_name(analysis.parse_meter(meter))
    if name == "other":
        raise ValueError(f"meter {meter!r} has no bar length the decoder knows; pass e.g. '3/4' or '6/8'")
    num, den = (int(x) for x in name.split("/"))
    return num * 4 / den


def remi_bar_beats(meter: str | int) -> float:
    """Beats of the REMI bars a continuation in `meter` is written in: the meter's own bar when it fits in
    REMI's four beats (3/4 and 6/8 -> 3, 2/4 -> 2, 4/4 -> 4), else its smallest whole part that does
    (12/8 and 3/2 -> 3, 9/8 -> 2.25).

    The model's habits are bar-relative (phrases and long notes start on Position_0 after a Bar), so a
    3/4 continuation written in 3-beat REMI bars is heard in three; in 4-beat bars it is heard in four
    whatever its bar lines say. Raises ValueError for a meter without a bar length (meter_beats)."""
    return bar_part_beats(meter_beats(meter))


def bar_part_beats(bar: float) -> float:
    """A bar of `bar` beats itself when it fits in REMI's four beats, else its smallest whole part that
    does (6 -> 3, 4.5 -> 2.25, 5 -> 2.5): the REMI bars music of that bar length is written in."""
    return bar / int(np.ceil(bar / BEATS_PER_BAR - 1e-9))


@dataclass(frozen=True)
class BarPlan:
    """Where the Bars of a continuation open: REMI's 4-beat bars until `start` (the bar that holds it is
    cut there), then every `beats` beats (remi_bar_beats of the meter). The decoder writes by it
    (typemoe.decoding.Session) and every reader of its ids reads by it (typemoe.streaming.TokenReader), so
    the two cannot disagree on where a note falls."""

    start: float  # stream beat of the first bar line of the meter
    beats: float  # 0 < beats <= 4

    def __post_init__(self) -> None:
        if not 0 < self.beats <= BEATS_PER_BAR:
            raise ValueError(f"a REMI bar holds 0 < beats <= {BEATS_PER_BAR}, got {self.beats}")

    @classmethod
    def of(cls, meter: str | int, start: float) -> BarPlan:
        return cls(float(start), remi_bar_beats(meter))

    def next_start(self, bar_start: float) -> float:
        """The beat where the next Bar opens, after a bar that opened at bar_start."""
        eps = 1e-9
        if bar_start < self.start - eps:
            return min(bar_start + BEATS_PER_BAR, self.start)
        k = np.floor((bar_start - self.start) / self.beats + eps) + 1
        return self.start + float(k) * self.beats


def next_bar_start(bar_start: float, plan: BarPlan | None) -> float:
    """Where the Bar after a bar opened at bar_start opens: 4 beats on without a plan (REMI's own bars)."""
    return bar_start + BEATS_PER_BAR if plan is None else plan.next_start(bar_start)
