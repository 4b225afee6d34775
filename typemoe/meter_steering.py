"""Meter guidance: a continuation's rhythm is heard in the asked meter. Torch-free.

The decoder writes a continuation in bars of the asked meter (typemoe.grammar_tables.BarPlan), but a bar
line is not heard: a listener (or the project's onset-autocorrelation meter detector) hears a meter where
the long notes and the onsets come back with the bar's period. The shipped model, trained mostly in REMI's
4-beat bars, fills a 3-beat bar as evenly as a 4-beat one, writes many sixteenths between the beats and
rarely repeats a bar's rhythm, so its continuations were heard in the asked family (duple / triple) hardly
above chance.

The guide edits the Position and Duration logits with what makes a meter heard (w = the weight; s(p) in
[0, 1] the strength of grid position p in its bar, from Lerdahl & Jackendoff's metrical grid: the number of
the meter's pulses on it, 1 on the downbeat, 0 on a sixteenth between the eighths):

- onsets on strong positions: at a Position step, w/2 * (s(p) - the strongest allowed s), so the choice
  between a note and the bar line is the model's, and among positions the strong ones gain;
- the bar's rhythm comes back: where the bar before held onsets, allowed positions without one lose w/2,
  and a note where the bar before had one loses w/2 unless it lasts as long as that one did;
- the downbeat is the accent: a note on it gains w * log2(min(beats, 1)) (it lasts at least a beat), a
  later note of the bar that lasts as long as the downbeat's loses w, and a note on a sixteenth between
  the eighths gains -w * log2(beats) (it is short; beats clipped to [1/4, 2]).

w = 0 turns it off. The pulses of each meter, from the bar down:

    4/4: bar, half bar, beat, eighth, sixteenth    2/4: bar, beat, eighth, sixteenth
    3/4: bar, beat, eighth, sixteenth              6/8, 9/8, 12/8: bar, dotted quarter, eighth, sixteenth
    3/8: bar, eighth, sixteenth                    2/2, 3/2, 4/2: bar, half, quarter, eighth, sixteenth

The bar is the REMI bar the decoder writes the meter in (remi_bar_beats: a 12/8 bar is written as two
3-beat bars, each heard with its own downbeat). The guide never reads the meter detector the control table
judges by; it acts only where the stream carries a Meter control and the decoder writes in a meter's bars,
as head guidance (typemoe.key_steering) acts only on an asked key. MODEL_CARD.md, "Meter guidance", gives
what it does to the control table and to the rhythm (onsets per beat, note lengths, off-grid share).
"""

from __future__ import annotations

import functools

import numpy as np

from typemoe import analysis
from typemoe.grammar_tables import leading_control, remi_bar_beats

DEFAULT_METER_GUIDANCE = 3.0
"""Weight w of the metrical hierarchy when the caller gives none (`typemoe generate`/`infill`, the bridge,
the library's generate). 0 turns it off."""
METER_GUIDANCE_MAX = 20.0
GRID = 4  # grid positions per beat: the tokenizer's sixteenths (typemoe.vocab.TICKS_PER_BEAT)
SHORTEST, LONGEST = 0.25, 2.0  # beats: the durations the Duration term tells apart


def check_meter_guidance(weight: float) -> float:
    """The weight as a float. Raises ValueError naming a weight outside [0, METER_GUIDANCE_MAX]."""
    w = float(weight)
    if not 0.0 <= w <= METER_GUIDANCE_MAX:
        raise ValueError(f"meter guidance must be in [0, {METER_GUIDANCE_MAX:g}] (0 = off), got {weight!r}")
    return w


def asked_meter(tokens, is_control: np.ndarray, meter_of: np.ndarray) -> int | None:
    """The meter class of the Meter control in the stream's leading control tokens, or None."""
    return leading_control(tokens, is_control, meter_of)


def meter_hooks(tokens, tables, weight: float, meter: str | int | None) -> list:
    """The generate_steps hooks of meter guidance at `weight`: the guide when the decoder writes in the bars
    of `meter` (None: no meter window) and the stream carries a Meter control, else none."""
    if meter is None or weight <= 0 or asked_meter(tokens, tables.is_control, tables.meter_of) is None:
        return []
    return [MeterAccentGuide(meter, weight)]


@functools.lru_cache(maxsize=32)
def strengths(meter: str | int) -> np.ndarray:
    """(n,) strength in [0, 1] of each grid position of the REMI bar `meter` is written in: the number of
    the meter's pulses on it, less one, over the downbeat's. Raises ValueError for a meter without a bar."""
    n = int(round(remi_bar_beats(meter) * GRID))
    num, den = (int(x) for x in analysis.meter_name(analysis.parse_meter(meter)).split("/"))
    if den == 8:
        units = (6, 2, 1) if num % 3 == 0 and num > 3 else (2, 1)
    else:
        units = (8, 4, 2, 1)
    pulses = [n] + [u for u in units if u < n and n % u == 0]
    p = np.arange(n)
    level = sum((p % u == 0).astype(np.float64) for u in pulses) - 1.0
    out = level / level[0]
    out.setflags(write=False)
    return out


class MeterAccentGuide:
    """A generate_steps hook (session, logits, allowed): see the module docstring. One per generation: it
    remembers the rhythm of the bars this generation wrote, from its first call on."""

    def __init__(self, meter: str | int, weight: float):
        self.s, self.weight = strengths(meter), check_meter_guidance(weight)
        self.before: dict[int, int] = {}  # grid position -> duration ticks of the notes of the bar before
        self.this: dict[int, int] = {}  # the same for the bar being written
        self._bar = -1  # session.bars of `this`
        self._calls = 0

    def _hear(self, session) -> None:
        """Note the last fed id: a new bar moves `this` to `before`; a Duration is a note of this bar."""
        t = session.tables
        if session.bars != self._bar:
            self.before, self.this = (self.this if self._bar >= 0 else {}), {}
            self._bar = session.bars
        if self._calls and t.duration_of[session.tokens[-1]] >= 0 and session.bar_position >= 0:
            self.this[session.bar_position] = int(t.duration_of[session.tokens[-1]])
        self._calls += 1

    def __call__(self, session, logits: np.ndarray, allowed: np.ndarray) -> None:
        self._hear(session)
        if self.weight == 0:
            return
        t, s, w = session.tables, self.s, self.weight
        n = len(s)
        pos = np.flatnonzero(allowed & (t.position_of >= 0))
        if len(pos) and session.bars:
            p = t.position_of[pos]
            strength = np.where(p < n, s[np.minimum(p, n - 1)], 0.0)  # past the bar: masked by the plan
            logits[pos] += w / 2 * (strength - strength.max())
            again = np.isin(p, list(self.before))
            if again.any():
                logits[pos[~again]] -= w / 2
        dur = np.flatnonzero(allowed & (t.duration_of >= 0))
        at = session.bar_position
        if len(dur) and at >= 0:
            ticks = t.duration_of[dur]
            beats = np.clip(ticks / t.positions_per_beat, SHORTEST, LONGEST)
            if at == 0:
                logits[dur] += w * np.log2(np.minimum(beats, 1.0))
            elif at < n and s[at] == 0:
                logits[dur] -= w * np.log2(beats)
            if at > 0 and 0 in self.this:
                logits[dur[ticks >= self.this[0]]] -= w
            if at in self.before:
                logits[dur[ticks != self.before[at]]] -= w / 2
