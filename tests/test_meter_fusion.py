"""typemoe.meter: rhythm features see the bar period, the fusion learns it, and it saves and loads."""

from __future__ import annotations

import numpy as np

from typemoe.analysis import METERS as ALL_METERS
from typemoe.meter import MeterFusion, rhythm_family, rhythm_features, within_family

METERS = ("4/4", "3/4")


def _piece(beats_per_bar: int, rng: np.random.Generator, bars: int = 16):
    """A bar-periodic rhythm: a long note on each downbeat, random short notes in between."""
    onsets, durs = [], []
    for b in range(bars):
        onsets.append(b * beats_per_bar)
        durs.append(1.5)
        for t in range(1, beats_per_bar * 2):
            if rng.random() < 0.5:
                onsets.append(b * beats_per_bar + t / 2)
                durs.append(0.5)
    return np.asarray(onsets, float), np.asarray(durs, float)


def test_features_peak_at_the_bar_length():
    rng = np.random.default_rng(0)
    f3 = rhythm_features(*_piece(3, rng))
    f4 = rhythm_features(*_piece(4, rng))
    assert f3[12 - 1] > f3[16 - 1] and f4[16 - 1] > f4[12 - 1]  # lag L is index L - 1
    assert rhythm_features(np.zeros(0), np.zeros(0)).shape == f3.shape


def test_fusion_separates_meters_and_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    X, y = [], []
    for i in range(200):
        m = i % 2
        X.append(rhythm_features(*_piece(4 if m == 0 else 3, rng)))
        y.append(m)
    X, y = np.asarray(X), np.asarray(y)
    fit = MeterFusion.fit(X[:150], y[:150], METERS, steps=300)
    assert (fit.probs(X[150:]).argmax(1) == y[150:]).mean() > 0.95
    fit.save(tmp_path)
    back = MeterFusion.load(tmp_path)
    assert np.allclose(back.probs(X[150:]), fit.probs(X[150:]))
    assert MeterFusion.load(tmp_path / "nowhere") is None
    (tmp_path / "meter_fusion.json").write_text("{not json")
    try:
        MeterFusion.load(tmp_path)
    except ValueError as err:
        assert "meter_fusion.json" in str(err)
    else:
        raise AssertionError("a corrupt meter_fusion.json must be refused")


def test_the_family_rule_reads_the_bar_length_and_keeps_the_class_choice_within_it():
    rng = np.random.default_rng(2)
    assert rhythm_family(rhythm_features(*_piece(3, rng))) == "triple"
    assert rhythm_family(rhythm_features(*_piece(4, rng))) == "duple"
    assert rhythm_family(np.zeros(96)) is None  # no music: no say
    probs = np.full(len(ALL_METERS), 0.01)
    probs[ALL_METERS.index("4/4")], probs[ALL_METERS.index("6/8")], probs[ALL_METERS.index("3/4")] = (
        0.5,
        0.2,
        0.1,
    )
    probs /= probs.sum()
    tri = within_family(probs, "triple", ALL_METERS)
    assert ALL_METERS[int(tri.argmax())] == "6/8" and np.isclose(tri.sum(), 1.0)
    assert tri[ALL_METERS.index("4/4")] == 0.0 and tri[ALL_METERS.index("other")] == 0.0
    assert np.isclose(tri[ALL_METERS.index("6/8")] / tri[ALL_METERS.index("3/4")], 2.0)  # order kept
    assert within_family(probs, None, ALL_METERS) is probs


def test_consistency_moves_weight_off_a_feature_that_another_touch_changes():
    """A 'touch' feature (think: the head's velocity reading) predicts the meter in the training windows but
    is redrawn when the same windows are played again; the rhythm predicts it a little less well and stays.
    Without consistency the fit leans on the touch feature; with it, the answer keeps under a new touch."""
    rng = np.random.default_rng(2)
    n = 400
    y = rng.integers(0, 2, n)
    music = (2 * y - 1) + rng.normal(0, 1.0, n)  # stays under another touch
    touch = (2 * y - 1) + rng.normal(0, 0.3, n)  # a sharper cue, gone under another touch
    twin_touch = rng.normal(0, 1.0, n)
    X, X2 = np.stack([music, touch], 1), np.stack([music, twin_touch], 1)
    plain = MeterFusion.fit(X, y, METERS, steps=400)
    kept = MeterFusion.fit(X, y, METERS, steps=400, twins=(X2, None), consistency=10.0)

    def agreement(fit):
        return float((fit.probs(X).argmax(1) == fit.probs(X2).argmax(1)).mean())

    def touch_share(fit):
        w = np.abs(fit.weights[:, 1] - fit.weights[:, 0])  # the 2-class margin's weight per feature
        return float(w[1] / w.sum())

    assert touch_share(plain) > 0.5 > touch_share(kept)
    assert agreement(kept) > agreement(plain) + 0.1

    # Calibration changes how sure the answers are, never which they are, and lowers the likelihood loss.
    before = kept.probs(X)
    t = kept.calibrate(X, y)
    after = kept.probs(X)
    assert t != 1.0 and np.array_equal(before.argmax(1), after.argmax(1))
    nll = [-np.log(p[np.arange(n), y]).mean() for p in (before, after)]
    assert nll[1] < nll[0]
