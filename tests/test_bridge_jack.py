"""End to end through a real JACK server (dummy driver, 256-frame periods) and real UDP on loopback.

Every test starts and stops what it needs: a private jackd, the bridge as a subprocess, MIDI peers as
other processes or JACK clients in this one. Skipped (with the reason) when jackd or python-rtmidi's JACK
support is missing. The bridge runs the real ONNX runtime on the tiny exported test model when torch and
onnx are there to build it (export_fixtures), else the toy model.

Robustness (malformed OSC, MIDI flood, SIGTERM, vanishing ports) is in test_bridge_robust.py.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bridge_jack_fixtures import (
    JACKD,
    MidiRecv,
    OscPeer,
    _die_with_parent,
    free_udp_port,
    start_bridge,
    stop_process,
)

rtmidi = pytest.importorskip("rtmidi")
pytestmark = [
    pytest.mark.jack,
    pytest.mark.skipif(JACKD is None, reason="jackd is not installed (apt-get install jackd2)"),
    pytest.mark.skipif(
        rtmidi.API_UNIX_JACK not in rtmidi.get_compiled_api(), reason="python-rtmidi lacks JACK"
    ),
]

FIXTURES = Path(__file__).resolve().parent / "bridge_jack_fixtures.py"


class Running:
    """A bridge subprocess with its OSC peer."""

    def __init__(self, tmp: Path, *args: str, model: str = "toy") -> None:
        self.osc_port = free_udp_port()
        self.peer = OscPeer(self.osc_port)
        self.log = tmp / f"bridge-{self.osc_port}.log"
        self.proc = start_bridge(
            "--midi-api",
            "jack",
            "--model",
            model,
            "--osc-port",
            str(self.osc_port),
            "--reply-port",
            str(self.peer.port),
            "--stats-every-s",
            "0",
            *args,
            log_path=self.log,
        )
        if not self.peer.ping_until_pong(90.0):
            self.stop()
            pytest.fail(f"bridge did not answer /typemoe/ping:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def stop(self, sig: int = signal.SIGTERM) -> int:
        code = stop_process(self.proc, sig)
        self.peer.close()
        return code


@pytest.fixture(scope="module")
def bridge(jack, model_arg, tmp_path_factory):
    b = Running(tmp_path_factory.mktemp("bridge"), "--mode", "manual", model=model_arg)
    yield b
    assert b.stop() == 0, b.log_text()


@pytest.fixture(scope="module")
def out_recv(bridge):
    """One listener on TypeMoE Out for the module (JACK clients are not opened and closed per test)."""
    r = MidiRecv(connect="TypeMoE Out")
    yield r
    r.close()


def _peer(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(FIXTURES), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_die_with_parent,
    )


def _wait_notes_done(recv: MidiRecv, quiet_s: float, timeout: float) -> None:
    """Wait until notes came, none is sounding, and nothing arrived for `quiet_s` (wall clock)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        time.sleep(0.05)
        if recv.events and not recv.hanging() and time.monotonic() - recv.events[-1][0] > quiet_s:
            return


def test_tune_over_midi_gives_key_meter_and_a_continuation(bridge, out_recv):
    recv = out_recv
    recv.events.clear()
    bridge.peer.send("/typemoe/reset")
    player = _peer("play", "--port", "TypeMoE In", "--bpm", "480")
    keys = bridge.peer.wait_for("/typemoe/key", 20.0)
    meters = bridge.peer.wait_for("/typemoe/meter", 5.0)
    assert player.wait(20) == 0, player.stderr.read().decode()
    assert keys and meters, bridge.log_text()
    from typemoe import analysis

    assert keys[0][0] in analysis.KEYS and 0.0 <= keys[0][1] <= 1.0
    assert meters[0][0] in analysis.METERS and 0.0 <= meters[0][1] <= 1.0
    bridge.peer.send("/typemoe/continue", 1.0)
    notes = bridge.peer.wait_for("/typemoe/note", 20.0)
    assert notes, bridge.log_text()
    pitch, vel, onset, dur = notes[0]
    assert isinstance(pitch, int) and isinstance(onset, float) and dur > 0
    _wait_notes_done(recv, 0.5, 20.0)
    assert recv.note_ons(), "nothing arrived on TypeMoE Out"
    assert not recv.hanging(), f"{recv.events[-12:]}\n{bridge.log_text()}"


def test_same_over_osc_only(bridge, out_recv):
    recv = out_recv
    recv.events.clear()
    bridge.peer.send("/typemoe/reset")
    bridge.peer.pump(0.2)
    spb, t0 = 60.0 / 480.0, time.monotonic() + 0.05
    from bridge_fixtures import C_MAJOR_TUNE

    events = sorted([(o, 1, p) for o, d, p in C_MAJOR_TUNE] + [(o + d, 0, p) for o, d, p in C_MAJOR_TUNE])
    for beat, on, pitch in events:
        time.sleep(max(0.0, t0 + beat * spb - time.monotonic()))
        bridge.peer.send("/typemoe/note", pitch, 96 if on else 0)
    assert bridge.peer.wait_for("/typemoe/key", 10.0), bridge.log_text()
    bridge.peer.send("/typemoe/continue", 1.0)
    assert bridge.peer.wait_for("/typemoe/note", 20.0), bridge.log_text()
    _wait_notes_done(recv, 0.5, 20.0)
    assert recv.note_ons() and not recv.hanging(), f"{recv.events[-12:]}\n{bridge.log_text()}"
