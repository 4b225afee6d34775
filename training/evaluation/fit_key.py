"""Fit the key fusion (typemoe/key_fusion.py) for an exported model and save it in the model directory.

    python -m typemoe.training.evaluation.fit_key --model MODEL_DIR --data SHARDS [--data SHARDS ...] [--max-pieces 4000]

Samples are windows of the key-labelled pieces of the train split, humanized (training/learn/humanize.py) and
transposed by a random shift in -5..+6 (the label moves with them), of random length (a few bars up to a
full context), so the fusion sees what the bridge hears early in a performance as well as whole pieces,
in every key. For each window: the pitch-class histograms of its notes, and the model's key-head
log-probabilities at its last token. Each window is also transposed again (a twin), and the fit pays for
an answer that does not turn with it (KeyFusion.fit's consistency weight, picked on the val split: the
profiles turn exactly, the head nearly). The fit is checked on the val split, sampled the same way, beside
the profiles alone (each, and fitted together) and the head alone; the numbers go into the saved file's
`info` and are printed.
"""

from __future__ import annotations

import sys

import numpy as np

from typemoe.key_fusion import KeyFusion, KeyReader, profile_features, rotated_profiles
from typemoe.training.evaluation.baselines import KEY_BASELINES
from typemoe.training.evaluation.fit_meter import (
    fit_parser,
    save_fusion,
    sweep_consistency,
    train_val_samples,
)
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


def window_samples(pieces, vocab, model, *, max_pieces: int, seed: int, context: int, twins: bool = False):
    """(histograms (N, 2, 12), head log-probs (N, 24), labels (N,)) of one window per key-labelled piece;
    with `twins`, also (histograms, head log-probs, shifts (N,)) of each window transposed again by a
    random shift in -5..+6 other than 0."""
    rng = np.random.default_rng(seed)
    twin_rng = np.random.default_rng((seed, 0x7717))  # its own stream: the windows do not depend on twins
    hum, tr = Humanizer(vocab), Transposer(vocab)
    reader = KeyReader(None, vocab)
    key = pieces.label("key")
    idx = np.flatnonzero(key >= 0)
    if len(idx) > max_pieces:
        idx = np.sort(rng.choice(idx, size=max_pieces, replace=False))
    bar = vocab.id("Bar_None")
    session = model.session()

    def read(ids):
        session.reset()
        out = session.feed([vocab.bos_id, *ids.tolist()])
        return reader.hists(ids), np.log(np.maximum(out.key_probs, 1e-9))

    Hs, L, Y, H2, L2, S = [], [], [], [], [], []
    for i in idx:
        toks = pieces.tokens[i]
        bars = np.flatnonzero(toks == bar)
        if bars.size == 0:
            continue
        start = int(rng.choice(bars[: max(1, len(bars) // 2)]))
        length = int(rng.integers(32, context))
        ids, label, _ = tr.transpose(toks[start : start + length], int(rng.integers(-5, 7)), int(key[i]))
        ids = hum(ids, rng)[: context - 1]
        if reader.hists(ids)[1].sum() < 4:
            continue
        h, lp = read(ids)
        Hs.append(h)
        L.append(lp)
        Y.append(label)
        if twins:
            shift = int(twin_rng.choice([s for s in range(-5, 7) if s != 0]))
            h2, lp2 = read(tr.transpose(ids, shift)[0])
            H2.append(h2)
            L2.append(lp2)
            S.append(shift)
    out = (np.asarray(Hs), np.asarray(L), np.asarray(Y))
    return (*out, np.asarray(H2), np.asarray(L2), np.asarray(S)) if twins else out


def turned(key: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """(N,) key classes moved by (N,) semitone shifts (mode kept)."""
    key, shifts = np.asarray(key), np.asarray(shifts)
    return (key % 12 + shifts) % 12 + 12 * (key // 12)


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
    tr, va = train_val_samples(window_samples, pieces, model, args)
    profiles, names = music21_profiles()
    profiles_only = KeyFusion.fit(profiles, names, tr[0], tr[2])
    report: dict = {"train_windows": len(tr[2]), "val_windows": len(va[2])}
    rot = rotated_profiles(profiles)
    for j, name in enumerate(names):  # each profile alone, on the duration histogram (music21's reading)
        pred = np.asarray([profile_features(h, rot)[:, j].argmax() for h in va[0]])
        report[f"val_{name}"] = round(float((pred == va[2]).mean()), 4)
    for name, pred in (
        ("head", va[1].argmax(1)),
        ("profiles", np.asarray([profiles_only.probs(h).argmax() for h in va[0]])),
    ):
        report[f"val_{name}"] = round(float((pred == va[2]).mean()), 4)

    def score(fusion) -> dict:
        pred = np.asarray([fusion.probs(h, lp).argmax() for h, lp in zip(va[0], va[1])])
        twin = np.asarray([fusion.probs(h, lp).argmax() for h, lp in zip(va[3], va[4])])
        return {
            "exact": round(float((pred == va[2]).mean()), 4),
            "turns": round(float((turned(pred, va[5]) == twin).mean()), 4),
        }

    # The consistency weight is chosen on the val split, never on a test set.
    lam, fused, rows = sweep_consistency(
        args.consistency,
        lambda c: KeyFusion.fit(
            profiles, names, tr[0], tr[2], tr[1], twins=(tr[3], tr[4], tr[5]), consistency=c
        ),
        score,
        "turns",
    )
    report["val_fused"] = rows[lam]["exact"]
    report["val_fused_turns"] = rows[lam]["turns"]
    report["consistency"] = lam
    report["consistency_sweep"] = {f"{k:g}": v for k, v in rows.items()}
    report["weights"] = [round(float(w), 3) for w in fused.weights]
    report["minor_bias"] = round(fused.minor_bias, 3)
    save_fusion(fused, report, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
