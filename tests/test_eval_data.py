"""What `typemoe eval` reads: prompts cut at a bar line, a spread sample of pieces, the key/meter reads
over a whole piece (sliding windows that hear every bar once), the labels from MIDI meta events, and
perturbed pieces that keep their notes.

The labelled tune folder (`labelled_folder`) is conftest's.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")


def test_prompt_ends_at_a_bar_line(vocab):
    from typemoe.training.evaluation.evaluate import EvalConfig, _prompt_cut

    bar = vocab.id("Bar_None")
    pitch = vocab.id("Pitch_60")
    music = np.array(([bar] + [pitch] * 39) * 10)  # bars of 40 tokens
    cfg = EvalConfig(models=[None], data="music21", out="r.json", prompt_tokens=100, min_prompt_tokens=32)
    assert _prompt_cut(music, vocab, cfg, budget=1000) == 80  # the last bar line <= 100
    assert _prompt_cut(music[:90], vocab, cfg, budget=1000) is None  # 90 - 64 < 32: too short


def test_max_pieces_is_a_spread_sample():
    from typemoe.training.evaluation.eval_data import sample_ids

    ids = [("music21", f"collection{c}/tune{i}") for c in range(3) for i in range(50)]
    picked = sample_ids(ids, 30)
    assert len(picked) == 30 and picked == sample_ids(list(reversed(ids)), 30)  # order-free, stable
    assert {p[1].split("/")[0] for p in picked} == {"collection0", "collection1", "collection2"}


def test_signature_and_meta_labels():
    import symusic

    from typemoe import analysis
    from typemoe.training.evaluation.eval_data import meta_labels, signature_of_key

    assert (
        signature_of_key(analysis.parse_key("C major"))
        == signature_of_key(analysis.parse_key("A minor"))
        == 0
    )
    assert (
        signature_of_key(analysis.parse_key("D minor"))
        == signature_of_key(analysis.parse_key("F major"))
        == 5
    )
    assert (
        signature_of_key(analysis.parse_key("F# major"))
        == signature_of_key(analysis.parse_key("Eb minor"))
        == 6
    )
    s = symusic.Score(480)
    assert meta_labels(s) == (None, None)
    s.key_signatures.append(symusic.KeySignature(960, 2, 0))  # D major later
    s.key_signatures.append(symusic.KeySignature(0, -1, 0))  # F major first
    s.time_signatures.append(symusic.TimeSignature(0, 3, 4))
    s.time_signatures.append(symusic.TimeSignature(960, 6, 8))
    assert meta_labels(s) == (5, analysis.parse_meter("3/4"))  # the FIRST events


def test_perturbed_pieces_keep_their_notes(labelled_folder, vocab):
    from typemoe.training.evaluation.eval_data import load_eval_data

    d, _ = labelled_folder
    plain = load_eval_data(f"folder:{d}", vocab=vocab, labels_csv=d / "labels.csv", split="all", max_pieces=4)
    loud = load_eval_data(
        f"folder:{d}",
        vocab=vocab,
        labels_csv=d / "labels.csv",
        split="all",
        max_pieces=4,
        perturb="velocity",
        seed=1,
    )
    again = load_eval_data(
        f"folder:{d}",
        vocab=vocab,
        labels_csv=d / "labels.csv",
        split="all",
        max_pieces=4,
        perturb="velocity",
        seed=1,
    )
    vel = vocab.type_names.index("velocity")
    for a, b, c in zip(plain.pieces, loud.pieces, again.pieces):
        assert a.id == b.id and np.array_equal(b.tokens, c.tokens)  # seeded
        assert not np.array_equal(a.tokens, b.tokens)
        not_vel = lambda t: t[vocab.type_of[t] != vel]  # noqa: E731
        np.testing.assert_array_equal(not_vel(a.tokens), not_vel(b.tokens))  # only the velocities changed
    with pytest.raises(ValueError, match="tempo"):
        load_eval_data(f"folder:{d}", vocab=vocab, labels_csv=d / "labels.csv", split="all", perturb="tempo")
