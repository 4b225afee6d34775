"""training/evaluation/perturb.py: each perturbation changes what it says and nothing else, reproducibly."""

from __future__ import annotations

import numpy as np
import pytest
import symusic

from typemoe.training.evaluation import perturb


def _score(tpq: int = 480) -> symusic.Score:
    s = symusic.Score(tpq)
    melody = symusic.Track("melody", 0, False)
    n = 64
    melody.notes = symusic.Note.from_numpy(
        time=(np.arange(n) * tpq // 2).astype(np.int32),
        duration=np.full(n, tpq // 2, np.int32),
        pitch=(60 + np.arange(n) % 12).astype(np.int8),
        velocity=np.full(n, 80, np.int8),
    )
    drums = symusic.Track("drums", 0, True)
    drums.notes = symusic.Note.from_numpy(
        time=(np.arange(16) * tpq).astype(np.int32),
        duration=np.full(16, tpq // 4, np.int32),
        pitch=np.full(16, 36, np.int8),
        velocity=np.full(16, 100, np.int8),
    )
    s.tracks.append(melody)
    s.tracks.append(drums)
    return s


def _arr(score: symusic.Score, track: int = 0) -> dict:
    return score.tracks[track].notes.numpy()


def test_constant_velocity_sets_every_note_and_leaves_input_alone():
    s = _score()
    out = perturb.constant_velocity(s, 33)
    assert set(_arr(out)["velocity"].tolist()) == {33} and set(_arr(out, 1)["velocity"].tolist()) == {33}
    assert set(_arr(s)["velocity"].tolist()) == {80}  # the input is untouched
    np.testing.assert_array_equal(_arr(out)["time"], _arr(s)["time"])
    np.testing.assert_array_equal(_arr(out)["pitch"], _arr(s)["pitch"])


@pytest.mark.parametrize("bad", [0, 128, -5])
def test_constant_velocity_names_a_bad_value(bad):
    with pytest.raises(ValueError, match=str(bad)):
        perturb.constant_velocity(_score(), bad)


def test_velocity_noise_is_seeded_clipped_and_has_the_asked_spread():
    s = _score()
    a = _arr(perturb.velocity_noise(s, 10.0, seed=1))["velocity"].astype(float)
    b = _arr(perturb.velocity_noise(s, 10.0, seed=1))["velocity"].astype(float)
    c = _arr(perturb.velocity_noise(s, 10.0, seed=2))["velocity"].astype(float)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert 5.0 < a.std() < 15.0 and abs(a.mean() - 80) < 5
    loud = _arr(perturb.velocity_noise(perturb.constant_velocity(s, 125), 30.0, seed=0))["velocity"]
    assert loud.min() >= 1 and loud.max() <= 127


def test_velocity_curve_swings_around_its_center():
    v = _arr(perturb.velocity_curve(_score(), 60, 20, 8.0, seed=0))["velocity"]
    assert 38 <= v.min() < 50 and 70 < v.max() <= 81
    assert abs(v.mean() - 60) < 5


def test_onset_jitter_stays_within_the_bound_and_resamples_coarse_scores():
    s = _score(tpq=4)
    out = perturb.onset_jitter(s, 1 / 32, seed=0)
    assert out.ticks_per_quarter == perturb.FINE_TPQ
    fine = perturb._fine(s)
    moved = _arr(out)["time"].astype(int) - _arr(fine)["time"].astype(int)
    assert np.abs(moved).max() <= perturb.FINE_TPQ / 32 + 1
    assert np.count_nonzero(moved) > len(moved) // 2  # it really moves notes
    dur = _arr(out)["duration"].astype(int) - _arr(fine)["duration"].astype(int)
    assert np.abs(dur).max() <= perturb.FINE_TPQ / 32 + 1 and np.count_nonzero(dur) > 0
    still = perturb.onset_jitter(s, 1 / 32, durations=False, seed=0)
    np.testing.assert_array_equal(_arr(still)["duration"], _arr(fine)["duration"])


def test_small_jitter_quantizes_back_to_the_grid():
    """The tokenizer rounds to sixteenths: a +-1/32-beat jitter of grid notes leaves the tokens as they were."""
    from typemoe.vocab import TypedVocab

    vocab = TypedVocab.default()
    s = _score()
    assert vocab.encode_score(perturb.onset_jitter(s, 1 / 32, durations=False, seed=4)) == vocab.encode_score(
        s
    )
    assert vocab.encode_score(perturb.onset_jitter(s, 1 / 6, durations=False, seed=4)) != vocab.encode_score(
        s
    )


def test_scale_durations():
    s = _score()
    np.testing.assert_array_equal(_arr(perturb.scale_durations(s, 0.5))["duration"], _arr(s)["duration"] // 2)
    assert _arr(perturb.scale_durations(s, 1e-6))["duration"].min() == 1
    with pytest.raises(ValueError, match="-1"):
        perturb.scale_durations(s, -1)


def test_transpose_moves_pitched_notes_not_drums_and_names_an_impossible_shift():
    s = _score()
    up = perturb.transpose(s, 5)
    np.testing.assert_array_equal(_arr(up)["pitch"], _arr(s)["pitch"] + 5)
    np.testing.assert_array_equal(_arr(up, 1)["pitch"], _arr(s, 1)["pitch"])
    with pytest.raises(ValueError, match=r"\+70"):
        perturb.transpose(s, 70)
    k = perturb.random_transposition(s, lo=60, hi=75, seed=0)
    assert 0 < k <= 4  # pitches 60..71 must stay in 60..75


def test_humanize_kinds():
    s = _score()
    vel = perturb.humanize(s, "velocity", seed=0)
    assert len(set(_arr(vel)["velocity"].tolist())) > 5
    np.testing.assert_array_equal(_arr(vel)["time"], _arr(s)["time"])
    tim = perturb.humanize(s, "timing", seed=0)
    assert set(_arr(tim)["velocity"].tolist()) == {80}
    assert not np.array_equal(_arr(tim)["duration"], _arr(s)["duration"])
    both = perturb.humanize(s, "all", seed=0)
    assert len(set(_arr(both)["velocity"].tolist())) > 5
    assert _arr(perturb.humanize(s, "all", seed=0))["velocity"].tolist() == _arr(both)["velocity"].tolist()
    with pytest.raises(ValueError, match="tempo"):
        perturb.humanize(s, "tempo")


def test_shift_onsets_moves_every_note():
    s = _score()
    out = perturb.shift_onsets(s, 1.0)
    np.testing.assert_array_equal(_arr(out)["time"], _arr(s)["time"] + 480)
    with pytest.raises(ValueError, match="-1"):
        perturb.shift_onsets(s, -1)


def test_top_voice_keeps_the_highest_note_per_onset():
    s = symusic.Score(480)
    t = symusic.Track("chords", 0, False)
    t.notes = symusic.Note.from_numpy(
        time=np.array([0, 0, 0, 480, 480], np.int32),
        duration=np.full(5, 480, np.int32),
        pitch=np.array([48, 64, 60, 50, 67], np.int8),
        velocity=np.array([60, 70, 80, 90, 100], np.int8),
    )
    s.tracks.append(t)
    s.tracks.append(_score().tracks[1])  # drums: dropped
    out = perturb.top_voice(s)
    assert len(out.tracks) == 1
    a = _arr(out)
    assert (
        a["time"].tolist() == [0, 480]
        and a["pitch"].tolist() == [64, 67]
        and a["velocity"].tolist() == [70, 100]
    )


@pytest.mark.parametrize("kind", sorted(perturb.PROBE_KINDS))
def test_each_probe_changes_its_one_property(kind):
    s = _score()
    out = perturb.humanize(s, kind)
    mel = out.tracks[0].notes.numpy()
    tpq = out.ticks_per_quarter
    base = perturb._fine(s).tracks[0].notes.numpy()
    if kind.startswith("vel"):
        assert set(mel["velocity"].tolist()) == {int(kind[3:])}
        assert (mel["time"] == base["time"]).all() and (mel["duration"] == base["duration"]).all()
    elif kind in ("staccato", "legato"):
        ratio = mel["duration"] / base["duration"]
        assert np.allclose(ratio, 0.5 if kind == "staccato" else 1.6, atol=0.01)
        assert (mel["time"] == base["time"]).all() and (mel["velocity"] == base["velocity"]).all()
    elif kind == "melody":
        assert len(out.tracks) == 1 and not out.tracks[0].is_drum
    else:  # phase
        assert (mel["time"] == base["time"] + tpq).all()
    assert perturb.humanize(s, kind).tracks[0].notes.numpy()["time"].tolist() == mel["time"].tolist()
