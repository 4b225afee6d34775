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
_LOST_AFTER = 6  # pulses in a row a whole pulse off the fitted line: one was lost, recount
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
        self._disagree, self._last_off = 0, 0  # pulses in a row whose count is off the fitted line
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
            # A pulse lost on the way shows as the count lagging the fitted line by a whole pulse, pulse after
            # pulse (a late burst disagrees only briefly): after _LOST_AFTER such pulses, take the line's count.
            off = round((self.beat_at(t) - beat) * PPQN) if len(self._pulses) >= _FIT_PULSES // 2 else 0
            self._disagree = self._disagree + 1 if off != 0 and off == self._last_off else int(off != 0)
            self._last_off = off
            if self._disagree >= _LOST_AFTER:
                log.info(
                    "clock: %+d pulse(s) recounted at beat %.3f (the count and the fitted line disagreed "
                    "%d pulses in a row)",
                    off,
                    beat,
                    _LOST_AFTER,
                )
                beat += off / PPQN
                self._disagree = 0
                self._pulses.clear()
            if self.running:
                self._daw_beat += n / PPQN
            if gap >= _SYNC_TIMEOUT_S:
                self._pulses.clear()  # do not fit a line across the silence
        else:  # first pulses, or a long silence: continue the timeline where it is
            self._pulses.clear()
            beat = max(self.beat_at(t), 0.0)
        if self._align_to is not None:
            beat = self._aligned(beat, self._align_to)
            self._daw_beat = self._align_to
            self._align_to = None
            self._pulses.clear()
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
        """Least-squares line t = c + spb * beat through the recent pulses."""
        n = len(self._pulses)
        b_last, t_last = self._pulses[-1]
        if n < 3:
            self._t_a, self._b_a = t_last, b_last
            return
        mb = sum(b for b, _ in self._pulses) / n
        mt = sum(t for _, t in self._pulses) / n
        var = sum((b - mb) ** 2 for b, _ in self._pulses)
        cov = sum((b - mb) * (t - mt) for b, t in self._pulses)
        spb = cov / var
        if not 60.0 / 400.0 <= spb <= 60.0 / 20.0:  # nonsense pulses: keep the old tempo
            self._t_a, self._b_a = t_last, b_last
            return
        # Lateness is one-sided (a pulse is never received before it was sent), so the line goes through the
        # early edge of the residuals, not their mean: a few delayed pulses do not drag the grid late.
        resid = sorted(t - (mt + spb * (b - mb)) for b, t in self._pulses)
        self._spb = spb
        self._t_a, self._b_a = mt + resid[len(resid) // 10], mb
