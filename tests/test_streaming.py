"""Streaming tokenization equals offline tokenization of the same quantized notes."""

import random

import pytest
from conftest import score_from_notes

from typemoe.streaming import StreamingTokenizer
from typemoe.vocab import TICKS_PER_BEAT


def playable(vocab, score):
    """The quantized notes a live MIDI stream can carry: one sounding note per pitch (unison doubles merged,
    a re-struck pitch ends the previous note)."""
    n = vocab.prepare_score(score).tracks[0].notes.numpy()
    by_pitch: dict[int, list] = {}
    for t, d, p, v in sorted(zip(*(n[k].tolist() for k in ("time", "duration", "pitch", "velocity")))):
        by_pitch.setdefault(p, []).append((t, d, v))
    out = []
    for p, ns in by_pitch.items():
        for i, (t, d, v) in enumerate(ns):
            nxt = ns[i + 1][0] if i + 1 < len(ns) else None
            if nxt == t:
                continue
            out.append((t, min(d, nxt - t) if nxt is not None else d, p, v))
    return out


def stream(vocab, notes, jitter=0.0, seed=0):
    """Feed notes as a performer would: on/off events in time order, times in beats (optionally jittered
    by less than half a grid step, which quantization must absorb)."""
    rng = random.Random(seed)
    j = lambda: rng.uniform(-jitter, jitter) / TICKS_PER_BEAT  # noqa: E731
    events = []
    for t, d, p, v in notes:
        events.append(((t + d) / TICKS_PER_BEAT, 0, p, 0))
        events.append((t / TICKS_PER_BEAT, 1, p, v))
    events.sort()
    st = StreamingTokenizer(vocab)
    chunks = []
    for beat, is_on, p, v in events:
        chunks.append(st.note_on(p, v, beat + j()) if is_on else st.note_off(p, beat + j()))
    chunks.append(st.flush(events[-1][0] + 1))
    assert sum(chunks, []) == st.tokens
    return st.tokens, chunks


def test_stream_equals_offline_on_200_real_pieces(vocab, real_pieces, tmp_path):
    assert len(real_pieces) >= 200
    bad = []
    for name, score in real_pieces:
        notes = playable(vocab, score)
        offline = vocab.encode_score(score_from_notes(notes))
        streamed, _ = stream(vocab, notes)
        if streamed != offline:
            bad.append(name)
            score_from_notes(notes).dump_midi(tmp_path / f"{len(bad)}.mid")
    assert not bad, f"{len(bad)} pieces differ, e.g. {bad[:5]}; MIDI dumped to {tmp_path}"


def test_stream_is_incremental(vocab, real_pieces):
    """Tokens come out while the music plays, not only at the end."""
    name, score = real_pieces[0]
    notes = playable(vocab, score)
    _, chunks = stream(vocab, notes)
    assert len(chunks[-1]) < 0.1 * sum(map(len, chunks)), name


def test_timing_jitter_below_half_a_step_is_absorbed(vocab, real_pieces):
    for _, score in real_pieces[:20]:
        notes = playable(vocab, score)
        assert stream(vocab, notes, jitter=0.45)[0] == stream(vocab, notes)[0]


def test_chord_order_and_same_onset_different_lengths(vocab):
    # Three notes on one onset ending at different times, released in "wrong" order, and a later note.
    notes = [(0, 8, 64, 90), (0, 2, 60, 90), (0, 2, 55, 70), (0, 4, 67, 100), (4, 1, 72, 90)]
    offline = vocab.encode_score(score_from_notes(notes))
    assert stream(vocab, notes)[0] == offline


def test_unmatched_note_off_and_out_of_range_are_ignored(vocab):
    st = StreamingTokenizer(vocab)
    assert st.note_off(61, 0.0) == []
    st.note_on(5, 100, 0.0)  # below the piano range: dropped, as offline
    st.note_on(60, 100, 0.0)
    st.note_off(60, 1.0)
    st.note_off(5, 1.0)
    st.flush(2.0)
    toks = [vocab.token(i) for i in st.tokens]
    assert toks[:3] == ["Bar_None", "Position_0", "Pitch_60"] and toks[4] == "Duration_1.0.4"
    assert len(toks) == 5


@pytest.mark.parametrize("velocity", [1, 64, 127])
def test_velocity_zero_note_on_is_note_off(vocab, velocity):
    st = StreamingTokenizer(vocab)
    st.note_on(60, velocity, 0.0)
    st.note_on(60, 0, 0.5)
    assert st.n_open == 0


def test_bounded_history_emits_the_same_chunks(vocab, real_pieces):
    """A live session keeps no unbounded token list; the emitted chunks are unchanged."""
    notes = playable(vocab, real_pieces[0][1])
    full, chunks = stream(vocab, notes)
    st = StreamingTokenizer(vocab, max_history=0)
    got = []
    for t, _kind, p, v in sorted(
        [(t, 1, p, v) for t, d, p, v in notes] + [(t + d, 0, p, 0) for t, d, p, v in notes]
    ):
        got += st.note_on(p, v, t / TICKS_PER_BEAT) if v else st.note_off(p, t / TICKS_PER_BEAT)
    got += st.flush(max(t + d for t, d, _, _ in notes) / TICKS_PER_BEAT + 1)
    assert got == full and st.tokens == []


def test_provisional_ids_show_held_notes_without_changing_the_stream():
    from bridge_fixtures import toy_vocab

    from typemoe.streaming import StreamingTokenizer

    tok = StreamingTokenizer(toy_vocab())
    tok.note_on(60, 90, 0.0)
    tok.note_on(64, 90, 0.0)
    assert tok.note_on(67, 90, 1.0) == []  # nothing final while the chord is held
    twin = StreamingTokenizer(toy_vocab())
    for p, b in ((60, 0.0), (64, 0.0), (67, 1.0)):
        twin.note_on(p, 90, b)
    prov = tok.provisional(1.5)
    assert prov == twin.flush(1.5)  # as if every held note ended now
    assert tok.n_open == 3 and tok.tokens == []  # the stream itself is unchanged
    assert tok.note_off(60, 2.0) == [] and tok.provisional(2.0)  # still held notes: still provisional


def test_long_silences_are_cut_as_offline(vocab):
    """A performer pausing for 10 bars: the stream cuts the silence to MAX_EMPTY_BARS empty bars exactly as
    encode_score does, on raw notes (not notes the offline cut already moved)."""
    rng = random.Random(3)
    tpb = 4 * TICKS_PER_BEAT  # ticks per REMI bar
    for _ in range(30):
        notes, t = [], rng.randrange(tpb)
        for _ in range(12):
            notes.append((t, rng.randrange(1, 8), rng.randrange(50, 80), 80))
            t += rng.choice((1, 2, 4, tpb * rng.randrange(5, 12) + rng.randrange(tpb)))
        notes = sorted({(n[0], n[2]): n for n in notes}.values())  # one note per onset and pitch
        nxt: dict[int, int] = {}  # a re-struck pitch ends the sounding one, as on a MIDI cable
        for i in reversed(range(len(notes))):
            t, d, p, v = notes[i]
            notes[i] = (t, min(d, nxt.get(p, t + d) - t), p, v)
            nxt[p] = t
        streamed, _ = stream(vocab, notes)
        assert streamed == vocab.encode_score(score_from_notes(notes))
