"""The bridge's pure state machine: events in, actions out. No I/O, no threads, no sleeping.

    engine = Engine(cfg, vocab, key_names, meter_names, now=clock.now())
    for action in engine.handle(event, clock.now()): ...      # SendMidi, SendOsc, Feed, Generate, ...
    deadline = engine.next_deadline(clock.now())              # wake up then with a Tick

What it keeps: the beat timeline (BeatClock), the live token stream (typemoe.streaming), the running
key/meter estimate, the performer's phrase (for respond mode), and the scheduled continuation with the
notes it has sounding, so that a stop always ends with a note-off for each of them.

Beats: the *timeline* beat is the BeatClock's (bar-aligned with the DAW under MIDI clock); the *stream*
beat is timeline - origin, where origin is the bar in which the first note arrived (no empty bars first).
"""

from __future__ import annotations

import heapq
import logging
import math
from dataclasses import dataclass, replace

from bridge import midi_parse as mp
from bridge import osc_api
from bridge.clock import BEATS_PER_BAR, BeatClock
from bridge.config import BridgeConfig
from bridge.events import (
    Analysis,
    BadDatagram,
    CancelGenerate,
    Feed,
    Generate,
    Generated,
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
from bridge.notes import BeatNote, TokenReader
from bridge.stats import Stats
from bridge.torchless import StreamingTokenizer

log = logging.getLogger(__name__)

_GRID = 4  # wake-ups per beat (the tokenizer's grid), for bar reports and respond timing
# A note this close to its deadline is due. The loop's timer wakes up to 1 ms late (epoll rounds up to ms),
# so it is asked to wake this much early: sends then spread around the deadline instead of after it.
_EARLY_S = 0.001
_SILENCE_RETRIES = 2  # a continuation without notes is sampled again, at most this many times
_ERRORS_PER_S = 20.0  # /typemoe/error replies (and warnings) per second at most
# A stop that cut sounding notes sends their note-offs again this much later (and All Notes Off on the
# channels used once nothing sounds), and a continuation that ended by itself gets the same late All Notes
# Off: a MIDI link that loses events under load then still ends every note. (Measured: a JACK dummy server
# at 64-frame periods with both cores busy lost 48 of 11,840 events between two plain rtmidi clients, none
# when idle; the losses are single events in overrun periods, so a second release 60 ms later gets
# through.) 60 ms is a few audio periods at any common size and well under a beat.
CONFIRM_S = 0.06
_ERROR_CHARS = 200  # an error text is cut to this many characters (reply and log line)
# Hysteresis of the readout: the reported key (meter) changes only when the new estimate's probability
# beats the reported one's, in the same final analysis, by this margin (provisional analyses of held notes
# never change it). Relative keys (A major / F# minor) share their notes and their probabilities cross
# back and forth on ambiguous bars. Measured with `bridge.bench` on the demo chorale (first 96 beats, the
# shipped model): 26.6 key changes a minute at 0.15 when provisional analyses could change the key, 10.6 at
# 0.15 without, 5.3 at 0.25 without; a real modulation moves the probabilities by more and gets through.
KEY_MARGIN = 0.25
METER_MARGIN = 0.15


@dataclass
class _Pending:
    """A continuation being generated: its chunks are read, placed and scheduled as they arrive."""

    request_id: int
    bars: float
    trigger_t: float
    reader: TokenReader  # continues from the live stream's cursor
    shift: float | None = None  # whole beats added to every onset; fixed by the first note
    first: float = 0.0  # timeline beat of the first note, before the shift
    n_notes: int = 0
    n_tokens: int = 0
    attempt: int = 0  # how many silent continuations came before this one


class _Bucket:
    """Token bucket: `take(t)` is False once more than `rate` per second (burst `rate`) were taken."""

    def __init__(self, rate: float) -> None:
        self.rate, self.level, self.t = rate, rate, -math.inf

    def take(self, t: float) -> bool:
        if t > self.t:  # stamps from different sources arrive slightly out of order: never refill backwards
            gain = (t - self.t) * self.rate if self.t > -math.inf else self.rate
            self.level, self.t = min(self.rate, self.level + gain), t
        if self.level >= 1.0:
            self.level -= 1.0
            return True
        return False


class Engine:
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
        self._notes_in = _Bucket(cfg.max_notes_per_s)
        self._errors = _Bucket(_ERRORS_PER_S)
        self._cc_high = False
        self._key: tuple[str, float] | None = None
        self._meter: tuple[str, float] | None = None
        self._bar = math.floor(self.clock.beat_at(now) / BEATS_PER_BAR)
        self._phrase: list[float] | None = None  # [start, end] timeline beats of the unanswered call
        self._next_id = 0
        self._pending: _Pending | None = None
        self._queue: list[
            tuple
        ] = []  # (beat, order, seq, pitch, velocity, duration) heap; order 0 = off, 1 = on
        self._sounding: dict[tuple[int, int], int] = {}  # (channel, pitch) -> seq of the note sounding
        self._used: set[int] = set()  # channels with notes sent since their last All Notes Off
        self._confirm: list[tuple[float, int, int]] = []  # (time, channel, pitch) to release again
        self._now = now
        self._seq = 0
        self._synced = False
        self._controls = (cfg.condition_key, cfg.condition_meter)
        self._control_ids = tuple(vocab.control_ids(key=self._controls[0], meter=self._controls[1]))
        self._waiting_off: float | None = None  # stamp of a note-off whose note is not yet in the stream

    # ---- public ------------------------------------------------------------------------------------------
    def start(self) -> list:
        """Initial actions: All Notes Off on the output channel (a crashed run may have left a note on; it
        is sent again CONFIRM_S later), then the configured condition."""
        out: list = [SendMidi(mp.all_notes_off(self.cfg.out_channel - 1))]
        self._used.add(self.cfg.out_channel - 1)  # and again CONFIRM_S later, as after any stop
        self._confirm.append((self._now + CONFIRM_S, -1, -1))
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
        if self._queue:
            t = min(t, self.clock.time_at(self._queue[0][0]) - self.cfg.latency_s - _EARLY_S)
        if self._confirm:
            t = min(t, min(c[0] for c in self._confirm))
        return t

    def release_all(self) -> list:
        """Note-off for every generated note sounding (on its channel), then All Notes Off on every channel
        used and on the output channel (shutdown, panic)."""
        out: list = []
        self._used.add(self.cfg.out_channel - 1)
        self._stop_playback(out, force=True)
        return out

    def confirm_now(self) -> list:
        """The delayed second release, at once (shutdown: the process will not be there later)."""
        out: list = []
        self._confirm_due(math.inf, out)
        return out

    @property
    def playing(self) -> bool:
        return bool(self._queue or self._sounding)

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
                elif m.status == mp.START:
                    self.clock.on_start()
                    self._stop_playback(out, force=True)
                elif m.status == mp.CONTINUE:
                    self.clock.on_continue()
                else:
                    self.clock.on_stop()
                    self._stop_playback(out, force=True)
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
                self._origin = math.floor(beat / BEATS_PER_BAR) * BEATS_PER_BAR
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
        self._reader.read(ids)
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
        self._play_due(now, out)
        self._confirm_due(now, out)

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
        bars = min(self.cfg.max_bars, max(1.0, math.ceil(length / BEATS_PER_BAR - 0.1)))
        self._phrase = None
        log.debug("respond: call of %.2f beats -> %.0f bars", length, bars)
        self._request(bars, now, out)

    # ---- analysis out --------------------------------------------------------------------------------------
    @staticmethod
    def _hold(names: list[str], probs, current: tuple[str, float] | None, margin: float) -> tuple[str, float]:
        """The estimate to report: the argmax, unless the reported one is within `margin` of it."""
        best = int(probs.argmax())
        if current is not None and current[0] in names:
            i = names.index(current[0])
            if float(probs[best]) < float(probs[i]) + margin:
                best = i
        return names[best], float(probs[best])

    def _analysis(self, ev: Analysis, now: float, out: list) -> None:
        # A provisional analysis (held notes, lengths so far) refreshes the reported estimate's confidence
        # but never changes it: changes need the final notes.
        margin = math.inf if ev.provisional else 0.0
        key = self._hold(self.key_names, ev.key_probs, self._key, KEY_MARGIN + margin)
        meter = self._hold(self.meter_names, ev.meter_probs, self._meter, METER_MARGIN + margin)
        new_key = self._key is None or self._key[0] != key[0] or self.cfg.analysis_every_note
        new_meter = self._meter is None or self._meter[0] != meter[0] or self.cfg.analysis_every_note
        if new_key and self._key is not None and self._key[0] != key[0]:
            self.stats.count("key_changes")
        self._key, self._meter = key, meter
        if new_key:
            self.stats.add("analysis_ms", (now - ev.cause_t) * 1000.0)
            log.info("key %s (%.2f)", *key)
        if new_meter:
            log.info("meter %s (%.2f)", *meter)
        self._report(out, key=new_key, meter=new_meter)

    def _report(self, out: list, *, key: bool, meter: bool) -> None:
        if key and self._key is not None:
            out.append(SendOsc("/typemoe/key", self._key))
        if meter and self._meter is not None:
            out.append(SendOsc("/typemoe/meter", self._meter))

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
        self._next_id += 1
        self._pending = _Pending(
            self._next_id, bars, trigger_t, TokenReader(self.vocab, self._reader.cursor), attempt=attempt
        )
        seed = None if self.cfg.seed is None else self.cfg.seed + attempt
        out.append(Generate(self._next_id, math.ceil(bars) + 1, self.cfg.temperature, self.cfg.top_p, seed))

    def _generated(self, ev: Generated, now: float, out: list) -> None:
        p = self._pending
        if p is None or ev.request_id != p.request_id:
            log.debug("dropping stale continuation %d", ev.request_id)
            return
        if ev.error is not None:
            self._pending = None
            self._error(ev.error, now, out)
            return
        p.n_tokens += len(ev.tokens)
        notes = p.reader.read(ev.tokens)
        if notes and p.shift is None:  # the first note fixes where the continuation sits on the timeline
            p.first = min(n.onset for n in notes) + self._origin
            ready = self.clock.beat_at(now + self.cfg.latency_s + 0.002)
            p.shift = max(0, math.ceil(ready - p.first)) * 1.0  # whole beats: the grid is kept
            self.stats.add("first_note_ms", (now - p.trigger_t) * 1000.0)
        window_end = p.first + p.bars * BEATS_PER_BAR
        past_window = False
        for n in notes:
            if n.onset + self._origin >= window_end:
                past_window = True
                break
            self._schedule(replace(n, onset=n.onset + self._origin + p.shift))
            p.n_notes += 1
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
                    "continuation: %d notes over %.1f bars from beat %.2f",
                    p.n_notes,
                    p.bars,
                    p.first + p.shift,
                )

    def _schedule(self, n: BeatNote) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (n.onset, 1, self._seq, n.pitch, n.velocity, n.duration))
        heapq.heappush(self._queue, (n.onset + n.duration, 0, self._seq, n.pitch, 0, 0.0))

    def _play_due(self, now: float, out: list) -> None:
        ch = self.cfg.out_channel - 1
        horizon = self.clock.beat_at(now + self.cfg.latency_s + _EARLY_S)
        was_playing = bool(self._queue)
        while self._queue and self._queue[0][0] <= horizon:
            beat, order, seq, pitch, velocity, duration = heapq.heappop(self._queue)
            if order == 1:
                if (ch, pitch) in self._sounding:
                    out.append(SendMidi(mp.note_off(pitch, ch)))
                out.append(SendMidi(mp.note_on(pitch, velocity, ch)))
                out.append(SendOsc("/typemoe/note", (pitch, velocity, float(beat), float(duration))))
                self._sounding[(ch, pitch)] = seq
                self._used.add(ch)
            elif self._sounding.get((ch, pitch)) == seq:
                out.append(SendMidi(mp.note_off(pitch, ch)))
                del self._sounding[(ch, pitch)]
        if was_playing and not self.playing and self._pending is None:  # the continuation ended
            self._confirm.append((now + CONFIRM_S, -1, -1))  # then All Notes Off if nothing sounds

    def _stop_playback(self, out: list, *, force: bool = False) -> None:
        """End playback: cancel the generation, note-off for each sounding note on the channel it was
        played on, All Notes Off on every channel used, and a delayed second release of the cut notes.
        Without `force`, a stop with nothing to stop sends nothing."""
        active = bool(self._queue or self._sounding or self._pending is not None)
        self._queue.clear()
        if self._pending is not None:
            out.append(CancelGenerate(self._pending.request_id))
        self._pending = None
        for ch, pitch in self._sounding:
            out.append(SendMidi(mp.note_off(pitch, ch)))
            self._confirm.append((self._now + CONFIRM_S, ch, pitch))
        self._sounding.clear()
        if active or force:
            for ch in sorted(self._used):
                out.append(SendMidi(mp.all_notes_off(ch)))
            if self._used:
                self._confirm.append((self._now + CONFIRM_S, -1, -1))

    def _confirm_due(self, now: float, out: list) -> None:
        """The second release: note-off again for cut notes not sounding anew, then All Notes Off on the
        channels used once nothing sounds (a burst may have lost the first ones on the way)."""
        if not self._confirm or min(c[0] for c in self._confirm) > now:
            return
        due = [c for c in self._confirm if c[0] <= now]
        self._confirm = [c for c in self._confirm if c[0] > now]
        for _, ch, pitch in due:
            if ch >= 0 and (ch, pitch) not in self._sounding:
                out.append(SendMidi(mp.note_off(pitch, ch)))
        if not self._sounding and not self._queue:
            for ch in sorted(self._used):
                out.append(SendMidi(mp.all_notes_off(ch)))
            self._used.clear()

    # ---- OSC commands ----------------------------------------------------------------------------------------
    def _command(self, cmd, t: float, out: list) -> None:
        if isinstance(cmd, osc_api.NoteCmd):
            self._note(cmd.pitch, cmd.velocity, t, out)
        elif isinstance(cmd, osc_api.ContinueCmd):
            self._request(cmd.bars, t, out)
        elif isinstance(cmd, osc_api.ConditionCmd):
            ids = tuple(self.vocab.control_ids(key=cmd.key, meter=cmd.meter))  # ValueError names a bad one
            if ids != self._control_ids:  # a knob resending the same value costs nothing
                self._controls, self._control_ids = (cmd.key, cmd.meter), ids
                log.info("condition: key %r meter %r", cmd.key or "free", cmd.meter or "free")
                out.append(Recondition(ids))
        elif isinstance(cmd, osc_api.TempoCmd):
            if self.clock.synced(t) or self.cfg.clock == "midi":
                raise osc_api.OscInputError(
                    f"tempo follows MIDI clock ({self.clock.tempo:.1f} BPM); /typemoe/tempo ignored"
                )
            self.clock.set_tempo(cmd.bpm, t)
            log.info("tempo %.1f BPM", cmd.bpm)
        elif isinstance(cmd, osc_api.SetCmd):
            if cmd.name == "out_channel" and cmd.value != self.cfg.out_channel:
                self._stop_playback(out)  # its notes end on the channel they were played on
            self.cfg = replace(self.cfg, **{cmd.name: cmd.value})  # __post_init__ validates
            self._notes_in.rate = self.cfg.max_notes_per_s
            if cmd.name == "mode" and cmd.value == "analyze":
                self._stop_playback(out)
            log.info("set %s = %r", cmd.name, cmd.value)
        elif cmd.name == "ping":
            out.append(SendOsc("/typemoe/pong"))
        elif cmd.name == "panic":
            out += self.release_all()
            self._phrase = None
        elif cmd.name == "reset":
            self._reset(out)
        else:
            raise osc_api.OscInputError(f"no handler for {cmd!r}")

    def _reset(self, out: list) -> None:
        self._stop_playback(out)
        self._tok.reset()
        self._reader = TokenReader(self.vocab)
        self._origin, self._phrase, self._waiting_off = None, None, None
        self._held.clear()
        self._key = self._meter = None
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
