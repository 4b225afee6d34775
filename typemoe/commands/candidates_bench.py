"""`typemoe bench`'s candidates row: what keeping the best of N continuations costs (typemoe.candidates).

    candidates.best_s / candidates.one_s   median seconds of 4 bars of 3/4 after a bare prompt [BOS, Key_F#
                                           major, Meter_3/4], best of N (judged by the model's key and meter reading)
                                           and one continuation, in alternating runs in one process, both at
                                           the CLI's default guidance and head guidance
    candidates.ratio                       best_s / one_s (about N, plus N short readings)

Registered in typemoe.export.bench.EXTRA_BENCHES by the CLI's bench command (typemoe/commands/bench.py).
"""

from __future__ import annotations

import os
import time

import numpy as np

N, BARS, REPS = 4, 4, 5


def run_candidates_bench(model_dir: str | os.PathLike, reps: int = REPS, n: int = N) -> dict:
    from typemoe.candidates import best_of
    from typemoe.export.runtime import OrtModel
    from typemoe.key_steering import DEFAULT_HEAD_GUIDANCE
    from typemoe.sampling import DEFAULT_GUIDANCE

    model = OrtModel(model_dir, provider="cpu")
    vocab = model.vocab
    base = model.session()
    base.feed([vocab.bos_id, *vocab.control_ids(key="F# major", meter="3/4")])
    kw = dict(n_bars=BARS, meter="3/4", temperature=1.0, top_p=0.95, guidance=DEFAULT_GUIDANCE)
    times: dict[int, list[float]] = {n: [], 1: []}
    for rep in range(reps):
        for k in times:
            session = base.fork()
            t0 = time.perf_counter()
            best_of(session, k, readers=model, seed=rep, head_guidance=DEFAULT_HEAD_GUIDANCE, **kw)
            times[k].append(time.perf_counter() - t0)
    best, one = float(np.median(times[n])), float(np.median(times[1]))
    return {
        "candidates": {"n": n, "best_s": best, "one_s": one, "ratio": best / one, "bars": BARS, "reps": reps}
    }
