"""Shared helpers for the in-process bridge tests (imported explicitly; conftest.py is not the bridge's).

- `toy_vocab()`: the project vocabulary, built once per process (it takes ~1 s).
- `Harness`: the pure engine driven by a FakeClock, with the model run synchronously in the same thread
  and every MIDI/OSC send recorded with its time. No sleeps, no threads, no sockets.
- `hanging_notes` / `hanging_pitches`: what a synth would still sound after a list of MIDI messages.
- `C_MAJOR_TUNE`: a 16-note phrase as (onset beat, duration beats, pitch); `REPO`: the repository root.

The JACK, subprocess and OSC helpers of the end-to-end tests are in bridge_jack_fixtures.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from typemoe.bridge.clock import FakeClock
from typemoe.bridge.config import BridgeConfig
from typemoe.bridge.engine import Engine
from typemoe.bridge.events import (
    Analysis,
    CancelGenerate,
    Feed,
    Generate,
    Generated,
    MidiIn,
    OscIn,
    Probe,
    Recondition,
    ResetModel,
    SendMidi,
    SendOsc,
    Tick,
)
from typemoe.bridge.toy_model import ToyModel

REPO = Path(__file__).resolve().parent.parent


@functools.lru_cache(maxsize=1)
def toy_vocab():
    from typemoe.vocab import TypedVocab

    return TypedVocab.default()


def hanging_notes(messages) -> set[tuple[int, int]]:
    """(channel, pitch) a synth would still sound after `messages`: a note-on not followed by its note-off
    on the same channel, nor by All Notes Off (CC 123) on that channel."""
    sounding: set[tuple[int, int]] = set()
    for d in messages:
        if len(d) != 3:
            continue
        kind, ch = d[0] & 0xF0, d[0] & 0x0F
        if kind == 0x90 and d[2] > 0:
            sounding.add((ch, d[1]))
        elif kind == 0x80 or kind == 0x90:
            sounding.discard((ch, d[1]))
        elif kind == 0xB0 and d[1] == 123:
            sounding = {n for n in sounding if n[0] != ch}
    return sounding


def hanging_pitches(messages) -> set[int]:
    return {p for _, p in hanging_notes(messages)}


@dataclass
class Harness:
    """Engine + synchronous toy model + recorders, on a FakeClock."""

    cfg_overrides: dict = field(default_factory=dict)
    t0: float = 100.0
    auto_generate: bool = True

    def __post_init__(self) -> None:
        base = {"model": "toy", "no_midi": True, "mode": "manual", "clock": "auto", "tempo": 120.0}
        self.cfg = BridgeConfig(**{**base, **self.cfg_overrides})
        self.clock = FakeClock(self.t0)
        self.model = ToyModel(toy_vocab())
        self.session = self.model.session()
        self.session.feed([self.model.vocab.bos_id])
        self.engine = Engine(
            self.cfg, self.model.vocab, self.model.key_names, self.model.meter_names, now=self.clock.now()
        )
        self.midi: list[tuple[float, tuple[int, ...]]] = []
        self.osc: list[tuple[float, str, tuple]] = []
        self.fed: list[int] = []
        self.generates: list[Generate] = []
        self.cancels: list[int] = []
        self.reconditions: list[tuple[int, ...]] = []
        self.resets = 0
        self.probes = 0
        self.run(self.engine.start())

    # ---- driving -----------------------------------------------------------------------------------
    def run(self, actions: list) -> None:
        for a in actions:
            now = self.clock.now()
            if isinstance(a, SendMidi):
                self.midi.append((now, a.data))
            elif isinstance(a, SendOsc):
                self.osc.append((now, a.address, a.args))
            elif isinstance(a, Feed):
                self.fed += a.ids
                out = self.session.feed(list(a.ids))
                self.handle(Analysis(out.key_probs, out.meter_probs, a.cause_t, now))
            elif isinstance(a, Probe):
                self.probes += 1
                if a.ids:
                    out = self.session.fork().feed(list(a.ids))
                    self.handle(Analysis(out.key_probs, out.meter_probs, a.cause_t, now, provisional=True))
            elif isinstance(a, Generate):
                self.generates.append(a)
                if self.auto_generate:
                    self.complete(a)
            elif isinstance(a, Recondition):
                self.reconditions.append(a.controls)
            elif isinstance(a, CancelGenerate):
                self.cancels.append(a.request_id)
            elif isinstance(a, ResetModel):
                self.resets += 1
                self.session = self.model.session()
                self.session.feed([self.model.vocab.bos_id])
            else:
                raise AssertionError(f"unknown action {a!r}")

    def complete(
        self, g: Generate, tokens: tuple[int, ...] | None = None, error: str | None = None, plan=None
    ) -> None:
        """The model thread's answer to `g`: tokens (default: the toy's), written under `plan`."""
        if tokens is None and error is None:
            tokens = tuple(self.session.fork().generate(n_bars=g.n_bars, temperature=0.0, seed=0))
        self.handle(Generated(g.request_id, tokens or (), error, self.clock.now(), plan=plan))

    def handle(self, event) -> None:
        self.run(self.engine.handle(event, self.clock.now()))

    def advance(self, seconds: float) -> None:
        """Move time forward, visiting every deadline the engine asks for on the way."""
        end = self.clock.now() + seconds
        while True:
            d = self.engine.next_deadline(self.clock.now())
            if d > end:
                break
            assert d > self.clock.now() - 1e-3, f"engine deadline {d} is in the past (now {self.clock.now()})"
            if d <= self.clock.now():  # due now: one Tick handles it, then the next deadline is later
                d = self.clock.now() + 1e-9
            self.clock.t = max(self.clock.t, d)
            self.handle(Tick(self.clock.now()))
        self.clock.t = end
        self.handle(Tick(end))

    def advance_beats(self, beats: float) -> None:
        self.advance(beats * self.engine.clock.seconds_per_beat)

    def midi_in(self, *data: int) -> None:
        self.handle(MidiIn(tuple(data), self.clock.now()))

    def note(self, pitch: int, velocity: int = 90) -> None:
        self.midi_in(0x90, pitch, velocity)

    def off(self, pitch: int) -> None:
        self.midi_in(0x80, pitch, 0)

    def osc_in(self, address: str, *args) -> None:
        self.handle(OscIn(address, tuple(args), self.clock.now()))

    def play(self, notes: list[tuple[float, float, int]], start_beat: float | None = None) -> float:
        """Play (onset beat, duration beats, pitch) notes on time; returns the timeline beat of onset 0."""
        beat_clock = self.engine.clock
        start = beat_clock.beat_at(self.clock.now()) if start_beat is None else start_beat
        events = sorted([(o + d, 0, p) for o, d, p in notes] + [(o, 1, p) for o, d, p in notes])
        for beat, on, pitch in events:
            t = beat_clock.time_at(start + beat)
            if t > self.clock.now():
                self.advance(t - self.clock.now())
            (self.note if on else self.off)(pitch)
        return start

    # ---- reading -----------------------------------------------------------------------------------
    def sent(self, address: str) -> list[tuple]:
        return [args for _, a, args in self.osc if a == address]

    def note_ons(self) -> list[tuple[float, int]]:
        return [(t, d[1]) for t, d in self.midi if d[0] & 0xF0 == 0x90 and d[2] > 0]

    def hanging(self) -> set[int]:
        """Pitches a synth would still be sounding (note-off or All Notes Off on the note's channel ends it)."""
        return hanging_pitches(d for _, d in self.midi)


C_MAJOR_TUNE = [
    (i * 1.0, 0.9, p) for i, p in enumerate([60, 62, 64, 65, 67, 65, 64, 62, 60, 64, 67, 72, 67, 64, 60, 60])
]
