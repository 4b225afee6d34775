"""Fit the meter fusion (typemoe/meter.py) for an exported model and save it in the model directory.

    python -m typemoe.training.evaluation.fit_meter --model MODEL_DIR --data SHARDS [--data SHARDS ...] [--max-pieces 6000]

Samples are humanized windows (training/learn/humanize.py) of the meter-labelled pieces of the train split,
of random length (a few bars up to a full context), so the fusion sees what the bridge hears early in a
performance as well as whole pieces. For each window: the rhythm features of its notes, and the model's
meter-head log-probabilities at its last token (the running estimate). Each window is also played again
with another touch (TOUCH: other velocities, a few onsets moved a grid step), and the fit pays for answers
that change between the two (MeterFusion.fit's consistency weight, picked on the val split); its
probabilities are then calibrated on the val split (MeterFusion.calibrate, temperature scaling). The fit is
checked on the val split, humanized the same way, beside the rhythm-only fit and the model's head alone;
the numbers go into the saved file's `info` and are printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from typemoe import analysis
from typemoe.meter import GRID, MeterFusion, rhythm_family, rhythm_features, within_family
from typemoe.training.learn.data import load_pieces
from typemoe.training.learn.humanize import HumanizeConfig, Humanizer

# A touch, not other music: what a second performer changes (velocity always; a few onsets and durations
# by a grid step sometimes), never the notes themselves (no melody-only cut, no legato/staccato rescale).
TOUCH = HumanizeConfig(
    p_const_velocity=0.4,
    p_curve_velocity=0.3,
    p_noisy_velocity=0.3,
    p_timing=0.5,
    max_moved=0.1,
    p_articulation=0.0,
    p_top_voice=0.0,
)


def window_samples(pieces, vocab, model, *, max_pieces: int, seed: int, context: int, twins: bool = False):
    """(rhythm (N, F), head log-probs (N, M), labels (N,)) of one humanized window per labelled piece; with
    `twins`, also (rhythm, head log-probs) of each window played again with another touch (TOUCH)."""
    rng = np.random.default_rng(seed)
    hum, touch = Humanizer(vocab), Humanizer(vocab, TOUCH)
    meter = pieces.label("meter")
    idx = np.flatnonzero(meter >= 0)
    if len(idx) > max_pieces:
        idx = np.sort(rng.choice(idx, size=max_pieces, replace=False))
    bar = vocab.id("Bar_None")
    session = model.session()

    def read(ids):
        notes, _ = hum.notes(ids)
        session.reset()
        out = session.feed([vocab.bos_id, *ids[: context - 1].tolist()])
        return (
            notes,
            rhythm_features(notes[:, 0] / GRID, notes[:, 3] / GRID),
            np.log(np.maximum(out.meter_probs, 1e-9)),
        )

    R, H, Y, R2, H2 = [], [], [], [], []
    for i in idx:
        toks = pieces.tokens[i]
        bars = np.flatnonzero(toks == bar)
        if bars.size == 0:
            continue
        start = int(rng.choice(bars[: max(1, len(bars) // 2)]))
        length = int(rng.integers(48, context))
        ids = hum(toks[start : start + length], rng)
        if len(hum.notes(ids)[0]) < 4:
            continue
        _, r, h = read(ids)
        R.append(r)
        H.append(h)
        Y.append(int(meter[i]))
        if twins:
            _, r2, h2 = read(touch(ids, rng))
            R2.append(r2)
            H2.append(h2)
    out = (np.asarray(R), np.asarray(H), np.asarray(Y))
    return (*out, np.asarray(R2), np.asarray(H2)) if twins else out


def decide(fusion: MeterFusion, rhythm: np.ndarray, head: np.ndarray) -> np.ndarray:
    """(N,) meter answers as the runtime gives them: the fusion, inside the rhythm rule's family."""
    probs = fusion.probs(rhythm, head)
    return np.asarray(
        [
            int(within_family(p, rhythm_family(r), fusion.meters).argmax())
            for p, r in zip(probs, rhythm, strict=True)
        ]
    )


