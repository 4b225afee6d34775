"""Fit the emotion fusion (typemoe/emotion_fusion.py) for an exported model with a class head; save it in the
model directory.

    python -m typemoe.training.evaluation.fit_emotion --model MODEL_DIR [--data shared:emopia] \
        [--ood shared:vgmidi] [--window 1024]

Each piece is read as `typemoe eval` reads it: its first `window` tokens (BOS included), the class head
pooled over them, the notes' features over the same tokens. The L2 weight is picked on the val split from
L2_GRID, then the fusion is fitted on train + val and scored on the test split, beside the head alone, and on
every --ood source (all its emotion-labelled pieces: a source never trained on). The numbers go into the
saved file's `info` and are printed.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from typemoe.emotion_fusion import EmotionFusion
from typemoe.training.evaluation.eval_data import load_eval_data
from typemoe.training.evaluation.eval_report import _window

L2_GRID = (0.0, 1e-3, 1e-2, 3e-2, 1e-1, 3e-1)


def samples(model, src: str, split: str, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fusion inputs (N, F + C), head probs (N, C), labels (N,)) of the emotion-labelled pieces of a split."""
    data = load_eval_data(src, vocab=model.vocab, split=split)
    x, head, y = [], [], []
    for piece in data.pieces:
        if piece.emotion not in model.class_names:
            continue
        ids = _window(piece, model.vocab, window)
        notes = model.emotion.remi.notes(np.asarray(ids, dtype=np.int64))[0]
        if len(notes) < 2:
            continue
        probs = np.asarray(model.session().feed(list(ids)).class_probs, dtype=np.float64)
        x.append(model.emotion.fusion_inputs(notes, probs))
        head.append(probs)
        y.append(model.class_names.index(piece.emotion))
    if not y:
        raise SystemExit(f"{src} has no emotion-labelled pieces in its {split} split")
    return np.asarray(x), np.asarray(head), np.asarray(y)


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    return float((probs.argmax(axis=1) == y).mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="exported model directory with a class head")
    ap.add_argument("--data", default="shared:emopia", help="labelled source with train/val/test splits")
    ap.add_argument("--ood", action="append", default=[], help="sources never trained on, scored whole")
    ap.add_argument("--window", type=int, default=1024)
    args = ap.parse_args(argv)

    from typemoe.export.runtime import OrtModel

    model = OrtModel(args.model)
    if not model.class_names:
        raise SystemExit(f"{args.model} has no class head")
    sets = {s: samples(model, args.data, s, args.window) for s in ("train", "val", "test")}

    def fitted(names: tuple[str, ...], l2: float) -> EmotionFusion:
        x = np.concatenate([sets[s][0] for s in names])
        return EmotionFusion.fit(x, np.concatenate([sets[s][2] for s in names]), model.class_names, l2)

    def scored(fusion: EmotionFusion, s: tuple[np.ndarray, np.ndarray, np.ndarray]) -> float:
        return accuracy(np.stack([fusion.probs(x[: -len(h)], h) for x, h in zip(s[0], s[1])]), s[2])

    val = {l2: scored(fitted(("train",), l2), sets["val"]) for l2 in L2_GRID}
    l2 = max(L2_GRID, key=lambda k: (val[k], k))  # ties: the stronger penalty
    fusion = fitted(("train", "val"), l2)
    info = {
        "data": args.data,
        "window": args.window,
        "l2": l2,
        "val_accuracy_by_l2": {str(k): round(v, 4) for k, v in val.items()},
        "n": {s: len(sets[s][2]) for s in sets},
        "test_accuracy": round(scored(fusion, sets["test"]), 4),
        "test_accuracy_head": round(accuracy(sets["test"][1], sets["test"][2]), 4),
    }
    for src in args.ood:
        s = samples(model, src, "all", args.window)
        info[f"ood.{src}"] = {
            "n": len(s[2]),
            "accuracy": round(scored(fusion, s), 4),
            "accuracy_head": round(accuracy(s[1], s[2]), 4),
            "majority": round(float(np.bincount(s[2]).max() / len(s[2])), 4),
        }
    fusion.info = info
    path = fusion.save(args.model)
    print(f"saved {path}")
    for k, v in info.items():
        print(f"  {k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
