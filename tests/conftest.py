"""Shared fixtures: the real vocabulary, small sets of real pieces (music21 corpus, ../shared/data), a labelled
folder of real tunes and the tiny checkpoint for the `typemoe eval` tests, and the bridge's jackd and --model."""

from __future__ import annotations

import csv
import functools
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import symusic

# Tests use tiny models: one intra-op thread is faster than two on a shared 2-core machine, and keeps
# subprocess-based tests (torchrun ranks, the bridge) from oversubscribing. Set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
N_TUNES = 12  # tunes in the labelled_folder fixture


@pytest.fixture(scope="session")
def vocab():
    from typemoe.vocab import TypedVocab

    return TypedVocab.default()


def music21_scores(n: int, opus: str = "essenFolksong/altdeu10") -> list[tuple[str, symusic.Score]]:
    """The first `n` tunes of one music21 corpus opus, as symusic scores (tpq 480) with their meta events."""
    return [(name, s.copy()) for name, s in _music21_scores(n, opus)]


@functools.lru_cache(maxsize=8)
def _music21_scores(n: int, opus: str) -> list[tuple[str, symusic.Score]]:
    music21 = pytest.importorskip("music21")
    op = music21.corpus.parse(opus)
    return [
        (f"{opus}#{i}", _symusic_of(s))
        for i, s in enumerate(op.scores[:n] if hasattr(op, "scores") else [op])  # an opus, or one score
    ]


def music21_tune(opus: str, number: int) -> symusic.Score:
    """The tune numbered `number` (its ABC X: field) of a music21 corpus opus, as music21_scores converts."""
    music21 = pytest.importorskip("music21")
    return _symusic_of(music21.corpus.parse(opus, number=number))


def _symusic_of(s) -> symusic.Score:
    score = symusic.Score(480)
    track = symusic.Track("melody", 0, False)
    flat = s.stripTies().flatten()
    for el in flat.notes:
        for p in el.pitches:
            track.notes.append(
                symusic.Note(
                    int(round(el.offset * 480)),
                    max(1, int(round(el.quarterLength * 480))),
                    int(p.midi),
                    80,
                )
            )
    for ts in s.recurse().getElementsByClass("TimeSignature"):
        at = int(ts.getOffsetInHierarchy(s) * 480)
        score.time_signatures.append(symusic.TimeSignature(at, ts.numerator, ts.denominator))
    for ks in s.recurse().getElementsByClass("KeySignature"):
        score.key_signatures.append(symusic.KeySignature(int(ks.getOffsetInHierarchy(s) * 480), ks.sharps, 0))
    score.tracks.append(track)
    return score


def shared_scores(archive: str, n: int) -> list[tuple[str, symusic.Score]]:
    """The first `n` loadable MIDI files of a ../shared/data archive, read straight from the tarball."""
    path = SHARED_DATA / f"{archive}.tar.gz"
    if not path.exists():
        return []
    out = []
    with tarfile.open(path) as tf:
        for m in tf:
            if m.name.endswith((".mid", ".midi")) and len(out) < n:
                try:
                    out.append((m.name, symusic.Score.from_midi(tf.extractfile(m).read())))
                except Exception:  # noqa: BLE001 - a few files in these sets are known-corrupt; skip them
                    continue
    return out


@pytest.fixture(scope="session")
def real_pieces() -> list[tuple[str, symusic.Score]]:
    """At least 200 real pieces: music21 folk tunes plus shared POP909/EMOPIA files when present."""
    shared = shared_scores("emopia", 60) + shared_scores("pop909", 40)
    return music21_scores(200 - len(shared)) + shared


