"""MIDI ports through python-rtmidi: virtual `TypeMoE In`/`TypeMoE Out`, or existing ports by name.

Input is drained from rtmidi's own queue by a thread of ours (`InputPump`), never through rtmidi's
callback: with JACK that callback runs in the JACK process thread and must take the GIL, and every JACK
cycle it misses while another Python thread holds the GIL loses that cycle's events. The pump only stamps
time and posts (python-rtmidi's midifilter example). Ports given with --connect-in/--connect-out are
watched: when one vanishes the bridge keeps serving, logs it, and reconnects when a port with that name is
back (`check()` from the loop).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable

import rtmidi

from typemoe.bridge.config import BridgeConfig

log = logging.getLogger(__name__)

APIS = {
    "alsa": rtmidi.API_LINUX_ALSA,
    "jack": rtmidi.API_UNIX_JACK,
    "coremidi": rtmidi.API_MACOSX_CORE,
    "winmm": rtmidi.API_WINDOWS_MM,
}
WINDOWS_HELP = (
    "Windows MIDI (WinMM) cannot create virtual ports. Create two loopback ports with loopMIDI "
    "(https://www.tobias-erichsen.de/software/loopmidi.html) or Windows MIDI Services, e.g. "
    "'TypeMoE In' and 'TypeMoE Out', then run: typemoe-bridge --connect-in \"TypeMoE In\" "
    '--connect-out "TypeMoE Out" (and pick the same two ports in your DAW).'
)


class MidiSetupError(RuntimeError):
    """The MIDI backend or a port cannot be opened; the message says what to do."""


_SERVER_DOWN_REPEAT_S = 10.0  # while the JACK server is gone, the error is logged again this often
_KNOCK_EVERY = 6  # the socket file is looked at on every check; connected to (a killed server?) every 6th


def jack_server_socket() -> str:
    """Where jackd (JACK2, Linux) listens for clients: /dev/shm/jack_<server>_<uid>_0."""
    server = os.environ.get("JACK_DEFAULT_SERVER") or "default"
    return f"/dev/shm/jack_{server}_{os.getuid()}_0"


def jack_server_identity(path: str, *, knock: bool = True) -> tuple[int, int] | None:
    """(inode, ctime) of a JACK server's socket, or None when there is none (or, with `knock`, when no
    server answers there).

    A stopped server removes its socket; a killed one leaves it behind, and only a connect() tells a live
    one from that. A restarted server has a new socket (another inode): our ports on the old one are gone.
    """
    try:
        st = os.stat(path)
        if knock:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(0.2)
                s.connect(path)
    except OSError:
        return None
    return (st.st_ino, st.st_ctime_ns)


def _api_order(name: str) -> list[int]:
    compiled = rtmidi.get_compiled_api()
    if name != "auto":
        api = APIS[name]
        if api not in compiled:
            raise MidiSetupError(
                f"--midi-api {name}: this python-rtmidi build has no {name} support "
                f"(it has: {', '.join(api_name(a) for a in compiled) or 'none'})"
            )
        return [api]
    preferred = (
        [rtmidi.API_LINUX_ALSA, rtmidi.API_UNIX_JACK] if sys.platform.startswith("linux") else compiled
    )
    return [a for a in preferred if a in compiled] or list(compiled)


def api_name(api: int) -> str:
    return {v: k for k, v in APIS.items()}.get(api, rtmidi.get_api_name(api))


def _probe(api: int, name: str) -> tuple[rtmidi.MidiIn, rtmidi.MidiOut]:
    """Both rtmidi objects for one API, or MidiSetupError. JACK never auto-starts a server here."""
    os.environ.setdefault("JACK_NO_START_SERVER", "1")
    try:
        midi_in = rtmidi.MidiIn(api, name=f"{name} In", queue_size_limit=4096)
        midi_out = rtmidi.MidiOut(api, name=f"{name} Out")
    except rtmidi.RtMidiError as err:
        hint = {
            rtmidi.API_LINUX_ALSA: " (is /dev/snd/seq there? try --midi-api jack)",
            rtmidi.API_UNIX_JACK: " (start jackd first, or pick another --midi-api)",
        }.get(api, "")
        raise MidiSetupError(f"cannot open the {api_name(api)} MIDI backend: {err}{hint}") from err
    return midi_in, midi_out


def list_ports(api_choice: str = "auto") -> dict[str, list[str]]:
    """{'api': name, 'inputs': [...], 'outputs': [...]} for --list-ports."""
    errors = []
    for api in _api_order(api_choice):
        try:
            midi_in, midi_out = _probe(api, "TypeMoE list")
        except MidiSetupError as err:
            errors.append(str(err))
            continue
        return {"api": api_name(api), "inputs": midi_in.get_ports(), "outputs": midi_out.get_ports()}
    raise MidiSetupError("; ".join(errors))


def _find(ports: list[str], needle: str) -> int | None:
    hits = [i for i, p in enumerate(ports) if needle.lower() in p.lower()]
    return hits[0] if hits else None


class DriverStamper:
    """Arrival times from the MIDI driver's own clock, on the caller's clock.

    rtmidi passes each message with the time since the previous one, read by the driver (JACK: in its
    process callback) when the message arrived. Our clock's reading when Python takes the message (InputPump)
    is later by a varying delay, so the smallest (reading - driver time) over the recent messages is the
    offset between the two clocks. The correction is bounded (a message is never believed to have waited
    more than `_MAX_WAIT_S`), the window forgets old offsets (clock drift), and a reading far behind restarts it
    (a reopened port restarts the driver's deltas).
    """

    _WINDOW = 64
    _MAX_WAIT_S = 0.003
    _RESTART_S = 0.05

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now
        self._driver = 0.0
        self._offsets: deque[float] = deque(maxlen=self._WINDOW)

    def stamp(self, delta: float) -> float:
        t = self._now()
        self._driver += max(delta, 0.0)
        off = t - self._driver
        if self._offsets and off - min(self._offsets) > self._RESTART_S:
            self._offsets.clear()
        self._offsets.append(off)
        return min(t, max(t - self._MAX_WAIT_S, self._driver + min(self._offsets)))


class InputPump:
    """Drains an rtmidi input's queue from a daemon thread: `on_message(bytes, driver delta)` per message.

    Why not rtmidi's callback: with JACK, rtmidi calls it from the client's process thread, which waits for
    the GIL; while another Python thread holds it the client misses its cycles and JACK drops their events.
    Measured 2026-12-01 (1,500 note-ons 3 ms apart through a private jackd, two busy Python threads in the
    receiving process, this 2-core VM): the callback kept 422-581, this pump 1,429-1,500. Without a
    callback rtmidi keeps every event in its own C++ queue with the driver's delta time, so polling adds at
    most `poll_s` of delay (`idle_poll_s` for the first message after `idle_after_s` of silence) and
    nothing to the timestamps beyond DriverStamper's bound. Polling costs CPU: an idle bridge's MIDI (the
    pump and its two JACK clients, 256-frame periods, 10 s, this VM quiet) took 6.3 % of one core polling
    every 1 ms, 2.8-3.8 % with the 4 ms idle polling, 1.6-3.0 % with the callback.

    Call `stop()` before closing or deleting the port: the thread must not read a port being torn down.
    """

    def __init__(
        self,
        on_message: Callable[[list[int], float], None],
        poll_s: float = 0.001,
        idle_poll_s: float = 0.004,
        idle_after_s: float = 1.0,
    ) -> None:
        self._on_message = on_message
        self._poll_s, self._idle_poll_s, self._idle_after_s = poll_s, idle_poll_s, idle_after_s
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self, port: rtmidi.MidiIn) -> None:
        self.stop()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(port, self._stop), name="typemoe-midi-in", daemon=True
        )
        self._thread.start()

    def _run(self, port: rtmidi.MidiIn, stop: threading.Event) -> None:
        last = time.monotonic()
        while not stop.is_set():
            try:
                msg = port.get_message()
            except rtmidi.RtMidiError as err:  # a port closed under us: the owner restarts the pump
                log.debug("MIDI in: reading the queue failed: %s", err)
                return
            if msg is None:
                idle = time.monotonic() - last > self._idle_after_s
                stop.wait(self._idle_poll_s if idle else self._poll_s)
                continue
            last = time.monotonic()
            if not msg[0]:  # an empty message: nothing to post
                continue
            try:
                self._on_message(msg[0], msg[1])
            except Exception:  # one bad message must not end the input for the rest of the show
                log.exception("MIDI in: handling %r failed", msg[0])

    def stop(self) -> None:
        """Stop the thread and wait for it (it never blocks for long: at most one poll interval)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        self._thread = None


class MidiPorts:
    """The bridge's input and output ports.

    Args:
        cfg: port names, API, connect targets.
        on_message: called from the input pump's thread with (bytes tuple, arrival time) -> must only post.
        now: the clock arrival times are given on (the bridge's monotonic clock).
    """

    def __init__(
        self,
        cfg: BridgeConfig,
        on_message: Callable[[tuple[int, ...], float], None],
        now: Callable[[], float],
    ) -> None:
        self.cfg = cfg
        self._on_message = on_message
        self._stamper = DriverStamper(now)
        self._pump = InputPump(self._received)
        self._in: rtmidi.MidiIn | None = None
        self._out: rtmidi.MidiOut | None = None
        self._in_target: str | None = None  # full name of the port we are connected to
        self._out_target: str | None = None
        self.api = ""
        self.dropped = 0
        self._warned: set[str] = set()
        self._server: tuple[str, tuple[int, int]] | None = None  # JACK: socket path and identity at open
        self._lost_since: float | None = None  # the JACK server went away at this time.monotonic()
        self._lost_logged = 0.0
        self._checks = 0

    def open(self) -> None:
        """Open the backend and the ports.

        Raises:
            MidiSetupError: no backend works, or virtual ports are impossible (Windows).
        """
        errors = []
        for api in _api_order(self.cfg.midi_api):
            try:
                self._in, self._out = _probe(api, "TypeMoE")
                self.api = api_name(api)
                break
            except MidiSetupError as err:
                errors.append(str(err))
        else:
            raise MidiSetupError("no MIDI backend could be opened: " + "; ".join(errors))
        self._in.ignore_types(sysex=True, timing=False, active_sense=True)
        virtual_needed = self.cfg.connect_in is None or self.cfg.connect_out is None
        if virtual_needed and self.api == "winmm":
            raise MidiSetupError(WINDOWS_HELP)
        try:
            if self.cfg.connect_in is None:
                self._in.open_virtual_port(self.cfg.in_port)
                log.info("MIDI in: virtual port %r (%s)", self.cfg.in_port, self.api)
            if self.cfg.connect_out is None:
                self._out.open_virtual_port(self.cfg.out_port)
                log.info("MIDI out: virtual port %r (%s)", self.cfg.out_port, self.api)
        except NotImplementedError as err:
            raise MidiSetupError(WINDOWS_HELP) from err
        except rtmidi.RtMidiError as err:
            raise MidiSetupError(f"cannot create a virtual MIDI port on {self.api}: {err}") from err
        self._server = None
        if self.api == "jack":
            path = jack_server_socket()
            ident = jack_server_identity(path)
            if ident is not None:
                self._server = (path, ident)
            else:
                log.info("JACK server socket %s not found: a lost server will not be detected", path)
        if self.cfg.connect_in is None:
            self._pump.start(self._in)  # a --connect-in port's pump starts when _follow connects it
        self._follow_ports()

    def _received(self, data: list[int], delta: float) -> None:
        self._on_message(tuple(data), self._stamper.stamp(delta))

    def _quiesce_input(self) -> None:
        """Stop reading the input before its port is closed (the pump's thread must not read it then)."""
        self._pump.stop()

    def send(self, data: tuple[int, ...]) -> None:
        if self._out is None or (self.cfg.connect_out is not None and self._out_target is None):
            self.dropped += 1
            return
        try:
            self._out.send_message(data)
        except (rtmidi.RtMidiError, ValueError, TypeError) as err:
            self.dropped += 1
            log.debug("MIDI send failed: %s", err)

    def check(self) -> bool:
        """Watch the JACK server and the --connect-* ports (call it from the loop every few 100 ms).

        A lost JACK server is logged as an error (again every 10 s while it is gone), and the ports are
        re-opened when a server answers again. Returns True when the output was (re)opened, so that the
        caller can release every note there.
        """
        out_before = self._out_target
        if self._server is not None or self._lost_since is not None:
            if self._check_server():
                return True
            if self._lost_since is not None:
                return False
        self._follow_ports()
        return self.cfg.connect_out is not None and self._out_target is not None and out_before is None

    def _check_server(self) -> bool:
        path = self._server[0] if self._server is not None else jack_server_socket()
        self._checks += 1
        ident = jack_server_identity(
            path, knock=self._lost_since is not None or self._checks % _KNOCK_EVERY == 0
        )
        now = time.monotonic()
        if self._lost_since is None:
            if ident == self._server[1]:
                return False
            self._lost_since = self._lost_logged = now
            log.error(
                "JACK server %s: MIDI in and out are dead (%s); waiting for it to come back",
                "restarted" if ident is not None else "is gone",
                "our ports were on the old server" if ident is not None else f"no server answers at {path}",
            )
        if ident is None:
            if now - self._lost_logged >= _SERVER_DOWN_REPEAT_S:
                self._lost_logged = now
                log.error("JACK server still gone after %.0f s: MIDI is dead", now - self._lost_since)
            return False
        try:
            self.close()
            self.open()
        except MidiSetupError as err:
            log.error("JACK server is back but the ports cannot be re-opened: %s", err)
            self._server = (path, ident)  # tried again at the next check
            self._in = self._out = None
            return False
        log.warning("JACK server is back after %.1f s: MIDI ports re-opened", now - self._lost_since)
        self._lost_since = None
        return True

    @property
    def lost(self) -> bool:
        """True while the JACK server is gone (MIDI in and out are dead)."""
        return self._lost_since is not None

    def _follow_ports(self) -> None:
        """Follow --connect-* ports: notice one that vanished, reconnect one that (re)appeared."""
        if self.cfg.connect_in is not None and self._in is not None:
            self._in_target = self._follow(self._in, self.cfg.connect_in, self._in_target, "in")
        if self.cfg.connect_out is not None and self._out is not None:
            self._out_target = self._follow(self._out, self.cfg.connect_out, self._out_target, "out")

    def _follow(self, port, needle: str, current: str | None, kind: str) -> str | None:
        own = ("TypeMoE In:", "TypeMoE Out:")  # our own clients (JACK/ALSA "client:port"): never loop back
        try:
            names = [p for p in port.get_ports() if not p.startswith(own)]
        except rtmidi.RtMidiError as err:
            log.debug("listing MIDI ports failed: %s", err)
            return current
        if current is not None and current in names:
            return current
        if current is not None:
            log.warning(
                "MIDI %s: port %r disappeared; still serving, waiting for it to come back", kind, current
            )
            if kind == "in":
                self._quiesce_input()
            port.close_port()
        idx = _find(names, needle)
        if idx is None:
            if kind not in self._warned:
                log.warning("MIDI %s: no port matching %r yet (have: %s)", kind, needle, names or "none")
                self._warned.add(kind)
            return None
        self._warned.discard(kind)
        all_names = port.get_ports()
        try:
            port.open_port(all_names.index(names[idx]), f"TypeMoE {kind}")
        except (rtmidi.RtMidiError, ValueError) as err:
            log.warning("MIDI %s: cannot connect to %r: %s", kind, names[idx], err)
            return None
        if kind == "in":
            self._pump.start(port)
        log.info("MIDI %s: connected to %r", kind, names[idx])
        return names[idx]

    def close(self) -> None:
        self._quiesce_input()
        for port in (self._in, self._out):
            if port is not None:
                with contextlib.suppress(rtmidi.RtMidiError):
                    port.close_port()
                port.delete()
        self._in = self._out = None
        self._in_target = self._out_target = None
