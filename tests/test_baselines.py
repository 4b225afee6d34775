"""Key-profile and meter baselines (training/evaluation/baselines.py) on real music21 tunes and synthetic rhythms."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from typemoe import analysis
from typemoe.training.evaluation import baselines

music21 = pytest.importorskip("music21")


@functools.lru_cache(maxsize=4)
def _chorale(name: str):
    from typemoe.training.data.music21_source import _notes

    score = music21.corpus.parse(name)
    arr = _notes(score.flatten())
    return score, baselines.Notes(arr[:, 0], arr[:, 1], arr[:, 2].astype(np.int64))


@pytest.mark.parametrize("name, want", [("bach/bwv66.6", "F# minor"), ("bach/bwv57.8", "Bb major")])
def test_key_profiles_find_the_chorale_keys(name, want):
    _, notes = _chorale(name)
    for method in baselines.KEY_BASELINES:
        key, corr = baselines.key_estimate(notes, method)
        assert analysis.KEYS[key] == want, method
        assert 0.5 < corr <= 1.0


def test_histogram_stream_equals_whole_score():
    """music21's key-weight analysers read only the duration-weighted pitch-class histogram."""
    score, notes = _chorale("bach/bwv66.6")
    for method in baselines.KEY_BASELINES:
        fast = baselines.key_estimate(notes, method)
        slow = baselines.key_estimate_stream(score, method)
        assert fast[0] == slow[0] and fast[1] == pytest.approx(slow[1]), method


def test_key_from_a_symusic_score(vocab):
    """Through the tokenizer and back: the notes the model reads still give the chorale's key."""
    from conftest import score_from_notes

    _, notes = _chorale("bach/bwv57.8")
    rows = [
        (round(o * 4), max(1, round(d * 4)), p, 80)
        for o, d, p in zip(notes.onset, notes.duration, notes.pitch)
    ]
    decoded = vocab.decode(vocab.encode_score(score_from_notes(rows)))
    key, _ = baselines.key_estimate(baselines.notes_of_score(decoded), "krumhansl")
    assert analysis.KEYS[key] == "Bb major"


def test_key_errors():
    empty = baselines.Notes(np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64))
    with pytest.raises(ValueError, match="without notes"):
        baselines.key_estimate(empty, "krumhansl")
    _, notes = _chorale("bach/bwv57.8")
    with pytest.raises(ValueError, match="unknown key baseline 'bogus'"):
        baselines.key_estimate(notes, "bogus")


def _rhythm(pattern: list[float], bars: int = 16, pitch_of_downbeat: int = 55) -> baselines.Notes:
    """A melody repeating one bar's durations (beats); the downbeat note is lower (a bass-like accent)."""
    onset, dur, pitch = [], [], []
    t = 0.0
    for _ in range(bars):
        for i, d in enumerate(pattern):
            onset.append(t)
            dur.append(d)
            pitch.append(pitch_of_downbeat if i == 0 else 64 + 2 * i)
            t += d
    return baselines.Notes(np.array(onset), np.array(dur), np.array(pitch))


@pytest.mark.parametrize(
    "pattern, want",
    [
        ([2.0, 1.0], "3/4"),  # waltz: half + quarter
        ([1.0, 0.5, 1.0, 0.5], "6/8"),  # jig: quarter-eighth twice
        ([1.5, 0.5, 1.0, 1.0], "4/4"),  # dotted quarter, eighth, two quarters
        ([0.5, 0.25, 0.25, 0.5, 0.5], "2/4"),  # eighths and sixteenths in a 2-beat bar
    ],
)
def test_meter_autocorrelation_on_clear_rhythms(pattern, want):
    meter, confidence = baselines.meter_estimate(_rhythm(pattern))
    assert analysis.METERS[meter] == want
    assert 0.5 <= confidence <= 1.0


def test_meter_on_a_real_chorale():
    _, notes = _chorale("bach/bwv57.8")  # 3/4
    meter, _ = baselines.meter_estimate(notes)
    assert analysis.meter_family(meter) == "triple"


def test_majority_class():
    assert baselines.majority_class(["4/4", "2/4", "4/4", None]) == "4/4"
    with pytest.raises(ValueError, match="at least one"):
        baselines.majority_class([None])
