"""Head guidance (typemoe.key_steering): at a Pitch step the k likeliest pitches are scored by the key head
on an ear that hears only the new music, the rest dropped; the ear is rewound and the stream untouched."""

from __future__ import annotations

import numpy as np
import pytest

from typemoe import analysis, key_steering

pytestmark = pytest.mark.onnx


@pytest.fixture(scope="module")
def ort_model(tmp_path_factory):
    from export_fixtures import make_tiny_model_dir

    from typemoe.export.runtime import OrtModel

    return OrtModel(make_tiny_model_dir(tmp_path_factory.mktemp("steer") / "model"), provider="cpu")


def _prompt(vocab, key="D major") -> list[int]:
    bar, pos = vocab.id("Bar_None"), vocab.id("Position_0")
    dur = vocab.duration_token_id(4)
    music = [bar, pos, vocab.id("Pitch_62"), int(vocab.velocity_id[80]), dur]
    return [vocab.bos_id, *vocab.control_ids(key=key, meter="3/4"), *music, vocab.id("Position_4")]


def test_the_asked_key_is_the_key_control_of_the_stream_head(ort_model):
    vocab, t = ort_model.vocab, ort_model.session().tables
    ids = _prompt(vocab, "Eb minor")
    assert key_steering.asked_key(ids, t.is_control, t.key_of) == analysis.parse_key("Eb minor")
    no_key = [vocab.bos_id, *vocab.control_ids(meter="3/4"), *ids[3:]]
    assert key_steering.asked_key(no_key, t.is_control, t.key_of) is None
    late = [vocab.bos_id, *ids[3:], *vocab.control_ids(key="C major")]  # only the leading controls count
    assert key_steering.asked_key(late, t.is_control, t.key_of) is None


def _expected(ort_model, heard, logits, allowed, key, w):
    """What the hook must make of `logits` at a Pitch step when the ear holds [BOS, *heard]: the k likeliest
    allowed pitches gain w * (log P_head(key) - best), read on fresh sessions; every other pitch is dropped."""
    vocab = ort_model.vocab
    pitch_of = ort_model.session().tables.pitch_of
    pitches = np.flatnonzero(allowed & (pitch_of >= 0))
    top = pitches[np.argsort(-logits[pitches], kind="stable")[: key_steering.CANDIDATES]]
    score = [
        np.log(ort_model.session().feed([vocab.bos_id, *heard, int(c)]).key_probs[key] + 1e-9) for c in top
    ]
    want = logits.copy()
    want[np.setdiff1d(pitches, top)] = -np.inf
    want[top] += w * (np.array(score) - max(score))
    return want, top


def test_the_ear_hears_only_the_new_music_and_scores_the_k_likeliest_pitches(ort_model):
    """At each Pitch step the hook's logits equal the key head read on fresh sessions of [BOS, the music
    generated since the hook's first call, the candidate]: neither the controls nor the prompt. The stream
    itself is never touched."""
    vocab = ort_model.vocab
    key, w = analysis.parse_key("D major"), 5.0
    s = ort_model.session()
    s.feed(_prompt(vocab))
    guide = key_steering.KeyHeadGuide(key, w)
    heard: list[int] = []
    new = [
        vocab.id("Pitch_66"),
        int(vocab.velocity_id[80]),
        vocab.duration_token_id(4),
        vocab.id("Position_8"),
    ]
    for step in range(len(new) + 1):
        allowed = s.allowed_next()
        was_allowed = allowed.copy()
        before = s.last.logits.copy()
        logits = before.copy()
        guide(s, logits, allowed)
        if (was_allowed & (s.tables.pitch_of >= 0)).any():  # a Pitch step
            want, top = _expected(ort_model, heard, before, was_allowed, key, w)
            np.testing.assert_allclose(logits, want, atol=1e-4)
            assert set(np.flatnonzero(allowed & (s.tables.pitch_of >= 0))) == set(top.tolist())
        else:
            np.testing.assert_array_equal(logits, before)
        if step < len(new):
            s.feed([new[step]])
            heard.append(new[step])
    assert (
        guide.scored == 3 * key_steering.CANDIDATES
    )  # after Position_4, after the Duration (a chord), Position_8
    assert guide.ear.tokens == [vocab.bos_id, *new]  # rewound after every candidate
    fresh = ort_model.session()
    np.testing.assert_allclose(s.last.logits, fresh.feed([*_prompt(vocab), *new]).logits, atol=1e-4)


