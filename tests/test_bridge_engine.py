"""The pure engine under a FakeClock: streaming, analysis, scheduling, stopping. No sleeps, no sockets."""

from __future__ import annotations

import pytest
import symusic
from bridge_fixtures import C_MAJOR_TUNE, Harness, toy_vocab

from typemoe.bridge.clock import PPQN
from typemoe.bridge.engine import _EARLY_S as EARLY
from typemoe.bridge.events import Generated, Tick


def _offline_ids(notes, origin_offset: float) -> list[int]:
    """vocab.encode_score of the same notes, quantized, on the stream's time axis."""
    score = symusic.Score(4)
    track = symusic.Track("t", 0, False)
    for onset, dur, pitch in notes:
        track.notes.append(
            symusic.Note(round((onset + origin_offset) * 4), max(1, round(dur * 4)), pitch, 90)
        )
    score.tracks.append(track)
    return toy_vocab().encode_score(score)


def test_stream_equals_offline_tokenization():
    h = Harness()
    h.play(C_MAJOR_TUNE)
    h.advance_beats(2)
    assert C_MAJOR_TUNE[0][0] == 0  # free-running, the first note is the stream's downbeat
    assert h.fed == _offline_ids(C_MAJOR_TUNE, 0.0)


@pytest.mark.parametrize("launch_phase", [0.0, 0.12, 0.37, 1.5, 2.93])
def test_free_running_stream_does_not_depend_on_when_the_bridge_started(launch_phase):
    """The same performance, begun at any point of the bridge's internal beat grid (which starts when the
    bridge is launched), gives the same tokens: the performer's first note is beat 0 of the stream. Anchored
    to the internal grid instead, a note between two grid steps moves with the launch phase, and so did the
    meter read from the tokens (a waltz read 4/4 at some phases)."""
    h = Harness()
    h.advance_beats(launch_phase)
    h.play(C_MAJOR_TUNE)
    h.advance_beats(2)
    assert h.fed == _offline_ids(C_MAJOR_TUNE, 0.0)


def test_following_a_daw_clock_the_stream_keeps_the_daws_bar_lines():
    """With MIDI clock from a DAW, the stream's bars are the DAW's: a first note played a beat and a half
    into the DAW's bar sits there in the stream, not on its downbeat."""
    h = Harness()
    h.midi_in(0xFA)  # Start: the next pulse is the DAW's beat 0
    spb = h.engine.clock.seconds_per_beat
    for _ in range(int(1.5 * PPQN)):
        h.midi_in(0xF8)
        h.advance(spb / PPQN)
    assert h.engine.clock.synced(h.clock.now())
    start = h.engine.clock.beat_at(h.clock.now())
    assert start % 4 == pytest.approx(1.5, abs=0.05)
    for onset, dur, pitch in C_MAJOR_TUNE[:4]:  # played while the pulses keep coming
        while h.engine.clock.beat_at(h.clock.now()) < start + onset:
            h.midi_in(0xF8)
            h.advance(spb / PPQN)
        h.note(pitch)
        end = h.engine.clock.beat_at(h.clock.now()) + dur
        while h.engine.clock.beat_at(h.clock.now()) < end - 1e-6:
            h.midi_in(0xF8)
            h.advance(spb / PPQN)
        h.off(pitch)
    for _ in range(4 * PPQN):
        h.midi_in(0xF8)
        h.advance(spb / PPQN)
    got = h.fed
    want = _offline_ids([(o + 1.5, d, p) for o, d, p in C_MAJOR_TUNE[:4]], 0.0)
    assert got[: len(want)] == want


def test_key_sent_on_change_and_every_bar():
    h = Harness()
    h.play(C_MAJOR_TUNE)
    keys = h.sent("/typemoe/key")
    assert keys and keys[-1][0] == "C major"
    assert isinstance(keys[-1][1], float) and 0 < keys[-1][1] <= 1
    n = len(keys)
    h.advance_beats(8)  # two bar lines, no new notes: the estimate is repeated once per bar
    assert len(h.sent("/typemoe/key")) == n + 2
    assert h.sent("/typemoe/meter")[-1][0] in ("4/4", "3/4")


