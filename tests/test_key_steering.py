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
