"""A private JACK server for the benchmark and the tests: real MIDI ports on a machine without a sound card.

    from typemoe.bridge.jackd import jack_server
    with jack_server("typemoe-bench-123", period=64) as name:   # jackd -n NAME --no-realtime -d dummy
    with jack_server(name, realtime=realtime_allowed()) as name:  # jackd -R where SCHED_FIFO is allowed
    with jack_server(name, sync=True) as name:  # jackd -S: a late client delays the cycle, loses nothing
        ...   # python-rtmidi's JACK API (and a bridge started with --midi-api jack) now uses this server

Inside the block JACK_DEFAULT_SERVER names the server and JACK_NO_START_SERVER=1 stops libjack from
starting another; both are restored after. jackd's output goes to a file, never to a pipe: a pipe nobody
reads fills up once jackd has logged 64 KiB (xrun warnings under load do that), and jackd then blocks in
write() with every client waiting on it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path


def die_with_parent() -> None:
    """preexec_fn, Linux: the child gets SIGTERM when the process that started it dies (no orphans)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def realtime_allowed() -> bool:
    """Whether processes here may use SCHED_FIFO, as `jackd -R` and its clients' process threads do
    (root, or an rtprio limit from the audio group): `chrt -f 1 true` is tried."""
    chrt = shutil.which("chrt")
    if chrt is None:
        return False
    try:
        return subprocess.run([chrt, "-f", "1", "true"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@contextlib.contextmanager
def jack_server(
    name: str,
    *,
    period: int = 64,
    rate: int = 48000,
    realtime: bool = False,
    sync: bool = False,
    start_s: float = 10.0,
    kill_after_s: float | None = None,
) -> Iterator[str]:
    """Run `jackd -n name --no-realtime -d dummy -r rate -p period` for the block; yields `name`.

    realtime: `-R` instead of `--no-realtime`, as musicians run JACK: the server's and every client's
        process thread run SCHED_FIFO, so busy Python or ONNX threads cannot starve them. Without it, on
        a loaded 2-core machine JACK clients miss cycles and lose events (measured 2026-12-01: 1,500 notes
        3 ms apart into a client next to two busy Python threads, 1,429-1,443 arrived without -R,
        1,494-1,500 with it).
    sync: `-S`, JACK2's synchronous mode: each cycle waits for the graph to finish instead of moving on
        without a client that is late, so a client held up by a loaded machine delays a cycle instead of
        losing that cycle's MIDI events. For measurements of the bridge rather than of the link (the
        tests, `typemoe bench`). Measured 2026-12-01 (notes/exp/sync_loss.py: 3,000 note-ons 3 ms apart
        from one process into a polling receiver next to two busy Python threads, 4-6 CPU hog processes,
        no -R, 64-128 frames): asynchronous 2,946-3,001 arrived (5 of 6 runs lost some), -S 3,000 in
        6 of 6. Leave it off to see what a performer's default (asynchronous) server does.
    kill_after_s: kill the server after this long whatever happens, so a client stuck on a wedged server
    fails instead of hanging (the tests' safety net).

    Raises:
        RuntimeError: jackd is not installed, or did not accept a client within `start_s` (the message
            carries the end of jackd's log).
    """
    exe = shutil.which("jackd")
    if exe is None:
        raise RuntimeError("needs jackd (Debian/Ubuntu: apt-get install jackd2)")
    import rtmidi

    log = tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", delete=False)  # noqa: SIM115
    log_path = Path(log.name)
    proc = subprocess.Popen(
        [
            exe,
            "-n",
            name,
            "-R" if realtime else "--no-realtime",
            *(["-S"] if sync else []),
            "-d",
            "dummy",
            "-r",
            str(rate),
            "-p",
            str(period),
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "JACK_NO_START_SERVER": "1"},
        preexec_fn=die_with_parent,
    )
    log.close()
    watchdog: threading.Timer | None = None
    saved = {k: os.environ.get(k) for k in ("JACK_DEFAULT_SERVER", "JACK_NO_START_SERVER")}
    os.environ.update(JACK_DEFAULT_SERVER=name, JACK_NO_START_SERVER="1")
    try:
        end = time.monotonic() + start_s
        while True:
            try:
                rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name="probe").delete()
                break
            except rtmidi.RtMidiError as err:
                if proc.poll() is not None or time.monotonic() > end:
                    tail = log_path.read_text(errors="replace")[-500:]
                    raise RuntimeError(f"jackd did not start: {tail}") from err
                time.sleep(0.05)
        if kill_after_s is not None:
            watchdog = threading.Timer(kill_after_s, proc.kill)
            watchdog.daemon = True
            watchdog.start()
        yield name
    finally:
        if watchdog is not None:
            watchdog.cancel()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        log_path.unlink(missing_ok=True)