def test_continuation_notes_are_sent_on_their_deadlines():
    h = Harness()
    h.play(C_MAJOR_TUNE[:8])
    h.osc_in("/typemoe/continue", 2.0)
    assert len(h.generates) == 1
    h.advance_beats(12)
    notes = h.sent("/typemoe/note")
    assert 8 <= len(notes) <= 16  # the toy plays 8th notes: 2 bars
    clock = h.engine.clock
    ons = h.note_ons()[-len(notes) :]
    for (t, pitch), (p, vel, onset, dur) in zip(ons, notes):
        assert p == pitch and dur > 0 and 0 < vel <= 127
        assert (
            -EARLY - 1e-9 <= t - clock.time_at(onset) <= 1e-9
        )  # on its beat, or up to 1 ms early (timer slack)
        assert onset * 4 == round(onset * 4)  # on the 16th grid
    assert not h.hanging()
    assert max(o for *_, o, _ in notes) - min(o for *_, o, _ in notes) < 8.0


def test_latency_compensation_sends_early():
    h = Harness({"latency_ms": 30.0})
    h.play(C_MAJOR_TUNE[:4])
    h.osc_in("/typemoe/continue", 1.0)
    h.advance_beats(6)
    (t, _), (_, _, onset, _) = h.note_ons()[0], h.sent("/typemoe/note")[0]
    assert -EARLY - 1e-9 <= t - (h.engine.clock.time_at(onset) - 0.030) <= 1e-9


def test_performer_note_stops_playback_with_note_offs():
    h = Harness()
    h.play(C_MAJOR_TUNE[:4])
    h.osc_in("/typemoe/continue", 4.0)
    h.advance_beats(1.6)
    assert h.engine.playing
    n_ons = len(h.note_ons())
    h.note(70)
    assert not h.engine.playing
    assert h.hanging() == set()  # every generated note got its note-off (70 came in, not out)
    h.advance_beats(8)
    assert len(h.note_ons()) == n_ons  # nothing more was played


def test_panic_and_release_all():
    h = Harness()
    h.play(C_MAJOR_TUNE[:4])
    h.osc_in("/typemoe/continue", 4.0)
    h.advance_beats(1.7)
    h.osc_in("/typemoe/panic")
    assert not h.hanging()
    assert h.midi[-1][1] == (0xB0, 123, 0)
    h.run(h.engine.release_all())
    assert h.midi[-1][1] == (0xB0, 123, 0) and not h.hanging()


def test_respond_mode_answers_after_silence_with_the_calls_length():
    h = Harness({"mode": "respond", "respond_after_beats": 2.0})
    call = [(i * 1.0, 0.9, 60 + i) for i in range(8)]  # 8 beats = 2 bars
    h.play(call)
    assert not h.generates
    h.advance_beats(0.5)
    assert not h.generates  # still inside the silence window
    h.advance_beats(2.0)
    assert len(h.generates) == 1
    g = h.generates[0]
    assert g.n_bars == 3  # 2 bars asked, +1 for the partial bar the model starts in
    assert (g.bars, g.meter, g.start_beat % 4) == (2, "4/4", 0)  # 2 bars of the call's meter, on a bar line
    assert h.engine._pending is None and h.engine.playing


def test_analyze_mode_never_generates():
    h = Harness({"mode": "analyze"})
    h.play(C_MAJOR_TUNE[:4])
    h.osc_in("/typemoe/continue")
    h.midi_in(0xB0, 20, 127)
    h.advance_beats(8)
    assert not h.generates and not h.note_ons()
    assert any("analyze" in e[0] for e in h.sent("/typemoe/error"))


def test_trigger_cc_rising_edge_only():
    h = Harness()
    h.play(C_MAJOR_TUNE[:4])
    h.midi_in(0xB0, 20, 127)
    h.midi_in(0xB0, 20, 100)  # still high: no second trigger
    assert len(h.generates) == 1
    h.midi_in(0xB0, 20, 0)
    h.midi_in(0xB0, 20, 127)
    assert len(h.generates) == 2


