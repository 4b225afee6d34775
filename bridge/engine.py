"""The bridge's pure state machine: events in, actions out. No I/O, no threads, no sleeping.

    engine = Engine(cfg, vocab, key_names, meter_names, now=clock.now())
    for action in engine.handle(event, clock.now()): ...      # SendMidi, SendOsc, Feed, Generate, ...
    deadline = engine.next_deadline(clock.now())              # wake up then with a Tick

What it keeps: the beat timeline (BeatClock), the live token stream (typemoe.streaming), the running
key/meter estimate (Readout, below), the performer's phrase (for respond mode), the continuation being
generated (bridge.continuation: it starts on the next bar line of the music's meter and is steered by
guidance and the key lock), and the notes scheduled and sounding (bridge.playback), so that a stop always
ends with a note-off for each of them.

Beats: the *timeline* beat is the BeatClock's (bar-aligned with the DAW under MIDI clock); the *stream*
beat is timeline - origin, where origin is the bar in which the first note arrived (no empty bars first).
"""

from __future__ import annotations

import logging
import math

from typemoe.bridge import continuation as cont
from typemoe.bridge import midi_parse as mp
from typemoe.bridge import osc_api
from typemoe.bridge.clock import BeatClock
from typemoe.bridge.commands import OscCommands
from typemoe.bridge.config import BridgeConfig
from typemoe.bridge.events import (
    Analysis,
    BadDatagram,
    CancelGenerate,
    Feed,
    Generated,
    Infilled,
    MidiIn,
    ModelFailed,
    OscIn,
    Probe,
    Recondition,
    ResetModel,
    SendMidi,
    SendOsc,
    Tick,
)
from typemoe.bridge.infill import Infiller
from typemoe.bridge.playback import CONFIRM_S, Playback  # noqa: F401 (CONFIRM_S: daemon, tests)
from typemoe.bridge.stats import Bucket, Stats
from typemoe.streaming import StreamingTokenizer, TokenReader
from typemoe.vocab import BEATS_PER_BAR, TICKS_PER_BEAT

log = logging.getLogger(__name__)

_GRID = TICKS_PER_BEAT  # wake-ups per beat (the tokenizer's grid), for bar reports and respond timing
# A note this close to its deadline is due. The loop's timer wakes up to 1 ms late (epoll rounds up to ms),
# so it is asked to wake this much early: sends then spread around the deadline instead of after it.
_EARLY_S = 0.001
_SILENCE_RETRIES = 2  # a continuation without notes is sampled again, at most this many times
_ERRORS_PER_S = 20.0  # /typemoe/error replies (and warnings) per second at most
_ERROR_CHARS = 200  # an error text is cut to this many characters (reply and log line)


# Relative keys (A major / F# minor) share their notes and their probabilities cross back and forth on
# ambiguous bars. Measured with `typemoe.bridge.bench` on the demo chorale (first 96 beats, the shipped model):
# 26.6 key changes a minute at 0.15 when provisional analyses could change the key, 10.6 at 0.15 without, 5.3
# at 0.25 without; a real modulation moves the probabilities by more and gets through.
KEY_MARGIN = 0.25
METER_MARGIN = 0.15


class Readout:
    """The key and meter the bridge reports (/typemoe/key, /typemoe/meter), with hysteresis. Pure.

    The reported key (meter) changes only when the new estimate's probability beats the reported one's, in
    the same final analysis, by a margin; a provisional analysis (held notes, lengths so far) refreshes the
    confidence but never changes the estimate: changes need the final notes. `key`, `meter`: (name,
    probability), None before the first analysis.
    """

    def __init__(self, key_names, meter_names) -> None:
        self.key_names, self.meter_names = list(key_names), list(meter_names)
        self.key: tuple[str, float] | None = None
        self.meter: tuple[str, float] | None = None

    def reset(self) -> None:
        self.key = self.meter = None

    def update(self, key_probs, meter_probs, *, provisional: bool, every: bool) -> tuple[bool, bool, bool]:
        """Take one analysis: (report the key?, report the meter?, did the key change?). `every` reports both
        after every update, not only on change (analysis_every_note)."""
        margin = math.inf if provisional else 0.0
        key = _hold(self.key_names, key_probs, self.key, KEY_MARGIN + margin)
        meter = _hold(self.meter_names, meter_probs, self.meter, METER_MARGIN + margin)
        changed = self.key is not None and self.key[0] != key[0]
        new_key = self.key is None or changed or every
        new_meter = self.meter is None or self.meter[0] != meter[0] or every
        self.key, self.meter = key, meter
        return new_key, new_meter, changed


