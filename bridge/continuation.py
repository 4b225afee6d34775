"""Where a continuation goes: the meter's bar line it starts on, the window it fills, how it is steered.

Pure: no clock, no model, no I/O. The engine decides *when* (bridge.engine._request); this module decides
*where* and *how*:

- The meter is the asked one (/typemoe/condition), else the running estimate (/typemoe/meter), else 4/4
  (the DAW's 4-beat bar, which the timeline keeps in phase with the Song Position Pointer).
- Bar lines of that meter are counted from an anchor on the timeline: the DAW's song position 0 while it
  runs and sends MIDI clock (so a 3/4 continuation lands on the DAW's 3/4 bars), else the stream origin
  (the bar where the performer's first note came, the decoder's stream beat 0).
- A continuation of `bars` bars fills [start, start + bars * span) beats, start the next bar line after
  now. If the model has not produced the first note by the time it is due, the whole continuation moves
  later by whole bars of the meter, so it never enters mid-bar.
- Guidance and the key lock travel with the request to the one decoder (typemoe.decoding); the rule-based
  toy model is not that decoder and gets only the length (it ignores steering).

    meter, span = choose_meter(asked="3/4", estimate=("4/4", 0.6))      # -> ("3/4", 3.0)
    start = next_bar_line(beat=13.2, span=3.0, anchor=0.0)              # -> 15.0
    steps = session.generate_steps(**generate_kwargs(job, session))     # in the model thread
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from typemoe import decoding
from typemoe.bridge.events import Generate
from typemoe.streaming import BeatNote, TokenReader
from typemoe.vocab import BEATS_PER_BAR, MAX_EMPTY_BARS

_EPS = 1e-6  # beats: onsets are multiples of 1/4 beat, so this only absorbs float noise


@dataclass(frozen=True, slots=True)
class SteeredGenerate(Generate):
    """A Generate with the decoder's steering: `bars` bars of `meter` from the bar line `start_beat`.

    n_bars stays what a model without the meter window needs: REMI's 4-beat bars from where the stream
    is to the end of the window. start_beat is in stream beats (the decoder's time base: beats since the
    stream's first Bar token).
    """

    meter: str = "4/4"
    bars: int = 1  # bars of `meter`
    start_beat: float | None = None  # None: the decoder's own next bar line of the meter
    guidance: float = 1.0  # classifier-free guidance weight (1 = off)
    key_lock: str | None = None  # a key name whose scale the pitches must keep, or None
    head_guidance: float = 0.0  # key head guidance toward the condition's key (typemoe.key_steering; 0 = off)
    meter_guidance: float = 0.0  # the condition's meter accented (typemoe.meter_steering; 0 = off)


def choose_meter(asked: str, estimate: tuple[str, float] | None) -> tuple[str, float]:
    """(meter name, quarter-note beats per bar): the asked meter, else the estimate, else 4/4.

    A meter without a known bar length ("other", "5/4" parsed as other) is skipped. The asked meter was
    checked when it was set (vocab.control_ids), so it only fails here for "other".
    """
    for name in (asked, estimate[0] if estimate else ""):
        if name:
            try:
                return name, decoding.meter_beats(name)
            except ValueError:
                continue
    return "4/4", float(BEATS_PER_BAR)


def next_bar_line(beat: float, span: float, anchor: float) -> float:
    """The first bar line (anchor + k * span) strictly after `beat`: the model needs time to get there."""
    k = math.floor((beat - anchor) / span + _EPS) + 1
    return anchor + k * span


def daw_anchor(timeline_beat: float, daw_beat: float) -> float:
    """Timeline beat of the DAW's song position 0, from one pulse's timeline beat and DAW beat.

    The clock keeps the two 4-beat-bar aligned (bridge.clock.BeatClock._aligned), so their difference is a
    whole number of 4-beat bars; rounding to it drops the tempo fit's sub-pulse noise.
    """
    return round((timeline_beat - daw_beat) / BEATS_PER_BAR) * BEATS_PER_BAR


@dataclass
class Pending:
    """A continuation being generated: its notes are placed in the window as their chunks arrive.

    Timeline beats throughout; `origin` converts the reader's stream beats.
    """

    request_id: int
    bars: float
    trigger_t: float
    reader: TokenReader  # continues from the live stream's cursor
    start: float  # timeline beat of the bar line it starts on
    span: float  # beats per bar of its meter
    shift: float | None = None  # whole bars added to every onset; fixed by the first note
    n_notes: int = 0
    n_tokens: int = 0
    attempt: int = 0  # how many silent continuations came before this one

    @property
    def end(self) -> float:
        return self.start + self.bars * self.span

    def place(self, tokens, origin: float, ready: float) -> tuple[list[BeatNote], bool]:
        """Read a chunk of ids: (its notes on the timeline, whether the stream has left the window).

        A note before the window (a model that ignores it) is dropped; the first note in it fixes the
        shift: 0 when it can be played on time (`ready` = the earliest beat a note-on can go out),
        else whole bars of the meter, so the continuation still starts on a bar line.
        """
        self.n_tokens += len(tokens)
        out: list[BeatNote] = []
        for n in self.reader.read(tokens):
            onset = n.onset + origin
            if onset < self.start - _EPS:
                continue
            if onset >= self.end - _EPS:
                return out, True
            if self.shift is None:
                self.shift = max(0, math.ceil((ready - self.start) / self.span - _EPS)) * self.span
            out.append(replace(n, onset=onset + self.shift))
            self.n_notes += 1
        return out, False


def generate_kwargs(job: Generate, session) -> dict:
    """The keyword arguments of session.generate_steps for one request.

    The one decoder (typemoe.decoding.Session, which export.runtime.OrtSession is) gets the meter window,
    the first note on its downbeat, guidance, the key lock, head guidance and meter guidance. Any other session (the toy
    stand-in) knows no window: it continues from the stream's last note, which can lie bars before the
    window (the stream holds at most MAX_EMPTY_BARS empty bars), so it gets that many 4-beat bars more, and
    the engine keeps the notes that fall in the window and stops it past the window's end.
    """
    kw: dict = {"temperature": job.temperature, "top_p": job.top_p, "seed": job.seed, "n_bars": job.n_bars}
    if isinstance(job, SteeredGenerate) and isinstance(session, decoding.Session):
        kw.update(meter=job.meter, n_bars=job.bars, start_beat=job.start_beat, on_downbeat=True)
        kw.update(guidance=job.guidance, key_lock=job.key_lock, head_guidance=job.head_guidance)
        kw["meter_guidance"] = job.meter_guidance
    elif isinstance(job, SteeredGenerate):
        kw["n_bars"] = job.n_bars + MAX_EMPTY_BARS
    return kw


def bar_plan(job: Generate, session) -> decoding.BarPlan | None:
    """Where the Bars of the continuation generate_kwargs asks for open (stream beats): the one decoder
    writes a meter window in REMI bars of the meter (typemoe.decoding); None for any other session (the
    toy's REMI 4-beat bars). The engine reads the ids with it, so each note lands where it was written."""
    if not (isinstance(job, SteeredGenerate) and isinstance(session, decoding.Session)):
        return None
    return session.bar_plan(job.meter, job.start_beat)


def remi_bars(bars: float, span: float) -> int:
    """4-beat bars that cover `bars` bars of `span` beats from a stream position up to one bar before."""
    return math.ceil(bars * span / BEATS_PER_BAR - _EPS) + 1
