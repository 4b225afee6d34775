"""JACK, subprocess and OSC helpers for the end-to-end bridge tests (imported explicitly; conftest.py is not
the bridge's).

- `jack_server` / `jack_or_skip`: a private jackd (dummy driver) named for this process; `JACKD` is its path.
- `start_bridge` / `stop_process`: the bridge CLI as a subprocess, and a clean stop.
- `OscPeer` (with `free_udp_port`): a UDP socket that talks to the bridge and collects its replies.
- `MidiRecv`, `MidiSend`, `ClockSender`: JACK MIDI ports in the test process, and a MIDI beat clock thread.
- A separate MIDI player process: `python tests/bridge_jack_fixtures.py play|flood|keys ...`.

The in-process engine harness and the toy vocabulary are in bridge_fixtures.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from bridge_fixtures import C_MAJOR_TUNE, REPO, hanging_notes, hanging_pitches

from typemoe.bridge import jackd
from typemoe.bridge.jackd import die_with_parent

JACKD = shutil.which("jackd")
_JACK_SERIAL = 0
REAL_STDERR_FD: int | None = None  # the stderr pytest started with, before its capture (conftest.py sets it)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_die_with_parent = die_with_parent
_REALTIME = jackd.realtime_allowed()  # jackd -R where allowed, as on stage (jackd.jack_server says why)


@contextlib.contextmanager
def jack_server(period: int = 64, watchdog_s: float = 240.0, sync: bool = True):
    """A private jackd (dummy driver, 48 kHz, `period` frames) named for this process; yields its name.

    sync: jackd -S (the default here): a client that is late for a cycle delays it instead of losing that
    cycle's MIDI events, so a test measures the bridge, not this VM's scheduling. The asynchronous server
    lost events of late clients in 5 of 6 loaded runs of notes/exp/sync_loss.py, the synchronous one none
    (jackd.jack_server has the figures); a stop's CI run once lost 35 of 430 clock pulses at 128 frames.
    sync=False is for the tests about what the bridge does when the link drops events.
    The server is killed after `watchdog_s` whatever happens, so a stuck test fails instead of hanging CI.
    """
    if JACKD is None:
        raise RuntimeError("jackd is not installed")
    global _JACK_SERIAL
    _JACK_SERIAL += 1
    with jackd.jack_server(
        f"typemoe-test-{os.getpid()}-{_JACK_SERIAL}",
        period=period,
        realtime=_REALTIME,
        sync=sync,
        kill_after_s=watchdog_s,
    ) as name:
        # A test process stuck inside a JACK call does not come back even when the server dies: dump every
        # thread's stack and exit instead of hanging the suite until CI's own limit. The dump goes to the
        # terminal pytest found (REAL_STDERR_FD, set by conftest.py), not to its capture file, which the
        # exit would lose with the only clue.
        import faulthandler

        out = os.fdopen(os.dup(REAL_STDERR_FD), "w") if REAL_STDERR_FD is not None else sys.stderr
        faulthandler.dump_traceback_later(watchdog_s + 60.0, exit=True, file=out)
        try:
            yield name
        finally:
            faulthandler.cancel_dump_traceback_later()


@contextlib.contextmanager
def jack_or_skip(period: int = 64, sync: bool = True):
    """jack_server(), or skip the test when jackd cannot start here."""
    import pytest

    try:
        with jack_server(period=period, sync=sync) as name:
            yield name
    except RuntimeError as err:
        pytest.skip(f"cannot start jackd: {err}")


def jack_fixture(period: int, *, sync: bool = True, scope: str = "module"):
    """A pytest fixture named `jack` for a module that needs its own server: `jack = jack_fixture(128)`."""
    import pytest

    @pytest.fixture(scope=scope, name="jack")
    def _jack():
        with jack_or_skip(period=period, sync=sync) as name:
            yield name

    return _jack


def start_bridge(*args: str, log_path: Path) -> subprocess.Popen:
    """`python -m typemoe.bridge.cli ARGS` with stderr to `log_path` (read it on failure)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "typemoe.bridge.cli", *args],
        preexec_fn=_die_with_parent,
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(log_path, "wb"),
    )


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class OscPeer:
    """A UDP socket that talks to the bridge and receives its replies (bind it as --reply-port)."""

    def __init__(self, bridge_port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.bridge = ("127.0.0.1", bridge_port)
        self.received: list[tuple[float, str, tuple]] = []

    def send(self, address: str, *args) -> None:
        from typemoe.bridge.osc_io import encode

        self.sock.sendto(encode(address, args), self.bridge)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendto(data, self.bridge)

    def pump(self, seconds: float) -> list[tuple[float, str, tuple]]:
        """Receive for `seconds` (blocking reads with a deadline); returns what arrived."""
        from pythonosc.osc_message import OscMessage

        new = []
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                break
            msg = OscMessage(data)
            new.append((time.monotonic(), msg.address, tuple(msg.params)))
        self.received += new
        return new

    def wait_for(self, address: str, timeout: float, count: int = 1) -> list[tuple]:
        """Args of the first `count` messages to `address` received from now on (fewer on timeout)."""
        start = len(self.received)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            got = [args for _, a, args in self.received[start:] if a == address]
            if len(got) >= count:
                return got[:count]
            self.pump(min(0.05, max(0.0, end - time.monotonic())))
        return [args for _, a, args in self.received[start:] if a == address]

    def ping_until_pong(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.send("/typemoe/ping")
            if self.wait_for("/typemoe/pong", 0.25):
                return True
        return False

    def close(self) -> None:
        self.sock.close()


def _jack_port(midi, needle: str) -> int:
    end = time.monotonic() + 10.0
    while time.monotonic() < end:
        ports = midi.get_ports()
        hits = [i for i, p in enumerate(ports) if needle in p]
        if hits:
            return hits[0]
        time.sleep(0.05)
    raise RuntimeError(f"no JACK MIDI port matching {needle!r} (have {midi.get_ports()})")


class MidiRecv:
    """A JACK MIDI input in this process: connects to a port by name, or opens a virtual one."""

    def __init__(
        self, *, connect: str | None = None, virtual: str | None = None, name: str = "Test Recv"
    ) -> None:
        import rtmidi

        self.events: list[tuple[float, tuple[int, ...]]] = []
        self.midi = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, name=name, queue_size_limit=4096)
        self.midi.ignore_types(sysex=False, timing=False, active_sense=False)
        from typemoe.bridge.midi_io import DriverStamper, InputPump

        stamper = DriverStamper(time.monotonic)  # arrival as the driver saw it, like a DAW's timestamps
        # Read like the bridge reads (InputPump), never through rtmidi's callback: that runs in the JACK
        # thread, waits for the GIL and loses whole cycles of events while this process is busy (three
        # fresh-clone CI runs failed on notes or clock pulses that never reached a listener).
        self._pump = InputPump(lambda data, delta: self.events.append((stamper.stamp(delta), tuple(data))))
        if virtual is not None:
            self.midi.open_virtual_port(virtual)
        else:
            self.midi.open_port(_jack_port(self.midi, connect))
        self._pump.start(self.midi)

    def note_ons(self) -> list[tuple[float, int]]:
        return [(t, d[1]) for t, d in self.events if len(d) == 3 and d[0] & 0xF0 == 0x90 and d[2] > 0]

    def hanging(self) -> set[int]:
        return hanging_pitches(d for _, d in self.events)

    def hanging_notes(self) -> set[tuple[int, int]]:
        return hanging_notes(d for _, d in self.events)

    def close(self) -> None:
        """Stop the reader thread first (it must not read a port being closed), then close."""
        self._pump.stop()
        self.midi.close_port()
        self.midi.delete()


class MidiSend:
    def __init__(self, connect: str, name: str = "Test Send") -> None:
        import rtmidi

        self.midi = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name=name)
        self.midi.open_port(_jack_port(self.midi, connect))

    def send(self, *data: int) -> None:
        self.midi.send_message(list(data))

    def close(self) -> None:
        self.midi.close_port()
        self.midi.delete()


