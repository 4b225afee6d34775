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
    prefixes = {
        "structure": {"Bar", "Position"},
        "pitch": {"Pitch"},
        "velocity": {"Velocity"},
        "duration": {"Duration"},
    }
    for i, tok in enumerate(vocab.tokens):
        name = vocab.type_names[vocab.type_of[i]]
        if name != "control":
            assert tok.split("_")[0] in prefixes[name], (i, tok, name)
        else:
            control = {"PAD", "BOS", "EOS", "Key", "Meter", "Genre", "Emotion", "Infill"}
            assert tok.split("_")[0] in control, tok


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
    groups = {
        "time": ("Bar", "Position", "Duration"),
        "note": ("Pitch", "Velocity"),
        "control": ("PAD", "BOS", "EOS", "Key", "Meter", "Genre", "Emotion"),
    }
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


# --------------------------------------------------------------------------- bounded work for any input


def _long_silence_midi(path, gap_beats: int = 2**27) -> None:
    """The 48-byte file of the studio report: ticks_per_beat 1, two notes `gap_beats` beats apart."""
    import mido

    mid = mido.MidiFile(ticks_per_beat=1)
    track = mido.MidiTrack()
    mid.tracks.append(track)
    track += [
        mido.Message("note_on", note=60, velocity=100, time=0),
        mido.Message("note_off", note=60, velocity=0, time=1),
        mido.Message("note_on", note=64, velocity=100, time=gap_beats),
        mido.Message("note_off", note=64, velocity=0, time=1),
    ]
    mid.save(path)


def _bar_runs(vocab, ids) -> list[int]:
    """Lengths of the runs of consecutive Bar tokens."""
    runs, n = [], 0
    for i in ids:
        if vocab.token(i) == "Bar_None":
            n += 1
        elif n:
            runs.append(n)
            n = 0
    return runs


def test_long_silence_file_tokenizes_quickly_in_bounded_memory(vocab, tmp_path):
    import time
    import tracemalloc

    from typemoe.vocab import MAX_EMPTY_BARS

    path = tmp_path / "long.mid"
    _long_silence_midi(path)
    assert path.stat().st_size < 64
    tracemalloc.start()
    t0 = time.perf_counter()
    ids = vocab.encode_score(symusic.Score(path))
    elapsed = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert elapsed < 2.0 and peak < 20e6, (elapsed, peak)
    # bar 0 holds the first note; the second is 2^25 bars later, on beat 2 of its bar
    assert [vocab.token(i) for i in ids] == [
        "Bar_None",
        "Position_0",
        "Pitch_60",
        "Velocity_103",
        "Duration_1.0.4",
        *["Bar_None"] * (MAX_EMPTY_BARS + 1),
        "Position_4",
        "Pitch_64",
        "Velocity_103",
        "Duration_1.0.4",
    ]


def test_silences_are_cut_to_whole_empty_bars_and_short_ones_kept(vocab):
    from typemoe.vocab import MAX_EMPTY_BARS

    bar = 16
    notes = [
        (40 * bar + 3, 4, 60, 80),  # leading silence of 40 bars
        (41 * bar + 5, 4, 62, 80),  # next bar
        ((41 + MAX_EMPTY_BARS + 1) * bar + 7, 4, 64, 80),  # exactly MAX_EMPTY_BARS empty bars: kept
        (500 * bar + 9, 80, 65, 80),
    ]  # a long silence again
    toks = [vocab.token(i) for i in vocab.encode_score(score_from_notes(notes))]
    assert _bar_runs(vocab, vocab.encode_score(score_from_notes(notes))) == [
        MAX_EMPTY_BARS + 1,
        1,
        MAX_EMPTY_BARS + 1,
        MAX_EMPTY_BARS + 1,
    ]
    assert [t for t in toks if t.startswith("Position")] == [
        "Position_3",
        "Position_5",
        "Position_7",
        "Position_9",
    ]
    q = vocab.prepare_score(score_from_notes(notes)).tracks[0].notes.numpy()
    assert q["time"].tolist() == [
        4 * bar + 3,
        5 * bar + 5,
        (5 + MAX_EMPTY_BARS + 1) * bar + 7,
        (5 + 2 * MAX_EMPTY_BARS + 2) * bar + 9,
    ]
    assert q["duration"].tolist() == [4, 4, 4, 80]  # durations untouched
    dense = [(i * 8, 8, 60 + i % 12, 80) for i in range(64)]  # no gap: tokens as before
    assert vocab.decode(vocab.encode_score(score_from_notes(dense))).tracks[0].notes.numpy()[
        "time"
    ].tolist() == [t for t, *_ in dense]


