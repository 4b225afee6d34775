"""Bridge latency benchmark for `typemoe bench`: real JACK MIDI ports, real UDP on loopback.

    from typemoe.bridge.bench import run_bridge_bench
    run_bridge_bench("path/to/model")        # or "toy"; needs jackd (Debian: jackd2) and rtmidi's JACK API

It starts a private jackd (dummy driver, 48 kHz, 64-frame periods), runs the bridge in this process on its
own thread (the same Bridge as typemoe-bridge), plays notes into `TypeMoE In` from a separate JACK client
and listens to the OSC replies. Keys of the returned dict:

    bridge.analysis_ms.p50/p99     note-off stamped at the MIDI callback -> /typemoe/key sent (inside the bridge);
                                   for a note that waited for a held earlier note, from that note's note-off
    bridge.end_to_end_ms.p50/p99   note-off written to JACK by the player -> /typemoe/key received over UDP
    bridge.first_note_ms.p50/p99   /typemoe/continue stamped -> first generated note-on ready to send
    bridge.first_note_conditioned_ms.p50/p99   the same after /typemoe/condition "D major" "4/4", at the
                                   bridge's default guidance (a guided token decodes twice)
    bridge.held_chord_readout_ms.p50/p99   the demo tune (a Bach chorale, held chords) played at 100 BPM:
                                   each chord's first note-on written to JACK -> next /typemoe/key received
    bridge.key_flips_per_min       changes of the reported key while that tune plays (after hysteresis)

The played notes are 8th notes at 120 BPM. A note shorter than half a 16th can only enter the token stream
once the grid has moved past its onset (another note could still land on the same 16th and sort first),
which adds up to a 32nd note to these numbers; that wait is musical, not compute.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np

from typemoe.bridge import osc_io
from typemoe.bridge.config import BridgeConfig
from typemoe.bridge.jackd import jack_server, realtime_allowed

log = logging.getLogger(__name__)

_SCALE = (60, 62, 64, 65, 67, 69, 71, 72)


class BridgeBenchUnavailable(RuntimeError):
    """The bridge rows cannot be measured here (no jackd, no JACK support in python-rtmidi); the message
    says why and what to install. `typemoe bench` catches it and reports the model rows alone."""


def check_available() -> None:
    """Raise BridgeBenchUnavailable unless a private JACK server and JACK MIDI ports can be used here."""
    import shutil

    if shutil.which("jackd") is None:
        raise BridgeBenchUnavailable(
            "the bridge rows need jackd to make real MIDI ports, and it is not installed "
            "(Debian/Ubuntu: apt-get install jackd2)"
        )
    try:
        import rtmidi
    except ImportError as err:
        raise BridgeBenchUnavailable(f"the bridge rows need python-rtmidi ({err})") from None
    if rtmidi.API_UNIX_JACK not in rtmidi.get_compiled_api():
        raise BridgeBenchUnavailable("the bridge rows need python-rtmidi built with JACK support")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _recv_until(sock: socket.socket, address: str, timeout: float) -> float | None:
    """Monotonic time at which a message to `address` arrived, or None."""
    from pythonosc.osc_message import OscMessage

    end = time.monotonic() + timeout
    while (left := end - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return None
        t = time.monotonic()
        if data.startswith(address.encode() + b"\x00"):
            OscMessage(data)  # well formed
            return t
    return None


def _drain(sock: socket.socket) -> None:
    sock.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:
            sock.recv(65536)
    sock.setblocking(True)


def _pcts(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {"p50": float("nan"), "p99": float("nan")}
    return {"p50": float(np.percentile(xs, 50)), "p99": float(np.percentile(xs, 99))}


def run_bridge_bench(
    model_dir: str | Path,
    *,
    n_notes: int = 60,
    n_triggers: int = 10,
    provider: str = "auto",
    tune_beats: float = 96.0,
) -> dict[str, float]:
    """Measure the bridge's latencies (see the module docstring).

    Raises:
        BridgeBenchUnavailable: no jackd or no JACK MIDI here (checked before any work), or jackd would
            not start.
    """
    check_available()
    import rtmidi

    from typemoe.bridge.daemon import Bridge
    from typemoe.bridge.model import load_model

    model = load_model(str(model_dir), provider=provider)  # a bad model fails before jackd starts
    try:
        # -R where allowed, as musicians run JACK, and -S (synchronous): asynchronous, this VM's server drops
        # the events of a client that is late for a 64-frame cycle (CI runs counted 7 of 8 notes, with -R
        # too), and these rows measure the bridge, not the link.
        server = jack_server(
            f"typemoe-bench-{os.getpid()}", period=64, realtime=realtime_allowed(), sync=True
        )
        server.__enter__()
    except RuntimeError as err:
        raise BridgeBenchUnavailable(f"the bridge rows need a JACK server: {err}") from None
    try:
        return _measure(rtmidi, Bridge, model, model_dir, n_notes, n_triggers, provider, tune_beats)
    finally:
        server.__exit__(None, None, None)


def _play_tune(out, reply: socket.socket, beats: float, bpm: float = 100.0) -> dict:
    """Play the demo tune (a Bach chorale: four voices, chords held for a beat or more) into the bridge.

    Returns the readout latency of each chord onset (its first note-on written to JACK -> the next
    /typemoe/key received; the chord is still held then), the key changes reported, and the minutes played.
    """
    from pythonosc.osc_message import OscMessage

    from typemoe.bridge.demo import load_tune

    spb = 60.0 / bpm
    notes = [n for n in load_tune() if n.onset < beats]
    events = sorted(
        [(n.onset, 1, n.pitch, n.velocity) for n in notes]
        + [(n.onset + n.duration, 0, n.pitch, 0) for n in notes]
    )
    onsets: list[float] = []
    t0 = time.monotonic() + 0.2

    def player() -> None:
        last = None
        for beat, on, pitch, vel in events:
            if (d := t0 + beat * spb - time.monotonic()) > 0:
                time.sleep(d)
            if on and beat != last:
                onsets.append(time.monotonic())
                last = beat
            out.send_message([0x90, pitch, vel] if on else [0x80, pitch, 0])

    _drain(reply)
    thread = threading.Thread(target=player, name="bench tune", daemon=True)
    thread.start()
    keys: list[tuple[float, str]] = []
    end = t0 + (events[-1][0] if events else 0.0) * spb + 1.0
    while (left := end - time.monotonic()) > 0:
        reply.settimeout(left)
        try:
            data = reply.recv(65536)
        except TimeoutError:
            break
        if data.startswith(b"/typemoe/key\x00"):
            keys.append((time.monotonic(), str(OscMessage(data).params[0])))
    thread.join(5)
    latency = []
    for i, t in enumerate(onsets):
        nxt = onsets[i + 1] if i + 1 < len(onsets) else end
        after = [k for k, _ in keys if t <= k < nxt]
        if after:
            latency.append((after[0] - t) * 1000.0)
    flips = sum(1 for a, b in zip(keys, keys[1:]) if a[1] != b[1])
    return {
        "latency_ms": latency,
        "flips": flips,
        "minutes": max(end - t0, 1e-9) / 60.0,
        "onsets": len(onsets),
    }


def _continuations(reply: socket.socket, osc_to: tuple[str, int], n: int) -> None:
    """Ask for n one-bar continuations, each stopped once its first note is reported."""
    for _ in range(n):
        _drain(reply)
        reply.sendto(osc_io.encode("/typemoe/continue", (1.0,)), osc_to)
        _recv_until(reply, "/typemoe/note", 5.0)
        reply.sendto(osc_io.encode("/typemoe/panic", ()), osc_to)
        time.sleep(0.1)


def _measure(
    rtmidi, bridge_cls, model, model_dir, n_notes: int, n_triggers: int, provider: str, tune_beats: float
) -> dict:
    """The measurement itself, inside the private JACK server."""
    reply = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    reply.bind(("127.0.0.1", 0))
    cfg = BridgeConfig(
        midi_api="jack",
        osc_port=_free_port(),
        reply_port=reply.getsockname()[1],
        mode="manual",
        analysis_every_note=True,
        stats_every_s=0,
        tempo=120.0,
        model=str(model_dir),
        provider=provider,
        bars=1.0,
    )
    bridge = bridge_cls(cfg, model, install_signals=False)
    thread = threading.Thread(target=lambda: asyncio.run(bridge.run()), name="bridge", daemon=True)
    thread.start()
    if not bridge.ready.wait(60):
        raise RuntimeError("bridge did not start")
    out = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name="bench player")
    out.open_port(next(i for i, p in enumerate(out.get_ports()) if "TypeMoE In" in p))
    osc_to = ("127.0.0.1", cfg.osc_port)
    end_to_end: list[float] = []
    try:
        for i in range(n_notes):
            pitch = _SCALE[i % len(_SCALE)]
            out.send_message([0x90, pitch, 90])
            time.sleep(0.2)  # a played 8th note at 120 BPM (shorter than a 32nd waits for the grid)
            _drain(reply)  # per-bar repeats and earlier replies must not count
            t_off = time.monotonic()
            out.send_message([0x80, pitch, 0])
            t_key = _recv_until(reply, "/typemoe/key", 2.0)
            if t_key is not None:
                end_to_end.append((t_key - t_off) * 1000.0)
            time.sleep(0.05)
        _continuations(reply, osc_to, n_triggers)
        n_plain = len(bridge.engine.stats.series.get("first_note_ms", ()))
        reply.sendto(osc_io.encode("/typemoe/condition", ("D major", "4/4")), osc_to)
        _continuations(reply, osc_to, n_triggers)
        reply.sendto(osc_io.encode("/typemoe/condition", ("", "")), osc_to)
        tune = _play_tune(out, reply, tune_beats) if tune_beats > 0 else None
    finally:
        # The player's JACK client goes first, while the port it is connected to still exists: deleting it
        # after the bridge's client had unregistered that port crashed the process in jack_client_close
        # once (SIGSEGV in a fresh-clone CI run), as the JACK tests' own teardowns already order it.
        out.close_port()
        out.delete()
        bridge.stop("benchmark done")
        thread.join(10)
        reply.close()
    stats = bridge.engine.stats
    first = list(stats.series.get("first_note_ms", ()))
    result = {}
    for name, xs in (
        ("analysis_ms", list(stats.series.get("analysis_ms", ()))),
        ("end_to_end_ms", end_to_end),
        ("first_note_ms", first[:n_plain]),
        ("first_note_conditioned_ms", first[n_plain:]),
    ):
        for q, v in _pcts(xs).items():
            result[f"bridge.{name}.{q}"] = v
    if tune is not None:
        for q, v in _pcts(tune["latency_ms"]).items():
            result[f"bridge.held_chord_readout_ms.{q}"] = v
        result["bridge.key_flips_per_min"] = tune["flips"] / tune["minutes"]
        result["bridge.tune_onsets"] = float(tune["onsets"])
    result["bridge.n_notes"] = float(len(end_to_end))
    result["bridge.n_continuations"] = float(n_plain)
    result["bridge.n_conditioned"] = float(len(first) - n_plain)
    log.info("bridge stats: %s", stats.summary())
    log.info("bridge bench: %s", result)
    return result
