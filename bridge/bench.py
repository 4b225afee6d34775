"""Bridge latency benchmark for `typemoe bench`: real JACK MIDI ports, real UDP on loopback.

    from bridge.bench import run_bridge_bench
    run_bridge_bench("path/to/model")        # or "toy"; needs jackd (Debian: jackd2) and rtmidi's JACK API

It starts a private jackd (dummy driver, 48 kHz, 64-frame periods), runs the bridge in this process on its
own thread (the same Bridge as typemoe-bridge), plays notes into `TypeMoE In` from a separate JACK client
and listens to the OSC replies. Keys of the returned dict:

    bridge.analysis_ms.p50/p99     note-off stamped at the MIDI callback -> /typemoe/key sent (inside the bridge)
    bridge.end_to_end_ms.p50/p99   note-off written to JACK by the player -> /typemoe/key received over UDP
    bridge.first_note_ms.p50/p99   /typemoe/continue stamped -> first generated note-on ready to send

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

from bridge import osc_io
from bridge.config import BridgeConfig
from bridge.jackd import jack_server

log = logging.getLogger(__name__)

_SCALE = (60, 62, 64, 65, 67, 69, 71, 72)


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
    model_dir: str | Path, *, n_notes: int = 60, n_triggers: int = 10, provider: str = "auto"
) -> dict[str, float]:
    """Measure the bridge's latencies (see the module docstring). Raises RuntimeError without jackd."""
    import rtmidi

    from bridge.daemon import Bridge
    from bridge.model import load_model

    model = load_model(str(model_dir), provider=provider)  # a bad model fails before jackd starts
    with jack_server(f"typemoe-bench-{os.getpid()}", period=64):
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
        bridge = Bridge(cfg, model, install_signals=False)
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
            for _ in range(n_triggers):
                _drain(reply)
                reply.sendto(osc_io.encode("/typemoe/continue", (1.0,)), osc_to)
                _recv_until(reply, "/typemoe/note", 5.0)
                reply.sendto(osc_io.encode("/typemoe/panic", ()), osc_to)
                time.sleep(0.1)
        finally:
            bridge.stop("benchmark done")
            thread.join(10)
            out.close_port()
            out.delete()
            reply.close()
        stats = bridge.engine.stats
        result = {}
        for name, xs in (
            ("analysis_ms", list(stats.series.get("analysis_ms", ()))),
            ("end_to_end_ms", end_to_end),
            ("first_note_ms", list(stats.series.get("first_note_ms", ()))),
        ):
            for q, v in _pcts(xs).items():
                result[f"bridge.{name}.{q}"] = v
        result["bridge.n_notes"] = float(len(end_to_end))
        result["bridge.n_continuations"] = float(len(stats.series.get("first_note_ms", ())))
        log.info("bridge stats: %s", stats.summary())
        log.info("bridge bench: %s", result)
        return result