class MidiDump:
    """jack_midi_dump (a C client in its own process) listening to every output port of `source` (a JACK
    client name): what the link delivered, to tell the link's losses from a listener's. Its output goes to
    a file, never a pipe (a full pipe would block it). `note_ons()` after `close()`."""

    EXE = shutil.which("jack_midi_dump")

    def __init__(self, source: str, path: Path, name: str = "midi-ref") -> None:
        if self.EXE is None:
            raise RuntimeError("jack_midi_dump is not installed (apt-get install jackd2)")
        self.path = path
        with open(path, "wb") as out:
            self.proc = subprocess.Popen(
                [self.EXE, name], stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
            )
        end = time.monotonic() + 10.0
        while True:
            ports = subprocess.run(["jack_lsp"], capture_output=True, text=True).stdout.splitlines()
            sources = [p for p in ports if p.startswith(f"{source}:")]
            if f"{name}:input" in ports and sources:
                break
            if time.monotonic() > end or self.proc.poll() is not None:
                self.close()
                raise RuntimeError(f"jack_midi_dump or {source!r} has no port: {ports}")
            time.sleep(0.05)
        for port in sources:
            subprocess.run(["jack_connect", port, f"{name}:input"], check=True, capture_output=True)

    def close(self) -> None:
        stop_process(self.proc)

    def note_ons(self) -> list[tuple[int, int]]:
        """(pitch, velocity) of every note-on (velocity > 0) it printed, in order."""
        import re

        # lines "   0: 90 3c 40 note on ..."; JACK's own noise too
        text = self.path.read_text(errors="replace")
        hits = re.findall(r"^\s*\d+: 9[0-9a-f] ([0-9a-f]{2}) ([0-9a-f]{2}) ", text, flags=re.MULTILINE)
        return [(int(p, 16), int(v, 16)) for p, v in hits if int(v, 16) > 0]


