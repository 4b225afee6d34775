import json

import numpy as np
import pytest
import symusic
from conftest import music21_scores, score_from_notes
from miditok import REMI

from typemoe.vocab import TYPE_NAMES, ScoreError, TypedVocab, VocabError, tokenizer_config


def test_every_id_has_exactly_one_type(vocab):
    assert vocab.type_of.shape == (vocab.size,)
    assert set(np.unique(vocab.type_of)) == set(range(len(TYPE_NAMES)))
    prefixes = {"structure": {"Bar", "Position"}, "pitch": {"Pitch"}, "velocity": {"Velocity"},
                "duration": {"Duration"}}
    for i, tok in enumerate(vocab.tokens):
        name = vocab.type_names[vocab.type_of[i]]
        if name != "control":
            assert tok.split("_")[0] in prefixes[name], (i, tok, name)
        else:
            assert tok.split("_")[0] in {"PAD", "BOS", "EOS", "Key", "Meter", "Genre", "Emotion"}, tok


def test_control_tokens_present(vocab):
    toks = vocab.tokens
    assert sum(t.startswith("Key_") for t in toks) == 24
    assert {"Meter_6/8", "Meter_3/4", "Meter_4/4", "Meter_2/4", "Meter_other"} <= set(toks)
    assert {f"Emotion_Q{i}" for i in range(1, 5)} <= set(toks)
    ids = vocab.control_ids(key="e minor", meter="6/8", genre="rock", emotion="Q3")
    assert [vocab.token(i) for i in ids] == ["Key_E_minor", "Meter_6/8", "Genre_rock", "Emotion_Q3"]


def test_no_time_signature_key_or_tempo_tokens_in_vocab(vocab):
    for tok in vocab.tokens[: vocab.n_base]:
        assert tok.split("_")[0] not in {"TimeSig", "Tempo", "Key", "Program", "Chord", "Rest"}, tok


def test_bpe_and_unknown_types_rejected():
    trained = REMI(tokenizer_config())
    trained._model = object()  # what miditok's train() sets: is_trained becomes True
    assert trained.is_trained
    with pytest.raises(VocabError, match="BPE"):
        TypedVocab(trained)
    cfg = tokenizer_config()
    cfg.use_tempos = True
    with pytest.raises(VocabError, match="Tempo"):
        TypedVocab(REMI(cfg))
    with pytest.raises(VocabError, match="two groups"):
        TypedVocab(REMI(tokenizer_config()), groups={"a": ("Bar", "Pitch"), "b": ("Pitch",)})


def test_custom_grouping_is_saved(tmp_path):
    groups = {"time": ("Bar", "Position", "Duration"), "note": ("Pitch", "Velocity"),
              "control": ("PAD", "BOS", "EOS", "Key", "Meter", "Genre", "Emotion")}
    v = TypedVocab(REMI(tokenizer_config()), groups=groups)
    v.save(tmp_path)
    w = TypedVocab.load(tmp_path)
    assert w.type_names == ("time", "note", "control") and w.n_types == 3
    assert np.array_equal(v.type_of, w.type_of)


def test_save_load_round_trip(vocab, tmp_path):
    vocab.save(tmp_path)
    loaded = TypedVocab.load(tmp_path)
    assert loaded.tokens == vocab.tokens and loaded.hash == vocab.hash
    assert np.array_equal(loaded.type_of, vocab.type_of)
    assert np.array_equal(loaded.next_allowed, vocab.next_allowed)
    score = music21_scores(1)[0][1]
    assert loaded.encode_score(score) == vocab.encode_score(score)


def test_load_refuses_missing_or_tampered(vocab, tmp_path):
    with pytest.raises(VocabError, match="missing"):
        TypedVocab.load(tmp_path)
    vocab.save(tmp_path)
    meta = json.loads((tmp_path / "types.json").read_text())
    meta["tokens"][-1] = "Genre_polka"
    (tmp_path / "types.json").write_text(json.dumps(meta))
    with pytest.raises(VocabError, match="hash"):
        TypedVocab.load(tmp_path)


def test_midi_tokens_midi_round_trip(vocab):
    """Quantized notes survive ids -> score -> ids, for real tunes."""
    for _, score in music21_scores(10):
        ids = vocab.encode_score(score)
        assert vocab.encode_score(vocab.decode(ids)) == ids


def test_time_and_key_signatures_never_reach_tokens(vocab):
    """The same notes with and without TS/KS/tempo meta events give identical tokens."""
    scores = music21_scores(8)
    assert sum(len(s.time_signatures) > 0 for _, s in scores) >= 4, "fixture should carry real TS events"
    for _, score in scores:
        bare = score.copy()
        bare.time_signatures = symusic.Score(480).time_signatures
        bare.key_signatures = symusic.Score(480).key_signatures
        with_meta = score.copy()
        with_meta.time_signatures.append(symusic.TimeSignature(0, 7, 8))
        with_meta.key_signatures.append(symusic.KeySignature(0, 5, 1))
        with_meta.tempos.append(symusic.Tempo(0, 97.0))
        assert vocab.encode_score(with_meta) == vocab.encode_score(bare)
        # Bars are 4-beat groups regardless of the notated meter: Bar tokens = ceil(last onset / 16 ticks)
        q = vocab.prepare_score(score).tracks[0].notes.numpy()
        n_bars = sum(vocab.token(i) == "Bar_None" for i in vocab.encode_score(score))
        assert n_bars == int(q["time"].max()) // 16 + 1


def test_tracks_merge_and_drums_dropped(vocab):
    a = score_from_notes([(0, 4, 60, 90), (8, 4, 64, 90)])
    b = score_from_notes([(4, 4, 67, 90)])
    merged = a.copy()
    merged.tracks.append(b.tracks[0].copy())
    drums = symusic.Track("drums", 0, True)
    drums.notes.append(symusic.Note(2, 1, 36, 100))
    merged.tracks.append(drums)
    one = score_from_notes([(0, 4, 60, 90), (4, 4, 67, 90), (8, 4, 64, 90)])
    assert vocab.encode_score(merged) == vocab.encode_score(one)


def test_drums_only_and_empty_scores_raise(vocab):
    drums = symusic.Score(480)
    t = symusic.Track("kit", 0, True)
    t.notes.append(symusic.Note(0, 100, 36, 100))
    drums.tracks.append(t)
    with pytest.raises(ScoreError, match="drums only"):
        vocab.encode_score(drums)
    with pytest.raises(ScoreError):
        vocab.encode_score(symusic.Score(480))


def test_grammar_table_accepts_real_sequences(vocab):
    """Every transition in real tokenized music is allowed by next_allowed (so masked sampling can produce it)."""
    for _, score in music21_scores(20):
        ids = vocab.encode_score(score)
        for a, b in zip(ids, ids[1:]):
            assert vocab.next_allowed[vocab.family_of[a], b], (vocab.token(a), vocab.token(b))


def test_velocity_and_duration_tables_match_miditok(vocab):
    for d in (1, 3, 4, 7, 16, 17, 18, 33, 47, 48, 60):
        ids = vocab.encode_score(score_from_notes([(0, d, 60, 100)]))
        assert ids[-1] == vocab.duration_token_id(d), d
