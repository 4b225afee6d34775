"""Time sources and the beat timeline.

- `Clock` gives seconds (`MonotonicClock` for real runs, `FakeClock` for tests: no sleeps).
- `BeatClock` maps seconds <-> beats on the bridge's timeline. It runs at its own tempo, or follows MIDI
  beat clock (24 pulses per quarter note): a least-squares line through the last pulses gives tempo and
  phase, which smooths the jitter of pulses that arrive in audio-period batches. When pulses stop, the
  line simply extends (free-running at the last tempo).

The timeline never jumps back: Start and Song Position Pointer re-align the bar phase by moving forward
to the next point whose position in the bar matches the DAW's, so the token stream stays monotonic.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from typing import Protocol

from typemoe.vocab import BEATS_PER_BAR

log = logging.getLogger(__name__)

PPQN = 24  # MIDI beat clock pulses per quarter note
_FIT_PULSES = 48  # two beats of pulses for the tempo/phase fit
_SYNC_TIMEOUT_S = 0.5  # no pulse for this long: not synced (free-running)
_WIN_PULSES = 24  # lost-pulse check: the newest beat of pulses against the last straight one trusted
_ON_TIME = 0.25  # pulses: an arrival this close to the lower envelope counts as on time for the fit
_TOL = 0.25  # pulses: how far an early edge may sit from its whole number, or from the other half's edge
_RELOCK_S = 10.0  # pulses back within this long continue the old pulse count (same tempo assumed)


class Clock(Protocol):
    def now(self) -> float: ...


class MonotonicClock:
    """time.monotonic(): the only clock for scheduling (never time.time())."""

    def now(self) -> float:
        import time

        return time.monotonic()


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def now(self) -> float:
        return self.t

    def advance(self, dt: float) -> float:
        assert dt >= 0, f"time cannot go back: dt={dt}"
        self.t += dt
        return self.t


class BeatClock:
    """The beat timeline: beat_at(t) and time_at(beat), internal tempo or MIDI-clock following.

    Args:
        tempo: initial internal tempo in BPM.
        t0: time of beat 0.
        follow_midi: whether MIDI clock pulses steer the timeline (False for --clock internal).
    """

    def __init__(self, *, tempo: float, t0: float, follow_midi: bool = True) -> None:
        self.follow_midi = follow_midi
        self._t_a, self._b_a = t0, 0.0  # anchor: beat _b_a happens at time _t_a
        self._spb = 60.0 / tempo  # seconds per beat
        self._pulses: deque[tuple[float, float]] = deque(maxlen=_FIT_PULSES)  # (beat, t)
        self._last_pulse_t = -math.inf
        self._lattice: float | None = None  # timeline beat of the last pulse
        self._recount = LostPulses()
        self._align_to: float | None = None  # DAW beat the next pulse stands for (after Start / SPP)
        self._daw_beat = 0.0  # DAW song position (beats) at the last pulse
        self.running = False  # DAW transport state (Start/Continue vs Stop)

    # ---- mapping -------------------------------------------------------------------------------------
    def beat_at(self, t: float) -> float:
        return self._b_a + (t - self._t_a) / self._spb

    def time_at(self, beat: float) -> float:
        return self._t_a + (beat - self._b_a) * self._spb

    @property
    def tempo(self) -> float:
        return 60.0 / self._spb

    @property
    def seconds_per_beat(self) -> float:
        return self._spb

    def synced(self, t: float) -> bool:
        """Whether MIDI clock pulses are arriving."""
        return self.follow_midi and t - self._last_pulse_t < _SYNC_TIMEOUT_S

    # ---- internal tempo --------------------------------------------------------------------------------
    def set_tempo(self, bpm: float, t: float) -> None:
        """Change the internal tempo at time t (the timeline stays continuous)."""
        b = self.beat_at(t)
        self._t_a, self._b_a, self._spb = t, b, 60.0 / bpm
        self._pulses.clear()

    # ---- MIDI beat clock -------------------------------------------------------------------------------
    def on_pulse(self, t: float) -> None:
        """One 0xF8 timing clock pulse received at time t."""
        if not self.follow_midi:
            return
        period = self._spb / PPQN
        gap = t - self._last_pulse_t
        if self._lattice is not None and gap < _RELOCK_S:
            # Count pulses. Pulses are never dropped on the way in (the inbox lets them through), but they can
            # arrive late and then in a burst (a busy machine): each one is exactly 1/24 beat. Only after the
            # clock was silent (the DAW stopped sending) does the elapsed time say how many it skipped.
            n = 1 if gap < _SYNC_TIMEOUT_S else max(1, round(gap / period))
            beat = self._lattice + n / PPQN
            if gap >= _SYNC_TIMEOUT_S:
                self._pulses.clear()  # do not fit a line across the silence
                self._recount.clear()
            elif off := self._recount.check(beat, t):
                log.info("clock: %+d pulse(s) recounted at beat %.3f (lost or doubled on the way)", off, beat)
                beat += off / PPQN
                n += off
                self._pulses.clear()
            if self.running:
                self._daw_beat += n / PPQN
        else:  # first pulses, or a long silence: continue the timeline where it is
            self._pulses.clear()
            self._recount.clear()
            beat = max(self.beat_at(t), 0.0)
        if self._align_to is not None:
            beat = self._aligned(beat, self._align_to)
            self._daw_beat = self._align_to
            self._align_to = None
            self._pulses.clear()
            self._recount.clear()
        self._pulses.append((beat, t))
        self._lattice = beat
        self._last_pulse_t = t
        self._fit()

    def on_start(self) -> None:
        """0xFA: the DAW starts from its beginning; the next pulse is its beat 0."""
        self._align_to = 0.0
        self.running = True

    def on_continue(self) -> None:
        """0xFB: the DAW resumes from the song position."""
        self._align_to = self._daw_beat
        self.running = True

    def on_stop(self) -> None:
        self.running = False

    def on_song_position(self, sixteenths: int) -> None:
        """0xF2: Song Position Pointer in 16th notes; takes effect with the next pulse."""
        self._daw_beat = sixteenths / 4.0
        self._align_to = self._daw_beat

    @property
    def daw_beat(self) -> float:
        return self._daw_beat

    def _aligned(self, beat: float, daw_beat: float) -> float:
        """Smallest timeline beat >= `beat` (minus a pulse) whose place in the bar equals the DAW's."""
        phase = daw_beat % BEATS_PER_BAR
        base = math.floor(beat / BEATS_PER_BAR) * BEATS_PER_BAR + phase
        while base < beat - 1.0 / PPQN:
            base += BEATS_PER_BAR
        return base

    def _fit(self) -> None:
        """The line through the recent pulses that arrived on time (`_ontime_line`), or through the last
        pulse when there are too few: a burst of late pulses tilts neither the tempo nor the phase."""
        line = _ontime_line(list(self._pulses)) if len(self._pulses) >= 3 else None
        if line is None:  # too few pulses, or nonsense ones: keep the old tempo
            self._b_a, self._t_a = self._pulses[-1]
            return
        self._t_a, self._b_a, self._spb = line