AGREEMENT_TARGET = 0.975  # the invariance suite's bar (0.95) and a margin for pieces unlike the val split's


def pick_consistency(rows: dict[float, dict], agreement: str) -> float:
    """The consistency weight to keep, from val rows {weight: {"exact": .., agreement: ..}}: the most exact
    among those whose agreement reaches AGREEMENT_TARGET, else the most consistent one."""
    ok = [k for k, r in rows.items() if r[agreement] >= AGREEMENT_TARGET]
    if ok:
        return max(ok, key=lambda k: (rows[k]["exact"], -k))
    return max(rows, key=lambda k: (rows[k][agreement], -k))


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
    p.add_argument("--val-pieces", type=int, default=2000, help="val pieces sampled (one window each)")
    p.add_argument(
        "--consistency",
        type=float,
        nargs="+",
        default=[0.0, 0.3, 1.0, 3.0, 10.0],
        help="consistency weights tried (the fusion's fit); the val split picks one (pick_consistency)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dry-run", action="store_true", help="fit and report, save nothing")
    return p


def train_val_samples(window_samples, pieces, model, args) -> tuple[tuple, tuple]:
    """(train, val) samples with twins of a fusion fit: `window_samples` (this module's or fit_key's) on the
    train split (--max-pieces, --seed) and the val split (--val-pieces, --seed + 1)."""
    ctx = min(model.context_len, 1024)
    return tuple(
        window_samples(
            pieces.with_split(split), model.vocab, model, max_pieces=n, seed=seed, context=ctx, twins=True
        )
        for split, n, seed in (("train", args.max_pieces, args.seed), ("val", args.val_pieces, args.seed + 1))
    )


def sweep_consistency(weights, fit, score, agreement: str):
    """(chosen weight, its fusion, val rows by weight): `fit(weight)` -> a fusion, `score(fusion)` -> its val
    row {"exact": .., agreement: .., ...}; the weight is picked on those rows (pick_consistency)."""
    fits, rows = {}, {}
    for lam in weights:
        fits[lam] = fit(lam)
        rows[lam] = score(fits[lam])
        print(f"consistency {lam:g}: val {rows[lam]}", flush=True)
    lam = pick_consistency(rows, agreement)
    return lam, fits[lam], rows


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
    tr, va = train_val_samples(window_samples, pieces, model, args)
    meters = tuple(model.meter_names)
    rhythm_only = MeterFusion.fit(tr[0], tr[2], meters)
    report: dict = {"train_windows": len(tr[2]), "val_windows": len(va[2])}
    for name, pred in (("head", va[1].argmax(1)), ("rhythm", rhythm_only.probs(va[0]).argmax(1))):
        report[f"val_{name}_exact"] = round(float((pred == va[2]).mean()), 4)
        report[f"val_{name}_family"] = round(family_accuracy(pred, va[2]), 4)

    def score(fusion) -> dict:
        pred, twin = decide(fusion, va[0], va[1]), decide(fusion, va[3], va[4])
        return {
            "exact": round(float((pred == va[2]).mean()), 4),
            "family": round(family_accuracy(pred, va[2]), 4),
            "touch_agreement": round(float((pred == twin).mean()), 4),
        }

    # The consistency weight is chosen on the val split, never on a test set.
    lam, fused, rows = sweep_consistency(
        args.consistency,
        lambda c: MeterFusion.fit(tr[0], tr[2], meters, tr[1], twins=(tr[3], tr[4]), consistency=c),
        score,
        "touch_agreement",
    )
    report["temperature"] = round(fused.calibrate(va[0], va[2], va[1]), 4)  # calibrated on val
    report.update({f"val_fused_{k}": v for k, v in rows[lam].items()})
    report["consistency"] = lam
    report["consistency_sweep"] = {f"{k:g}": v for k, v in rows.items()}
    save_fusion(fused, report, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
