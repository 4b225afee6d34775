"""Metrics of training/evaluation/metrics.py on hand-made cases whose answers are worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from typemoe.training.evaluation import metrics


def test_hits_at_k_known_ranks():
    # target ranks: 0 (best), 1, 4, 5 -> hits@1 = 1/4, hits@5 = 3/4
    logits = np.array(
        [
            [9.0, 1, 2, 3, 4, 5, 0],
            [1.0, 9, 8, 0, 0, 0, 0],
            [6.0, 5, 4, 3, 2, 1, 0],  # target 4 has value 2: ids 0..3 beat it -> rank 4
            [6.0, 5, 4, 3, 2, 1, 0],  # target 5 -> rank 5
        ]
    )
    targets = [0, 2, 4, 5]  # row 1: target 2 (value 8) is beaten by id 1 only
    assert metrics.hits_at_k(logits, targets, 1) == 0.25
    assert metrics.hits_at_k(logits, targets, 5) == 0.75
    assert metrics.hits_at_k(logits, targets, 7) == 1.0


def test_hits_at_k_ties_and_errors():
    assert metrics.hits_at_k(np.zeros((3, 4)), [0, 1, 3], 1) == 1.0  # ties go to the target
    assert math.isnan(metrics.hits_at_k(np.zeros((0, 4)), [], 1))
    with pytest.raises(ValueError, match="vocabulary has 4"):
        metrics.hits_at_k(np.zeros((1, 4)), [4], 1)
    with pytest.raises(ValueError, match="k must be"):
        metrics.hits_at_k(np.zeros((1, 4)), [0], 0)


def test_bleu2_identical_and_zero_overlap():
    ref = ["Bar", "Position_0", "Pitch_60", "Velocity_79", "Duration_1.0.4"]
    assert metrics.bleu2(ref, ref) == pytest.approx(1.0)
    assert metrics.bleu2(["Pitch_61"] * 5, ref) == 0.0
    assert metrics.bleu2([], ref) == 0.0


def test_bleu2_partial_overlap():
    # unigrams 4/4, bigrams: {ab, bc, cd} vs {ab, bd, dc} -> 1/3; same length -> BP 1
    assert metrics.bleu2(list("abcd"), list("abdc")) == pytest.approx(math.sqrt(1 / 3))
    # clipping: "a a b" vs "a b c": p1 = (1 + 1)/3, p2 = {aa, ab} vs {ab, bc} -> 1/2
    assert metrics.bleu2(list("aab"), list("abc")) == pytest.approx(math.sqrt(2 / 3 * 1 / 2))
    # repeated unigram with no bigram match: p2 = 0 -> 0 (no smoothing)
    assert metrics.bleu2(list("aaaa"), list("abcd")) == 0.0


def test_bleu2_brevity_penalty():
    # a perfect prefix of half the length: p1 = p2 = 1, BP = exp(1 - 4/2)
    assert metrics.bleu2(list("ab"), list("abcd")) == pytest.approx(math.exp(-1))
    # longer than the reference: no penalty, precision drops instead (p1 = 4/6, p2 = 3/5)
    assert metrics.bleu2(list("abcdxy"), list("abcd")) == pytest.approx(math.sqrt(4 / 6 * 3 / 5))


def test_corpus_bleu2_pools_counts():
    pairs = [(list("abcd"), list("abcd")), (list("ab"), list("abcd"))]
    # matches 6/6 unigrams, 4/4 bigrams; c = 6, r = 8 -> BP exp(1 - 8/6)
    assert metrics.corpus_bleu2(pairs) == pytest.approx(math.exp(1 - 8 / 6))
    assert math.isnan(metrics.corpus_bleu2([]))


@pytest.mark.parametrize(
    "pred, true, weight, relation",
    [
        ("C major", "C major", 1.0, "same"),
        ("G major", "C major", 0.5, "fifth"),
        ("F major", "C major", 0.5, "fifth"),
        ("A minor", "C major", 0.3, "relative"),
        ("C major", "A minor", 0.3, "relative"),
        ("C minor", "C major", 0.2, "parallel"),
        ("E minor", "A minor", 0.5, "fifth"),
        ("F# major", "C major", 0.0, "other"),
        ("E minor", "C major", 0.0, "other"),
    ],
)
def test_mirex_five_relations(pred, true, weight, relation):
    assert metrics.mirex([pred], [true]) == pytest.approx(weight)
    assert metrics.mirex_breakdown([pred], [true])[relation] == 1.0


def test_mirex_mean_over_pieces():
    pred = ["C major", "G major", "A minor", "C minor", "B major"]
    true = ["C major"] * 5
    assert metrics.mirex(pred, true) == pytest.approx((1 + 0.5 + 0.3 + 0.2 + 0) / 5)
    assert sum(metrics.mirex_breakdown(pred, true).values()) == pytest.approx(1.0)


def test_accuracy_macro_f1_confusion():
    true, pred = [0, 0, 1, 1], [0, 1, 1, 1]
    assert metrics.accuracy(pred, true) == 0.75
    # class 0: tp 1 fp 0 fn 1 -> 2/3; class 1: tp 2 fp 1 fn 0 -> 4/5
    assert metrics.macro_f1(pred, true) == pytest.approx((2 / 3 + 4 / 5) / 2)
    # a class predicted but never true counts with F1 0
    assert metrics.macro_f1(["a", "c"], ["a", "b"]) == pytest.approx((1 + 0 + 0) / 3)
    cm = metrics.confusion_matrix(pred, true, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]
    with pytest.raises(ValueError, match="0..2"):
        metrics.confusion_matrix([3], [0], 3)


def test_meter_family_and_mean_std():
    assert metrics.meter_family_accuracy(["6/8", "2/4", "3/4"], ["3/4", "4/4", "2/4"]) == pytest.approx(2 / 3)
    assert metrics.mean_std([0.5]) == (0.5, 0.0)
    mean, std = metrics.mean_std([0.4, 0.6])
    assert mean == pytest.approx(0.5) and std == pytest.approx(math.sqrt(0.02))
