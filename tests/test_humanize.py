"""Performer augmentation on real pieces: the parse/write round trip, and each change does only its job."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import music21_scores

from typemoe.training.learn.humanize import HumanizeConfig, Humanizer

OFF = dict(
    p_const_velocity=0.0,
    p_curve_velocity=0.0,
    p_noisy_velocity=0.0,
    p_timing=0.0,
    p_articulation=0.0,
    p_top_voice=0.0,
)


@pytest.fixture(scope="module")
def windows(vocab):
    return [np.asarray(vocab.encode_score(s), dtype=np.int64) for _, s in music21_scores(30)]


def test_unchanged_notes_write_back_to_the_same_tokens(vocab, windows):
    h = Humanizer(vocab, HumanizeConfig(**OFF))
    for ids in windows:
        assert np.array_equal(h(ids, np.random.default_rng(0)), ids)


def test_velocity_changes_only_velocities(vocab, windows):
    h = Humanizer(vocab, HumanizeConfig(**{**OFF, "p_const_velocity": 1.0}))
    vel = np.asarray(vocab.family_of) == 3
    for i, ids in enumerate(windows):
        out = h(ids, np.random.default_rng(i))
        assert np.array_equal(out[~vel[out]], ids[~vel[ids]])
        assert len(set(out[vel[out]].tolist())) == 1  # one constant velocity for the whole window


def test_timing_keeps_every_note_and_the_bar_count(vocab, windows):
    h = Humanizer(vocab, HumanizeConfig(**{**OFF, "p_timing": 1.0, "p_articulation": 1.0}))
    moved = 0
    for i, ids in enumerate(windows):
        out = h(ids, np.random.default_rng(i))
        a, bars_a = h.notes(ids)
        b, bars_b = h.notes(out)
        assert len(a) - len(b) <= np.sum(
            np.diff(a[:, 0]) <= 1
        )  # only notes merged onto a neighbour's onset go
        assert bars_b >= bars_a - 1
        moved += int(not np.array_equal(out, ids))
    assert moved > len(windows) // 2


def test_top_voice_keeps_the_highest_note_of_each_onset(vocab):
    from conftest import shared_scores

    scores = shared_scores("pop909", 3) or music21_scores(3, opus="bach/bwv66.6")
    h = Humanizer(vocab, HumanizeConfig(**{**OFF, "p_top_voice": 1.0}))
    for _, s in scores:
        ids = np.asarray(vocab.encode_score(s)[:2000])
        notes, _ = h.notes(h(ids, np.random.default_rng(0)))
        assert len(np.unique(notes[:, 0])) == len(notes)  # one note per onset