def _ontime_line(points: list[tuple[float, float]]) -> tuple[float, float, float] | None:
    """_early_edge_line through the points that arrived on time: within _ON_TIME pulses of the lower
    envelope (`_envelope_line`), twice (the second time around the first fit); all of them when there are
    fewer than 12, or too few near the envelope."""
    line = _envelope_line(points) if len(points) >= 12 else None
    for _ in range(2):
        if line is None:
            break
        t_a, b_a, spb = line
        near = [(b, t) for b, t in points if t - t_a - (b - b_a) * spb < _ON_TIME * spb / PPQN]
        if len(near) < len(points) // 4:
            break
        line = _early_edge_line(near)
    else:
        return line
    return _early_edge_line(points)


def _early_edge_line(points) -> tuple[float, float, float] | None:
    """(t_a, b_a, spb): the least-squares slope of t over beat through `points` (beat, t), moved to the
    early edge of the residuals; None for a tempo outside 20..400 BPM.

    Lateness is one-sided (a pulse is never received before it was sent), so the line goes through the
    early edge of the residuals (their 10th percentile), not their mean: delayed pulses do not drag it late.
    """
    n = len(points)
    mb = sum(b for b, _ in points) / n
    mt = sum(t for _, t in points) / n
    var = sum((b - mb) ** 2 for b, _ in points)
    if var <= 0.0:
        return None
    spb = sum((b - mb) * (t - mt) for b, t in points) / var
    if not 60.0 / 400.0 <= spb <= 60.0 / 20.0:
        return None
    resid = sorted(t - (mt + spb * (b - mb)) for b, t in points)
    return mt + resid[n // 10], mb, spb


def _envelope_line(points: list[tuple[float, float]]) -> tuple[float, float, float] | None:
    """(t_a, b_a, spb): the line under `points` (beat, t) through the early edge of their first and last
    thirds.

    Robust to late pulses, which only ever arrive late: a least-squares slope leans toward whichever part
    had more of them, the lower envelope does not. The edge is the 10th percentile (_low), not the earliest
    arrival, so one pulse stamped early (a burst read at once) does not tilt it either; thirds, so its two
    points are at least a third of the stretch apart. Starts from _early_edge_line's slope and refines it
    until the two points stay (at most 4 times).
    """
    line = _early_edge_line(points)
    if line is None:
        return None
    spb, third = line[2], len(points) // 3
    for _ in range(4):
        (b1, t1), (b2, t2) = (
            _low(part, key=lambda p: p[1] - p[0] * spb) for part in (points[:third], points[-third:])
        )
        if b2 == b1 or not 60.0 / 400.0 <= (new := (t2 - t1) / (b2 - b1)) <= 60.0 / 20.0:
            return None
        if new == spb:
            break
        spb = new
    return t1 + _low([t - t1 - (b - b1) * spb for b, t in points]), b1, spb


def _low(values, key=None):
    """The early edge of `values`: their 10th percentile (the earliest of fewer than 10)."""
    return sorted(values, key=key)[len(values) // 10]


class LostPulses:
    """Finds pulses lost (or doubled) on the way, which leave the pulse count whole pulses off for good.

    Late pulses only ever arrive late, and by different amounts, so the early edge of any stretch (its
    10th percentile, `_low`) sits on the DAW's true pulse lattice. Every pulse, `check` takes the newest
    _WIN_PULSES pulses; when they lie straight (each quarter's early edge on their own line, `_ontime_line`),
    it compares the early edge of their first half with the line of the last stretch it trusted, just
    before it:
    - a whole number of pulses off: that many were lost (or doubled); recount;
    - on it: trust the new stretch (so the line follows tempo ramps);
    - otherwise, or when the two stretches' tempos differ too much for that distance to tell (a tempo
      change), for _WIN_PULSES straight stretches in a row: trust the newest stretch as counted.
    A lost pulse inside the newest stretch bends it (not straight) until the stretch has passed it. A
    burst of late pulses leaves some pulse of each part on time, or the stretch is not straight and is
    skipped. Pulses lost during a tempo change, or a ramp faster than about 10 BPM in 4 bars, are taken
    as part of the change (notes/exp/clock_sweep.py: 60-200 BPM, bursts of 1-3 pulses up to 40 ms late,
    0-2 lost; 2 of 810 runs a pulse off when no pulse was lost within two beats of a 25 % tempo step).
    """

    def __init__(self) -> None:
        self._h: deque[tuple[float, float]] = deque(maxlen=_WIN_PULSES)
        self._trusted: tuple[float, float, float] | None = None  # (t_a, b_a, spb), in the true count
        self._trusted_end = 0.0  # beat of the last pulse of the trusted stretch
        self._unlike = 0  # straight stretches in a row that the trusted line could not vouch for

    def clear(self) -> None:
        self._h.clear()
        self._trusted = None
        self._unlike = 0

    def check(self, beat: float, t: float) -> int:
        """Takes the pulse counted as `beat`, arrived at `t`; returns the pulses the count is behind
        (>0: some were lost; <0: doubled), 0 when it is right or it cannot tell yet."""
        self._h.append((beat, t))
        if len(self._h) < _WIN_PULSES:
            return 0
        win = list(self._h)
        line = _ontime_line(win)
        if line is None or any(abs(e) > _TOL for e in _edges(win, line, 4)):
            return 0  # not straight: a burst, a lost pulse inside, a tempo change, nonsense
        if self._trusted is None:
            self._trust(win, line)
            return 0
        half = win[: _WIN_PULSES // 2]
        (e,) = _edges(half, self._trusted, 1)
        off = round(e)
        # How far apart the two lines may drift where they are compared: over the half stretch, or from the
        # trusted stretch's end to the middle of that half, whichever is longer (in pulses).
        reach = max(_WIN_PULSES / 2, ((half[0][0] + half[-1][0]) / 2 - self._trusted_end) * PPQN)
        tempo_gap = reach * abs(line[2] - self._trusted[2]) / self._trusted[2]
        if abs(e - off) > _TOL or tempo_gap > _TOL / 2:
            self._unlike += 1
            if self._unlike >= _WIN_PULSES:
                self._trust(win, line)
            return 0
        if off == 0:
            self._trust(win, line)
            return 0
        self._h.clear()  # counted the old way; the trusted line is in the true count
        self._unlike = 0
        return off

    def _trust(self, win: list[tuple[float, float]], line: tuple[float, float, float]) -> None:
        self._trusted, self._trusted_end, self._unlike = line, win[-1][0], 0


def _edges(stretch: list[tuple[float, float]], line: tuple[float, float, float], parts: int) -> list[float]:
    """The early edge of each of `parts` equal parts of `stretch`, in pulses from `line`."""
    t_a, b_a, spb = line
    r = [(t - t_a - (b - b_a) * spb) * PPQN / spb for b, t in stretch]
    size = len(r) // parts
    return [_low(r[i * size : (i + 1) * size]) for i in range(parts)]