@pytest.fixture(scope="module")
def labelled_folder(tmp_path_factory):
    """Real Essen tunes as MIDI + a labels CSV (key on 3 of 4 tunes, meter, emotion cycling Q1..Q4): the
    folder and its rows, for the `typemoe eval` tests (N_TUNES tunes)."""
    from typemoe import analysis

    d = tmp_path_factory.mktemp("tunes")
    rows = []
    for i, (_, score) in enumerate(music21_scores(N_TUNES)):
        ts, ks = score.time_signatures, score.key_signatures
        meter = f"{ts[0].numerator}/{ts[0].denominator}" if len(ts) else ""
        key = analysis.KEYS[(7 * ks[0].key) % 12] if len(ks) and i % 4 else ""
        score.dump_midi(str(d / f"tune{i:02d}.mid"))
        rows.append(
            {
                "path": f"tune{i:02d}.mid",
                "key": key,
                "meter": meter,
                "genre": "folk",
                "emotion": f"Q{i % 4 + 1}",
            }
        )
    with (d / "labels.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "key", "meter", "genre", "emotion"])
        w.writeheader()
        w.writerows(rows)
    return d, rows


@pytest.fixture(scope="module")
def ckpt():
    """The tiny random checkpoint of export_fixtures (shared: do not modify it)."""
    from export_fixtures import tiny_checkpoint_dir

    return tiny_checkpoint_dir()


def score_from_notes(notes, tpq: int = 4) -> symusic.Score:
    """A one-track score from (onset, duration, pitch, velocity) tuples in ticks."""
    arr = np.asarray(notes, dtype=np.int64).reshape(-1, 4)
    score = symusic.Score(tpq)
    track = symusic.Track("t", 0, False)
    track.notes = symusic.Note.from_numpy(
        time=arr[:, 0].astype(np.int32),
        duration=arr[:, 1].astype(np.int32),
        pitch=arr[:, 2].astype(np.int8),
        velocity=arr[:, 3].astype(np.int8),
    )
    score.tracks.append(track)
    return score


@pytest.fixture(scope="module")
def jack():
    """A private jackd (256-frame periods, 5.3 ms) for one test module; skips where JACK is not available.

    256, not 64 frames: on this 2-core VM the dummy driver overruns 64-frame periods now and then even
    with SCHED_FIFO (jackd -R, as bridge_jack_fixtures starts it where allowed), and every client that
    misses a cycle loses its MIDI events; a C client (jack_midi_dump) lost pulses alongside ours. Measured
    2026-12-01 (notes/exp/clock_loss.py, 140 BPM clock for 15-20 s, idle machine): at 64 frames 0-73 of
    ~1,120 pulses lost per run, at 256 frames 0-1. The server is also synchronous (jackd -S, see
    bridge_jack_fixtures.jack_server): a client late for a cycle delays it instead of losing its events.
    These tests are about which notes the bridge plays; the clock and meter modules pick their own period,
    and tests/test_bridge_stage.py and test_bridge_midi_pump.py keep asynchronous servers on purpose (what
    the bridge does when the link drops events)."""
    from bridge_jack_fixtures import jack_or_skip

    with jack_or_skip(period=256) as name:
        yield name


@pytest.fixture(scope="module")
def model_arg(tmp_path_factory) -> str:
    """The bridge's --model: the tiny exported model (real ONNX runtime, real re-prefill cost) when it can
    be built here, else the toy model."""
    try:
        from export_fixtures import make_tiny_model_dir

        pytest.importorskip("torch")
        pytest.importorskip("onnx")
        return str(make_tiny_model_dir(tmp_path_factory.mktemp("bridge") / "model"))
    except pytest.skip.Exception:
        return "toy"


def pytest_configure(config):
    """Hand the JACK fixtures the stderr pytest started with (its capture holds fd 2 in a file that a
    watchdog's exit would lose), so a stuck JACK call's stack dump reaches the CI log."""
    import bridge_jack_fixtures

    capman = config.pluginmanager.getplugin("capturemanager")
    err = getattr(getattr(capman, "_global_capturing", None), "err", None)
    bridge_jack_fixtures.REAL_STDERR_FD = getattr(err, "targetfd_save", None)
