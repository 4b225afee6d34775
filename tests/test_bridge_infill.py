"""/typemoe/infill in the bridge (issue 16): bars heard since the last reset or Start, rewritten.

Pure engine under a FakeClock first (no sleeps): the model job is answered in the same thread by
bridge.infill.answer, on the toy model or on the one decoder over flat logits (typemoe.infill's
SpanGrammar alone decides where its notes go). Then one test over a private jackd and UDP with the tiny
exported test model (tests/export_fixtures.py; the toy model where it cannot be built).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import bridge_fixtures
import pytest
from bridge_fixtures import C_MAJOR_TUNE, Harness, toy_vocab
from bridge_jack_fixtures import JACKD, MidiRecv, MidiSend, OscPeer, free_udp_port, start_bridge, stop_process
from test_bridge_steer import FlatModel

from typemoe.bridge import infill
from typemoe.bridge.events import InfillJob
from typemoe.streaming import BeatNote

PERIOD = 60.0 / 120.0 / 24  # MIDI clock pulse at the Harness's 120 BPM


@dataclass
class InfillHarness(Harness):
    """Harness whose model thread also answers InfillJob (synchronously, with `infill_model`)."""

    infill_model: object = None
    hold: bool = False  # keep jobs in self.jobs instead of answering them

    def __post_init__(self) -> None:
        self.jobs: list[InfillJob] = []
        super().__post_init__()

    def run(self, actions: list) -> None:
        rest = []
        for a in actions:
            if isinstance(a, InfillJob):
                self.jobs.append(a)
                if not self.hold:
                    self.handle(infill.answer(self.infill_model or self.model, a, self.clock.now))
            else:
                rest.append(a)
        super().run(rest)


def _phrase(h: Harness) -> float:
    """The 4-bar C major tune (16 beats from a bar line); returns the timeline beat of its bar 1."""
    now = h.engine.clock.beat_at(h.clock.now())
    start = math.floor(now / 4) * 4 + 4
    h.play(C_MAJOR_TUNE, start_beat=start)
    h.advance_beats(0.5)
    return start


def _phrase_of(h: Harness, notes) -> float:
    """`notes` from the next 4-beat line (bar 1 of the heard bars); returns its timeline beat."""
    now = h.engine.clock.beat_at(h.clock.now())
    start = math.floor(now / 4) * 4 + 4
    h.play(notes, start_beat=start)
    h.advance_beats(0.5)
    return start


def _answer(h: Harness) -> tuple[tuple, list[tuple]]:
    """The /typemoe/infill reply and the /typemoe/note replies since it (pitch, vel, beat, dur)."""
    (ack,) = h.sent("/typemoe/infill")
    k = next(i for i, (_, a, args) in enumerate(h.osc) if a == "/typemoe/infill")
    return ack, [args for _, a, args in h.osc[k:] if a == "/typemoe/note"]


# ---- arguments -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, needle",
    [
        (("x", 3), "start_bar must be a number, got 'x"),
        ((2.5, 3), "start_bar must be a whole number in 1..100000, got 2.5"),
        ((2, None), "end_bar must be a number, got None"),
        ((0, 2), "got 0"),
        ((3, 2), "start_bar 3 is after end_bar 2"),
        ((2,), "takes start_bar i, end_bar i"),
        ((1, 9), "bars 1-9 are 9 bars; the model infills at most 8"),
        ((2, 6), "end_bar 6 not heard yet: 5 bar(s) of 4/4 heard"),
    ],
)
def test_bad_arguments_are_answered_with_an_error_naming_the_value(args, needle):
    h = InfillHarness()
    _phrase(h)
    h.osc_in("/typemoe/infill", *args)
    (err,) = h.sent("/typemoe/error")
    assert needle in err[0]
    assert not h.jobs and not h.sent("/typemoe/infill")


def test_nothing_heard_since_a_reset_is_an_error():
    h = InfillHarness()
    h.osc_in("/typemoe/infill", 1, 1)
    assert "nothing heard since the last reset or Start" in h.sent("/typemoe/error")[-1][0]
    _phrase(h)
    h.osc_in("/typemoe/reset")
    h.osc_in("/typemoe/infill", 2, 3)
    assert "nothing heard" in h.sent("/typemoe/error")[-1][0] and not h.jobs


def test_a_model_without_the_infill_tokens_is_refused_by_name(monkeypatch):
    from export_fixtures import legacy_vocab

    old = legacy_vocab()  # a vocabulary from before infilling
    assert not any(t.startswith("Infill_") for t in old.tokens)
    monkeypatch.setattr(bridge_fixtures, "toy_vocab", lambda: old)
    h = InfillHarness()
    _phrase(h)
    h.osc_in("/typemoe/infill", 2, 3)
    (err,) = h.sent("/typemoe/error")
    assert "cannot infill" in err[0] and "Infill_Suffix, Infill_Middle, Infill_End" in err[0]
    assert not h.jobs and not h.hanging()
    # the model thread refuses it too (a job that got there anyway): an error event, not an exception
    job = InfillJob(1, ((0, 4, 60, 90),), 2, 3)
    ev = infill.answer(FlatModel(old), job, lambda: 0.0)
    assert ev.notes == () and "Infill_Suffix" in ev.error


# ---- placement ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["toy", "decoder"])
def test_the_answer_fills_the_asked_bars_and_plays_from_the_next_bar_line(model):
    h = InfillHarness(infill_model=FlatModel(toy_vocab()) if model == "decoder" else None)
    h.osc_in("/typemoe/set", "seed", 3)
    bar1 = _phrase(h)
    h.osc_in("/typemoe/infill", 2, 3)
    (job,) = h.jobs
    assert (job.first_bar, job.last_bar, job.seed) == (2, 3, 3)
    onsets = sorted(n[0] for n in job.notes)  # grid ticks from bar 1: every heard note but bars 2-3's
    assert onsets == [4 * i for i in range(16) if not 4 <= i < 12]
    now = h.engine.clock.beat_at(h.clock.now())
    h.advance_beats(14)
    (first, last, n, start), notes = _answer(h)
    assert (first, last) == (2, 3) and n == len(notes) > 0
    assert (start - bar1) % 4 == 0 and now < start <= now + 4  # the next bar line of the heard bars
    for _, _, beat, dur in notes:
        assert start <= beat < start + 8 and beat + dur <= start + 8 + 1e-9, (beat, dur, start)
    assert len(h.note_ons()) == n and not h.hanging() and not h.engine.playing


def test_the_suffix_weight_is_a_setting_that_reaches_the_decoder(monkeypatch):
    """/typemoe/set suffix_weight W reaches start_middle (default typemoe.infill.SUFFIX_WEIGHT); a bad value
    is answered with an error naming it, and the setting stays."""
    from typemoe.infill import SUFFIX_WEIGHT

    seen = []
    real = infill.start_middle
    monkeypatch.setattr(
        infill, "start_middle", lambda *a, **kw: seen.append(kw["suffix_weight"]) or real(*a, **kw)
    )
    h = InfillHarness(infill_model=FlatModel(toy_vocab()))
    _phrase(h)
    h.osc_in("/typemoe/infill", 2, 3)
    h.osc_in("/typemoe/set", "suffix_weight", 1)
    h.osc_in("/typemoe/infill", 2, 3)
    for bad in (-0.5, 9, "x"):
        h.osc_in("/typemoe/set", "suffix_weight", bad)
        assert str(bad) in h.sent("/typemoe/error")[-1][0]
    assert [j.suffix_weight for j in h.jobs] == [SUFFIX_WEIGHT, 1.0] == seen
    assert h.engine.cfg.suffix_weight == 1.0


def test_a_new_request_panic_and_reset_end_the_notes_of_an_answer():
    h = InfillHarness()
    _phrase(h)
    for stop in ("/typemoe/infill", "/typemoe/panic", "/typemoe/reset"):
        h.osc_in("/typemoe/infill", 1, 4)
        h.advance_beats(4.5)  # into its first bar: notes sounding
        assert h.engine.playing and h.hanging()
        h.osc_in(stop, *((2, 3) if stop == "/typemoe/infill" else ()))
        assert not h.hanging(), stop
        h.advance_beats(0.5)
    h.advance_beats(12)
    assert not h.hanging() and not h.engine.playing


def test_a_performer_playing_along_does_not_stop_the_answer():
    h = InfillHarness()
    _phrase(h)
    h.osc_in("/typemoe/infill", 1, 2)
    h.advance_beats(4.25)
    assert h.sent("/typemoe/note")
    h.play([(0.0, 0.5, 48)])
    h.advance_beats(8)
    (_, _, n, _), _ = _answer(h)
    assert len(h.sent("/typemoe/note")) == n and not h.hanging()


# ---- a looping DAW --------------------------------------------------------------------------------------


def _daw(h: Harness, beats: float, notes=(), spp_at_end: int | None = None) -> None:
    """MIDI clock for `beats` DAW beats from the current pulse, with (DAW beat in this run, dur, pitch)
    notes played on their pulses; then a Song Position Pointer (a loop's jump back) if asked."""
    events = sorted(
        [(round(o * 24), 1, p) for o, d, p in notes] + [(round((o + d) * 24), 0, p) for o, d, p in notes]
    )
    for k in range(round(beats * 24)):
        while events and events[0][0] == k:
            _, on, pitch = events.pop(0)
            (h.note if on else h.off)(pitch)
        h.midi_in(0xF8)
        h.advance(PERIOD)
    if spp_at_end is not None:
        h.midi_in(0xF2, spp_at_end & 0x7F, spp_at_end >> 7)


def test_under_a_looping_daw_the_answer_plays_at_those_bars_on_the_next_pass_once():
    h = InfillHarness({"clock": "midi"})
    h.midi_in(0xFA)  # Start: the next pulse is the DAW's beat 0
    _daw(h, 16, C_MAJOR_TUNE, spp_at_end=0)  # pass 1: the phrase over DAW bars 1-4, then loop
    _daw(h, 2)  # pass 2, in bar 1
    zero = h.engine._daw_zero
    h.osc_in("/typemoe/infill", 2, 3)
    (job,) = h.jobs
    assert sorted(n[0] for n in job.notes) == [4 * i for i in range(16) if not 4 <= i < 12]
    _daw(h, 14, spp_at_end=0)  # the rest of pass 2: the answer plays in DAW bars 2-3
    (first, last, n, start), notes = _answer(h)
    assert start == zero + 4 and n == len(notes) > 0
    assert all(zero + 4 <= beat < zero + 12 for _, _, beat, _ in notes)
    _daw(h, 16)  # pass 3: played once, not again
    assert len(h.sent("/typemoe/note")) == n and not h.hanging()


def test_a_daw_stop_inside_the_span_ends_the_notes_and_the_next_pass_plays_it_whole():
    h = InfillHarness({"clock": "midi"})
    h.midi_in(0xFA)
    _daw(h, 16, C_MAJOR_TUNE, spp_at_end=0)
    h.osc_in("/typemoe/infill", 2, 3)
    _daw(h, 6)  # pass 2, into the answer's first bar (DAW bar 2)
    played = len(h.sent("/typemoe/note"))
    assert played > 0 and h.hanging()
    h.midi_in(0xFC)  # Stop
    assert not h.hanging()
    h.advance(1.0)
    h.midi_in(0xFA)  # Start from the top: the heard bars are forgotten, the answer plays again
    _daw(h, 13)
    acks = h.sent("/typemoe/infill")
    assert len(acks) == 2 and len(h.sent("/typemoe/note")) == played + acks[1][2]
    assert not h.hanging()


def test_heard_notes_are_bounded():
    """A request reads the last HEARD_BARS bars up to the furthest one reached; the notes kept are bounded
    in number (the oldest forgotten first)."""
    h = InfillHarness()
    inf = h.engine._infill
    for bar in range(infill.HEARD_BARS + 8):
        inf.heard([BeatNote(bar * 4.0, 1.0, 60, 90)], 0.0)
    assert sorted(inf.bars_heard(4.0)) == list(range(8, infill.HEARD_BARS + 8))
    for _ in range(3 * infill.HEARD_BARS * infill.NOTES_PER_BAR // 1000):
        inf.heard([BeatNote(0.001 * j, 0.5, 60, 90) for j in range(1000)], 0.0)
    assert len(inf._heard) == infill.HEARD_BARS * infill.NOTES_PER_BAR


# ---- bars of the music's meter -------------------------------------------------------------------------

WALTZ = [
    (i * 1.0, 0.9, p) for i, p in enumerate([60, 64, 67, 62, 65, 69, 64, 67, 72, 60, 64, 67])
]  # 4 bars of 3


@pytest.mark.parametrize("model", ["toy", "decoder"])
def test_a_three_four_condition_counts_and_fills_three_beat_bars(model, monkeypatch):
    """Under /typemoe/condition "" "3/4", /typemoe/infill 2 3 means beats 3-9 of the phrase: those notes
    are cut, the job asks for 3/4 (the decoder writes the middle in 3-beat bars), and the answer plays
    from a 3-beat bar line of the heard bars, inside its 6 beats."""
    seen = []
    real = infill.start_middle
    monkeypatch.setattr(
        infill,
        "start_middle",
        lambda *a, **kw: seen.append((kw["n_bars"], kw["bar_beats"])) or real(*a, **kw),
    )
    h = InfillHarness(infill_model=FlatModel(toy_vocab()) if model == "decoder" else None)
    h.osc_in("/typemoe/condition", "", "3/4")
    h.osc_in("/typemoe/set", "seed", 2)
    bar1 = _phrase_of(h, WALTZ)
    h.osc_in("/typemoe/infill", 4, 6)  # 12.5 beats: into bar 5 of 3/4 (of 4/4 it would be bar 4)
    assert "end_bar 6 not heard yet: 5 bar(s) of 3/4" in h.sent("/typemoe/error")[-1][0]
    h.osc_in("/typemoe/infill", 2, 3)
    (job,) = h.jobs
    assert job.meter == "3/4"
    assert sorted(n[0] for n in job.notes) == [4 * i for i in range(12) if not 3 <= i < 9]
    now = h.engine.clock.beat_at(h.clock.now())
    h.advance_beats(12)
    (first, last, n, start), notes = _answer(h)
    assert (first, last) == (2, 3) and n == len(notes) > 0
    assert (start - bar1) % 3 == 0 and now < start <= now + 3  # the next 3/4 bar line of the heard bars
    for _, _, beat, dur in notes:
        assert start <= beat < start + 6 and beat + dur <= start + 6 + 1e-9, (beat, dur, start)
    assert not h.hanging()
    assert seen == ([(2, 3.0)] if model == "decoder" else [])  # two bars of 3 beats


def test_under_a_daw_in_three_four_the_answer_plays_on_its_bars():
    h = InfillHarness({"clock": "midi"})
    h.osc_in("/typemoe/condition", "", "3/4")
    h.midi_in(0xFA)
    _daw(h, 12, WALTZ, spp_at_end=0)  # pass 1: DAW bars 1-4 of 3/4, then loop
    _daw(h, 1)
    zero = h.engine._daw_zero
    h.osc_in("/typemoe/infill", 2, 3)
    (job,) = h.jobs
    assert job.meter == "3/4" and sorted(n[0] for n in job.notes) == [
        4 * i for i in range(12) if not 3 <= i < 9
    ]
    _daw(h, 11, spp_at_end=0)
    (_, _, n, start), notes = _answer(h)
    assert start == zero + 3 and n == len(notes) > 0
    assert all(zero + 3 <= beat < zero + 9 for _, _, beat, _ in notes)
    assert not h.hanging()


# ---- over JACK and UDP ------------------------------------------------------------------------------------

try:
    import rtmidi

    _JACK_MIDI = rtmidi.API_UNIX_JACK in rtmidi.get_compiled_api()
except ImportError:
    _JACK_MIDI = False

JACK_BPM = 300.0  # a 4-beat bar is 0.8 s


@pytest.mark.jack
@pytest.mark.skipif(JACKD is None, reason="jackd is not installed (apt-get install jackd2)")
@pytest.mark.skipif(not _JACK_MIDI, reason="python-rtmidi lacks JACK")
@pytest.mark.parametrize("which", ["tiny", "shipped"])
def test_jack_a_phrase_then_infill_2_3_brings_notes_inside_bars_2_3(jack, model_arg, tmp_path, which):
    """The tiny exported model (or the toy one), and the shipped model, which infills since 2026-12-02."""
    from typemoe.shipped import default_model_dir

    if which == "shipped":
        model_arg = str(default_model_dir())
    osc_port = free_udp_port()
    peer = OscPeer(osc_port)
    log = tmp_path / "bridge.log"
    proc = start_bridge(
        *("--midi-api", "jack", "--model", model_arg, "--mode", "manual", "--clock", "internal"),
        *("--tempo", str(JACK_BPM), "--seed", "1", "--stats-every-s", "0"),
        *("--osc-port", str(osc_port), "--reply-port", str(peer.port)),
        *("--in-port", "Infill In", "--out-port", "Infill Out"),
        log_path=log,
    )
    recv = send = None
    try:
        assert peer.ping_until_pong(90.0), log.read_text()[-4000:]
        recv = MidiRecv(connect="Infill Out", name="Infill Recv")
        send = MidiSend("Infill In", name="Infill Send")
        spb = 60.0 / JACK_BPM
        t0 = time.monotonic() + 0.1
        events = sorted([(o, 1, p) for o, _, p in C_MAJOR_TUNE] + [(o + d, 0, p) for o, d, p in C_MAJOR_TUNE])
        for beat, on, pitch in events:  # 16 beats: the heard bars 1-4 (5 if it began mid-bar)
            if (dt := t0 + beat * spb - time.monotonic()) > 0:
                time.sleep(dt)
            send.send(0x90 if on else 0x80, pitch, 96 if on else 0)
        time.sleep(0.3)
        peer.send("/typemoe/infill", 2, 3)
        acks = peer.wait_for("/typemoe/infill", 30.0)
        assert acks, f"no /typemoe/infill reply: {peer.received[-5:]}\n{log.read_text()[-4000:]}"
        first, last, n, start = acks[0]
        assert (first, last) == (2, 3) and n > 0
        notes = peer.wait_for("/typemoe/note", 8 * spb + 3.0, count=n)
        assert len(notes) == n, log.read_text()[-4000:]
        for _, _, beat, dur in notes:  # on the bridge timeline: inside the 2 bars from `start`
            assert start <= beat < start + 8 and beat + dur <= start + 8 + 1e-6, (beat, dur, start)
        # Notes can sound to the span's end, a bar or so away; the reports come before the first of them
        # sounds (a loaded fresh-clone CI run found no MIDI at all yet when it looked).
        end = time.monotonic() + 12 * spb + 2.0
        while time.monotonic() < end and (
            not recv.events or recv.hanging() or time.monotonic() - recv.events[-1][0] < 0.3
        ):
            time.sleep(0.05)
        # Every reported note is played; this VM's JACK may drop a couple in an overrun cycle (conftest's
        # `jack` fixture; a fresh-clone CI run once got 34 of 42 at 64-frame periods).
        assert n - 2 <= len(recv.note_ons()) <= n, (len(recv.note_ons()), n)
        assert not recv.hanging(), recv.events[-12:]
    finally:
        for port in (recv, send):
            if port is not None:
                port.close()
        code = stop_process(proc)
        peer.close()
    assert code == 0, log.read_text()[-4000:]