class ClockSender:
    """MIDI beat clock from a thread: Start, then 24 pulses per beat on absolute deadlines."""

    def __init__(self, out: MidiSend, bpm: float) -> None:
        import threading

        self.out, self.period = out, 60.0 / bpm / 24
        self.t0 = 0.0
        self.sent: list[float] = []  # actual send time of every pulse
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        self.out.send(0xFA)
        self.t0 = time.monotonic() + self.period
        k = 0
        while not self._stop.is_set():
            target = self.t0 + k * self.period
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self.sent.append(time.monotonic())
            self.out.send(0xF8)
            k += 1
        self.out.send(0xFC)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)

    def daw_beat(self, t: float) -> float:
        """The DAW's beat at time t, read on the pulses actually sent: the pulse sent nearest t (beat 0 is
        the first), plus the time from it at the clock's tempo."""
        import bisect

        sent = self.sent[:]  # the clock thread appends while we read
        i = bisect.bisect_left(sent, t)  # sent is in time order
        k = min((c for c in (i - 1, i) if 0 <= c < len(sent)), key=lambda c: abs(sent[c] - t))
        return k / 24 + (t - sent[k]) / (self.period * 24)

    def grid_error(self, t: float, per_beat: int = 4) -> float:
        """Signed distance (s) from t to the nearest 1/per_beat-beat line of this clock, as actually sent.

        The reference is the pulse really sent on that line (a thread can wake late under load, and the
        bridge follows the pulses it hears, as it would a DAW's), else the ideal line.
        """
        step = self.period * 24 / per_beat
        k = round((t - self.t0) / step)
        idx = k * (24 // per_beat)
        ref = self.sent[idx] if 0 <= idx < len(self.sent) else self.t0 + k * step
        return t - ref


# ---- a separate MIDI process: `python tests/bridge_jack_fixtures.py play|flood|keys ...` ---------------


def _peer_main(argv: list[str]) -> int:
    """Runs in its own process: plays the C major tune, a flood, or keeps a virtual port alive and playing."""
    import argparse

    import rtmidi

    p = argparse.ArgumentParser()
    p.add_argument("what", choices=("play", "flood", "keys"))
    p.add_argument("--port", default="TypeMoE In")
    p.add_argument("--bpm", type=float, default=480.0)
    p.add_argument("--rate", type=float, default=5000.0)
    p.add_argument("--seconds", type=float, default=3.0)
    a = p.parse_args(argv)

    out = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name="Player")

    def _quit(*_):  # SIGTERM: leave JACK cleanly (a SIGKILLed client can stall jackd's dummy driver)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _quit)
    try:
        return _peer_play(a, out)
    finally:
        out.close_port()
        out.delete()


def _peer_play(a, out) -> int:
    import random

    import rtmidi

    if a.what == "keys":
        out.open_virtual_port(a.port)
    else:
        out.open_port(_jack_port(out, a.port))
    spb = 60.0 / a.bpm
    if a.what == "flood":
        rng = random.Random(7)
        n, t0 = int(a.rate * a.seconds), time.monotonic()
        refused = 0
        for i in range(n):
            target = t0 + i / a.rate
            if (d := target - time.monotonic()) > 0.002:
                time.sleep(d)
            kind = i % 10
            msg = (
                [0x90 | rng.randrange(16), rng.randrange(128), rng.randrange(128)]
                if kind < 5
                else [0x80, rng.randrange(128), 0]
                if kind < 7
                else [0xF0, *[rng.randrange(128) for _ in range(rng.randrange(1, 40))], 0xF7]
                if kind == 7
                else [0xB0, rng.randrange(128), rng.randrange(128)]
                if kind == 8
                else [rng.choice((0xF8, 0xFE, 0xF2, 0xF1)), 0, 0][: rng.randrange(1, 4)]
            )
            try:
                out.send_message(msg)
            except (ValueError, rtmidi.RtMidiError):
                refused += 1
        print(
            f"flood: {n} messages in {time.monotonic() - t0:.2f} s, {refused} refused by rtmidi", flush=True
        )
        time.sleep(0.2)
        return 0
    while True:
        t0 = time.monotonic() + 0.1
        events = sorted(
            [(o, 1, p_) for o, d, p_ in C_MAJOR_TUNE] + [(o + d, 0, p_) for o, d, p_ in C_MAJOR_TUNE]
        )
        for beat, on, pitch in events:
            if (d := t0 + beat * spb - time.monotonic()) > 0:
                time.sleep(d)
            out.send_message([0x90, pitch, 96] if on else [0x80, pitch, 0])
        if a.what == "play":
            time.sleep(0.2)
            return 0
        time.sleep(4 * spb)


if __name__ == "__main__":
    sys.exit(_peer_main(sys.argv[1:]))
