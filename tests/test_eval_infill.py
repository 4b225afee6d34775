"""`typemoe eval --groups infill`: the gain of infilling over continuation on the same bars comes with a
bootstrap interval over pieces, and beside it the same middles read with another piece's suffix."""

from __future__ import annotations

import types

import numpy as np
import pytest
import symusic

from typemoe import infill
from typemoe.training.evaluation import metrics

pytestmark = pytest.mark.onnx


def test_paired_gain_is_the_token_accuracy_difference_with_a_piece_bootstrap():
    tokens = [10, 20, 30, 40]
    assert metrics.paired_gain([5, 5, 5, 5], [5, 5, 5, 5], tokens) == (0.0, 0.0, 0.0)
    gain, lo, hi = metrics.paired_gain([6, 12, 18, 24], [5, 10, 15, 20], tokens)  # 0.1 of every piece
    assert gain == pytest.approx(0.1) and lo == pytest.approx(0.1) and hi == pytest.approx(0.1)
    gain, lo, hi = metrics.paired_gain([10, 0, 30, 0], [0, 20, 0, 40], tokens)  # one way, then the other
    assert gain == pytest.approx((40 - 60) / 100) and lo < gain < hi and lo < 0 < hi
    rng = np.random.default_rng(0)
    n = rng.integers(20, 60, size=200)
    b = rng.binomial(n, 0.7)
    a = np.minimum(b + rng.binomial(n, 0.03), n)  # a small, steady gain: the interval excludes 0
    gain, lo, hi = metrics.paired_gain(a, b, n)
    assert 0 < lo < gain < hi
    with pytest.raises(ValueError, match="0..tokens"):
        metrics.paired_gain([11], [0], [10])
    assert np.isnan(metrics.paired_gain([], [], [])[0])


def test_another_suffix_is_cut_before_a_bar_like_the_true_one():
    from typemoe.training.evaluation.eval_infill import _cut_like

    bar = 4
    other = [bar, 1, 2, bar, 3, 5, bar, 6]
    assert _cut_like(other, 5, bar) == [bar, 1, 2]
    assert _cut_like(other, 20, bar) == other
    assert _cut_like([bar, 1, 2, 3, 5], 3, bar) == [bar, 1, 2]  # no Bar inside: cut at the length


def _tune(seed: int, n_bars: int = 8) -> symusic.Score:
    rng = np.random.default_rng(seed)
    score = symusic.Score(480)
    track = symusic.Track("melody", 0, False)
    for beat in range(4 * n_bars):
        track.notes.append(symusic.Note(beat * 480, 480, int(60 + rng.integers(0, 12)), 80))
    score.tracks.append(track)
    return score


def test_infill_metrics_report_the_gain_and_the_other_suffix_reading(tmp_path):
    from export_fixtures import make_tiny_model_dir

    from typemoe.training.evaluation.eval_data import EvalPiece
    from typemoe.training.evaluation.eval_infill import infill_metrics
    from typemoe.training.evaluation.eval_model import OnnxModel
    from typemoe.training.evaluation.eval_report import Report

    model = OnnxModel(make_tiny_model_dir(tmp_path / "model"))
    pieces = [
        EvalPiece(id=f"t{i}", source="synthetic", tokens=np.asarray(model.vocab.encode_score(_tune(i))))
        for i in range(4)
    ]
    report = Report()
    infill_metrics(model, pieces, types.SimpleNamespace(seed=0), 256, report)
    r = report.results
    assert r["infill.n"] == 4 and r["infill.tokens"] > 0
    assert r["infill.suffix_weight"] == infill.SUFFIX_WEIGHT and 0 <= r["infill.fim.hits@1"] <= 1
    assert r["infill.gain.hits@1"] == pytest.approx(r["infill.hits@1"] - r["infill.continuation.hits@1"])
    assert r["infill.suffix_gain.hits@1"] == pytest.approx(
        r["infill.hits@1"] - r["infill.other_suffix.hits@1"]
    )
    for key in ("gain", "suffix_gain"):
        lo, hi = r[f"infill.{key}.ci95"]
        assert lo - 1e-4 <= r[f"infill.{key}.hits@1"] <= hi + 1e-4  # the interval is rounded to 4 places


def test_the_teacher_forced_reading_rules_out_infill_end_exactly_where_the_span_grammar_does():
    """forbid_early_end against typemoe.infill.SpanGrammar at every position of real middles: Infill_End
    is kept exactly where the grammar allows it (the last bar open, after a Bar or a Duration)."""
    from typemoe.grammar_tables import tables_of
    from typemoe.training.evaluation.eval_infill import forbid_early_end
    from typemoe.vocab import TICKS_PER_BAR, TypedVocab

    vocab = TypedVocab.default()
    t, ids = tables_of(vocab), infill.InfillIds.of(vocab, where="the package vocabulary")
    music = np.asarray(vocab.encode_score(_tune(3)))
    at = np.flatnonzero(music == vocab.id("Bar_None"))
    checked = 0
    for a, n in ((1, 1), (2, 2), (1, 3)):
        middle = music[at[a] : at[a + n]].tolist()
        context = [vocab.bos_id, ids.suffix, *music[at[a + n] :], ids.span(n), *music[: at[a]], ids.middle]
        kept = np.isfinite(forbid_early_end(np.zeros((len(middle), vocab.size)), middle, n, t, ids.end))
        assert kept[:, : ids.end].all() and kept[:, ids.end + 1 :].all()  # only Infill_End is touched
        grammar = infill.SpanGrammar(t, ids, n_bars=n, span_ticks=n * TICKS_PER_BAR, bars0=0, start_beat=0.0)
        for j in range(len(middle)):
            fed = [*context, *middle[:j]]
            session = types.SimpleNamespace(
                bars=int(t.is_bar[middle[:j]].sum()), tokens=fed, beat_now=lambda: 0.0
            )
            allowed = np.zeros(vocab.size, dtype=bool)
            grammar(session, np.zeros(vocab.size), allowed)
            assert kept[j, ids.end] == allowed[ids.end], (a, n, j, vocab.token(fed[-1]))
            checked += int(allowed[ids.end])
    assert checked >= 3  # the rule is seen to allow the end, not only to forbid it
