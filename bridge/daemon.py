"""The asyncio shell around bridge.engine: ports, the inbox, the model thread, signals and shutdown.

Threads: rtmidi calls back from its own thread and the model runs on `ModelThread`; both only stamp and
post to the inbox. Everything else, including all engine state, lives on the event loop. The loop sleeps
until the engine's next deadline (the next note to send or grid step) or the next event, whichever is
first; notes are sent when due, never by sleeping a period.

    bridge = Bridge(cfg, load_model(cfg.model))
    exit_code = asyncio.run(bridge.run())
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from typemoe.bridge import osc_io
from typemoe.bridge.clock import Clock, MonotonicClock
from typemoe.bridge.coalesce import Coalescer
from typemoe.bridge.config import BridgeConfig
from typemoe.bridge.engine import CONFIRM_S, Engine
from typemoe.bridge.events import MidiIn, OscIn, SendMidi, SendOsc, Stop, Tick
from typemoe.bridge.midi_io import MidiPorts
from typemoe.bridge.worker import ModelThread

log = logging.getLogger(__name__)

_TRANSPORT = (0xF8, 0xFA, 0xFB, 0xFC)  # MIDI clock, Start, Continue, Stop
_FLUSH_S = 0.05  # after the final note-offs: a few audio periods for the driver to deliver them
_COALESCE_S = 0.05  # control messages (/condition, /tempo, /set NAME): last value wins within this window
# Datagrams that always get into the inbox, full or not, and are handled before the rest of their batch.
_URGENT = (b"/typemoe/ping\x00", b"/typemoe/panic\x00")


@dataclass(frozen=True, slots=True)
class _Datagram:
    data: bytes
    t: float


class Inbox:
    """Bounded multi-producer queue drained by the loop in batches; overflow is dropped and counted.

    Producers on other threads wake the loop at most once per batch (not once per event), which keeps a
    5,000 events/s MIDI flood cheap.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, maxsize: int) -> None:
        self._loop = loop
        self._max = maxsize
        self._q: deque = deque()
        self._lock = threading.Lock()
        self._event = asyncio.Event()
        self._wake_pending = False
        self.dropped = 0

    def post(self, event, *, force: bool = False) -> None:
        """Any thread. `force` bypasses the bound (model results and Stop: one per call, never floods)."""
        with self._lock:
            if len(self._q) >= self._max and not force:
                self.dropped += 1
                if self.dropped % 1000 == 1:
                    log.warning("inbox full: %d events dropped so far", self.dropped)
                return
            self._q.append(event)
            if self._wake_pending:
                return
            self._wake_pending = True
        with contextlib.suppress(RuntimeError):  # loop already closed (late rtmidi callback at shutdown)
            self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        with self._lock:
            self._wake_pending = False
        self._event.set()

    async def get_batch(self, timeout: float) -> list:
        if not self._q and timeout > 0:
            self._event.clear()
            with contextlib.suppress(asyncio.TimeoutError):  # a deadline came before an event
                await asyncio.wait_for(self._event.wait(), timeout)
        with self._lock:
            batch = list(self._q)
            self._q.clear()
        return batch


class Pacer:
    """At most `burst` MIDI messages per `window` seconds; the rest follow in the next windows, in order.

    A JACK MIDI port carries only a few hundred bytes per audio period (about 19 messages at 64 frames),
    and extra events in a period are silently lost: a 10-note chord's note-offs plus note-ons would lose
    some. Spreading a burst over a few milliseconds is inaudible; a hanging note is not.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        send: Callable[[tuple[int, ...]], None],
        *,
        burst: int = 8,
        window: float = 0.0015,
    ) -> None:
        self._loop, self._send = loop, send
        self._burst, self._window = burst, window
        self._queue: deque = deque()
        self._start, self._count = -1.0, 0
        self._timer: asyncio.TimerHandle | None = None

    def send(self, data: tuple[int, ...]) -> None:
        now = self._loop.time()
        if not self._queue and now - self._start >= self._window:
            self._start, self._count = now, 0
        if not self._queue and self._count < self._burst:
            self._count += 1
            self._send(data)
            return
        self._queue.append(data)
        if self._timer is None:
            self._timer = self._loop.call_at(self._start + self._window, self._flush)

    def _flush(self) -> None:
        self._timer = None
        self._start, self._count = self._loop.time(), 0
        while self._queue and self._count < self._burst:
            self._count += 1
            self._send(self._queue.popleft())
        if self._queue:
            self._timer = self._loop.call_at(self._start + self._window, self._flush)

    def drain(self) -> None:
        """Send whatever is left now (shutdown, after the paced flush had its time)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._queue:
            self._send(self._queue.popleft())


