"""Infilling in the bridge: `/typemoe/infill start_bar end_bar` rewrites bars already heard.

Two halves:

- `Infiller` (pure, driven by bridge.engine): keeps the notes heard since the last reset or Start, by bar
  (the last HEARD_BARS bars), checks a request, makes the model job (events.InfillJob), and plays the
  answer through its own bridge.playback.Playback, so panic, the DAW's Stop and reset end every note.
- `start(model, job)` (the model thread, bridge.worker): the prefix and suffix around the span
  (typemoe.infill.split_score, as `typemoe infill` cuts a file) and the middle from
  typemoe.infill.start_middle, whose SpanGrammar writes exactly the span's bars and nothing past them, a
  token per InfillRun.step(), so the thread hears the performer between tokens; `answer` runs it whole.
  The toy model is not that decoder: it fills the span with its arpeggio on the key it heard.

Bars are bars of the music's meter (bridge.continuation.choose_meter at the request: the asked meter, else
the running estimate, else 4/4), numbered from 1, and the middle is written in them (typemoe.infill):

- Following a running DAW (MIDI clock, Song Position Pointer): the DAW's bars (bar 1 = song position 0).
  A bar's notes are those of the latest loop pass that had notes in it. The answer plays at those bars the
  next time the transport reaches them (the next loop pass), once; a jump back or a Stop before the span
  ended plays it again, whole, on the next pass.
- Otherwise (internal clock, or no DAW running when the notes came): bar 1 opens on the 4-beat line at or
  before the first note heard; the answer plays at once, from the next bar line.

The heard notes are kept with their positions, not by bar, so the bars are counted in the meter of the
request even when the meter estimate changed after the notes were played.

Each answer note is reported as /typemoe/note when it sounds (bridge timeline beat, as continuations), and
/typemoe/infill first_bar last_bar n_notes beat when the answer is scheduled (beat: where its first bar
line is on the timeline), so a client can map the notes back to the bars they fill.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from typemoe import decoding
from typemoe.bridge.events import Infilled, InfillJob, SendOsc
from typemoe.bridge.playback import Playback
from typemoe.infill import InfillError, InfillIds, middle_bar_beats, split_score, start_middle
from typemoe.streaming import BeatNote, TokenReader
from typemoe.vocab import BEATS_PER_BAR, MAX_INFILL_BARS, TICKS_PER_BEAT

log = logging.getLogger(__name__)

HEARD_BARS = 64  # bars before the furthest one reached that a request reads (older: less context, no error)
NOTES_PER_BAR = 256  # heard notes kept: HEARD_BARS * NOTES_PER_BAR, the oldest forgotten first
_EPS = 1e-6
_PULSE = 1.0 / 24


@dataclass
class _Answer:
    first_bar: int
    last_bar: int
    notes: list[BeatNote]  # onsets in beats from the span's first bar line
    daw: bool  # on the DAW's bars (else at once)
    span: float  # beats of a bar (of the meter the request counted its bars in)
    start: float | None = None  # timeline beat of its first bar line once scheduled
    zero: float | None = None  # the DAW pass it is scheduled in (timeline beat of song position 0)

    @property
    def end(self) -> float:
        return self.start + (self.last_bar - self.first_bar + 1) * self.span


class Infiller:
    """The heard bars and the infill answer being played. `error(message, t, out)` is the engine's."""

    def __init__(self, vocab, error: Callable[[str, float, list], None]) -> None:
        self.vocab, self._error = vocab, error
        self.play = Playback()
        # (pass, note) in the order heard: note.onset in beats from bar 1's line; pass: the DAW pass's zero or None
        self._heard: deque[tuple[float | None, BeatNote]] = deque(maxlen=HEARD_BARS * NOTES_PER_BAR)
        self._daw = False  # the heard notes are on the DAW's bars
        self._anchor: float | None = None  # without DAW: timeline beat of bar 1
        self._passes: deque[tuple[float, float]] = deque(maxlen=32)  # (timeline beat from, zero)
        self._zero: float | None = None  # timeline beat of the DAW's song position 0, while it runs
        self._reached: float | None = None  # furthest beat from bar 1's line the heard stream has entered
        self._next_id = 0
        self._waiting: tuple[int, int, int, float] | None = None  # (request id, first bar, last bar, span)
        self._answer: _Answer | None = None

    @property
    def playing(self) -> bool:
        return self.play.playing

    # ---- what was heard ----------------------------------------------------------------------------
    def restart(self) -> None:
        """Forget the heard bars (reset, the DAW's Start); an answer waiting for its pass keeps waiting."""
        self._heard.clear()
        self._anchor, self._reached, self._daw = None, None, False

    def heard(self, notes: list[BeatNote], origin: float) -> None:
        """Notes of the live stream (stream beats; `origin` is stream beat 0 on the timeline)."""
        for n in notes:
            t = origin + n.onset
            zero = None
            if self._zero is not None:  # the DAW pass the note began in
                zero = next((z for frm, z in reversed(self._passes) if t >= frm - _PULSE), None)
                if zero is None:
                    continue  # before the DAW started
            if (zero is not None) != self._daw or (zero is None and self._anchor is None):
                self.restart()
                self._daw = zero is not None
                if not self._daw:
                    self._anchor = math.floor(t / BEATS_PER_BAR + _EPS) * BEATS_PER_BAR
            pos = t - (zero if self._daw else self._anchor)
            if pos < -_EPS:
                continue
            pos = max(pos, 0.0)
            self._heard.append((zero, BeatNote(pos, n.duration, n.pitch, n.velocity)))
            self._reach(pos)

    def _reach(self, pos: float) -> None:
        self._reached = pos if self._reached is None else max(self._reached, pos)

    def bars_heard(self, span: float) -> dict[int, list[BeatNote]]:
        """The heard notes by bar of `span` beats (index 0 = bar 1), the last HEARD_BARS bars up to the
        furthest one reached: each bar's notes are those of the latest pass that had notes in it."""
        if self._reached is None:
            return {}
        lowest = int(math.floor(self._reached / span + _EPS)) - HEARD_BARS + 1
        latest: dict[int, float | None] = {}
        for zero, n in self._heard:
            bar = int(math.floor(n.onset / span + _EPS))
            if bar >= lowest and (bar not in latest or (zero is not None and zero > latest[bar])):
                latest[bar] = zero
        bars: dict[int, list[BeatNote]] = {}
        for zero, n in self._heard:
            bar = int(math.floor(n.onset / span + _EPS))
            if bar in latest and latest[bar] == zero:
                bars.setdefault(bar, []).append(n)
        return bars

    # ---- a request ---------------------------------------------------------------------------------
    def request(self, first: int, last: int, t: float, out: list, *, meter: str = "4/4", **job) -> None:
        """Check /typemoe/infill first last (bars of `meter`, bridge.continuation.choose_meter's name)
        against what was heard; queue the model job. Raises InfillError or ValueError with the message
        /typemoe/error replies."""
        InfillIds.of(self.vocab, where="the bridge's model")  # names the missing tokens
        if last - first + 1 > MAX_INFILL_BARS:
            raise ValueError(
                f"bars {first}-{last} are {last - first + 1} bars; the model infills at most {MAX_INFILL_BARS}"
            )
        if self._reached is None:
            raise ValueError("nothing heard since the last reset or Start: play the phrase first")
        span = decoding.meter_beats(meter)
        reached = int(math.floor(self._reached / span + _EPS)) + 1
        if last > reached:
            raise ValueError(
                f"end_bar {last} not heard yet: {reached} bar(s) of {meter} heard since the last reset or Start"
            )
        self.cancel(t, out)
        bars = self.bars_heard(span)
        notes = tuple(
            (round(n.onset * TICKS_PER_BEAT), max(1, round(n.duration * TICKS_PER_BEAT)), n.pitch, n.velocity)
            for bar in sorted(bars)
            if not first - 1 <= bar <= last - 1
            for n in bars[bar]
        )
        self._next_id += 1
        self._waiting = (self._next_id, first, last, span)
        out.append(InfillJob(self._next_id, notes, first, last, meter=meter, **job))
        log.info(
            "infill %d: bars %d-%d of %s between %d heard notes",
            self._next_id,
            first,
            last,
            meter,
            len(notes),
        )

    def done(self, ev: Infilled, now: float, out: list) -> None:
        """The model's answer: keep it to play (next tick), or report its failure."""
        if self._waiting is None or ev.request_id != self._waiting[0]:
            log.debug("dropping stale infill %d", ev.request_id)
            return
        _, first, last, span = self._waiting
        self._waiting = None
        if ev.error is not None:
            self._error(ev.error, now, out)
            return
        notes = [BeatNote(*n) for n in ev.notes]
        self._answer = _Answer(first, last, notes, daw=self._daw, span=span)
        log.info("infill: %d notes for bars %d-%d", len(notes), first, last)

    # ---- playing it ----------------------------------------------------------------------------------
    def tick(self, beat: float, zero: float | None, now: float, ready: float, horizon: float, ch: int, out):
        """Time passed: `zero` is the DAW's song position 0 on the timeline while it runs (else None),
        `ready` the earliest timeline beat a note-on can still go out on time, `horizon` what is due."""
        a = self._answer
        if zero != self._zero:
            if zero is not None:
                self._passes.append((beat, zero))
            if a is not None and a.zero is not None:  # the transport jumped or stopped mid-answer
                self.play.stop(now, out, force=False)
                a.start = a.zero = None  # again, whole, on the next pass
            self._zero = zero
        if self._daw and zero is not None:
            self._reach(beat - zero)
        elif not self._daw and self._anchor is not None:
            self._reach(beat - self._anchor)
        if a is not None and a.start is None:
            start = None
            if not a.daw:  # at once, from the next bar line
                anchor = self._anchor or 0.0
                start = anchor + (math.floor((ready - anchor) / a.span + _EPS) + 1) * a.span
            elif zero is not None and zero + (a.first_bar - 1) * a.span >= ready - _EPS:
                start, a.zero = zero + (a.first_bar - 1) * a.span, zero
            if start is not None:
                a.start = start
                for n in a.notes:
                    self.play.schedule(BeatNote(start + n.onset, n.duration, n.pitch, n.velocity))
                out.append(SendOsc("/typemoe/infill", (a.first_bar, a.last_bar, len(a.notes), float(start))))
        if a is not None and a.start is not None and not self.play.queue and beat >= a.end:
            self._answer = None  # played
        self.play.due(horizon, ch, now, out, more_coming=False)
        self.play.confirm_due(now, out)

    def transport_stopped(self, now: float, out: list) -> None:
        """The DAW stopped or started: end the notes; an answer on DAW bars plays on its next pass."""
        self.play.stop(now, out, force=False)
        if self._answer is not None and self._answer.daw:
            self._answer.start = self._answer.zero = None
        else:
            self._answer = None

    def cancel(self, now: float, out: list, *, force: bool = False) -> None:
        """Forget the answer (played, waiting, or being made) and end its notes (panic, a new request)."""
        self._answer = self._waiting = None
        self.play.stop(now, out, force=force)