def test_stale_and_failed_generations_are_dropped():
    h = Harness(auto_generate=False)
    h.play(C_MAJOR_TUNE[:4])
    h.osc_in("/typemoe/continue")
    h.osc_in("/typemoe/continue")
    first, second = h.generates
    h.complete(first)  # superseded by the second request
    assert not h.engine.playing
    h.complete(second, error="boom")
    assert h.sent("/typemoe/error")[-1] == ("boom",)
    assert not h.engine.playing


def test_midi_clock_sets_tempo_and_notes_land_on_pulses():
    h = Harness({"tempo": 120.0})
    period = 60.0 / 100.0 / PPQN
    h.midi_in(0xFA)  # Start: the next pulse is the DAW's beat 0
    t_first_pulse = h.clock.now()
    for i in range(PPQN * 16):
        h.midi_in(0xF8)
        if i == PPQN * 4:
            assert h.engine.clock.tempo == pytest.approx(100.0, rel=1e-3)
            bar = h.engine.clock.beat_at(h.clock.now()) / 4  # 4 beats after Start: on a bar line
            assert bar == pytest.approx(round(bar), abs=1e-3)
        if PPQN * 4 <= i < PPQN * 8 and i % 13 == 0:  # performer notes off the grid
            h.note(60 + i % 12)
        if PPQN * 4 <= i < PPQN * 8 and i % 13 == 6:
            h.off(60 + (i - 6) % 12)
        if i == PPQN * 8:
            h.osc_in("/typemoe/continue", 1.0)
        h.advance(period * (1.0 + 0.02 * ((i % 3) - 1)) if i % 2 else period)  # jittered pulse spacing
    ons = h.note_ons()
    assert len(ons) >= 4
    for t, _ in ons:  # every generated note-on falls on a 16th (6 pulses) of the DAW's grid
        k = (t - t_first_pulse) / (6 * period)
        assert abs(k - round(k)) * 6 * period < 1e-3 + EARLY


def test_tempo_command_and_clock_ignoring_it_while_synced():
    h = Harness()
    h.osc_in("/typemoe/tempo", 90.0)
    assert h.engine.clock.tempo == pytest.approx(90.0)
    h.midi_in(0xF8)
    h.osc_in("/typemoe/tempo", 150.0)
    assert "MIDI clock" in h.sent("/typemoe/error")[-1][0]


def test_bad_osc_input_is_answered_and_rate_limited():
    h = Harness()
    bad = [
        ("/typemoe/note", ("x", 1)),
        ("/typemoe/note", (60,)),
        ("/typemoe/nope", ()),
        ("/typemoe/set", ("bars", 1000.0)),
        ("/typemoe/set", ("wings", 1)),
        ("/typemoe/condition", ("H major", "")),
        ("/typemoe/tempo", (float("nan"),)),
        ("/typemoe/continue", ("two",)),
        ("/other", (1, 2)),
    ]
    for address, args in bad:
        h.osc_in(address, *args)
    assert len(h.sent("/typemoe/error")) == len(bad)
    for _ in range(1000):  # a flood in the same instant: replies stay bounded
        h.osc_in("/typemoe/bogus")
    assert len(h.sent("/typemoe/error")) <= 25
    assert h.engine.stats.counts["errors_suppressed"] > 900
    h.osc_in("/typemoe/ping")
    assert h.sent("/typemoe/pong") == [()]


def test_set_condition_and_reset():
    h = Harness()
    h.osc_in("/typemoe/set", "temperature", 0.5)
    h.osc_in("/typemoe/set", "mode", "respond")
    h.osc_in("/typemoe/set", "bars", 3)
    assert (h.engine.cfg.temperature, h.engine.cfg.mode, h.engine.cfg.bars) == (0.5, "respond", 3.0)
    h.osc_in("/typemoe/condition", "A minor", "6/8")
    v = toy_vocab()
    assert h.reconditions[-1] == (v.id("Key_A_minor"), v.id("Meter_6/8"))
    h.play(C_MAJOR_TUNE[:4])
    h.osc_in("/typemoe/reset")
    assert h.resets == 1 and h.engine._origin is None