class Bridge:
    """One bridge run.

    Args:
        cfg: settings.
        model: a bridge.model.Model.
        clock: time source (MonotonicClock in real runs).
        open_midi / open_osc: open the MIDI ports / OSC sockets (the demo opens neither).
        install_signals: SIGINT/SIGTERM stop the bridge (main thread only).
        on_action: called on the loop with every action executed (demo and bench observe with it).
    """

    def __init__(
        self,
        cfg: BridgeConfig,
        model,
        *,
        clock: Clock | None = None,
        open_midi: bool = True,
        open_osc: bool = True,
        install_signals: bool = True,
        on_action: Callable[[object], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.model = model
        self.clock = clock or MonotonicClock()
        self.open_midi = open_midi and not cfg.no_midi
        self.open_osc = open_osc
        self.install_signals = install_signals
        self.on_action = on_action
        self.ready = threading.Event()
        self.engine: Engine | None = None
        self._inbox: Inbox | None = None
        self._pre_ready: list = []

    def post(self, event) -> None:
        """Deliver an event to the loop (any thread)."""
        if self._inbox is None:
            self._pre_ready.append(event)
        else:
            self._inbox.post(event, force=isinstance(event, Stop))

    def stop(self, reason: str = "stop requested") -> None:
        self.post(Stop(reason, self.clock.now()))

    async def run(self) -> int:
        """Serve until Stop; returns the exit code (0)."""
        cfg, now = self.cfg, self.clock.now
        loop = asyncio.get_running_loop()
        self._inbox = inbox = Inbox(loop, cfg.inbox_size)
        for ev in self._pre_ready:
            inbox.post(ev, force=True)
        if self.install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(
                    sig, lambda s=sig: inbox.post(Stop(signal.Signals(s).name, now()), force=True)
                )
        self.engine = engine = Engine(
            cfg, self.model.vocab, self.model.key_names, self.model.meter_names, now=now()
        )
        worker = ModelThread(self.model, lambda ev: inbox.post(ev, force=True), now)

        def on_midi(data: tuple[int, ...], t: float) -> None:  # rtmidi's thread: stamp was taken, post only
            # Clock/transport bytes always get in (at most 24 a beat; the tempo fit counts every one).
            inbox.post(MidiIn(data, t), force=len(data) == 1 and data[0] in _TRANSPORT)

        midi = MidiPorts(cfg, on_message=on_midi, now=now)
        server = replier = None
        try:
            if self.open_midi:
                midi.open()
            if self.open_osc:
                server = await osc_io.open_server(
                    cfg.osc_host,
                    cfg.osc_port,
                    lambda d: inbox.post(_Datagram(d, now()), force=d.startswith(_URGENT)),
                )
                replier = osc_io.Replier(cfg.reply_host, cfg.reply_port)
            worker.start()

            pacer = Pacer(loop, midi.send)

            def execute(actions: list) -> None:
                for a in actions:
                    if isinstance(a, SendMidi):
                        pacer.send(a.data)
                    elif isinstance(a, SendOsc):
                        if replier is not None:
                            replier.send(a.address, a.args)
                    else:
                        worker.submit(a)
                    if self.on_action is not None:
                        self.on_action(a)

            execute(engine.start())
            log.info("bridge ready: mode %s, clock %s, tempo %.1f", cfg.mode, cfg.clock, cfg.tempo)
            self.ready.set()
            try:
                await self._serve(inbox, engine, midi, execute)
            finally:  # every way out (Stop, an error, cancellation) ends the notes, twice
                execute(engine.release_all())
                await asyncio.sleep(max(_FLUSH_S, CONFIRM_S))  # the pacer spreads them; the driver delivers
                pacer.drain()
                execute(engine.confirm_now())  # the second release, for a link that dropped the first
                await asyncio.sleep(_FLUSH_S)
                pacer.drain()
                await asyncio.sleep(_FLUSH_S)
        finally:
            self.ready.set()
            worker.close()
            if server is not None:
                server.close()
            if replier is not None:
                replier.close()
            midi.close()
            log.info("bridge stopped (%s)", engine.stats.summary())
        return 0

    async def _serve(self, inbox: Inbox, engine: Engine, midi: MidiPorts, execute) -> None:
        cfg, clock = self.cfg, self.clock
        watch_ports = self.open_midi  # the JACK server, and --connect-* ports
        next_check = clock.now()
        next_stats = next_check + cfg.stats_every_s
        coalescer = Coalescer(_COALESCE_S)

        def handle(event) -> None:
            try:
                execute(engine.handle(event, clock.now()))
            except Exception as err:  # noqa: BLE001 - one bad event must not end a performance
                engine.stats.count("internal_errors")
                log.error("internal error on %s: %s", type(event).__name__, osc_io.cut(repr(err)))

        while True:
            now = clock.now()
            deadline = engine.next_deadline(now)
            held = coalescer.deadline()
            if held is not None:
                deadline = min(deadline, held)
            batch = await inbox.get_batch(deadline - now)
            if any(isinstance(ev, Stop) for ev in batch):
                log.info("stopping: %s", next(ev for ev in batch if isinstance(ev, Stop)).reason)
                return
            # Urgent datagrams (ping, panic) are decoded first: a flood of others waits behind them.
            urgent = [ev for ev in batch if isinstance(ev, _Datagram) and ev.data.startswith(_URGENT)]
            events: list = [e for ev in urgent for e in osc_io.decode(ev.data, ev.t)]
            for ev in batch:
                if isinstance(ev, _Datagram):
                    if not ev.data.startswith(_URGENT):
                        events += osc_io.decode(ev.data, ev.t)
                else:
                    events.append(ev)
            # Pings first, and one pong per batch however many pings it held (a bundle of 2,500 pings
            # is one answer); panics next, before the notes and settings queued behind them.
            pings = [e for e in events if isinstance(e, OscIn) and e.address == "/typemoe/ping"]
            if pings:
                handle(pings[0])
                if len(pings) > 1:
                    engine.stats.count("pings_merged", len(pings) - 1)
            panics = [
                i for i, e in enumerate(events) if isinstance(e, OscIn) and e.address == "/typemoe/panic"
            ]
            for i in panics:
                handle(events[i])
            for i, e in enumerate(events):
                if isinstance(e, OscIn):
                    if e.address in ("/typemoe/ping", "/typemoe/panic"):
                        continue
                    if panics and i < panics[-1] and e.address == "/typemoe/continue":
                        continue  # asked for before the panic that was handled first: not wanted now
                    for m in coalescer.admit(e, clock.now()):
                        handle(m)
                else:
                    handle(e)
            for m in coalescer.due(clock.now()):
                handle(m)
            if not batch:
                handle(Tick(now))
            now = clock.now()
            if watch_ports and now >= next_check:
                if midi.check():  # a new output: whatever the old one left sounding must end there too
                    execute(engine.release_all())
                next_check = now + cfg.port_check_s
            if cfg.stats_every_s > 0 and now >= next_stats:
                engine.stats.count("inbox_dropped", inbox.dropped - engine.stats.counts["inbox_dropped"])
                log.info("stats: %s", engine.stats.summary())
                next_stats = now + cfg.stats_every_s
