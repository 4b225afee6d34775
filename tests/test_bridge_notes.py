"""Note bookkeeping on the pure engine (FakeClock): every note sent ends on the channel it was played on,
every stop sends All Notes Off on the channels used, and a cut continuation is released a second time."""

from __future__ import annotations

import pytest
from bridge_fixtures import C_MAJOR_TUNE, Harness, hanging_notes

from typemoe.bridge.engine import CONFIRM_S


def _playing(overrides=None) -> Harness:
    h = Harness(overrides or {})
    h.play(C_MAJOR_TUNE[:4])
    h.osc_in("/typemoe/continue", 4.0)
    h.advance_beats(1.7)
    assert h.engine._play.sounding, "the toy continuation should be sounding"
    return h


def _past_next_bar(h: Harness, beats: float) -> None:
    """Advance to `beats` after the next 4-beat bar line, where a continuation asked for now starts."""
    beat = h.engine.clock.beat_at(h.clock.now())
    h.advance_beats((beat // 4 + 1) * 4 + beats - beat)


def _strict_hanging(h: Harness) -> set[tuple[int, int]]:
    """Hanging notes when every All Notes Off is lost on the way: only note-offs count."""
    return hanging_notes(d for _, d in h.midi if not (d[0] & 0xF0 == 0xB0 and d[1] == 123))


def test_all_notes_off_at_start_and_again_a_moment_later():
    h = Harness({"out_channel": 3})
    assert h.midi[0][1] == (0xB2, 123, 0)
    h.advance(2 * CONFIRM_S)
    assert [d for _, d in h.midi] == [(0xB2, 123, 0)] * 2


def test_channel_change_during_playback_ends_notes_on_their_own_channel():
    h = _playing()
    played = {(d[0] & 0x0F, d[1]) for _, d in h.midi if d[0] & 0xF0 == 0x90 and d[2] > 0}
    assert {ch for ch, _ in played} == {0}
    h.osc_in("/typemoe/set", "out_channel", 5)
    assert not _strict_hanging(h)  # note-offs went out on channel 1, where the notes were played
    h.osc_in("/typemoe/continue", 2.0)
    _past_next_bar(h, 0.7)
    assert any(d[0] == 0x94 for _, d in h.midi)  # the new continuation plays on channel 5
    h.osc_in("/typemoe/panic")
    assert not _strict_hanging(h)
    offs = {d[0] for _, d in h.midi[-4:]}
    assert {0xB0, 0xB4} <= {d[0] for _, d in h.midi if d[1] == 123}  # All Notes Off on both channels
    assert offs


@pytest.mark.parametrize(
    "stop",
    [
        lambda h: h.osc_in("/typemoe/panic"),
        lambda h: h.osc_in("/typemoe/reset"),
        lambda h: h.midi_in(0xFC),  # DAW Stop
        lambda h: h.note(50),  # the performer takes over
        lambda h: h.run(h.engine.release_all()),  # shutdown
    ],
    ids=["panic", "reset", "daw_stop", "takeover", "shutdown"],
)
def test_every_stop_releases_then_confirms(stop):
    h = _playing()
    cut = set(h.engine._play.sounding)
    n = len(h.midi)
    stop(h)
    first = [d for _, d in h.midi[n:]]
    assert {(d[0] & 0x0F, d[1]) for d in first if d[0] & 0xF0 == 0x80} >= cut
    assert (0xB0, 123, 0) in first
    assert not hanging_notes(first_ := [d for _, d in h.midi]) and first_
    n = len(h.midi)
    h.advance(CONFIRM_S * 0.5)
    assert all(d[1] != 123 for _, d in h.midi[n:])  # not yet
    h.advance(CONFIRM_S)
    second = [d for _, d in h.midi[n:]]
    assert {(d[0] & 0x0F, d[1]) for d in second if d[0] & 0xF0 == 0x80} >= cut  # released again
    assert (0xB0, 123, 0) in second


def test_confirmation_alone_ends_notes_whose_first_note_offs_were_lost():
    h = _playing()
    n, t_panic = len(h.midi), h.clock.now()
    h.osc_in("/typemoe/panic")
    h.advance(2 * CONFIRM_S)
    before = [d for _, d in h.midi[:n]]
    assert hanging_notes(before)
    survived = before + [d for t, d in h.midi[n:] if t > t_panic]  # the link dropped the whole first release
    assert not hanging_notes(survived)


def test_a_natural_end_is_followed_by_all_notes_off():
    h = Harness()
    h.play(C_MAJOR_TUNE[:4])
    h.osc_in("/typemoe/continue", 1.0)
    h.advance_beats(12)
    assert h.note_ons() and not h.engine.playing
    last_on = max(i for i, (_, d) in enumerate(h.midi) if d[0] & 0xF0 == 0x90 and d[2] > 0)
    assert (0xB0, 123, 0) in [d for _, d in h.midi[last_on:]]


def test_confirmation_does_not_cut_a_new_continuation():
    h = _playing()
    h.osc_in("/typemoe/continue", 4.0)  # a new continuation replaces the old one at once
    _past_next_bar(h, 0.2)  # it starts on the next bar line; the confirmation of the cut notes came before
    sounding = set(h.engine._play.sounding)
    assert sounding and sounding <= hanging_notes(d for _, d in h.midi)


def test_unhandled_command_is_an_error_not_a_reset():
    from typemoe.bridge import osc_api

    h = Harness()
    h.play(C_MAJOR_TUNE[:4])
    before = h.resets
    out: list = []
    with pytest.raises(osc_api.OscInputError, match="no handler"):
        h.engine._command(osc_api.SimpleCmd("bogus"), h.clock.now(), out)
    assert h.resets == before and not out


def test_same_condition_twice_re_prefills_once():
    h = Harness()
    for _ in range(50):
        h.osc_in("/typemoe/condition", "A minor", "")
    assert len(h.reconditions) == 1
    h.osc_in("/typemoe/condition", "free", "")
    assert len(h.reconditions) == 2


# ---- the readout -----------------------------------------------------------------------------------------


def test_a_held_chord_is_analysed_at_note_on_not_at_its_end():
    h = Harness({"analysis_every_note": True})
    h.play(C_MAJOR_TUNE[:2])
    n = len(h.sent("/typemoe/key"))
    for pitch in (57, 61, 64):  # A major chord, held
        h.note(pitch)
    assert h.probes >= 3
    assert len(h.sent("/typemoe/key")) > n  # answered while the chord is still held
    assert h.engine._tok.n_open == 3


def test_hysteresis_keeps_the_reported_key_until_another_leads_by_the_margin():
    import numpy as np

    from typemoe.bridge.engine import KEY_MARGIN
    from typemoe.bridge.events import Analysis

    h = Harness({"analysis_every_note": True})
    names = h.engine.key_names
    a, fs = names.index("A major"), names.index("F# minor")

    def probs(pa: float, pfs: float) -> np.ndarray:
        p = np.full(len(names), (1.0 - pa - pfs) / (len(names) - 2))
        p[a], p[fs] = pa, pfs
        return p

    meters = np.full(len(h.engine.meter_names), 1.0 / len(h.engine.meter_names))
    for pa, pfs in [(0.40, 0.30), (0.34, 0.38), (0.30, 0.40), (0.36, 0.33), (0.31, 0.39)]:
        h.handle(Analysis(probs(pa, pfs), meters, h.clock.now(), h.clock.now()))
    assert {k for k, _ in h.sent("/typemoe/key")} == {"A major"}  # relative keys crossing: no flip
    h.handle(Analysis(probs(0.20, 0.20 + KEY_MARGIN + 0.05), meters, h.clock.now(), h.clock.now()))
    assert h.sent("/typemoe/key")[-1][0] == "F# minor"
    assert h.engine.stats.counts["key_changes"] == 1
