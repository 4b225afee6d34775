"""Meter guidance (typemoe.meter_steering): the Position and Duration logits of a continuation in a meter's
bars gain the meter's metrical hierarchy, the bar before's rhythm and an accented downbeat; nothing else
is touched, and it acts only on an asked meter."""

from __future__ import annotations

import numpy as np
import pytest

from typemoe import analysis, meter_steering

pytestmark = pytest.mark.onnx


@pytest.fixture(scope="module")
def ort_model(tmp_path_factory):
    from export_fixtures import make_tiny_model_dir

    from typemoe.export.runtime import OrtModel

    return OrtModel(make_tiny_model_dir(tmp_path_factory.mktemp("meter") / "model"), provider="cpu")


def test_the_strengths_are_the_metrical_grid_of_each_meter():
    four = [4, 0, 1, 0, 2, 0, 1, 0, 3, 0, 1, 0, 2, 0, 1, 0]  # bar, half bar, beat, eighth, sixteenth
    np.testing.assert_allclose(meter_steering.strengths("4/4"), np.array(four) / 4)
    three = [3, 0, 1, 0, 2, 0, 1, 0, 2, 0, 1, 0]  # bar, beat, eighth, sixteenth
    np.testing.assert_allclose(meter_steering.strengths("3/4"), np.array(three) / 3)
    six = [3, 0, 1, 0, 1, 0, 2, 0, 1, 0, 1, 0]  # bar, dotted quarter, eighth, sixteenth
    np.testing.assert_allclose(meter_steering.strengths("6/8"), np.array(six) / 3)
    np.testing.assert_allclose(meter_steering.strengths("2/4"), np.array([3, 0, 1, 0, 2, 0, 1, 0]) / 3)
    assert len(meter_steering.strengths("12/8")) == 12  # written as two 3-beat bars (remi_bar_beats)
    with pytest.raises(ValueError, match="other"):
        meter_steering.strengths("other")
    for meter in analysis.METERS[
        :-1
    ]:  # every meter the decoder writes bars of: the downbeat is the strongest
        s = meter_steering.strengths(meter)
        assert s[0] == 1.0 and (s[1:] < 1).all() and (s >= 0).all(), (meter, s)


def test_the_asked_meter_is_the_meter_control_of_the_stream_head(ort_model):
    vocab, t = ort_model.vocab, ort_model.session().tables
    head = [vocab.bos_id, *vocab.control_ids(key="D major", meter="6/8")]
    assert meter_steering.asked_meter(head, t.is_control, t.meter_of) == analysis.parse_meter("6/8")
    no_meter = [vocab.bos_id, *vocab.control_ids(key="D major"), vocab.id("Bar_None")]
    assert meter_steering.asked_meter(no_meter, t.is_control, t.meter_of) is None
    late = [vocab.bos_id, vocab.id("Bar_None"), *vocab.control_ids(meter="3/4")]  # only the leading ones
    assert meter_steering.asked_meter(late, t.is_control, t.meter_of) is None


def _step(guide, session, allowed=None):
    """Call the hook on zero logits; return (edited logits, the allowed mask)."""
    allowed = np.ones(len(session.tables.is_bar), dtype=bool) if allowed is None else allowed
    logits = np.zeros(len(allowed), dtype=np.float32)
    guide(session, logits, allowed)
    return logits, allowed


def test_positions_gain_their_strength_and_the_bar_before_s_rhythm(ort_model):
    vocab = ort_model.vocab
    w = 4.0
    s = ort_model.session()
    s.feed([vocab.bos_id, *vocab.control_ids(meter="3/4")])
    guide = meter_steering.MeterAccentGuide("3/4", w)
    _step(guide, s)  # the generation's first call: the prompt's last id is not a note of this generation
    pid = {p: vocab.id(f"Position_{p}") for p in range(12)}
    s.feed([vocab.id("Bar_None")])
    logits, _ = _step(guide, s)
    assert logits[vocab.id("Bar_None")] == 0 and logits[vocab.id("Pitch_60")] == 0  # only Positions move
    got = {p: float(logits[pid[p]]) for p in (0, 1, 2, 4)}
    assert got == pytest.approx({0: 0.0, 1: -w / 2, 2: -w / 2 * 2 / 3, 4: -w / 2 / 3})
    # a bar with notes on 0 and 4: in the next bar, positions without an onset before lose w/2 more
    dur = vocab.duration_token_id(4)
    for p in (0, 4):
        for i in (pid[p], vocab.id("Pitch_60"), int(vocab.velocity_id[80]), dur):
            s.feed([i])
            _step(guide, s)
    assert guide.this == {0: 4, 4: 4}
    s.feed([vocab.id("Bar_None")])
    logits, _ = _step(guide, s)
    assert guide.before == {0: 4, 4: 4} and guide.this == {}
    assert logits[pid[0]] == pytest.approx(0.0) and logits[pid[4]] == pytest.approx(-w / 2 / 3)
    assert logits[pid[8]] == pytest.approx(-w / 2 / 3 - w / 2)  # a beat, but silent in the bar before


