"""The bridge's MIDI input keeps every event while Python is busy (bridge/midi_io.py, InputPump).

With JACK, rtmidi's input callback runs in the client's process thread and must take the GIL first; every
cycle it waits for another Python thread loses that cycle's events. The bridge reads rtmidi's own queue
from a thread of its own instead. This test sends 600 distinct note-ons over a real JACK server into the
bridge's MidiPorts while a thread of the same process keeps the GIL busy, and asks for all of them, in
order. Read through a callback instead, the same run lost 285 of the 600 on this VM.
"""

from __future__ import annotations

import threading
import time

from bridge_jack_fixtures import MidiDump, MidiSend, jack_fixture
from test_bridge_jack import pytestmark  # noqa: F401 - same skips (jackd, rtmidi JACK) and markers

from typemoe.bridge.config import BridgeConfig
from typemoe.bridge.midi_io import MidiPorts

N = 600
# Asynchronous, as a performer's JACK runs by default: a synchronous server waits for a client stuck on the
# GIL instead of dropping its cycle, and the callback this test is about would pass.
jack = jack_fixture(256, sync=False)


def _busy(stop: threading.Event) -> None:
    while not stop.is_set():
        sum(i * i for i in range(20_000))  # pure Python: holds the GIL for whole switch intervals


def test_the_bridge_input_keeps_every_note_in_order_while_python_is_busy(jack, tmp_path):
    got: list[tuple[float, tuple[int, ...]]] = []
    cfg = BridgeConfig(midi_api="jack", in_port="Pump In", out_port="Pump Out")
    ports = MidiPorts(cfg, on_message=lambda data, t: got.append((t, data)), now=time.monotonic)
    ports.open()
    send = MidiSend("Pump In", name="Pump Send")
    ref = MidiDump("Pump Send", tmp_path / "ref.txt", name="pump-ref")  # what the link delivered
    stop = threading.Event()
    busy = [threading.Thread(target=_busy, args=(stop,), daemon=True) for _ in range(2)]
    try:
        for t in busy:
            t.start()
        t0 = time.monotonic()
        for k in range(N):  # distinct (pitch, velocity) per note, 3 ms apart
            if (dt := t0 + k * 0.003 - time.monotonic()) > 0:
                time.sleep(dt)
            send.send(0x90, k % 128, k // 128 + 1)
        end = time.monotonic() + 3.0
        while len(got) < N and time.monotonic() < end:
            time.sleep(0.05)
    finally:
        stop.set()
        for t in busy:
            t.join()
        ref.close()
        send.close()
        ports.close()
    ids = [d[1] + 128 * (d[2] - 1) for _, d in got if len(d) == 3 and d[0] == 0x90]
    missing = sorted(set(range(N)) - set(ids))
    # The asynchronous server itself drops the events of a client late for a cycle (a full-suite CI run lost
    # 6 in two bursts; a stop's CI run lost 8 % of its clock pulses at 128 frames), so the bridge's losses
    # are judged against a C client in another process that heard the same sender: at most twice its
    # losses and 12 more. The GIL-bound callback lost 285 of the 600 on a quiet VM.
    ref_ids = {p + 128 * (v - 1) for p, v in ref.note_ons()}
    lost_ref = N - len(ref_ids & set(range(N)))
    bound = 2 * lost_ref + 12
    assert len(missing) <= bound, (
        f"{len(missing)} of {N} note-ons lost (the reference client lost {lost_ref}), first {missing[:20]}"
    )
    assert ids == sorted(ids), "note-ons reordered"
    stamps = [t for t, _ in got]
    assert all(b >= a for a, b in zip(stamps, stamps[1:], strict=False)), "arrival times went back"