def test_silence_cut_holds_after_quantizing(vocab):
    """The result equals quantizing first and cutting on the grid, also where rounding moves a note into
    the next bar (the cut before quantizing only keeps tick counts small)."""
    import random

    from typemoe.vocab import MAX_EMPTY_BARS, TICKS_PER_BAR, collapse_silences

    tpq, bar = 480, 480 * 4
    cases = [
        [(0, 240, 60, 80), ((MAX_EMPTY_BARS + 1) * bar + bar - 1, 240, 62, 80)],  # the later note rounds up
        [(bar - 1, 240, 60, 80), ((MAX_EMPTY_BARS + 2) * bar, 240, 62, 80)],  # the earlier note rounds up
    ]
    rng = random.Random(0)
    for _ in range(50):
        t, notes = 0, []
        for p in rng.sample(range(40, 90), 20):
            t += rng.choice([0, 7, 119, 120, 480, bar - 1, 5 * bar + 59, 6 * bar + 61, 9 * bar])
            notes.append((t, rng.randint(1, 4 * bar), p, 80))
        cases.append(notes)
    for notes in cases:
        score = score_from_notes(notes, tpq=tpq)
        ref = score.resample(4, min_dur=1).tracks[0].notes.numpy()
        want = sorted(zip(collapse_silences(ref["time"], TICKS_PER_BAR).tolist(), ref["pitch"].tolist()))
        got = vocab.prepare_score(score).tracks[0].notes.numpy()
        assert sorted(zip(got["time"].tolist(), got["pitch"].tolist())) == want
        assert max(_bar_runs(vocab, vocab.encode_score(score))) <= MAX_EMPTY_BARS + 1


def test_a_score_over_the_token_budget_is_refused(vocab, monkeypatch):
    from typemoe import vocab as vocab_module
    from typemoe.vocab import ScoreTooLong

    notes = [(i * 4, 4, 60 + i % 12, 80) for i in range(100)]
    assert len(vocab.encode_score(score_from_notes(notes))) > 400
    monkeypatch.setattr(vocab_module, "MAX_SCORE_TOKENS", 300)
    with pytest.raises(ScoreTooLong, match=r"100 notes over 25 bars .* over the limit of 300"):
        vocab.encode_score(score_from_notes(notes))
    with pytest.raises(ScoreTooLong, match="over the limit of 300"):  # a tick rate other than the grid's
        vocab.encode_score(score_from_notes([(t * 120, d * 120, p, v) for t, d, p, v in notes], tpq=480))


def test_note_times_past_the_midi_readers_range_are_refused(vocab, tmp_path):
    import mido

    mid = mido.MidiFile(ticks_per_beat=1)
    track = mido.MidiTrack()
    mid.tracks.append(track)
    track.append(mido.Message("note_on", note=60, velocity=100, time=0))
    track.append(mido.Message("note_off", note=60, velocity=0, time=1))
    track += [mido.MetaMessage("marker", text="x", time=2**28 - 1) for _ in range(9)]  # 2^31 ticks later
    track.append(mido.Message("note_on", note=64, velocity=100, time=5))
    track.append(mido.Message("note_off", note=64, velocity=0, time=1))
    mid.save(tmp_path / "wrapped.mid")
    with pytest.raises(ScoreError, match="more than 2\\^31 ticks apart"):
        vocab.encode_score(symusic.Score(tmp_path / "wrapped.mid"))


def test_control_tokens_come_from_the_one_registry():
    from typemoe import analysis
    from typemoe.shipped import default_model_dir

    vocab = TypedVocab.load(default_model_dir())
    for kind in analysis.CONTROLS:  # every kind's tokens, in its classes' order, are in the vocabulary
        ids = [vocab.id(t) for t in kind.tokens()]
        assert ids == sorted(ids) and len(ids) == len(kind.classes)
    ids = vocab.control_ids(emotion="q2", key="e minor", meter="6/8")  # any keyword order: registry order
    assert [vocab.token(i) for i in ids] == ["Key_E_minor", "Meter_6/8", "Emotion_Q2"]
    with pytest.raises(TypeError, match="tempo"):
        vocab.control_ids(tempo="fast")
    with pytest.raises(ValueError, match="H major"):
        vocab.control_ids(key="H major")