def test_the_downbeat_is_long_later_notes_shorter_and_sixteenths_short(ort_model):
    vocab = ort_model.vocab
    w = 2.0
    t = ort_model.session().tables
    dur = {beats: vocab.duration_token_id(int(beats * 4)) for beats in (0.25, 0.5, 1, 2)}
    s = ort_model.session()
    s.feed([vocab.bos_id, *vocab.control_ids(meter="4/4")])
    guide = meter_steering.MeterAccentGuide("4/4", w)
    _step(guide, s)
    note = [vocab.id("Pitch_60"), int(vocab.velocity_id[80])]
    for i in (vocab.id("Bar_None"), vocab.id("Position_0"), *note):
        s.feed([i])
        logits, _ = _step(guide, s)
    # a note on the downbeat: at least a beat long (2 beats are no better than 1)
    assert logits[dur[1]] == pytest.approx(0.0) and logits[dur[2]] == pytest.approx(0.0)
    assert logits[dur[0.25]] == pytest.approx(-2 * w) and logits[dur[0.5]] == pytest.approx(-w)
    assert logits[vocab.id("Pitch_62")] == 0 and logits[vocab.id("Bar_None")] == 0
    s.feed([dur[1]])
    _step(guide, s)
    for i in (vocab.id("Position_5"), *note):  # a sixteenth between the eighths
        s.feed([i])
        logits, _ = _step(guide, s)
    durations = np.flatnonzero(t.duration_of >= 0)
    # short, and nothing after the downbeat lasts as long as the downbeat's beat
    want = -w * np.log2(np.clip(t.duration_of[durations] / 4, 0.25, 2.0)) - w * (
        t.duration_of[durations] >= 4
    )
    np.testing.assert_allclose(logits[durations], want, atol=1e-5)
    assert logits[dur[0.25]] > logits[dur[0.5]] > logits[dur[1]]


def test_generate_guides_an_asked_meter_by_default_and_zero_turns_it_off(ort_model, monkeypatch):
    vocab = ort_model.vocab
    calls = []
    real = meter_steering.MeterAccentGuide.__call__
    monkeypatch.setattr(meter_steering.MeterAccentGuide, "__call__", lambda *a: calls.append(1) or real(*a))

    def run(controls, **kw):
        s = ort_model.session()
        s.feed([vocab.bos_id, *controls])
        return s.generate(n_bars=2, meter="3/4", temperature=1.0, seed=4, head_guidance=0.0, **kw)

    asked = vocab.control_ids(key="D major", meter="3/4")
    guided = run(asked)
    assert calls and meter_steering.DEFAULT_METER_GUIDANCE > 0
    calls.clear()
    plain = run(asked, meter_guidance=0.0)
    assert not calls and plain != guided
    run(vocab.control_ids(key="D major"))  # bars of 3/4 but no Meter control: nothing asked
    assert not calls
    s = ort_model.session()
    s.feed([vocab.bos_id, *asked])
    s.generate(n_tokens=20, seed=4)  # a Meter control but no meter's bars to accent
    assert not calls


@pytest.mark.parametrize("bad", [-1.0, meter_steering.METER_GUIDANCE_MAX + 1])
def test_a_bad_weight_is_refused_by_name(ort_model, bad):
    s = ort_model.session()
    s.feed([ort_model.vocab.bos_id, *ort_model.vocab.control_ids(meter="3/4")])
    with pytest.raises(ValueError, match=f"meter guidance.*{bad:g}"):
        s.generate(n_bars=1, meter="3/4", meter_guidance=bad)


def test_the_prompt_s_last_note_is_not_taken_for_the_generation_s(ort_model):
    """The guide hears the generation from its first call on: a prompt that ends on a note leaves it empty."""
    vocab = ort_model.vocab
    s = ort_model.session()
    note = [vocab.id("Pitch_60"), int(vocab.velocity_id[80]), vocab.duration_token_id(8)]
    s.feed(
        [vocab.bos_id, *vocab.control_ids(meter="3/4"), vocab.id("Bar_None"), vocab.id("Position_0"), *note]
    )
    guide = meter_steering.MeterAccentGuide("3/4", 4.0)
    _step(guide, s)
    assert guide.this == {} and guide.before == {}
