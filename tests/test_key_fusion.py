"""typemoe.key_fusion: profile features turn with a transposition, the fusion learns keys, it saves and
loads, and a broken file is named."""

from __future__ import annotations

import numpy as np
import pytest

from typemoe.key_fusion import KeyFusion, histograms

# Two profiles [major, minor] on C (Krumhansl-Kessler and a plain scale), written out so the test needs no
# music21; the real fit reads them from music21.
KK = [
    [6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88],
    [6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17],
]
SCALE = [[2, 0, 1, 0, 1, 1, 0, 2, 0, 1, 0, 1], [2, 0, 1, 1, 0, 1, 0, 2, 1, 0, 1, 0]]
PROFILES = np.asarray([KK, SCALE], dtype=float)
MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)


def _tune(key: int, rng: np.random.Generator, n: int = 40):
    """Pitches and durations of a random melody in a key: scale notes, the tonic triad longer."""
    tonic, minor = key % 12, key // 12
    scale = MINOR if minor else MAJOR
    degrees = rng.integers(0, 7, size=n)
    pitches = 60 + tonic + np.asarray(scale)[degrees]
    durs = np.where(np.isin(degrees, (0, 2, 4)), 1.0, 0.5) * rng.uniform(0.5, 1.5, size=n)
    return pitches, durs


def _data(n: int, seed: int):
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, 24, size=n)
    return np.stack([histograms(*_tune(int(k), rng)) for k in keys]), keys


def test_profile_fusion_is_exactly_transposition_equivariant():
    h, y = _data(120, 0)
    fusion = KeyFusion.fit(PROFILES, ("kk", "scale"), h, y, steps=200)
    rng = np.random.default_rng(5)
    pitches, durs = _tune(3, rng)  # Eb major
    base = fusion.probs(histograms(pitches, durs))
    for k in (1, 5, -4):
        moved = fusion.probs(histograms(pitches + k, durs))
        # key index = tonic + 12 * minor: a shift rotates each mode's twelve keys
        expect = np.concatenate([np.roll(base[:12], k), np.roll(base[12:], k)])
        np.testing.assert_allclose(moved, expect, atol=1e-12)


def test_fusion_learns_keys_and_uses_a_good_head(tmp_path):
    h, y = _data(300, 1)
    hv, yv = _data(200, 2)
    profiles_only = KeyFusion.fit(PROFILES, ("kk", "scale"), h, y)
    acc = np.mean([profiles_only.probs(x).argmax() == k for x, k in zip(hv, yv)])
    assert acc > 0.6
    # a head that knows the answer 90% of the time: the fusion must lean on it and beat the profiles
    rng = np.random.default_rng(3)

    def head(labels):
        guess = np.where(rng.random(len(labels)) < 0.9, labels, rng.integers(0, 24, len(labels)))
        return np.log(np.full((len(labels), 24), 0.01) + 0.75 * np.eye(24)[guess])

    fused = KeyFusion.fit(PROFILES, ("kk", "scale"), h, y, head(y))
    lv = head(yv)
    acc_fused = np.mean([fused.probs(x, lp).argmax() == k for x, lp, k in zip(hv, lv, yv)])
    assert acc_fused > max(acc, 0.88)
    path = fused.save(tmp_path)
    again = KeyFusion.load(tmp_path)
    np.testing.assert_allclose(again.probs(hv[0], lv[0]), fused.probs(hv[0], lv[0]))
    with pytest.raises(ValueError, match="head"):
        again.probs(hv[0])
    path.write_text('{"format": "typemoe-key-fusion", "duration_cap_beats": 2.0, "profiles": [[1, 2]]}')
    with pytest.raises(ValueError, match="key_fusion.json"):
        KeyFusion.load(tmp_path)
    assert KeyFusion.load(tmp_path / "nowhere") is None


def test_an_empty_histogram_gives_no_profile_evidence():
    fusion = KeyFusion(PROFILES, ("kk", "scale"), np.ones(4), 0.0, False, {})
    np.testing.assert_allclose(fusion.probs(np.zeros((2, 12))), np.full(24, 1 / 24))


