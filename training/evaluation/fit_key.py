"""Fit the key fusion (typemoe/key_fusion.py) for an exported model and save it in the model directory.

    python -m typemoe.training.evaluation.fit_key --model MODEL_DIR --data SHARDS [--data SHARDS ...] [--max-pieces 4000]

Samples are windows of the key-labelled pieces of the train split, humanized (training/learn/humanize.py) and
transposed by a random shift in -5..+6 (the label moves with them), of random length (a few bars up to a
full context), so the fusion sees what the bridge hears early in a performance as well as whole pieces,
in every key. For each window: the pitch-class histograms of its notes, and the model's key-head
log-probabilities at its last token. The fit is checked on the val split, sampled the same way, beside
the profiles alone (each, and fitted together) and the head alone; the numbers go into the saved file's
`info` and are printed.
"""

from __future__ import annotations

import sys

import numpy as np

from typemoe.key_fusion import KeyFusion, KeyReader, profile_features, rotated_profiles
from typemoe.training.evaluation.baselines import KEY_BASELINES
from typemoe.training.evaluation.fit_meter import fit_parser, save_fusion
from typemoe.training.learn.augment import Transposer
from typemoe.training.learn.data import load_pieces
from typemoe.training.learn.humanize import Humanizer


def music21_profiles() -> tuple[np.ndarray, tuple[str, ...]]:
    """(P, 2, 12) [major, minor] weights of music21's key profiles (the baselines' four), and their names."""
    from music21.analysis import discrete

    names = tuple(KEY_BASELINES)
    out = []
    for name in names:
        a = getattr(discrete, KEY_BASELINES[name])()
        out.append([a.getWeights("major"), a.getWeights("minor")])
    return np.asarray(out, dtype=np.float64), names


def window_samples(pieces, vocab, model, *, max_pieces: int, seed: int, context: int):
    """(histograms (N, 2, 12), head log-probs (N, 24), labels (N,)) of one window per key-labelled piece."""
    rng = np.random.default_rng(seed)
    hum, tr = Humanizer(vocab), Transposer(vocab)
    reader = KeyReader(None, vocab)
    key = pieces.label("key")
    idx = np.flatnonzero(key >= 0)
    if len(idx) > max_pieces:
        idx = np.sort(rng.choice(idx, size=max_pieces, replace=False))
    bar = vocab.id("Bar_None")
    session = model.session()
    Hs, L, Y = [], [], []
    for i in idx:
        toks = pieces.tokens[i]
        bars = np.flatnonzero(toks == bar)
        if bars.size == 0:
            continue
        start = int(rng.choice(bars[: max(1, len(bars) // 2)]))
        length = int(rng.integers(32, context))
        ids, label, _ = tr.transpose(toks[start : start + length], int(rng.integers(-5, 7)), int(key[i]))
        ids = hum(ids, rng)[: context - 1]
        h = reader.hists(ids)
        if h[1].sum() < 4:
            continue
        session.reset()
        out = session.feed([vocab.bos_id, *ids.tolist()])
        Hs.append(h)
        L.append(np.log(np.maximum(out.key_probs, 1e-9)))
        Y.append(label)
    return np.asarray(Hs), np.asarray(L), np.asarray(Y)


def main(argv: list[str] | None = None) -> int:
    from typemoe import analysis
    from typemoe.export.runtime import OrtModel

    args = fit_parser("python -m typemoe.training.evaluation.fit_key", __doc__, 4000).parse_args(argv)
    try:
        model = OrtModel(args.model)
        if list(model.key_names) != list(analysis.KEYS):
            raise ValueError(
                f"{args.model}: key classes {model.key_names[:3]}... are not typemoe.analysis.KEYS"
            )
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
    profiles, names = music21_profiles()
    profiles_only = KeyFusion.fit(profiles, names, tr[0], tr[2])
    fused = KeyFusion.fit(profiles, names, tr[0], tr[2], tr[1])
    report = {"train_windows": len(tr[2]), "val_windows": len(va[2])}
    rot = rotated_profiles(profiles)
    for j, name in enumerate(names):  # each profile alone, on the duration histogram (music21's reading)
        pred = np.asarray([profile_features(h, rot)[:, j].argmax() for h in va[0]])
        report[f"val_{name}"] = round(float((pred == va[2]).mean()), 4)
    for name, pred in (
        ("head", va[1].argmax(1)),
        ("profiles", np.asarray([profiles_only.probs(h).argmax() for h in va[0]])),
        ("fused", np.asarray([fused.probs(h, lp).argmax() for h, lp in zip(va[0], va[1])])),
    ):
        report[f"val_{name}"] = round(float((pred == va[2]).mean()), 4)
    report["weights"] = [round(float(w), 3) for w in fused.weights]
    report["minor_bias"] = round(fused.minor_bias, 3)
    save_fusion(fused, report, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
