"""Head guidance (typemoe.key_steering): at a Pitch step the k likeliest pitches are scored by the key head
on the music-only stream, the rest dropped; the streams come back exactly as they were."""

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


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_the_k_likeliest_pitches_get_the_key_heads_log_probability(ort_model, guidance):
    """The hook's logits equal the key head read on fresh music-only sessions, and after it the streams
    answer as if nothing had been fed (every candidate was rewound)."""
    vocab = ort_model.vocab
    key, w = analysis.parse_key("D major"), 5.0
    s = ort_model.session()
    s.feed(_prompt(vocab))
    allowed = s.allowed_next()
    assert (allowed & (s.tables.pitch_of >= 0)).sum() > key_steering.CANDIDATES  # a Pitch step
    before = s.last.logits.copy()
    logits = before.copy()
    guide = key_steering.KeyHeadGuide(key, w)
    guide(s, logits, allowed)
    pitches = np.flatnonzero(s.tables.pitch_of >= 0)
    top = pitches[np.argsort(-before[pitches], kind="stable")[: key_steering.CANDIDATES]]
    music_only = [vocab.bos_id, *_prompt(vocab)[3:]]
    score = []
    for c in top:
        fresh = ort_model.session()
        score.append(np.log(fresh.feed([*music_only, int(c)]).key_probs[key] + 1e-9))
    np.testing.assert_allclose(logits[top], before[top] + w * (np.array(score) - max(score)), atol=1e-4)
    assert set(np.flatnonzero(allowed & (s.tables.pitch_of >= 0))) == set(top.tolist())
    assert np.isneginf(logits[np.setdiff1d(pitches, top)]).all() and guide.scored == len(top)
    # the streams are intact: the next token gives what a fresh session gives
    nxt = int(top[0])
    s.feed([nxt])
    fresh = ort_model.session()
    np.testing.assert_allclose(s.last.logits, fresh.feed([*_prompt(vocab), nxt]).logits, atol=1e-4)
    twin = s.unconditioned()
    np.testing.assert_allclose(
        twin.last.logits, ort_model.session().feed([*music_only, nxt]).logits, atol=1e-4
    )


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