def test_reader_counts_the_pitch_classes_of_token_ids():
    import symusic

    from typemoe.key_fusion import KeyReader
    from typemoe.vocab import TypedVocab

    vocab = TypedVocab.default()
    score = symusic.Score(480)
    track = symusic.Track("t", 0, False)
    for i, (pitch, beats) in enumerate([(60, 1), (64, 1), (67, 2), (72, 4)]):
        track.notes.append(symusic.Note(i * 480 * 4, beats * 480, pitch, 90))
    score.tracks.append(track)
    reader = KeyReader(None, vocab)
    h = reader.hists(vocab.encode_score(score))
    assert h[1][[0, 4, 7]].tolist() == [2, 1, 1] and h[1].sum() == 4  # counts: C twice, E, G
    assert h[0][0] == 1 + 2 and h[0][7] == 2  # durations capped at 2 beats
    head = np.full(24, 1 / 24)
    assert reader.probs(vocab.encode_score(score), head) is not None
    np.testing.assert_array_equal(reader.probs([], head), head)  # no fusion: the head answers


def test_consistency_makes_the_answer_turn_with_a_transposition():
    """A head that knows the key of the untransposed window and does not turn with a transposition (it
    answers the same key for the twin): without consistency the fit leans on it; with consistency it leans
    on the profiles, which turn exactly, and the answers turn with the music."""
    rng = np.random.default_rng(4)
    n = 300
    keys = rng.integers(0, 24, size=n)
    shifts = rng.choice([s for s in range(-5, 7) if s != 0], size=n)
    tunes = [_tune(int(k), rng, n=12) for k in keys]  # short: the profiles alone are unsure
    h = np.stack([histograms(p, d) for p, d in tunes])
    h2 = np.stack([histograms(p + s, d) for (p, d), s in zip(tunes, shifts)])
    head = np.log(np.full((n, 24), 0.01) + 0.75 * np.eye(24)[keys])  # the same for the twin: no turn
    plain = KeyFusion.fit(PROFILES, ("kk", "scale"), h, keys, head)
    kept = KeyFusion.fit(PROFILES, ("kk", "scale"), h, keys, head, twins=(h2, head, shifts), consistency=10.0)

    def turns(fit) -> float:
        a = np.asarray([fit.probs(x, lp).argmax() for x, lp in zip(h, head)])
        b = np.asarray([fit.probs(x, lp).argmax() for x, lp in zip(h2, head)])
        return float(np.mean((a % 12 + shifts) % 12 + 12 * (a // 12) == b))

    assert kept.weights[-1] < 0.5 * plain.weights[-1]  # the head's weight
    assert turns(kept) > turns(plain) + 0.3


def test_the_last_chords_bass_raises_its_tonic():
    import symusic

    from typemoe.key_fusion import ENDING_WEIGHT, KeyReader, ending_bass, with_ending
    from typemoe.vocab import TypedVocab

    # a melody ending on A over a rolled last chord (A2 a 16th after C4, E4): the bass is A
    pitches = np.array([72, 71, 69, 60, 64, 45])
    onsets = np.array([0.0, 1.0, 2.0, 4.0, 4.0, 4.25])
    assert ending_bass(pitches, onsets) == 9
    assert ending_bass(pitches[:-1], onsets[:-1]) == 0  # without the A2: C4 is the lowest of the last chord
    assert ending_bass(pitches, onsets, window=0.0) == 9  # only the very last onset
    assert ending_bass(np.array([], dtype=int), np.array([])) is None
    # C major and A minor tie; the bass A decides for A minor, and raises A major by as much
    p = np.full(24, 0.01)
    p[0] = p[21] = 0.4
    p /= p.sum()
    q = with_ending(p, 9)
    assert int(np.argmax(q)) == 21 and np.isclose(q.sum(), 1.0)
    assert np.isclose(q[9] / q[0], np.exp(ENDING_WEIGHT) * p[9] / p[0])
    np.testing.assert_array_equal(with_ending(p, None), p)
    # the reader finds the bass in token ids, at the ticks the vocabulary writes
    vocab = TypedVocab.default()
    score = symusic.Score(480)
    track = symusic.Track("t", 0, False)
    for pitch, onset in zip(pitches, onsets):
        track.notes.append(symusic.Note(int(onset * 480), 240, int(pitch), 90))
    score.tracks.append(track)
    assert KeyReader(None, vocab).ending(vocab.encode_score(score)) == 9
    # turns with a transposition
    for k in (-5, 3):
        assert ending_bass(pitches + k, onsets) == (9 + k) % 12