def _hold(names: list[str], probs, current: tuple[str, float] | None, margin: float) -> tuple[str, float]:
    """The estimate to report: the argmax, unless the reported one is within `margin` of it."""
    best = int(probs.argmax())
    if current is not None and current[0] in names:
        i = names.index(current[0])
        if float(probs[best]) < float(probs[i]) + margin:
            best = i
    return names[best], float(probs[best])


class Engine(OscCommands):
    def __init__(self, cfg: BridgeConfig, vocab, key_names, meter_names, *, now: float) -> None:
        self.cfg = cfg
        self.vocab = vocab
        self.key_names, self.meter_names = list(key_names), list(meter_names)
        self.clock = BeatClock(tempo=cfg.tempo, t0=now, follow_midi=cfg.clock != "internal")
        self.stats = Stats()
        self._parser = mp.MidiParser()
        self._tok = StreamingTokenizer(vocab, max_history=0)  # the returned chunks are all we use
        self._reader = TokenReader(vocab)  # follows the stream: where the model's context ends
        self._origin: float | None = None
        self._beat = 0.0  # latest timeline beat (monotonic)
        self._held: dict[int, float] = {}  # pitch -> stream onset, performer notes held (channels merged)
        self._notes_in = Bucket(cfg.max_notes_per_s)
        self._errors = Bucket(_ERRORS_PER_S)
        self._cc_high = False
        self._readout = Readout(key_names, meter_names)  # the reported key and meter
        self._bar = math.floor(self.clock.beat_at(now) / BEATS_PER_BAR)
        self._phrase: list[float] | None = None  # [start, end] timeline beats of the unanswered call
        self._next_id = 0
        self._pending: cont.Pending | None = None
        self._daw_zero: float | None = None  # timeline beat of the DAW's song position 0, while it runs
        self._play = Playback()  # the continuation's notes, scheduled and sounding
        self._now = now
        self._synced = False
        self._controls = (cfg.condition_key, cfg.condition_meter)
        self._control_ids = tuple(vocab.control_ids(key=self._controls[0], meter=self._controls[1]))
        self._waiting_off: float | None = None  # stamp of a note-off whose note is not yet in the stream
        self._infill = Infiller(vocab, self._error)  # heard bars, /typemoe/infill (bridge.infill)

    # ---- public ------------------------------------------------------------------------------------------
    def start(self) -> list:
        """Initial actions: All Notes Off on the output channel (a crashed run may have left a note on; it
        is sent again CONFIRM_S later), then the configured condition."""
        out: list = [SendMidi(mp.all_notes_off(self.cfg.out_channel - 1))]
        self._play.release_later(self._now, self.cfg.out_channel - 1)  # again later, as after any stop
        if any(self._controls):
            out.append(
                Recondition(tuple(self.vocab.control_ids(key=self._controls[0], meter=self._controls[1])))
            )
        return out

    def handle(self, event, now: float) -> list:
        out: list = []
        self._now = max(self._now, now)
        if isinstance(event, MidiIn):
            self._midi(event, out)
        elif isinstance(event, OscIn):
            try:
                self._command(osc_api.parse_command(event.address, event.args), event.t, out)
            except (osc_api.OscInputError, ValueError, KeyError) as err:
                self._error(str(err).strip("'\""), event.t, out)
        elif isinstance(event, BadDatagram):
            self.stats.count("bad_datagrams")
            self._error(f"not an OSC message: {event.reason}", event.t, out)
        elif isinstance(event, Analysis):
            self._analysis(event, now, out)
        elif isinstance(event, Generated):
            self._generated(event, now, out)
        elif isinstance(event, Infilled):
            self._infill.done(event, now, out)
        elif isinstance(event, ModelFailed):
            self._error(event.message, now, out)
        else:
            assert isinstance(event, Tick), f"unexpected event {event!r}"
        self._tick(now, out)
        return out

    def next_deadline(self, now: float) -> float:
        """When the engine next needs a Tick: the next scheduled note or the next grid step."""
        beat = max(self._beat, self.clock.beat_at(now))
        # The tokenizer rounds times to the grid, so its tick changes half-way between grid lines: wake just
        # after that point, when ended notes become final (a later wake-up only delays the analysis).
        t = self.clock.time_at((math.floor(beat * _GRID - 0.5 + 1e-6) + 1.5 + 1e-3) / _GRID)  # after now
        for play in (self._play, self._infill.play):
            if play.queue:
                t = min(t, self.clock.time_at(play.queue[0][0]) - self.cfg.latency_s - _EARLY_S)
            if play.confirm:
                t = min(t, min(c[0] for c in play.confirm))
        return t

    def release_all(self) -> list:
        """Note-off for every generated note sounding (on its channel), then All Notes Off on every channel
        used and on the output channel (shutdown, panic)."""
        out: list = []
        self._play.used.add(self.cfg.out_channel - 1)
        self._stop_playback(out, force=True)
        self._infill.cancel(self._now, out, force=True)
        return out

    def confirm_now(self) -> list:
        """The delayed second release, at once (shutdown: the process will not be there later)."""
        out: list = []
        self._play.confirm_due(math.inf, out)
        self._infill.play.confirm_due(math.inf, out)
        return out

    @property
    def playing(self) -> bool:
        return self._play.playing or self._infill.playing

    # ---- MIDI in ---------------------------------------------------------------------------------------------
    def _midi(self, ev: MidiIn, out: list) -> None:
        parsed = self._parser.parse(ev.data)
        if not parsed:
            self.stats.count("midi_ignored")
        for m in parsed:
            if isinstance(m, mp.Note):
                self._note(m.pitch, m.velocity, ev.t, out)
            elif isinstance(m, mp.Control):
                if m.number == self.cfg.trigger_cc:
                    high = m.value >= 64
                    if high and not self._cc_high:
                        self._request(None, ev.t, out)
                    self._cc_high = high
            elif isinstance(m, mp.Realtime):
                if m.status == mp.CLOCK:
                    self.clock.on_pulse(ev.t)
                    running = self.clock.running and self.clock.synced(ev.t)
                    self._daw_zero = (
                        cont.daw_anchor(self.clock.beat_at(ev.t), self.clock.daw_beat) if running else None
                    )
                elif m.status == mp.START:
                    self.clock.on_start()
                    self._stop_playback(out, force=True)
                    self._infill.transport_stopped(ev.t, out)
                    self._infill.restart()  # the heard bars count from the DAW's Start
                elif m.status == mp.CONTINUE:
                    self.clock.on_continue()
                else:
                    self.clock.on_stop()
                    self._stop_playback(out, force=True)
                    self._infill.transport_stopped(ev.t, out)
            elif isinstance(m, mp.SongPosition):
                self.clock.on_song_position(m.sixteenths)

    # ---- performer notes ---------------------------------------------------------------------------------
    def _note(self, pitch: int, velocity: int, t: float, out: list) -> None:
        beat = max(self._beat, self.clock.beat_at(t))
        if velocity > 0:
            if self.playing or self._pending is not None:
                self._stop_playback(out)  # the performer takes over
            if not self._notes_in.take(t):
                self.stats.count("notes_dropped")
                if self.stats.counts["notes_dropped"] % 1000 == 1:
                    log.warning(
                        "note flood: %d notes dropped so far (limit %.0f/s)",
                        self.stats.counts["notes_dropped"],
                        self.cfg.max_notes_per_s,
                    )
                return
            if self._origin is None:
                self._origin = self._stream_origin(beat, t)
            log.debug("note on %d vel %d at beat %.3f", pitch, velocity, beat)
            self._held[pitch] = beat - self._origin
            self._feed(self._tok.note_on(pitch, velocity, beat - self._origin), t, out)
            # The note is final only when it ends (its duration is a token): analyse at once with what is
            # known, the held notes as long as they are so far, on a fork the model throws away.
            out.append(Probe(tuple(self._tok.provisional(beat - self._origin)), t))
            if self._phrase is None:
                self._phrase = [beat, beat]
        elif pitch in self._held:
            log.debug("note off %d at beat %.3f", pitch, beat)
            del self._held[pitch]
            self._feed(self._tok.note_off(pitch, beat - self._origin), t, out, note_off=True)
            if self._phrase is not None:
                self._phrase[1] = beat
        else:
            self.stats.count("orphan_note_offs")

    def _stream_origin(self, beat: float, t: float) -> float:
        """Beat 0 of the token stream, fixed by the first note after a reset. Following a DAW's clock: the
        bar line before it (the timeline's bars are the DAW's). Free-running: the note itself, so the
        performer's own start is the downbeat. Against the internal grid, whose phase is only when the bridge
        was launched, a performer's notes could fall anywhere between two grid steps, and the tokens (and the
        meter read from them) would change with it: the JACK waltz read 3/4 or 4/4 depending on that phase
        alone (tests/test_bridge_meter_jack.py)."""
        if self.clock.synced(t):
            return math.floor(beat / BEATS_PER_BAR) * BEATS_PER_BAR
        return beat

    def _feed(self, ids: list[int], cause_t: float, out: list, *, note_off: bool = False) -> None:
        """Send new stream ids to the model; latency is counted from the note-off that made them final.

        A note that has ended can still wait to enter the stream: for the grid to pass its onset (a 32nd at
        most, counted in the latency), or for a lower note held from the same or an earlier onset to end (it
        sorts first; a held bass can take bars, and that wait is the music's, not the bridge's). So the stamp
        is this note-off's own time, or, for ids released by a tick or a note-on, the newest note-off still
        waiting.
        """
        if not ids:
            if note_off:
                self._waiting_off = cause_t  # ended, not final yet
            return
        if not note_off and self._waiting_off is not None:
            cause_t = self._waiting_off
        self._waiting_off = None
        heard = self._reader.read(ids)
        if heard and self._origin is not None:
            self._infill.heard(heard, self._origin)
        out.append(Feed(tuple(ids), cause_t))

    # ---- time ----------------------------------------------------------------------------------------------
    def _tick(self, now: float, out: list) -> None:
        self._beat = max(self._beat, self.clock.beat_at(now))
        synced = self.clock.synced(now)
        if synced != self._synced:
            self._synced = synced
            log.info(
                "clock: %s",
                f"following MIDI clock at {self.clock.tempo:.1f} BPM"
                if synced
                else f"internal at {self.clock.tempo:.1f} BPM",
            )
        if self._origin is not None:
            stream = self._beat - self._origin
            for pitch, onset in list(self._held.items()):
                if stream - onset > self.cfg.max_note_beats:  # a lost note-off must not stall the stream
                    del self._held[pitch]
                    self.stats.count("notes_cut")
                    self._feed(self._tok.note_off(pitch, stream), now, out)
            self._feed(self._tok.advance(stream), now, out)
        bar = math.floor(self._beat / BEATS_PER_BAR)
        if bar != self._bar:
            self._bar = bar
            self._report(out, key=True, meter=True)
        self._maybe_respond(now, out)
        horizon = self.clock.beat_at(now + self.cfg.latency_s + _EARLY_S)
        self._play.due(horizon, self.cfg.out_channel - 1, now, out, more_coming=self._pending is not None)
        self._play.confirm_due(now, out)
        daw = self._daw_zero if self._daw_zero is not None and self.clock.synced(now) else None
        ready = self.clock.beat_at(now + self.cfg.latency_s + 0.002)
        self._infill.tick(self._beat, daw, now, ready, horizon, self.cfg.out_channel - 1, out)

    def _maybe_respond(self, now: float, out: list) -> None:
        if (
            self.cfg.mode != "respond"
            or self._phrase is None
            or self._held
            or self._pending is not None
            or self.playing
            or self._beat - self._phrase[1] < self.cfg.respond_after_beats
        ):
            return
        length = self._phrase[1] - self._phrase[0]
        span = cont.choose_meter(self._controls[1], self._readout.meter)[1]
        bars = min(self.cfg.max_bars, max(1.0, math.ceil(length / span - 0.1)))
        self._phrase = None
        log.debug("respond: call of %.2f beats -> %.0f bars", length, bars)
        self._request(bars, now, out)

    # ---- analysis out --------------------------------------------------------------------------------------
    def _analysis(self, ev: Analysis, now: float, out: list) -> None:
        new_key, new_meter, changed = self._readout.update(
            ev.key_probs, ev.meter_probs, provisional=ev.provisional, every=self.cfg.analysis_every_note
        )
        if changed:
            self.stats.count("key_changes")
        if new_key:
            self.stats.add("analysis_ms", (now - ev.cause_t) * 1000.0)
            log.info("key %s (%.2f)", *self._readout.key)
        if new_meter:
            log.info("meter %s (%.2f)", *self._readout.meter)
        self._report(out, key=new_key, meter=new_meter)

    def _report(self, out: list, *, key: bool, meter: bool) -> None:
        if key and self._readout.key is not None:
            out.append(SendOsc("/typemoe/key", self._readout.key))
        if meter and self._readout.meter is not None:
            out.append(SendOsc("/typemoe/meter", self._readout.meter))

    # ---- generation ------------------------------------------------------------------------------------------
    def _request(self, bars: float | None, t: float, out: list) -> None:
        if self.cfg.mode == "analyze":
            self._error("mode is 'analyze': no continuation (/typemoe/set mode manual or respond)", t, out)
            return
        bars = self.cfg.bars if bars is None else min(bars, self.cfg.max_bars)
        self._stop_playback(out)
        if self._origin is None:
            self._origin = math.floor(self._beat / BEATS_PER_BAR) * BEATS_PER_BAR
        self._feed(self._tok.advance(self._beat - self._origin), t, out)
        self._generate(bars, t, out)

    def _generate(self, bars: float, trigger_t: float, out: list, attempt: int = 0) -> None:
        """Ask for `bars` bars of the music's meter from its next bar line (bridge.continuation)."""
        meter, span = cont.choose_meter(self._controls[1], self._readout.meter)
        # Bar lines of the meter: from the DAW's song position 0 while it runs, else from the stream start.
        daw = self._daw_zero is not None and self.clock.synced(self._now)
        anchor = self._daw_zero if daw else self._origin
        start = cont.next_bar_line(self._beat, span, anchor)
        key_lock = self._key_lock()
        self._next_id += 1
        reader = TokenReader(self.vocab, self._reader.cursor)  # its plan comes with the tokens
        self._pending = cont.Pending(self._next_id, bars, trigger_t, reader, start, span, attempt=attempt)
        seed = None if self.cfg.seed is None else self.cfg.seed + attempt
        out.append(
            cont.SteeredGenerate(
                self._next_id,
                cont.remi_bars(bars, span),
                self.cfg.temperature,
                self.cfg.top_p,
                seed,
                meter=meter,
                bars=math.ceil(bars - 1e-9),
                start_beat=start - self._origin,
                guidance=self.cfg.guidance,
                key_lock=key_lock,
                head_guidance=self.cfg.head_guidance,
                meter_guidance=self.cfg.meter_guidance,
            )
        )
        log.info(
            "continuation %d: %g bars of %s from beat %.2f (bar lines from beat %.2f, the %s; DAW beat %.3f)",
            *(self._next_id, bars, meter, start, anchor, "DAW's 0" if daw else "stream start"),
            self.clock.daw_beat,
        )

    def _key_lock(self) -> str | None:
        """The key whose scale generation keeps under key_lock: the asked one, else the one reported."""
        if not self.cfg.key_lock:
            return None
        return self._controls[0] or (self._readout.key[0] if self._readout.key else None)

    def _generated(self, ev: Generated, now: float, out: list) -> None:
        p = self._pending
        if p is None or ev.request_id != p.request_id:
            log.debug("dropping stale continuation %d", ev.request_id)
            return
        if ev.error is not None:
            self._pending = None
            self._error(ev.error, now, out)
            return
        had_notes = p.n_notes > 0
        p.reader.plan = ev.plan  # the REMI bars the decoder wrote in (None: 4-beat ones)
        notes, past_window = p.place(
            ev.tokens, self._origin, self.clock.beat_at(now + self.cfg.latency_s + 0.002)
        )
        if notes and not had_notes:
            self.stats.add("first_note_ms", (now - p.trigger_t) * 1000.0)
        for n in notes:
            self._play.schedule(n)
        if past_window and not ev.done:  # the rest would be cut anyway: stop sampling
            out.append(CancelGenerate(p.request_id))
        if ev.done or past_window:
            self._pending = None
            if p.n_notes == 0 and p.attempt < _SILENCE_RETRIES:  # a musician asked for notes: ask again
                log.info("the model continued with silence (%d tokens, no notes); sampling again", p.n_tokens)
                self._generate(p.bars, p.trigger_t, out, p.attempt + 1)
            elif p.n_notes == 0:
                log.info("the model continued with silence %d times; giving up", p.attempt + 1)
            else:
                log.info(
                    "continuation: %d notes over %g bars of %g beats from beat %.2f",
                    p.n_notes,
                    p.bars,
                    p.span,
                    p.start + (p.shift or 0.0),
                )

    def _stop_playback(self, out: list, *, force: bool = False) -> None:
        """End playback: cancel the generation, end every sounding note (bridge.playback). Without
        `force`, a stop with nothing to stop sends nothing."""
        pending, self._pending = self._pending, None
        if pending is not None:
            out.append(CancelGenerate(pending.request_id))
        self._play.stop(self._now, out, force=force or pending is not None)

    def _reset(self, out: list) -> None:
        self._stop_playback(out)
        self._infill.cancel(self._now, out)
        self._infill.restart()
        self._tok.reset()
        self._reader = TokenReader(self.vocab)
        self._origin, self._phrase, self._waiting_off = None, None, None
        self._held.clear()
        self._readout.reset()
        out.append(ResetModel())
        log.info("context reset")

    def _error(self, message: str, t: float, out: list) -> None:
        if len(message) > _ERROR_CHARS:
            message = f"{message[: _ERROR_CHARS - 24]}... ({len(message) - _ERROR_CHARS + 24} more chars)"
        self.stats.count("errors")
        if self._errors.take(t):
            log.warning("bad input: %s", message)
            out.append(SendOsc("/typemoe/error", (message,)))
        else:
            self.stats.count("errors_suppressed")