def test_generate_steers_by_default_and_zero_turns_it_off(ort_model, monkeypatch):
    vocab = ort_model.vocab
    calls = []
    real = key_steering.KeyHeadGuide.__call__
    monkeypatch.setattr(key_steering.KeyHeadGuide, "__call__", lambda *a: calls.append(1) or real(*a))

    def run(**kw):
        s = ort_model.session()
        s.feed(_prompt(vocab))
        return s.generate(n_tokens=30, temperature=1.0, seed=4, **kw)

    steered = run()
    assert calls and key_steering.DEFAULT_HEAD_GUIDANCE > 0
    calls.clear()
    plain = run(head_guidance=0.0)
    assert not calls and plain != steered
    s = ort_model.session()
    s.feed([vocab.bos_id, *_prompt(vocab)[3:]])  # no Key control: nothing to steer toward
    s.generate(n_tokens=30, seed=4)
    assert not calls


@pytest.mark.parametrize("bad", [-1.0, key_steering.HEAD_GUIDANCE_MAX + 1])
def test_a_bad_weight_is_refused_by_name(ort_model, bad):
    s = ort_model.session()
    s.feed(_prompt(ort_model.vocab))
    with pytest.raises(ValueError, match=f"head guidance.*{bad:g}"):
        s.generate(n_tokens=5, head_guidance=bad)


def test_steering_carries_on_across_a_context_slide(ort_model):
    """Steered generation goes on across a context slide: the stream slides first (its music-only twin is
    shorter by the controls), the twin is rebuilt from the slid stream, and the controls stay in front."""
    vocab = ort_model.vocab
    s = ort_model.session()
    prompt = _prompt(vocab)
    s.feed(prompt)
    bar, pos, dur = vocab.id("Bar_None"), vocab.id("Position_0"), vocab.duration_token_id(4)
    note = [vocab.id("Pitch_62"), int(vocab.velocity_id[80]), dur]
    while s.n_past + 4 < ort_model.context_len:  # whole bars of one note until the context is nearly full
        s.feed([bar, pos, *note][: ort_model.context_len - s.n_past - 2])
    new = s.generate(n_tokens=40, temperature=1.0, seed=2)
    assert len(new) == 40 and s.tokens[:3] == prompt[:3]
    assert s.n_past < ort_model.context_len  # it slid


# --------------------------------------------------------------------------- the fused ear

KK = [  # Krumhansl-Kessler [major, minor] on C, written out so the test needs no music21
    [6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88],
    [6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17],
]


def _fused_model(tmp_path, head_weight: float = 1.0):
    """The tiny model directory with a key fusion (one profile on both histograms, plus the head)."""
    from export_fixtures import make_tiny_model_dir

    from typemoe.export.model_dir import refresh_manifest
    from typemoe.export.runtime import OrtModel
    from typemoe.key_fusion import KeyFusion

    d = make_tiny_model_dir(tmp_path / "fused")
    fusion = KeyFusion(
        np.asarray([KK], dtype=float), ("kk",), np.array([2.0, 2.0, head_weight]), 0.0, True, {}
    )
    fusion.save(d)
    refresh_manifest(d)
    return OrtModel(d, provider="cpu")


def test_with_a_key_fusion_the_ear_scores_pitches_by_the_fusion_of_the_new_notes_and_the_head(tmp_path):
    """At each Pitch step the k likeliest pitches gain w * (log P_fusion(key | the new notes + the candidate,
    the head read after it) - best): the candidate counted with the mean duration of the new notes, the
    head read on a fresh session of [BOS, new music, candidate]."""
    from typemoe.key_fusion import histograms

    model = _fused_model(tmp_path)
    vocab, t = model.vocab, model.session().tables
    key, w = analysis.parse_key("D major"), 5.0
    s = model.session()
    s.feed(_prompt(vocab))
    guide = key_steering.KeyHeadGuide(key, w, reader=model.key)
    new = [
        vocab.id("Pitch_66"),
        int(vocab.velocity_id[80]),
        vocab.duration_token_id(8),
        vocab.id("Position_8"),
    ]
    for tok in new:
        guide(s, s.last.logits.copy(), s.allowed_next())
        s.feed([tok])
    allowed = s.allowed_next()
    pitches = np.flatnonzero(allowed & (t.pitch_of >= 0))
    before = s.last.logits.copy()
    logits = before.copy()
    guide(s, logits, allowed)
    top = pitches[np.argsort(-before[pitches], kind="stable")[: key_steering.CANDIDATES]]
    heard_p, heard_d = [66], [2.0]  # the one new note: F#, 8 ticks = 2 beats
    score = []
    for c in top:
        head = model.session().feed([vocab.bos_id, *new, int(c)]).key_probs
        h = histograms(np.array([*heard_p, t.pitch_of[c]]), np.array([*heard_d, np.mean(heard_d)]))
        score.append(np.log(model.key.fusion.probs(h, np.log(np.maximum(head, 1e-9)))[key] + 1e-9))
    want = before.copy()
    want[np.setdiff1d(pitches, top)] = -np.inf
    want[top] += w * (np.array(score) - max(score))
    np.testing.assert_allclose(logits, want, atol=1e-4)
    head_only = before.copy()
    key_steering.KeyHeadGuide(key, w)(s.fork(), head_only, s.allowed_next())
    assert not np.allclose(head_only[top], logits[top], atol=1e-3)  # the fusion changed the scores