# ---- the model thread --------------------------------------------------------------------------------


@dataclass
class InfillRun:
    """An answer being written on the model thread, a token per step(), so the thread can hear the
    performer between tokens (as it does during a continuation)."""

    job: InfillJob
    steps: Iterator[int]
    notes_of: Callable[[list[int]], list[tuple[float, float, int, int]]]  # the ids -> the span's notes
    ids: list[int] = field(default_factory=list)

    def step(self) -> bool:
        """Sample one token; False once the middle is complete (nothing was sampled)."""
        nxt = next(self.steps, None)
        if nxt is None:
            return False
        self.ids.append(nxt)
        return True

    def result(self, now: float) -> Infilled:
        return Infilled(self.job.request_id, tuple(self.notes_of(self.ids)), None, now)


def start(model, job: InfillJob) -> InfillRun:
    """Cut the heard notes around the span (typemoe.infill.split_score, as `typemoe infill` cuts a file),
    feed a fresh session the arrangement and return the run; its notes are (onset, duration in beats from
    the span's first bar line, pitch, velocity), inside the span.

    Raises:
        InfillError: the model has no infilling tokens, or the span cannot be filled.
    """
    import symusic

    vocab = model.vocab
    InfillIds.of(vocab, where="the bridge's model")
    score = symusic.Score(TICKS_PER_BEAT)
    if job.notes:
        track = symusic.Track("heard", 0, False)
        for time, dur, pitch, vel in job.notes:
            track.notes.append(symusic.Note(int(time), int(dur), int(pitch), int(vel)))
        score.tracks.append(track)
    bar = round(decoding.meter_beats(job.meter) * TICKS_PER_BEAT)  # grid ticks of a bar of the meter
    t0, t1 = (job.first_bar - 1) * bar, job.last_bar * bar
    split = split_score(vocab, score, t0, t1, bar_beats=middle_bar_beats(job.meter))
    span = (t1 - t0) / TICKS_PER_BEAT

    def inside(notes) -> list[tuple[float, float, int, int]]:
        return [(on, min(d, span - on), p, v) for on, d, p, v in notes if 0 <= on < span - _EPS]

    session = model.session()
    if isinstance(session, decoding.Session):
        run = start_middle(
            session,
            split.prefix,
            split.suffix,
            n_bars=split.n_bars,
            span_ticks=split.span_ticks,
            bar_beats=split.bar_beats,
            controls=job.controls,
            temperature=job.temperature,
            top_p=job.top_p,
            seed=job.seed,
            guidance=job.guidance,
            key_lock=job.key_lock,
            suffix_weight=job.suffix_weight,
            head_guidance=job.head_guidance,
        )

        def notes_of(ids):
            tpb = TICKS_PER_BEAT
            return inside(
                (n.time / tpb, n.duration / tpb, n.pitch, n.velocity) for n in run.finish(ids).notes
            )

        return InfillRun(job, run.steps, notes_of)
    # the toy stand-in: its arpeggio on the key of the bars around the span
    session.feed([vocab.bos_id, *split.prefix, *split.suffix])
    steps = session.generate_steps(n_bars=split.n_bars, temperature=job.temperature, seed=job.seed)

    def toy_notes(ids):
        return inside((n.onset, n.duration, n.pitch, n.velocity) for n in TokenReader(vocab).read(ids))

    return InfillRun(job, steps, toy_notes)


def failed(job: InfillJob, err: Exception, now: float) -> Infilled:
    """The event that reports a failed infill: an InfillError's message as it is, anything else (a model
    failure, which must not kill the bridge) logged and named."""
    if isinstance(err, InfillError):
        return Infilled(job.request_id, (), str(err), now)
    log.error("infill %d failed", job.request_id, exc_info=err)
    return Infilled(job.request_id, (), f"infill failed: {err}", now)


def answer(model, job: InfillJob, now: Callable[[], float]) -> Infilled:
    """The whole answer in one call (start, every step, result); a failure is its error, never an
    exception."""
    try:
        run = start(model, job)
        while run.step():
            pass
        return run.result(now())
    except Exception as err:
        return failed(job, err, now())
