"""`typemoe bench`'s analyze rows: what the whole-piece key's twelve hearings cost.

    analyze.quick_s / analyze.twelve_s   median seconds of `typemoe analyze` on one piece, one hearing
                                         (--quick) and twelve transpositions (the default), timed in
                                         alternating runs in one process
    analyze.ratio                        twelve_s / quick_s
    analyze.tokens / analyze.bars        the piece: 64 bars of a I-vi-IV-V progression in C major, eighth-note
                                         arpeggios over a held bass (longer than one context: it slides)
    analyze.family                       what deciding the meter's family costs on one context window of the
                                         piece (the most the bridge reads per answer), where the model
                                         directory has a family judge: judge_ms / rule_ms (medians of
                                         FAMILY_REPS alternating calls: meter_family.json's judge, the
                                         onset-autocorrelation rule), ratio, notes

Registered in typemoe.export.bench.EXTRA_BENCHES by the CLI's bench command (typemoe/commands/bench.py).
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import symusic

BARS = 64
REPS = 3
FAMILY_REPS = 200
_CHORDS = ((0, 4, 7), (9, 12, 16), (5, 9, 12), (7, 11, 14))  # C, Am, F, G above C4


def progression(bars: int = BARS, tpq: int = 480) -> symusic.Score:
    """`bars` 4/4 bars: each bar one chord, its notes as eighth-note arpeggios over the held root."""
    score = symusic.Score(tpq)
    track = symusic.Track("piano", 0, False)
    for b in range(bars):
        chord = _CHORDS[b % len(_CHORDS)]
        start = b * 4 * tpq
        track.notes.append(symusic.Note(start, 4 * tpq, 48 + chord[0] % 12, 70))
        for i in range(8):
            pitch = 60 + chord[(i % 4) % 3] + (12 if i % 4 == 3 else 0)
            track.notes.append(symusic.Note(start + i * tpq // 2, tpq // 2, pitch, 60 + 5 * (i % 3)))
    score.tracks.append(track)
    return score


def run_analyze_bench(model_dir: str | os.PathLike, reps: int = REPS) -> dict:
    from typemoe.commands import tools
    from typemoe.export.runtime import OrtModel

    model = OrtModel(model_dir, provider="cpu")
    score = progression()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "progression.mid"
        score.dump_midi(str(path))
        times: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(reps):
            for quick in (True, False):
                t0 = time.perf_counter()
                tools.analyze(model, path, quick=quick)
                times[quick].append(time.perf_counter() - t0)
    quick_s, twelve_s = float(np.median(times[True])), float(np.median(times[False]))
    ids = model.vocab.encode_score(score)
    return {
        "analyze": {
            "quick_s": quick_s,
            "twelve_s": twelve_s,
            "ratio": twelve_s / quick_s,
            "tokens": len(ids),
            "bars": BARS,
            "reps": reps,
            "family": family_cost(model, ids[-model.context_len :]),
        }
    }


def family_cost(model, ids, reps: int = FAMILY_REPS) -> dict | None:
    """Median ms of the meter family of `ids`' notes by the model's judge and by the onset rule (None when
    the model directory has no judge), timed in alternating calls."""
    from typemoe.meter import MeterReader

    if model.meter.judge is None:
        return None
    rule = MeterReader(model.meter.fusion, model.vocab, model.meter.remi)  # no judge: the rule decides
    notes, _ = model.meter.remi.notes(np.asarray(ids, dtype=np.int64))
    times: dict[str, list[float]] = {"judge": [], "rule": []}
    for _ in range(reps):
        for name, reader in (("judge", model.meter), ("rule", rule)):
            t0 = time.perf_counter()
            reader.family_of(notes)
            times[name].append((time.perf_counter() - t0) * 1e3)
    judge_ms, rule_ms = float(np.median(times["judge"])), float(np.median(times["rule"]))
    return {"judge_ms": judge_ms, "rule_ms": rule_ms, "ratio": judge_ms / rule_ms, "notes": len(notes)}
