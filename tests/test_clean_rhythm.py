"""--clean-rhythm on real pieces: a window whose rhythm the humanizer redrew keeps its heads' and its
pitches' targets and loses only its Bar, Position and Duration targets; every other window is untouched."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import music21_scores

from typemoe import analysis
from typemoe.training.learn.data import Pieces, TokenOps, collate, make_sample
from typemoe.training.learn.humanize import HumanizeConfig, Humanizer
from typemoe.vocab import FAMILIES

N = 24


@pytest.fixture(scope="module")
def pieces(vocab):
    tokens = [np.asarray(vocab.encode_score(s), dtype=np.int64) for _, s in music21_scores(N)]
    return Pieces(
        ids=[f"p{i}" for i in range(len(tokens))],
        tokens=tokens,
        labels={"key": np.full(len(tokens), -1), "meter": np.full(len(tokens), -1)},
        label_names={"key": analysis.KEYS, "meter": analysis.METERS},
        split=np.array(["train"] * len(tokens), dtype=object),
    )


def _samples(vocab, pieces, clean: bool, cfg: HumanizeConfig | None = None):
    ops, h = TokenOps(vocab), Humanizer(vocab, cfg)
    return [
        make_sample(
            pieces, i, np.random.default_rng(i), ops=ops, seq_len=256, humanizer=h, clean_rhythm=clean
        )
        for i in range(len(pieces))
    ]


def test_humanize_says_when_it_redrew_the_rhythm(vocab, pieces):
    off = dict(p_timing=0.0, p_articulation=0.0)
    for i, ids in enumerate(pieces.tokens[:8]):
        plain = Humanizer(vocab, HumanizeConfig(**off))
        out, redrawn = plain.humanize(ids[:300], np.random.default_rng(i))
        assert not redrawn
        assert np.array_equal(out, plain(ids[:300], np.random.default_rng(i)))  # the same draw as __call__
        out, redrawn = Humanizer(vocab, HumanizeConfig(p_timing=1.0)).humanize(
            ids[:300], np.random.default_rng(i)
        )
        assert redrawn


def test_clean_rhythm_drops_only_the_redrawn_windows_rhythm_targets(vocab, pieces):
    ops = TokenOps(vocab)
    clean, plain = _samples(vocab, pieces, True), _samples(vocab, pieces, False)
    family = np.asarray(vocab.family_of)
    rhythm = [FAMILIES.index(f) for f in ("Bar", "Position", "Duration")]
    for a, b in zip(clean, plain, strict=True):
        assert np.array_equal(a.ids, b.ids) and a.head_from == b.head_from  # the same window, the same heads
        assert b.rhythm_targets
    redrawn = [not s.rhythm_targets for s in clean]
    assert 0 < sum(redrawn) < len(clean)  # HumanizeConfig's default redraws some windows, not all
    ta, tb = collate(clean, ops).targets.numpy(), collate(plain, ops).targets.numpy()
    for row, was in enumerate(redrawn):
        kept, full = ta[row], tb[row]
        if not was:
            assert np.array_equal(kept, full)
            continue
        dropped = (full >= 0) & (kept < 0)
        assert dropped.any()
        assert np.isin(family[full[dropped]], rhythm).all()  # only Bar, Position and Duration go
        left = full >= 0
        assert np.array_equal(kept[left & ~dropped], full[left & ~dropped])
        assert not np.isin(family[full[left & ~dropped]], rhythm).any()  # and all of them go
        assert (family[kept[kept >= 0]] == FAMILIES.index("Pitch")).any()  # the pitches still learn


def test_clean_rhythm_keeps_windows_the_humanizer_left_in_time(vocab, pieces):
    cfg = HumanizeConfig(p_timing=0.0, p_articulation=0.0)  # velocities and voices only
    assert all(s.rhythm_targets for s in _samples(vocab, pieces, True, cfg))