def test_pd_style_float_arguments_are_accepted():
    h = Harness()
    h.osc_in("/typemoe/note", 60.0, 100.0)
    h.advance_beats(1)
    h.osc_in("/typemoe/note", 60.0, 0.0)
    h.advance_beats(1)
    assert h.fed and not h.sent("/typemoe/error")


def test_note_flood_is_bounded_and_counted():
    h = Harness({"max_notes_per_s": 200.0})
    for i in range(10_000):  # 10,000 note-ons within 1 s, no note-offs
        h.note(21 + i % 88)
        h.clock.advance(0.0001)
    assert h.engine.stats.counts["notes_dropped"] > 9000
    assert len(h.engine._held) <= 88
    h.advance_beats(h.engine.cfg.max_note_beats + 2)  # held notes are cut for the model, the stream drains
    assert h.engine.stats.counts["notes_cut"] > 0 and not h.engine._held
    assert not h.engine._tok._closed


def test_orphan_note_offs_sysex_and_running_status():
    h = Harness()
    h.off(61)
    h.midi_in(0xF0, 0x7E, 0x7F, 0x09, 0x01, 0xF7)
    h.midi_in(0x90, 60, 90, 62, 90, 64, 90)  # running status: three note-ons in one packet
    assert set(h.engine._held) == {60, 62, 64}
    h.midi_in(0x90, 60, 0, 0xF8, 62, 0)  # a clock pulse inside a running-status run
    assert set(h.engine._held) == {64}
    h.midi_in(0x90, 200, 1)  # out of range data byte: dropped
    h.midi_in(0x99)  # truncated
    assert h.engine.stats.counts["orphan_note_offs"] == 1
    h.handle(Tick(h.clock.now()))


def test_note_reaches_the_model_at_its_note_off_or_when_the_grid_makes_it_final():
    h = Harness()
    fed_at: list[float] = []
    run = h.run

    def spy(actions):
        fed_at.extend(h.clock.now() for a in actions if type(a).__name__ == "Feed")
        run(actions)

    h.run = spy
    spb = h.engine.clock.seconds_per_beat
    h.advance_beats(1.0 - h.engine.clock.beat_at(h.clock.now()) % 1.0)  # on a beat
    h.note(60)
    h.advance_beats(0.9)
    h.off(60)  # a long note is final at its note-off: no grid wait
    assert fed_at and fed_at[-1] == h.clock.now()
    h.advance_beats(0.1)  # back on a grid line
    h.note(62)
    t_on = h.clock.now()
    h.advance_beats(0.05)
    h.off(62)  # a 1/20-beat note: final once the grid passes half a 16th after its onset
    n = len(fed_at)
    h.advance_beats(0.5)
    assert len(fed_at) == n + 1
    assert 0.125 * spb <= fed_at[-1] - t_on <= 0.125 * spb + 0.002
    assert h.engine.stats.series["analysis_ms"]  # counted from the note-off stamp


def test_a_note_waiting_for_a_held_bass_counts_latency_from_the_bass_release():
    """E played over a bass C held from an earlier beat sorts after C (REMI orders by onset), so it enters
    the stream only when C ends. Its analysis latency counts from C's note-off, the event that made it
    final, not from E's own, which would add the beats the bass was held (the cause of a 4.3 s "analysis"
    p99 in the bridge benchmark's held-chord tune)."""
    h = Harness()
    feeds = []
    run = h.run

    def spy(actions):
        feeds.extend(a for a in actions if type(a).__name__ == "Feed")
        run(actions)

    h.run = spy
    h.advance_beats(1.0 - h.engine.clock.beat_at(h.clock.now()) % 1.0)
    h.note(48)
    h.advance_beats(1.0)
    h.note(64)
    h.advance_beats(0.5)
    h.off(64)
    h.advance_beats(4.0)
    assert not feeds  # E waits for the bass
    h.off(48)
    t_bass_off = h.clock.now()
    h.advance_beats(0.5)
    assert [f.cause_t for f in feeds] == [t_bass_off]


