"""Robustness end to end, each test on its own private jackd and bridge process (no shared state).

- >= 10,000 random/malformed datagrams, then a MIDI flood at 5,000 events/s (3 s here to keep CI short;
  TYPEMOE_FLOOD_S=30 for the full 30 s run): the bridge still answers /typemoe/ping, memory stays bounded.
- SIGTERM during playback: exit code 0, a note-off for every note, All Notes Off.
- A --connect-in port that vanishes and comes back: the bridge keeps serving and reconnects.
"""

from __future__ import annotations

import os
import random
import signal
import struct
import time

from bridge_jack_fixtures import MidiRecv, jack_fixture, stop_process
from test_bridge_jack import Running, _peer, pytestmark  # noqa: F401 - same skips and markers

FLOOD_S = float(os.environ.get("TYPEMOE_FLOOD_S", "3"))


jack = jack_fixture(64, scope="function")


def _garbage(rng: random.Random, i: int) -> bytes:
    from typemoe.bridge.osc_io import encode

    kind = i % 6
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 200))
    if kind == 1:  # valid address, wrong types / counts
        return encode(
            "/typemoe/note", tuple(rng.choice(["x", 1.5, 300, -1]) for _ in range(rng.randrange(0, 5)))
        )
    if kind == 2:  # unknown address
        return encode(f"/typemoe/{rng.randbytes(4).hex()}", (1,))
    if kind == 3:  # truncated valid message
        data = encode("/typemoe/set", ("temperature", 0.5))
        return data[: rng.randrange(1, len(data))]
    if kind == 4:  # bundle with a lying element size
        return b"#bundle\x00" + bytes(8) + struct.pack(">i", rng.randrange(-5, 500)) + rng.randbytes(12)
    return b"/typemoe/note\x00\x00\x00,iQ\x00" + rng.randbytes(8)  # unsupported type tag


def test_garbage_datagrams_and_a_midi_flood_leave_it_answering(jack, tmp_path):
    bridge = Running(tmp_path, "--mode", "manual")
    rng = random.Random(11)
    rss0 = bridge.rss_kb()
    for i in range(10_000):
        bridge.peer.send_raw(_garbage(rng, i))
        if i % 500 == 499:
            time.sleep(0.01)  # stay under the loopback socket buffer, so the datagrams reach the bridge
    assert bridge.peer.ping_until_pong(10.0), bridge.log_text()
    errors = [a for _, a, _ in bridge.peer.received if a == "/typemoe/error"]
    assert 0 < len(errors) < 2_000  # answered, and rate-limited
    flood = _peer("flood", "--port", "TypeMoE In", "--rate", "5000", "--seconds", str(FLOOD_S))
    assert flood.wait(FLOOD_S + 60) == 0, flood.stderr.read().decode()
    print(flood.stdout.read().decode().strip())
    assert bridge.peer.ping_until_pong(10.0), bridge.log_text()
    assert bridge.proc.poll() is None
    growth_mb = (bridge.rss_kb() - rss0) / 1024
    print(f"bridge RSS growth after garbage + flood: {growth_mb:.1f} MB")
    assert growth_mb < 100
    assert bridge.stop() == 0, bridge.log_text()


def test_sigterm_during_playback_exits_0_with_no_hanging_notes(jack, tmp_path):
    b = Running(tmp_path, "--mode", "manual", "--tempo", "240")
    recv = MidiRecv(connect="TypeMoE Out", name="Term Recv")
    try:
        for pitch in (60, 64, 67, 72):
            b.peer.send("/typemoe/note", pitch, 90)
            time.sleep(0.05)
            b.peer.send("/typemoe/note", pitch, 0)
        b.peer.send("/typemoe/continue", 8.0)
        end = time.monotonic() + 20
        while len(recv.note_ons()) < 5 and time.monotonic() < end:
            time.sleep(0.02)
        assert len(recv.note_ons()) >= 5, b.log_text()
        assert b.stop(signal.SIGTERM) == 0, b.log_text()
        time.sleep(0.2)
        assert not recv.hanging(), recv.events[-10:]
        assert any(d[:2] == (0xB0, 123) for _, d in recv.events)  # All Notes Off
    finally:
        recv.close()
        stop_process(b.proc, signal.SIGKILL)


def test_connected_port_that_vanishes_is_reconnected(jack, tmp_path):
    b = Running(tmp_path, "--mode", "analyze", "--connect-in", "Ext Keys", "--port-check-s", "0.2")
    try:
        for round_ in range(2):  # the port appears, plays, vanishes; then again
            keys_player = _peer("keys", "--port", "Ext Keys", "--bpm", "480")
            got = b.peer.wait_for("/typemoe/key", 20.0)
            keys_player.send_signal(signal.SIGTERM)  # the port goes away (a device unplugged, an app quit)
            keys_player.wait(5)
            assert got, f"round {round_}: no key after the port appeared\n{b.log_text()}"
            time.sleep(0.5)
            assert b.peer.ping_until_pong(5.0), b.log_text()
            b.peer.send("/typemoe/reset")
        assert "disappeared" in b.log_text()
    finally:
        assert b.stop() == 0, b.log_text()