def test_the_fused_ear_favours_the_asked_tonic_over_its_dominant(tmp_path):
    """A passage on G, B and D asked to be in C major: adding C makes it lean on C major, adding G on G
    major. A head-only ear (the tiny model's head is noise) cannot tell the two; the fusion's profile can."""
    model = _fused_model(tmp_path, head_weight=0.0)
    vocab, t = model.vocab, model.session().tables
    guide = key_steering.KeyHeadGuide(analysis.parse_key("C major"), 5.0, reader=model.key)
    bar, dur, vel = vocab.id("Bar_None"), vocab.duration_token_id(4), int(vocab.velocity_id[80])
    music = [bar]
    for pos, p in ((0, 67), (4, 71), (8, 74), (12, 67)):
        music += [vocab.id(f"Position_{pos}"), vocab.id(f"Pitch_{p}"), vel, dur]
    score = guide._fused_scorer([vocab.bos_id, *music], t.pitch_of)
    flat = np.full(24, 1 / 24)
    assert score(vocab.id("Pitch_72"), flat) > score(vocab.id("Pitch_79"), flat)


def test_the_decoder_hears_through_the_model_directorys_key_fusion(tmp_path, monkeypatch):
    """Session.generate_steps gives head guidance the engine's key reader (export.runtime.OrtModel.key)."""
    model = _fused_model(tmp_path)
    readers = []
    real = key_steering.KeyHeadGuide.__init__

    def spy(self, *a, **kw):
        real(self, *a, **kw)
        readers.append(self.reader)

    monkeypatch.setattr(key_steering.KeyHeadGuide, "__init__", spy)
    s = model.session()
    s.feed(_prompt(model.vocab))
    s.generate(n_tokens=12, seed=3)
    assert readers == [model.key]


def test_the_tonic_is_nudged_on_the_first_and_last_downbeats_only(ort_model):
    """TonicCadence: at a Pitch step on the downbeat of the window's first or last bar every allowed pitch
    of the asked tonic's class gains the bonus; elsewhere (a later position, a middle bar) nothing moves."""
    vocab = ort_model.vocab
    t = ort_model.session().tables
    key = analysis.parse_key("D major")
    cadence = key_steering.TonicCadence(key, (0.0, 12.0), bonus=3.0)
    d = (t.pitch_of >= 0) & (np.maximum(t.pitch_of, 0) % 12 == 2)
    s = ort_model.session()
    s.feed([vocab.bos_id, *vocab.control_ids(key="D major")])
    note = [vocab.id("Pitch_60"), int(vocab.velocity_id[80]), vocab.duration_token_id(4)]

    def nudged(allowed=None):
        allowed = np.ones(len(t.pitch_of), dtype=bool) if allowed is None else allowed
        logits = np.zeros(len(t.pitch_of), dtype=np.float32)
        cadence(s, logits, allowed)
        return logits

    for bar in range(3):  # REMI bars of 4 beats: 0-4 (first), 4-8 (middle), 8-12 (last)
        s.feed([vocab.id("Bar_None"), vocab.id("Position_0")])
        got = nudged()
        if bar == 1:
            assert not got.any()
        else:
            assert (got[d] == 3.0).all() and not got[~d].any()
            only = d & (t.pitch_of < 70)
            assert not nudged(only)[d & ~only].any()  # a pitch that is not allowed is left alone
        s.feed([*note, vocab.id("Position_4")])
        assert not nudged().any()  # not a downbeat
        s.feed(note)


def test_generate_nudges_the_tonic_only_with_head_guidance_and_a_window(ort_model, monkeypatch):
    vocab = ort_model.vocab
    made = []
    real = key_steering.TonicCadence.__init__
    monkeypatch.setattr(
        key_steering.TonicCadence, "__init__", lambda self, *a, **k: made.append(a) or real(self, *a, **k)
    )

    def run(**kw):
        s = ort_model.session()
        s.feed([vocab.bos_id, *vocab.control_ids(key="D major", meter="3/4")])
        s.generate(temperature=1.0, seed=4, **kw)

    run(n_bars=2, meter="3/4")
    assert made == [
        (analysis.parse_key("D major"), (0.0, 6.0))
    ]  # a bare prompt's window: two 3/4 bars from 0
    made.clear()
    run(n_bars=2, meter="3/4", head_guidance=0.0)
    run(n_tokens=10)  # no window: no first or last bar
    assert not made