def test_pacer_spreads_a_burst_in_order():
    import asyncio

    from typemoe.bridge.daemon import Pacer

    async def main():
        loop = asyncio.get_running_loop()
        sent: list[tuple[float, int]] = []
        pacer = Pacer(loop, lambda d: sent.append((loop.time(), d[1])), burst=8, window=0.0015)
        for p in range(20):
            pacer.send((0x90, p, 100))
        first = [p for _, p in sent]
        assert first == list(range(8))  # the first window goes at once
        pacer.drain()  # (normally call_at timers send the rest)
        return [p for _, p in sent]

    assert asyncio.run(main()) == list(range(20))


def _chunks_after_each_note(tokens: tuple[int, ...]) -> list[tuple[int, ...]]:
    ends = toy_vocab().family_of[list(tokens)] == 4  # Duration
    chunks, cur = [], []
    for i, end in zip(tokens, ends):
        cur.append(i)
        if end:
            chunks.append(tuple(cur))
            cur = []
    return chunks + [tuple(cur)]


def test_a_continuation_in_chunks_plays_exactly_like_one_in_a_piece():
    played = []
    for chunked in (False, True):
        h = Harness(auto_generate=False)
        h.play(C_MAJOR_TUNE[:8])
        h.osc_in("/typemoe/continue", 2.0)
        (g,) = h.generates
        tokens = tuple(h.session.fork().generate(n_bars=g.n_bars, temperature=0.0, seed=0))
        if chunked:
            *parts, last = _chunks_after_each_note(tokens)
            assert len(parts) >= 8
            h.handle(Generated(g.request_id, parts[0], None, h.clock.now(), done=False))
            assert h.engine.playing and h.engine._pending is not None  # scheduled before the rest exists
            for part in parts[1:]:
                h.handle(Generated(g.request_id, part, None, h.clock.now(), done=False))
            h.handle(Generated(g.request_id, last, None, h.clock.now(), done=True))
        else:
            h.complete(g, tokens)
        assert h.engine._pending is None
        h.advance_beats(12)
        played.append([(round(t - h.t0, 9), d) for t, d in h.midi])
    assert played[0] == played[1] and len(played[0]) >= 16


def test_generation_is_cancelled_when_its_notes_are_no_longer_wanted():
    h = Harness(auto_generate=False)
    h.play(C_MAJOR_TUNE[:4])
    h.osc_in("/typemoe/continue", 1.0)
    (g,) = h.generates
    h.midi_in(0x90, 64, 80)  # the performer plays on: the pending continuation is dropped and stopped
    assert h.cancels == [g.request_id] and h.engine._pending is None
    h.midi_in(0x80, 64, 0)
    h.osc_in("/typemoe/continue", 1.0)
    g2 = h.generates[-1]
    tokens = tuple(h.session.fork().generate(n_bars=4, temperature=0.0, seed=0))  # 4 bars for 1 wanted
    chunks = _chunks_after_each_note(tokens)
    for part in chunks:
        h.handle(Generated(g2.request_id, part, None, h.clock.now(), done=False))
        if h.engine._pending is None:
            break
    assert h.cancels[-1] == g2.request_id  # the notes past the bar were not worth sampling
    h.advance_beats(8)
    onsets = [o for _, _, o, _ in h.sent("/typemoe/note")]
    assert onsets and max(onsets) - min(onsets) < 4.0
    assert not h.hanging()


def test_a_silent_continuation_is_sampled_again_twice_at_most():
    h = Harness(auto_generate=False, cfg_overrides={"seed": 11})
    h.play(C_MAJOR_TUNE[:4])
    h.osc_in("/typemoe/continue", 1.0)
    bar = toy_vocab().id("Bar_None")
    for attempt in range(3):
        g = h.generates[-1]
        assert len(h.generates) == attempt + 1 and g.seed == 11 + attempt
        h.handle(Generated(g.request_id, (bar,), None, h.clock.now(), done=True))  # an empty bar
    assert len(h.generates) == 3 and h.engine._pending is None  # gave up after two retries
    h.osc_in("/typemoe/continue", 1.0)
    h.complete(h.generates[-1])
    assert h.engine.playing and h.engine.stats.series["first_note_ms"]
