"""The metrics of `typemoe eval`, as small pure functions over numpy arrays.

Torch-free on purpose: the same code scores a PyTorch checkpoint and an exported ONNX model.

- hits_at_k: top-k next-token accuracy under teacher forcing (continuation Hits@1, Hits@5).
- bleu2 / corpus_bleu2: BLEU with 1- and 2-gram precisions, uniform weights and the brevity penalty
  (Papineni et al. 2002), on token strings. No smoothing: a zero precision gives BLEU 0.
- accuracy, macro_f1, confusion_matrix: key/meter heads, classification heads, baselines.
- mirex / mirex_breakdown: the MIREX weighted key score (same 1.0, fifth 0.5, relative 0.3,
  parallel 0.2) and the share of each of the five relations.
- mean_std: the spread of a metric over seeds.
- paired_gain: the difference of two token accuracies on the same pieces, with a bootstrap interval over
  pieces (infilling against continuation on the same bars).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence

import numpy as np

from typemoe import analysis

MIREX_RELATIONS = ("same", "fifth", "relative", "parallel", "other")
_RELATION_OF_WEIGHT = {1.0: "same", 0.5: "fifth", 0.3: "relative", 0.2: "parallel", 0.0: "other"}


def hits_at_k(logits: np.ndarray, targets: Sequence[int] | np.ndarray, k: int) -> float:
    """Share of positions whose target id is among the k highest logits (teacher forcing).

    Args:
        logits: (N, V) scores for the next token at N positions (any monotone transform: probs, logits).
        targets: (N,) the true next ids.
        k: 1 = exact next-token accuracy, 5 = Hits@5.
    Returns:
        A fraction in [0, 1]; NaN when N == 0. The rank of a target is the number of ids with a strictly
        higher score, so ties are resolved in the target's favour (reproducible, unlike topk's order).
    Raises:
        ValueError: on mismatched shapes, k < 1, or target ids outside the vocabulary.
    """
    logits = np.asarray(logits)
    targets = np.asarray(targets, dtype=np.int64)
    if logits.ndim != 2 or targets.shape != (logits.shape[0],):
        raise ValueError(f"need logits (N, V) and targets (N,), got {logits.shape} and {targets.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(targets) == 0:
        return math.nan
    if targets.min() < 0 or targets.max() >= logits.shape[1]:
        raise ValueError(
            f"target ids span {targets.min()}..{targets.max()}, vocabulary has {logits.shape[1]}"
        )
    target_score = logits[np.arange(len(targets)), targets]  # (N,)
    rank = (logits > target_score[:, None]).sum(axis=1)  # (N,)
    return float((rank < k).mean())


def _ngrams(seq: Sequence[Hashable], n: int) -> Counter:
    return Counter(tuple(seq[i : i + n]) for i in range(len(seq) - n + 1))


def bleu_counts(candidate: Sequence[Hashable], reference: Sequence[Hashable], max_n: int = 2) -> np.ndarray:
    """Sufficient statistics of one pair: [clipped matches_1..n, candidate n-grams_1..n, len(cand), len(ref)]."""
    stats = []
    for n in range(1, max_n + 1):
        cand, ref = _ngrams(candidate, n), _ngrams(reference, n)
        stats.append(sum(min(c, ref[g]) for g, c in cand.items()))
    for n in range(1, max_n + 1):
        stats.append(max(len(candidate) - n + 1, 0))
    return np.asarray(stats + [len(candidate), len(reference)], dtype=np.int64)


def _bleu_from_counts(stats: np.ndarray, max_n: int) -> float:
    matches, totals = stats[:max_n], stats[max_n : 2 * max_n]
    c, r = int(stats[-2]), int(stats[-1])
    if c == 0 or np.any(matches == 0):
        return 0.0  # a zero precision makes the geometric mean 0 (no smoothing)
    log_p = np.log(matches / totals).mean()  # uniform weights 1/max_n
    bp = 1.0 if c > r else math.exp(1.0 - r / c)
    return float(bp * math.exp(log_p))


def bleu2(candidate: Sequence[Hashable], reference: Sequence[Hashable]) -> float:
    """Sentence BLEU-2 of one candidate against one reference.

    BLEU-2 = BP * exp(1/2 log p1 + 1/2 log p2), p_n = clipped n-gram precision, BP = 1 if the candidate is
    longer than the reference else exp(1 - r/c). Tokens are compared as strings (or any hashable).
    """
    return _bleu_from_counts(bleu_counts(candidate, reference, 2), 2)


def corpus_bleu2(pairs: Sequence[tuple[Sequence[Hashable], Sequence[Hashable]]]) -> float:
    """Corpus BLEU-2 (Papineni et al.): clipped counts and lengths summed over all (candidate, reference)
    pairs before the precisions and the brevity penalty are taken. NaN for no pairs."""
    if not pairs:
        return math.nan
    total = sum(bleu_counts(c, r, 2) for c, r in pairs)
    return _bleu_from_counts(total, 2)


def accuracy(pred: Sequence, true: Sequence) -> float:
    """Share of exact matches; NaN when empty."""
    if len(pred) != len(true):
        raise ValueError(f"pred has {len(pred)} items, true has {len(true)}")
    if len(true) == 0:
        return math.nan
    return float(np.mean([p == t for p, t in zip(pred, true)]))


def macro_f1(pred: Sequence, true: Sequence) -> float:
    """Unweighted mean of the per-class F1 over every class seen in `true` or `pred` (sklearn's convention).

    A class predicted but never true has F1 0 and does count; NaN when empty.
    """
    if len(pred) != len(true):
        raise ValueError(f"pred has {len(pred)} items, true has {len(true)}")
    if len(true) == 0:
        return math.nan
    f1s = []
    for c in sorted(set(true) | set(pred), key=str):
        tp = sum(p == c and t == c for p, t in zip(pred, true))
        fp = sum(p == c and t != c for p, t in zip(pred, true))
        fn = sum(p != c and t == c for p, t in zip(pred, true))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s))


def confusion_matrix(pred: Sequence[int], true: Sequence[int], n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts, rows = true class, columns = predicted class."""
    if len(pred) != len(true):
        raise ValueError(f"pred has {len(pred)} items, true has {len(true)}")
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    for p, t in zip(pred, true):
        if not (0 <= p < n_classes and 0 <= t < n_classes):
            raise ValueError(f"class ids must be in 0..{n_classes - 1}, got pred {p} true {t}")
        cm[t, p] += 1
    return cm


def mirex(pred: Sequence[int | str], true: Sequence[int | str]) -> float:
    """Mean MIREX key weight (same 1.0, fifth 0.5, relative 0.3, parallel 0.2, else 0); NaN when empty."""
    if len(pred) != len(true):
        raise ValueError(f"pred has {len(pred)} items, true has {len(true)}")
    if len(true) == 0:
        return math.nan
    return float(np.mean([analysis.mirex_score(p, t) for p, t in zip(pred, true)]))


def mirex_breakdown(pred: Sequence[int | str], true: Sequence[int | str]) -> dict[str, float]:
    """Share of each relation of MIREX_RELATIONS between predicted and true keys (sums to 1)."""
    counts = Counter(_RELATION_OF_WEIGHT[analysis.mirex_score(p, t)] for p, t in zip(pred, true))
    n = max(len(true), 1)
    return {rel: counts[rel] / n for rel in MIREX_RELATIONS}


def meter_family_accuracy(pred: Sequence[int | str], true: Sequence[int | str]) -> float:
    """Share of pieces whose predicted meter has the true one's family (duple vs triple/compound vs other)."""
    return accuracy([analysis.meter_family(p) for p in pred], [analysis.meter_family(t) for t in true])


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0.0 for a single value) of a metric over seeds/models."""
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0


def paired_gain(
    hits_a: Sequence[float],
    hits_b: Sequence[float],
    tokens: Sequence[int],
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(gain, low, high): gain = (sum hits_a - sum hits_b) / sum tokens, two token accuracies scored on the
    same pieces (hits_a[i], hits_b[i]: correct tokens of piece i under each reading, out of tokens[i]), and
    its 95 % percentile interval from resampling whole pieces with replacement (the tokens of a piece are
    not independent, so pieces are the unit). NaNs without tokens.

    Raises:
        ValueError: on lengths that differ, negative counts, or hits above a piece's tokens.
    """
    a, b, n = (np.asarray(x, dtype=np.float64) for x in (hits_a, hits_b, tokens))
    if not (a.shape == b.shape == n.shape) or a.ndim != 1:
        raise ValueError(f"need three (P,) arrays, got {a.shape}, {b.shape} and {n.shape}")
    if (n < 0).any() or (a < 0).any() or (b < 0).any() or (a > n).any() or (b > n).any():
        raise ValueError("hits must lie in 0..tokens for every piece")
    if n.sum() == 0:
        return math.nan, math.nan, math.nan
    d = a - b
    rows = np.random.default_rng(seed).integers(0, len(n), size=(n_boot, len(n)))  # (n_boot, P)
    tok = n[rows].sum(axis=1)
    boot = d[rows].sum(axis=1) / np.where(tok > 0, tok, 1.0)
    lo, hi = np.percentile(boot[tok > 0], [2.5, 97.5])
    return float(d.sum() / n.sum()), float(lo), float(hi)
