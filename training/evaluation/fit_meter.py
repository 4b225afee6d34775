"""Fit the meter fusion (typemoe/meter.py) for an exported model and save it in the model directory.

    python -m typemoe.training.evaluation.fit_meter --model MODEL_DIR --data SHARDS [--data SHARDS ...] [--max-pieces 6000]

Samples are humanized windows (training/learn/humanize.py) of the meter-labelled pieces of the train split,
of random length (a few bars up to a full context), so the fusion sees what the bridge hears early in a
performance as well as whole pieces. For each window: the rhythm features of its notes, and the model's
meter-head log-probabilities at its last token (the running estimate). The fit is checked on the val
split, humanized the same way, beside the rhythm-only fit and the model's head alone; the numbers go
into the saved file's `info` and are printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from typemoe import analysis
from typemoe.meter import GRID, MeterFusion, rhythm_features
from typemoe.training.learn.data import load_pieces
from typemoe.training.learn.humanize import Humanizer


def window_samples(pieces, vocab, model, *, max_pieces: int, seed: int, context: int):
    """(rhythm (N, F), head log-probs (N, M), labels (N,)) of one humanized window per labelled piece."""
    rng = np.random.default_rng(seed)
    hum = Humanizer(vocab)
    meter = pieces.label("meter")
    idx = np.flatnonzero(meter >= 0)
    if len(idx) > max_pieces:
        idx = np.sort(rng.choice(idx, size=max_pieces, replace=False))
    bar = vocab.id("Bar_None")
    session = model.session()
    R, H, Y = [], [], []
    for i in idx:
        toks = pieces.tokens[i]
        bars = np.flatnonzero(toks == bar)
        if bars.size == 0:
            continue
        start = int(rng.choice(bars[: max(1, len(bars) // 2)]))
        length = int(rng.integers(48, context))
        ids = hum(toks[start : start + length], rng)
        notes, _ = hum.notes(ids)
        if len(notes) < 4:
            continue
        session.reset()
        out = session.feed([vocab.bos_id, *ids[: context - 1].tolist()])
        R.append(rhythm_features(notes[:, 0] / GRID, notes[:, 3] / GRID))
        H.append(np.log(np.maximum(out.meter_probs, 1e-9)))
        Y.append(int(meter[i]))
    return np.asarray(R), np.asarray(H), np.asarray(Y)


def family_accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    fam = np.asarray([analysis.meter_family(int(m)) for m in range(len(analysis.METERS))])
    return float((fam[pred] == fam[y]).mean())


def fit_parser(prog: str, doc: str, max_pieces: int) -> argparse.ArgumentParser:
    """The command line of a fusion fit (this module and training/evaluation/fit_key.py)."""
    p = argparse.ArgumentParser(prog=prog, description=doc.split("\n")[0])
    p.add_argument(
        "--model", type=Path, required=True, help="exported model directory (the fusion is saved there)"
    )
    p.add_argument("--data", type=Path, action="append", required=True, help="token shard directory")
    p.add_argument(
        "--max-pieces", type=int, default=max_pieces, help="train pieces sampled (one window each)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dry-run", action="store_true", help="fit and report, save nothing")
    return p


def save_fusion(fusion, report: dict, args) -> None:
    """Print the report, keep it in the fusion's info, and (unless --dry-run) save the fusion in the model
    directory and re-list the directory's manifest: the fusion is part of the model, checked at load."""
    from typemoe.export.model_dir import refresh_manifest

    print(json.dumps(report, indent=1))
    fusion.info = {**report, "data": [str(d) for d in args.data], "seed": args.seed}
    if not args.dry_run:
        print(f"saved {fusion.save(args.model)}")
        if (args.model / "manifest.json").is_file():
            refresh_manifest(args.model)


def main(argv: list[str] | None = None) -> int:
    from typemoe.export.runtime import OrtModel

    args = fit_parser("python -m typemoe.training.evaluation.fit_meter", __doc__, 6000).parse_args(argv)
    try:
        model = OrtModel(args.model)
        pieces = load_pieces(args.data, model.vocab)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    ctx = min(model.context_len, 1024)
    tr = window_samples(
        pieces.with_split("train"),
        model.vocab,
        model,
        max_pieces=args.max_pieces,
        seed=args.seed,
        context=ctx,
    )
    va = window_samples(
        pieces.with_split("val"), model.vocab, model, max_pieces=2000, seed=args.seed + 1, context=ctx
    )
    meters = tuple(model.meter_names)
    rhythm_only = MeterFusion.fit(tr[0], tr[2], meters)
    fused = MeterFusion.fit(tr[0], tr[2], meters, tr[1])
    report = {"train_windows": len(tr[2]), "val_windows": len(va[2])}
    for name, pred in (
        ("head", va[1].argmax(1)),
        ("rhythm", rhythm_only.probs(va[0]).argmax(1)),
        ("fused", fused.probs(va[0], va[1]).argmax(1)),
    ):
        report[f"val_{name}_exact"] = round(float((pred == va[2]).mean()), 4)
        report[f"val_{name}_family"] = round(family_accuracy(pred, va[2]), 4)
    save_fusion(fused, report, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
