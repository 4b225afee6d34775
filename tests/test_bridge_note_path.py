"""The path of a performer's note, from the engine to /typemoe/key, stays short.

The engine and the real model thread (its own thread, with the toy model) are traced with sys/threading
.setprofile while one note is played and its analysis comes back as /typemoe/key. Every bridge module whose
code runs on the way is recorded. The stations that carry the note: bridge.engine (MIDI in, the stream, the
readout), bridge.midi_parse (bytes), typemoe.streaming (REMI ids), bridge.worker (the context policy and the
model call), the model session; around them the I/O ends that this in-process test does not open,
bridge.midi_io (the port callback), bridge.daemon (the loop) and bridge.osc_io (the send). The helpers the
engine consults on the way (clock, config, playback, infill's heard bars, stats) run too and are listed.
A module that joins the path fails this test: update PATH (and docs/INTERNAL_API.md) if that is meant.
"""

from __future__ import annotations

import queue
import sys
import threading
import time

from bridge_fixtures import toy_vocab

from typemoe.bridge.config import BridgeConfig
from typemoe.bridge.engine import Engine
from typemoe.bridge.events import Feed, MidiIn, Probe, SendOsc, Tick
from typemoe.bridge.toy_model import ToyModel
from typemoe.bridge.worker import ModelThread

STATIONS = {"typemoe.bridge.engine", "typemoe.bridge.midi_parse", "typemoe.bridge.worker"}
HELPERS = {
    "typemoe.bridge.events",  # the messages between the stations (MidiIn, Feed, Analysis, SendOsc)
    "typemoe.bridge.clock",
    "typemoe.bridge.config",
    "typemoe.bridge.playback",
    "typemoe.bridge.infill",
    "typemoe.bridge.stats",
    "typemoe.bridge.toy_model",  # the model session (the shipped model's: typemoe.decoding + export.runtime)
}


def _trace_one_note() -> tuple[set[str], set[str], bool]:
    """(bridge modules, other typemoe modules, /typemoe/key sent) while one note goes in and its key out."""
    seen: set[str] = set()
    on = threading.Event()

    def prof(frame, event, arg):
        if event == "call" and on.is_set():
            name = frame.f_globals.get("__name__", "")
            if name.startswith("typemoe"):
                seen.add(name)

    model = ToyModel(toy_vocab())
    cfg = BridgeConfig(model="toy", no_midi=True, mode="manual", clock="internal", analysis_every_note=True)
    engine = Engine(cfg, model.vocab, model.key_names, model.meter_names, now=time.monotonic())
    events: queue.Queue = queue.Queue()
    threading.setprofile(prof)
    sys.setprofile(prof)
    worker = ModelThread(model, events.put, time.monotonic)
    try:
        worker.start()

        def run(actions) -> list[str]:
            for a in actions:
                if isinstance(a, Feed | Probe):
                    worker.submit(a)
            return [a.address for a in actions if isinstance(a, SendOsc)]

        def note(pitch: int) -> bool:
            t = time.monotonic()
            sent = run(engine.handle(MidiIn((0x90, pitch, 90), t), t))
            t += 0.25
            sent += run(engine.handle(MidiIn((0x80, pitch, 0), t), t))
            deadline = time.monotonic() + 10.0
            while "/typemoe/key" not in sent and time.monotonic() < deadline:
                try:
                    ev = events.get(timeout=0.02)
                    sent += run(engine.handle(ev, time.monotonic()))
                except queue.Empty:
                    t = max(t, time.monotonic())
                    sent += run(engine.handle(Tick(t), t))
            return "/typemoe/key" in sent

        run(engine.start())
        for pitch in (60, 62, 64, 65):  # the stream is under way: the first note's set-up is not traced
            note(pitch)
        while not events.empty():
            engine.handle(events.get(), time.monotonic())
        on.set()
        sent = note(67)
        on.clear()
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
        worker.close()
    bridge = {m for m in seen if m.startswith("typemoe.bridge.")}
    return bridge, seen - bridge, sent


def test_a_note_reaches_the_key_report_through_the_listed_bridge_modules_only():
    bridge, core, sent = _trace_one_note()
    assert sent, "the note's analysis never came back as /typemoe/key"
    assert bridge >= STATIONS, f"the note did not pass {sorted(STATIONS - bridge)}"
    assert bridge <= STATIONS | HELPERS, (
        f"new bridge modules on a note's path: {sorted(bridge - STATIONS - HELPERS)}; "
        "if that is meant, add them here and to docs/INTERNAL_API.md's note path"
    )
    assert "typemoe.streaming" in core
