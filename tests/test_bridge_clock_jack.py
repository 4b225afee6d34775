"""The bridge's generated notes land on the DAW's MIDI-clock grid: a clock thread sends Start and 24 pulses
a beat into `Toy In` over a real JACK server, a listener hears `Toy Out`.

This module runs its own jackd at 128-frame periods (2.7 ms), not the 64 frames of the other JACK tests:
on this 2-core VM the dummy driver overruns 64-frame periods and drops MIDI events, here clock pulses,
in the test's own sender and listeners as well as in the bridge (the listener missed hundreds of ms of
pulses in failing runs). The bridge recounts a lost pulse within about a beat (bridge/clock.py,
LostPulses; tests/test_bridge_clock.py covers it without JACK), so notes placed in between land a pulse
off. This test is about following the grid, so it runs where the
link does not drop the grid; the 64-frame drop behaviour is what tests/test_bridge_stage.py is about.
Measured 2026-12-01: with the JACK tests' 64 frames the module failed in 2 of 3 runs (the bridge's log
showed a pulse recounted every few beats: +1, +1, -1, +2, ...), at 128 frames it passed 4 of 4. 128 frames
were not enough under a stop's CI load (the listener lost 35 of 430 pulses, the bridge's notes a pulse or
two off), so the server is also synchronous (jackd -S): a client late for a cycle delays that cycle instead
of losing its events.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from bridge_jack_fixtures import ClockSender, MidiRecv, MidiSend, jack_fixture
from test_bridge_jack import (
    Running,
    _wait_notes_done,
    pytestmark,  # noqa: F401 - same skips (jackd, rtmidi JACK) and markers
)

PERIOD = 128  # frames at 48 kHz: 2.7 ms
# A note leaves at the start of the JACK cycle after the bridge sends it, and a pulse is read at the cycle
# after the clock sent it: each side is late by up to a period, so a bridge exactly on the grid is still
# up to two periods off as measured; 1 ms more for scheduling. A pulse off is 17.9 ms at 140 BPM.
GRID_TOLERANCE_MS = 2 * PERIOD / 48.0 + 1.0


jack = jack_fixture(PERIOD)  # a private synchronous jackd for this module (see the module docstring)


@pytest.fixture(scope="module")
def toy_bridge(jack, tmp_path_factory):
    """A bridge on the toy model (steady 8th notes): timing without the tiny random model's 10-note clusters."""
    b = Running(
        tmp_path_factory.mktemp("toy"), "--mode", "manual", "--in-port", "Toy In", "--out-port", "Toy Out"
    )
    yield b
    assert b.stop() == 0, b.log_text()


@pytest.fixture(scope="module")
def grid_rig(toy_bridge):
    """Clock sender into Toy In, a listener on Toy Out, a second listener on the clock: opened once."""
    recv = MidiRecv(connect="Toy Out", name="Grid Recv")
    out = MidiSend("Toy In", name="Grid Clock")
    ref = MidiRecv(connect="Grid Clock", name="Grid Ref")
    yield recv, out, ref
    for client in (recv, ref, out):
        client.close()


@pytest.mark.parametrize("bpm", [100.0, 140.0])
def test_generated_notes_land_on_the_midi_clock_grid(toy_bridge, grid_rig, bpm):
    """Note-ons from Toy Out against the clock's 16th lines, measured by a listening JACK client.

    Two references for the lines: the pulses as the clock thread sent them, and the pulses as a second
    listener received them. Under load the JACK dummy server occasionally loses a pulse in one of the test's
    own clients (sender or listener): every later line then shifts by exactly one pulse for whoever lost it.
    The bridge passes when its notes sit on the grid of either reference; a pulse lost by the bridge alone
    would fail both.
    """
    recv, out, ref = grid_rig
    recv.events.clear()
    ref.events.clear()
    clock = ClockSender(out, bpm)
    try:
        toy_bridge.peer.send("/typemoe/reset")
        clock.start()
        time.sleep(2.0)  # let the bridge lock on to the clock (48+ pulses)
        n0 = len(recv.note_ons())
        toy_bridge.peer.send("/typemoe/continue", 2.0)
        _wait_notes_done(recv, 60.0 / bpm * 1.5, 30.0)
    finally:
        clock.stop()
    ons = recv.note_ons()[n0:]
    assert len(ons) >= 4, f"only {len(ons)} notes arrived:\n{toy_bridge.log_text()}"
    pulses = [t for t, d in ref.events if d == (0xF8,)]
    step = 60.0 / bpm / 4  # a 16th = 6 pulses
    received = []
    for t, _ in ons:
        k = round((t - pulses[0]) / step)
        if 6 * k < len(pulses):
            received.append(abs(t - pulses[6 * k]) * 1000.0)
    sent = np.abs([clock.grid_error(t) * 1000.0 for t, _ in ons])
    received = np.asarray(received)
    lines = [f"{bpm:.0f} BPM, {len(ons)} notes, |error| in ms against the 16th lines"]
    for name, err in (("as sent", sent), ("as received", received)):
        lines.append(
            f"{name}: median {np.median(err):.2f}, p95 {np.percentile(err, 95):.2f}, max {err.max():.2f}"
        )
    print("; ".join(lines), f"(pulses sent {len(clock.sent)}, received by the listener {len(pulses)})")
    # The median, not the p95: in full-suite runs this VM's JACK drops a pulse now and then, and notes
    # placed before the bridge recounts it land a pulse off (p95 19.3 ms at 100 BPM in one CI run on the
    # asynchronous server, median 3.3; the server is synchronous now, the median kept as the margin). A
    # bridge off the grid or a pulse off for good still fails here.
    best = min(np.median(sent), np.median(received) if len(received) else np.inf)
    assert best < GRID_TOLERANCE_MS, lines
