"""`typemoe bench`'s infill rows: what mixing the continuation reading into a middle costs.

    infill.mixed_s / infill.alone_s   median seconds of typemoe.infill.infill_score on one piece, the
                                      decoder's mix (SUFFIX_WEIGHT: two streams) and the infilling reading
                                      alone (suffix_weight 1: one stream), in alternating runs in one process
    infill.ratio                      mixed_s / alone_s
    infill.bars / infill.span         the piece (16 bars of analyze_bench's progression) and the span refilled

The middle is sampled with a fixed seed (temperature 1, top-p 0.95), so both readings write about as many
tokens; infill.tokens gives the mean of each. Registered in typemoe.export.bench.EXTRA_BENCHES by the CLI's
bench command (typemoe/commands/bench.py).
"""

from __future__ import annotations

import os
import time

import numpy as np

BARS, FIRST, LAST = 16, 9, 10
REPS = 5


def run_infill_bench(model_dir: str | os.PathLike, reps: int = REPS) -> dict:
    from typemoe.commands.analyze_bench import progression
    from typemoe.export.runtime import OrtModel
    from typemoe.infill import SUFFIX_WEIGHT, InfillError, infill_score

    model = OrtModel(model_dir, provider="cpu")
    score = progression(BARS)
    times: dict[float, list[float]] = {SUFFIX_WEIGHT: [], 1.0: []}
    tokens: dict[float, list[int]] = {SUFFIX_WEIGHT: [], 1.0: []}
    try:
        for rep in range(reps):
            for w in times:
                t0 = time.perf_counter()
                _, mid, _ = infill_score(model, score, FIRST, LAST, seed=rep, suffix_weight=w)
                times[w].append(time.perf_counter() - t0)
                tokens[w].append(len(mid.ids))
    except InfillError as err:  # a model from before infilling: no row, and why
        return {"infill": {"skipped": str(err)}}
    mixed, alone = float(np.median(times[SUFFIX_WEIGHT])), float(np.median(times[1.0]))
    return {
        "infill": {
            "mixed_s": mixed,
            "alone_s": alone,
            "ratio": mixed / alone,
            "suffix_weight": SUFFIX_WEIGHT,
            "tokens": {"mixed": float(np.mean(tokens[SUFFIX_WEIGHT])), "alone": float(np.mean(tokens[1.0]))},
            "bars": BARS,
            "span": [FIRST, LAST],
            "reps": reps,
        }
    }
