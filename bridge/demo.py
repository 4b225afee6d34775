"""`typemoe-bridge --demo`: a built-in tune through the realtime path, no DAW needed.

The tune's notes are posted as MIDI events at their (fast) internal-clock times into the same inbox, engine
and model thread a live performer would reach; the running key and meter are reported as they change; then
a continuation is asked for, played on the clock, and written to a MIDI file (tune + continuation).
MIDI and OSC ports stay closed, so the demo runs anywhere, even next to a running bridge.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import symusic

from typemoe.bridge.config import BridgeConfig
from typemoe.bridge.daemon import Bridge
from typemoe.bridge.events import MidiIn, OscIn, SendOsc

log = logging.getLogger(__name__)

DEMO_TUNE = Path(__file__).resolve().parent / "demo_tune.mid"
DEMO_TUNE_INFO = "J.S. Bach, chorale BWV 66.6 (F# minor, 4/4), from the music21 corpus"
_TPQ = 480


@dataclass(frozen=True)
class TuneNote:
    onset: float  # beats
    duration: float
    pitch: int
    velocity: int


class DemoTuneError(ValueError):
    """--demo-tune names no readable tune; the message says which and why."""


_MIDI_SUFFIXES = (".mid", ".midi", ".kar", ".smf")


def load_tune(source: str | Path | None = None) -> list[TuneNote]:
    """Notes of a MIDI file, or of a music21 corpus piece name (needs music21), or of the built-in tune.

    Raises:
        DemoTuneError: no such file, an unreadable one, or a corpus name that cannot be found.
    """
    path = Path(source) if source is not None else DEMO_TUNE
    if source is not None and not path.exists():
        if path.suffix.lower() in _MIDI_SUFFIXES or len(path.parts) > 1:
            raise DemoTuneError(f"--demo-tune: no MIDI file {str(source)!r}")
        return _corpus_tune(str(source))
    try:
        score = symusic.Score(str(path))
    except Exception as err:  # noqa: BLE001 - symusic raises plain RuntimeError/ValueError on bad files
        raise DemoTuneError(f"--demo-tune: cannot read {str(path)!r} as MIDI: {err}") from None
    tpq = score.ticks_per_quarter
    notes = [
        TuneNote(n.time / tpq, max(n.duration / tpq, 0.05), n.pitch, n.velocity or 80)
        for track in score.tracks
        if not track.is_drum
        for n in track.notes
    ]
    if not notes:
        raise DemoTuneError(f"--demo-tune: {str(path)!r} has no pitched notes")
    return sorted(notes, key=lambda n: (n.onset, n.pitch))


def _corpus_tune(name: str) -> list[TuneNote]:
    import tempfile

    try:
        from music21 import corpus  # optional: only for corpus names
    except ModuleNotFoundError:
        raise DemoTuneError(
            f"--demo-tune: {name!r} is not a file, and music21 (for corpus names) is not installed"
        ) from None
    try:
        score = corpus.parse(name)
    except Exception as err:  # noqa: BLE001 - music21 raises its own CorpusException
        raise DemoTuneError(f"--demo-tune: {name!r} is neither a file nor a music21 corpus work") from err
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "tune.mid"
        score.write("midi", fp=str(out))
        return load_tune(out)


def write_midi(path: Path, tune: list[TuneNote], continuation: list[tuple[float, float, int, int]]) -> None:
    """Two tracks: the tune, then the continuation right after it (onsets relative to the tune's start)."""
    score = symusic.Score(_TPQ)
    for name, notes in (
        ("tune", [(n.onset, n.duration, n.pitch, n.velocity) for n in tune]),
        ("continuation", continuation),
    ):
        track = symusic.Track(name, 0, False)
        for onset, dur, pitch, vel in notes:
            track.notes.append(symusic.Note(round(onset * _TPQ), max(1, round(dur * _TPQ)), pitch, vel))
        score.tracks.append(track)
    score.dump_midi(str(path))


async def _play(
    bridge: Bridge,
    tune: list[TuneNote],
    tempo: float,
    bars: float,
    emit: Callable[[str], None],
    notes_out: list,
) -> float:
    """Post the tune's notes on time, then ask for a continuation; returns the tune's start beat."""
    clock, spb = bridge.clock, 60.0 / tempo
    while bridge.engine is None or not bridge.ready.is_set():
        await asyncio.sleep(0.01)
    engine = bridge.engine
    start_beat = engine.clock.beat_at(clock.now()) + 1.0
    t0 = engine.clock.time_at(start_beat)
    events = sorted(
        [(n.onset, 1, n.pitch, n.velocity) for n in tune]
        + [(n.onset + n.duration, 0, n.pitch, 0) for n in tune]
    )
    for beat, on, pitch, vel in events:  # deadline-based: each event at t0 + beat * spb
        delay = t0 + beat * spb - clock.now()
        if delay > 0:
            await asyncio.sleep(delay)
        bridge.post(MidiIn((0x90 if on else 0x80, pitch, vel), clock.now()))
    end = max(b for b, *_ in events)
    await asyncio.sleep(spb)
    emit(f"tune done ({end:.0f} beats); asking for a {bars:g}-bar continuation")
    bridge.post(OscIn("/typemoe/continue", (float(bars),), clock.now()))
    deadline = clock.now() + 30.0 + bars * 4 * spb
    while clock.now() < deadline and not (notes_out and not engine.playing):
        await asyncio.sleep(0.05)
    bridge.stop("demo finished")
    return start_beat


def run_demo(
    cfg: BridgeConfig,
    model,
    *,
    out_path: Path,
    tune_source: str | None = None,
    tempo: float = 300.0,
    bars: float = 4.0,
    emit: Callable[[str], None] = log.info,
) -> int:
    """Play the tune, report key/meter via `emit`, write tune + continuation to `out_path`. Returns 0."""
    tune = load_tune(tune_source)
    emit(
        f"demo: {DEMO_TUNE_INFO if tune_source is None else tune_source}, {len(tune)} notes at {tempo:g} BPM"
    )
    cfg = replace(
        cfg, mode="manual", clock="internal", tempo=tempo, no_midi=True, max_bars=max(cfg.max_bars, bars)
    )
    notes_out: list[tuple[float, float, int, int]] = []
    shown: dict[str, str] = {}

    def observe(action) -> None:
        if not isinstance(action, SendOsc):
            return
        beat = bridge.engine.clock.beat_at(bridge.clock.now()) if bridge.engine else 0.0
        if action.address in ("/typemoe/key", "/typemoe/meter"):
            what = action.address.rsplit("/", 1)[1]
            if shown.get(what) == action.args[0]:
                return  # the bridge repeats the estimate every bar; print changes only
            shown[what] = action.args[0]
            emit(f"beat {beat:6.1f}  {what:5s} {action.args[0]:9s} ({action.args[1]:.2f})")
        elif action.address == "/typemoe/note":
            pitch, vel, onset, dur = action.args
            notes_out.append((onset, dur, pitch, vel))
        elif action.address == "/typemoe/error":
            emit(f"error: {action.args[0]}")

    bridge = Bridge(cfg, model, open_midi=False, open_osc=False, on_action=observe)

    async def main() -> tuple[int, float]:
        task = asyncio.create_task(bridge.run())
        start_beat = await _play(bridge, tune, tempo, bars, emit, notes_out)
        return await task, start_beat

    code, start_beat = asyncio.run(main())
    if not notes_out:
        emit("no continuation was generated")
        return 1
    cont = [(onset - start_beat, dur, pitch, vel) for onset, dur, pitch, vel in notes_out]
    write_midi(out_path, tune, cont)
    emit(f"continuation: {len(cont)} notes -> {out_path}")
    return code
