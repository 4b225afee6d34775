"""Fit the meter's family judge (typemoe/meter_family.py) and save it in a model directory.

    python -m typemoe.training.evaluation.fit_meter_family --model MODEL_DIR --data SHARDS [--data SHARDS ...]

Samples are humanized windows (training/learn/humanize.py) of the duple- and triple-metered pieces of each
shard directory's train split: one per piece, from a bar line in the piece's first half, of a length drawn
log-uniformly between --min-tokens and --max-tokens (a few bars up to the whole piece), so the judge sees
what the bridge hears early in a performance as well as what `typemoe analyze` reads. The judge reads no
model output, so the model directory only gives the vocabulary and receives the file.

It is checked on the val split, windowed the same way, against the onset-autocorrelation rule it replaces,
and for agreement with itself when each window is played again with another touch (fit_meter.TOUCH). The
numbers go into the saved file's `info` and are printed.

--l2 (default 1000) was chosen on development sources never trained on (freemidi and cjnolet pop songs,
their files' own time signatures), not on the sources the model card scores (MODEL_CARD.md, "The meter's
family").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from typemoe import analysis
from typemoe.meter import GRID, rhythm_family, rhythm_features
from typemoe.meter_family import SIGNALS, FamilyJudge, family_features
from typemoe.training.evaluation.fit_meter import TOUCH
from typemoe.training.learn.data import load_pieces
from typemoe.training.learn.humanize import Humanizer

L2 = 1000.0


def window_samples(pieces, vocab, *, max_pieces: int, seed: int, min_tokens: int, max_tokens: int):
    """(margins (N, 5), triple (N,) bool, rule (N,) object, twin margins (N, 5), twin rule (N,)) of one
    humanized window per duple- or triple-labelled piece (at most max_pieces, sampled with `seed`)."""
    from typemoe.grammar_tables import tables_of

    rng = np.random.default_rng(seed)
    hum, touch = Humanizer(vocab), Humanizer(vocab, TOUCH)
    pitch_of = tables_of(vocab).pitch_of
    meter = pieces.label("meter")
    idx = np.flatnonzero(meter >= 0)
    if len(idx) > max_pieces:
        idx = np.sort(rng.choice(idx, size=max_pieces, replace=False))
    bar = vocab.id("Bar_None")

    def read(ids):
        notes, _ = hum.notes(ids)
        onset, duration = notes[:, 0] / GRID, notes[:, 3] / GRID
        return (
            family_features(onset, duration, pitch_of[notes[:, 1]]),
            rhythm_family(rhythm_features(onset, duration)),
            len(notes),
        )

    X, Y, R, X2, R2 = [], [], [], [], []
    for i in idx:
        family = analysis.meter_family(int(meter[i]))
        toks = pieces.tokens[i]
        bars = np.flatnonzero(toks == bar)
        if family == "other" or bars.size == 0:
            continue
        start = int(rng.choice(bars[: max(1, len(bars) // 2)]))
        length = int(np.exp(rng.uniform(np.log(min_tokens), np.log(max_tokens))))
        ids = hum(toks[start : start + length], rng)
        x, r, n = read(ids)
        if n < 8:
            continue
        x2, r2, _ = read(touch(ids, rng))
        X.append(x)
        Y.append(family == "triple")
        R.append(r)
        X2.append(x2)
        R2.append(r2)
    n = len(SIGNALS)
    return (
        np.asarray(X).reshape(-1, n),
        np.asarray(Y, dtype=bool),
        np.asarray(R, dtype=object),
        np.asarray(X2).reshape(-1, n),
        np.asarray(R2, dtype=object),
    )


def samples(dirs: list[Path], vocab, split: str, n: int, seed: int, args) -> tuple:
    """window_samples of `split` of each shard directory (n pieces each), concatenated."""
    parts = [
        window_samples(
            load_pieces([d], vocab).with_split(split),
            vocab,
            max_pieces=n,
            seed=seed,
            min_tokens=args.min_tokens,
            max_tokens=args.max_tokens,
        )
        for d in dirs
    ]
    return tuple(np.concatenate([p[k] for p in parts]) for k in range(5))


def main(argv: list[str] | None = None) -> int:
    from typemoe.export.runtime import OrtModel
    from typemoe.training.evaluation.fit_meter import save_fusion

    p = argparse.ArgumentParser(
        prog="python -m typemoe.training.evaluation.fit_meter_family", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--model", type=Path, required=True, help="exported model directory (the judge is saved there)"
    )
    p.add_argument("--data", type=Path, action="append", required=True, help="token shard directory")
    p.add_argument("--max-pieces", type=int, default=6000, help="train pieces sampled per shard directory")
    p.add_argument("--val-pieces", type=int, default=2000, help="val pieces sampled per shard directory")
    p.add_argument("--min-tokens", type=int, default=96)
    p.add_argument("--max-tokens", type=int, default=100_000)
    p.add_argument("--l2", type=float, default=L2, help="L2 weight of the regression (module docstring)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dry-run", action="store_true", help="fit and report, save nothing")
    args = p.parse_args(argv)
    try:
        vocab = OrtModel(args.model).vocab
        tr = samples(args.data, vocab, "train", args.max_pieces, args.seed, args)
        va = samples(args.data, vocab, "val", args.val_pieces, args.seed + 1, args)
        judge = FamilyJudge.fit(tr[0], tr[1], l2=args.l2)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    pred = np.asarray([judge.family(x) == "triple" for x in va[0]], dtype=bool)
    twin = np.asarray([judge.family(x) == "triple" for x in va[3]], dtype=bool)
    rule, rule_twin, truth = va[2] == "triple", va[4] == "triple", va[1]

    def rate(a: np.ndarray, b: np.ndarray) -> float | None:
        return round(float((a == b).mean()), 4) if len(a) else None  # None: no val window

    report = {
        "train_windows": len(tr[1]),
        "train_triple": round(float(tr[1].mean()), 4),
        "val_windows": len(truth),
        "val_family": rate(pred, truth),
        "val_rule_family": rate(rule, truth),
        "val_touch_agreement": rate(pred, twin),
        "val_rule_touch_agreement": rate(rule, rule_twin),
        "l2": args.l2,
        "min_tokens": args.min_tokens,
        "max_tokens": args.max_tokens,
    }
    save_fusion(judge, report, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
