"""Steerable continuations in the bridge (issue 13): guidance and key lock, meter-aware bar lines.

Pure engine under a FakeClock first (no sleeps): the continuation's window is chosen by the engine and
filled by the one decoder (typemoe.decoding) on a flat-logit engine, so only the decoder's masks decide
where notes go. Then the model thread's time base, the bench's guidance row, and at the end one test
through a real JACK server and UDP with the shipped model (skipped where either is missing).
"""

from __future__ import annotations

import math
import queue
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from bridge_fixtures import C_MAJOR_TUNE, Harness, toy_vocab
from bridge_jack_fixtures import (
    JACKD,
    ClockSender,
    MidiRecv,
    MidiSend,
    OscPeer,
    free_udp_port,
    start_bridge,
    stop_process,
)

from typemoe import analysis, decoding
from typemoe.bridge import continuation as cont
from typemoe.bridge.config import BridgeConfig
from typemoe.bridge.events import Analysis, Feed, Generated
from typemoe.bridge.worker import ContextPolicy, ModelThread
from typemoe.key_steering import DEFAULT_HEAD_GUIDANCE
from typemoe.meter_steering import DEFAULT_METER_GUIDANCE, METER_GUIDANCE_MAX
from typemoe.sampling import DEFAULT_GUIDANCE
from typemoe.shipped import default_model_dir
from typemoe.streaming import TokenReader

F_SHARP_MAJOR = {6, 8, 10, 11, 1, 3, 5}  # pitch classes of F# major's scale


class FlatEngine:
    """A decoding.Engine whose logits are all zero: what it samples is decided by the decoder's masks
    (grammar, meter window, key lock), so a test sees exactly what the bridge asked the decoder for."""

    def __init__(self, vocab, context_len: int = 1024) -> None:
        self.vocab, self.context_len = vocab, context_len

    def new_cache(self):
        return None

    def copy_cache(self, dst, src, n_rows: int) -> None:
        pass

    def run(self, ids, past_len: int, cache) -> dict[str, np.ndarray]:
        T = len(ids)
        return {
            "logits": np.zeros((T, self.vocab.size), np.float32),  # (T, V)
            "key_logits": np.zeros((T, len(analysis.KEYS)), np.float32),  # (T, 24)
            "meter_logits": np.zeros((T, len(analysis.METERS)), np.float32),  # (T, M)
        }


class FlatModel:
    """The bridge's Model protocol over FlatEngine: sessions are the one decoder's."""

    def __init__(self, vocab, context_len: int = 1024) -> None:
        self.vocab, self.context_len = vocab, context_len
        self.key_names, self.meter_names = list(analysis.KEYS), list(analysis.METERS)
        self._engine = FlatEngine(vocab, context_len)

    def session(self) -> decoding.Session:
        return decoding.Session(self._engine)


def _decode(h: Harness, g, seed: int = 0) -> tuple[tuple[int, ...], object]:
    """What the model thread would sample for Generate `g` (the decoder on [BOS, controls, stream]) and
    the BarPlan it posts with them."""
    v = h.model.vocab
    session = FlatModel(v).session()
    session.feed([v.bos_id, *h.engine._control_ids, *h.fed])
    kw = cont.generate_kwargs(g, session) | {"seed": seed}
    plan = cont.bar_plan(g, session)
    return tuple(session.generate(**kw)), plan


def _continuation(h: Harness, bars: float) -> tuple[object, list[tuple]]:
    """Ask for `bars` bars, fill the request with the decoder, play it out: (request, /typemoe/note args)."""
    n0 = len(h.sent("/typemoe/note"))
    h.osc_in("/typemoe/continue", bars)
    g = h.generates[-1]
    tokens, plan = _decode(h, g)
    h.complete(g, tokens, plan=plan)
    h.advance_beats(bars * 6 + 8)
    return g, h.sent("/typemoe/note")[n0:]


def _waltz(h: Harness) -> float:
    """Two bars of a 3/4 tune begun off the bridge's 4-beat grid; returns the stream origin (timeline beat):
    free-running, the first note (bridge/engine.py `_stream_origin`)."""
    h.advance_beats(1.25)
    notes = [(0, 1, 66), (1, 1, 70), (2, 1, 73), (3, 2, 66), (5, 1, 68)]
    start = h.play([(o * 1.0, d - 0.1, p) for o, d, p in notes])
    assert h.engine._origin == pytest.approx(start)
    return h.engine._origin


# ---- the pure engine ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bars", [2.0, 3.0])
def test_a_three_four_condition_fills_three_beat_bars_from_a_three_four_bar_line(bars):
    h = Harness(auto_generate=False)
    h.osc_in("/typemoe/condition", "F# major", "3/4")
    origin = _waltz(h)
    trigger = h.engine.clock.beat_at(h.clock.now()) + 0.0
    g, notes = _continuation(h, bars)
    assert (g.meter, g.bars) == ("3/4", int(bars))
    assert g.start_beat % 3 == 0  # a 3/4 bar line of the stream (origin = its beat 0)
    onsets = sorted(o for _, _, o, _ in notes)
    assert onsets, "the decoder placed no note"
    first = onsets[0]
    assert first == origin + g.start_beat and trigger < first <= trigger + 3  # the next 3/4 bar line
    bar_of = [math.floor((o - origin) / 3 + 1e-9) for o in onsets]  # 3/4 bars counted from the origin
    assert (first - origin) % 3 == 0 and bar_of[0] == (first - origin) / 3  # enters on a downbeat
    assert set(bar_of) <= set(range(bar_of[0], bar_of[0] + int(bars)))  # `bars` 3-beat bars, no more
    assert all(abs(o * 4 - round(o * 4)) < 1e-9 for o in onsets)  # on the 16th grid
    assert not h.hanging()


def test_the_running_meter_estimate_is_used_when_none_is_asked():
    h = Harness(auto_generate=False)
    origin = _waltz(h)
    meters = np.full(len(analysis.METERS), 0.01, np.float32)
    meters[analysis.METERS.index("6/8")] = 0.9  # the model hears a jig
    keys = np.full(len(analysis.KEYS), 1 / 24, np.float32)
    h.handle(Analysis(keys, meters, h.clock.now(), h.clock.now()))
    assert h.sent("/typemoe/meter")[-1][0] == "6/8"
    g, notes = _continuation(h, 1.0)
    assert g.meter == "6/8" and g.start_beat % 3 == 0  # 6/8: three quarter-note beats a bar
    onsets = [o for _, _, o, _ in notes]
    assert onsets and min(onsets) == origin + g.start_beat and max(onsets) < origin + g.start_beat + 3


def test_without_a_meter_the_daw_bar_from_song_position_is_used():
    """MIDI clock with Song Position Pointer: 4/4 bars are the DAW's, whatever beat the bridge began on."""
    h = Harness({"clock": "midi"}, auto_generate=False)
    period = 60.0 / 120.0 / 24
    h.midi_in(0xF2, 10, 0)  # Song Position: 10 sixteenths = DAW beat 2.5
    h.midi_in(0xFB)  # Continue from there
    for _ in range(24 * 3):
        h.midi_in(0xF8)
        h.advance(period)
    clock = h.engine.clock
    h.osc_in("/typemoe/continue", 1.0)
    g = h.generates[-1]
    start = h.engine._origin + g.start_beat  # timeline
    daw_at_start = clock.daw_beat + (start - clock.beat_at(h.clock.now()))
    assert g.meter == "4/4" and daw_at_start == pytest.approx(round(daw_at_start / 4) * 4, abs=0.05)


def test_a_three_four_condition_follows_the_daw_bar_lines_under_midi_clock():
    h = Harness({"clock": "midi"}, auto_generate=False)
    period = 60.0 / 120.0 / 24
    h.osc_in("/typemoe/condition", "", "3/4")
    h.midi_in(0xF2, 20, 0)  # DAW beat 5: in its second 3/4 bar
    h.midi_in(0xFB)
    for _ in range(24 * 2):
        h.midi_in(0xF8)
        h.advance(period)
    clock = h.engine.clock
    h.osc_in("/typemoe/continue", 1.0)
    g = h.generates[-1]
    daw_at_start = clock.daw_beat + (h.engine._origin + g.start_beat - clock.beat_at(h.clock.now()))
    assert g.meter == "3/4" and daw_at_start == pytest.approx(9.0, abs=0.05)  # DAW bar 4 of 3/4 (beat 9)


def test_guidance_and_key_lock_are_settings_passed_to_the_decoder():
    h = Harness(auto_generate=False)
    h.osc_in("/typemoe/set", "guidance", 1.5)
    h.osc_in("/typemoe/set", "key_lock", 1)
    h.osc_in("/typemoe/condition", "F# major", "3/4")
    h.play(C_MAJOR_TUNE[:4])
    h.osc_in("/typemoe/continue", 1.0)
    g = h.generates[-1]
    assert (g.guidance, g.key_lock) == (1.5, "F# major")
    kw = cont.generate_kwargs(g, FlatModel(toy_vocab()).session())
    assert kw["guidance"] == 1.5 and kw["key_lock"] == "F# major" and kw["meter"] == "3/4"
    assert kw["on_downbeat"] and kw["n_bars"] == 1
    pitches = [p for p, *_ in _continuation(h, 2.0)[1]]
    assert pitches and {p % 12 for p in pitches} <= F_SHARP_MAJOR
    h.osc_in("/typemoe/set", "key_lock", "off")
    h.osc_in("/typemoe/set", "guidance", 1)
    h.osc_in("/typemoe/continue", 1.0)
    assert (h.generates[-1].guidance, h.generates[-1].key_lock) == (1.0, None)


@pytest.mark.parametrize(
    ("name", "default", "bad", "toml"),
    [
        ("head_guidance", DEFAULT_HEAD_GUIDANCE, (-1, 99, "x"), 2.5),
        ("meter_guidance", DEFAULT_METER_GUIDANCE, (-1, METER_GUIDANCE_MAX + 1, "x"), 1.5),
    ],
)
def test_a_guidance_weight_is_a_setting_passed_to_the_decoder(tmp_path, name, default, bad, toml):
    """/typemoe/set NAME W, --NAME and the TOML key reach generate_steps (default: typemoe.key_steering's
    DEFAULT_HEAD_GUIDANCE, typemoe.meter_steering's DEFAULT_METER_GUIDANCE); a bad value is refused by name
    and the setting stays."""
    from typemoe.bridge import cli, config

    flag = "--" + name.replace("_", "-")
    h = Harness(auto_generate=False)
    h.osc_in("/typemoe/condition", "F# major", "3/4")
    h.play(C_MAJOR_TUNE[:4])
    h.osc_in("/typemoe/continue", 1.0)
    h.osc_in("/typemoe/set", name, 0)
    h.osc_in("/typemoe/continue", 1.0)
    for value in bad:
        h.osc_in("/typemoe/set", name, value)
        error = h.sent("/typemoe/error")[-1][0]
        assert name in error and str(value) in error, error
    assert [getattr(g, name) for g in h.generates] == [default, 0.0] and default > 0
    kw = cont.generate_kwargs(h.generates[0], FlatModel(toy_vocab()).session())
    assert kw[name] == default and kw["meter"] == "3/4"
    path = tmp_path / "bridge.toml"
    path.write_text(f"{flag[2:]} = {toml}\n")
    assert getattr(config.make_config(config.load_toml(path)), name) == toml
    assert getattr(cli.build_parser().parse_args([flag, "0"]), name) == 0.0
    assert cli.main([flag, "-1", "--no-midi"]) == 2


def test_key_lock_without_an_asked_key_keeps_the_reported_key():
    h = Harness(auto_generate=False, cfg_overrides={"key_lock": True})
    h.play(C_MAJOR_TUNE)
    assert h.sent("/typemoe/key")[-1][0] == "C major"
    h.osc_in("/typemoe/continue", 1.0)
    assert h.generates[-1].key_lock == "C major"


@pytest.mark.parametrize(
    "name, value, needle",
    [("guidance", 0.5, "0.5"), ("guidance", -2, "-2"), ("guidance", "x", "x"), ("key_lock", 2, "2")],
)
def test_bad_guidance_and_key_lock_values_are_answered_with_an_error(name, value, needle):
    h = Harness()
    h.osc_in("/typemoe/set", name, value)
    (err,) = h.sent("/typemoe/error")
    assert name in err[0] and needle in err[0]
    assert (h.engine.cfg.guidance, h.engine.cfg.key_lock) == (DEFAULT_GUIDANCE, False)  # unchanged


def test_config_file_and_flags_carry_guidance_and_key_lock(tmp_path):
    from typemoe.bridge import cli, config

    path = tmp_path / "bridge.toml"
    path.write_text('guidance = 2.0\nkey-lock = true\ncondition_key = "F# major"\n')
    cfg = config.make_config(config.load_toml(path))
    assert (cfg.guidance, cfg.key_lock) == (2.0, True)
    assert BridgeConfig().guidance == DEFAULT_GUIDANCE > 1  # a condition is guided unless told otherwise
    args = cli.build_parser().parse_args(["--guidance", "1.5", "--key-lock"])
    assert (args.guidance, args.key_lock) == (1.5, True)
    for bad in ({"guidance": 0.9}, {"guidance": float("nan")}, {"key_lock": 1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            BridgeConfig(**bad)
    assert cli.main(["--guidance", "0.5", "--no-midi"]) == 2


# ---- the model thread: the decoder's time base survives context rebuilds --------------------------------


def test_the_window_start_is_the_engines_beat_after_the_context_was_rebuilt():
    """A small context is rebuilt several times while 20 bars stream in; the decoder must still count
    beats from the stream's start, or the continuation would land bars away from its bar line."""
    v = toy_vocab()
    bar, dur = v.id("Bar_None"), v.duration_token_id(4)
    ids: list[int] = []
    for _ in range(20):
        ids += [bar, v.id("Position_0"), v.id("Pitch_66"), int(v.velocity_id[80]), dur]
    results: queue.Queue = queue.Queue()
    w = ModelThread(FlatModel(v, context_len=48), results.put, lambda: 0.0)
    w.start()
    for k in range(0, len(ids), 5):
        w.submit(Feed(tuple(ids[k : k + 5]), 0.0))
    reader = TokenReader(v)
    reader.read(ids)  # the engine's cursor: bar 19
    start = 19 * 4 + 3.0  # the second 3/4 bar line after the last note (stream beats)
    w.submit(cont.SteeredGenerate(1, 3, 1.0, 1.0, 5, meter="3/4", bars=1, start_beat=start))
    got: list[int] = []
    plans = []
    while True:
        ev = results.get(timeout=20)
        if isinstance(ev, Generated):
            assert ev.error is None, ev.error
            got += ev.tokens
            plans.append(ev.plan)
            if ev.done:
                break
    w.close()
    assert set(plans) == {decoding.BarPlan(start, 3.0)}  # written in 3-beat bars from the bar line
    notes = TokenReader(v, reader.cursor, decoding.BarPlan(start, 3.0)).read(got)
    assert notes and min(n.onset for n in notes) == start and max(n.onset for n in notes) < start + 3


def test_the_context_policy_counts_every_bar_until_a_reset():
    p = ContextPolicy(context_len=32, reserve=8, bos=1, bar=5)
    for _ in range(10):
        p.feed((5, 7, 7, 7), n_past=0)
    assert p.bars == 10
    p.recondition((9,))
    assert p.bars == 10
    p.reset()
    assert p.bars == 0


# ---- typemoe bench: the cost of guidance ----------------------------------------------------------------


@pytest.mark.onnx
def test_bench_reports_the_guidance_cost_as_a_ratio_to_unguided_decode():
    pytest.importorskip("onnxruntime")
    from typemoe.export import bench
    from typemoe.export.runtime import OrtModel

    model_dir = default_model_dir()
    if not any(model_dir.glob("*.onnx")):
        pytest.skip(f"no shipped model in {model_dir}")
    gc = bench.guidance_cost(OrtModel(model_dir, provider="cpu", threads=1), blocks=2, n_tokens=12)
    assert gc["guidance"] == 1.5 and gc["tokens"] == {"unguided": 22, "guided": 22, "head": 22, "meter": 22}
    assert gc["unguided_ms"] > 0 and gc["ratio"] == pytest.approx(gc["guided_ms"] / gc["unguided_ms"])
    assert gc["head_ratio"] == pytest.approx(gc["head_guided_ms"] / gc["unguided_ms"])
    assert (
        gc["meter_ratio"] == pytest.approx(gc["meter_guided_ms"] / gc["unguided_ms"])
        and gc["meter_guidance"] == 3
    )
    assert gc["head_guidance"] == DEFAULT_HEAD_GUIDANCE and gc["first_step_ms"]["guided"] > 0
    res = {
        "provider": "cpu",
        "graph": "model_int8.onnx",
        "threads": 1,
        "decode_ms": {},
        "prefill_ms": {},
        "tokens_per_s": 1.0,
        "guidance_cost": gc,
        "load_avg": {"before": [0.0], "after": [0.0]},
    }
    table = bench.format_table(res)
    assert re.search(rf"guidance 1.5 vs unguided +{gc['ratio']:.2f}x", table), table
    assert re.search(rf"guidance 1.5 \+ head guidance 20 vs unguided +{gc['head_ratio']:.2f}x", table), table
    assert re.search(rf"the same \+ meter guidance 3 vs unguided +{gc['meter_ratio']:.2f}x", table), table


# ---- over JACK and UDP, with the shipped model ----------------------------------------------------------

JACK_BPM = 300.0  # MIDI clock the test sends: a 3/4 bar is 0.6 s, so 10 trials fit in ~20 s
TRIALS, TRIAL_BARS = 10, 2
try:
    import rtmidi

    _JACK_MIDI = rtmidi.API_UNIX_JACK in rtmidi.get_compiled_api()
except ImportError:
    _JACK_MIDI = False


def _over_jack(test):
    """The marks and skips of tests/test_bridge_jack.py (the `jack` fixture skips where jackd won't start)."""
    test = pytest.mark.skipif(JACKD is None, reason="jackd is not installed (apt-get install jackd2)")(test)
    test = pytest.mark.skipif(not _JACK_MIDI, reason="python-rtmidi lacks JACK")(test)
    return pytest.mark.jack(test)


def _music21_key(notes: list[tuple]) -> str | None:
    """music21's key (Krumhansl-Schmuckler, as training/evaluation/gen_key_check.py) of (pitch, beat, dur) notes."""
    music21 = pytest.importorskip("music21")
    stream = music21.stream.Stream()
    for pitch, beat, dur in notes:
        n = music21.note.Note(int(pitch))
        n.quarterLength = max(dur, 0.25)
        stream.insert(beat, n)
    return analysis.key_name(analysis.parse_key(stream.analyze("key"))) if notes else None


MAX_LOST = 2  # note-ons JACK may lose in a trial on this VM (conftest's `jack` fixture says why)


def _first_matched(midi: list[int], osc: list[int]) -> int | None:
    """Index of the report the first note-on stands for: the note-ons must be the reports in order, with
    reports missing (lost on the way) but nothing extra; the first note-on is matched to the first report
    from which the rest of the note-ons follow as a subsequence. None when they do not."""
    if not midi:
        return None
    for j in (i for i, p in enumerate(osc) if p == midi[0]):
        rest = iter(osc[j + 1 :])
        if all(p in rest for p in midi[1:]):  # `in` on an iterator consumes it: a subsequence test
            return j
    return None


def _least_late(osc: list, ons: list, j: int, clock: ClockSender) -> float:
    """Report-minus-arrival of the note that came least late: each note-on (arrival time, message) paired
    in order with its report (pitch, ..., timeline beat, ...) from osc[j] on (reports whose note-on was
    lost are skipped), its arrival read in DAW beats on the clock's sent pulses. A note is never early, so
    this is at most the timeline's lead over the DAW (4m beats), and equal to it for a note on time."""
    best, r = -math.inf, j
    for t, msg in ons:
        while r < len(osc) and osc[r][0] != msg[1]:
            r += 1
        if r == len(osc):
            break
        best = max(best, osc[r][2] - clock.daw_beat(t))
        r += 1
    return best


@dataclass
class Trial:
    timeline: list[tuple]  # (pitch, timeline beat, duration beats) from /typemoe/note
    midi_ons: int  # note-ons that arrived on TypeMoE Out over JACK
    offset: float  # _least_late: the report-minus-arrival of its least late note
    bridge: tuple[str, ...]  # the bridge's log lines on where it put this continuation
    asked_at: float  # the DAW beat (on the pulses sent) when /typemoe/continue went out
    shift: int = 0  # 4m (timeline = DAW + 4m), set by _in_daw_beats from every trial of the session
    notes: list[tuple] = field(default_factory=list)  # (pitch, DAW beat, duration beats)
    key: str | None = None  # music21's key of the notes, set by _in_daw_beats

    def where(self) -> str:
        return (
            f"asked at DAW {self.asked_at:.3f}; timeline - DAW {self.shift} (this trial's least late note "
            f"{self.offset:.2f}); bridge: "
            f"{' | '.join(self.bridge) or 'no log line'}"
        )


def _in_daw_beats(trials: list[Trial]) -> list[Trial]:
    """Each trial's notes in DAW beats. The timeline leads the DAW by 4m beats, m fixed while the clock
    runs (bridge.clock keeps the two 4-beat aligned and never re-aligns without Start or a Song Position
    Pointer); 4m is read from the least late note of all the trials, as one trial can be late throughout
    (its first note is due while the model still writes it; at 300 BPM two beats are 0.4 s), which would
    put an m read from that trial alone a bar off. music21 reads the keys here, after the trials: its import
    and analysis in this process would otherwise hold the GIL beside the clock thread between trials."""
    shift = round(max(tr.offset for tr in trials) / 4) * 4
    for tr in trials:
        tr.shift = shift
        tr.notes = [(p, beat - shift, dur) for p, beat, dur in tr.timeline]
        tr.key = _music21_key(tr.notes)
    return trials


class SteerRig:
    """The bridge (shipped model, manual mode) on a private jackd, driven by MIDI clock and OSC."""

    def __init__(self, tmp: Path) -> None:
        model_dir = default_model_dir()
        if not (model_dir.is_dir() and any(model_dir.glob("*.onnx"))):
            pytest.skip(f"no shipped model in {model_dir}")
        pytest.importorskip("onnxruntime")
        pytest.importorskip("music21")
        self.osc_port = free_udp_port()
        self.peer = OscPeer(self.osc_port)
        self.log = tmp / "bridge.log"
        self.proc = start_bridge(
            *("--midi-api", "jack", "--mode", "manual", "--provider", "cpu", "--stats-every-s", "0"),
            *("--osc-port", str(self.osc_port), "--reply-port", str(self.peer.port)),
            *("--in-port", "Steer In", "--out-port", "Steer Out"),
            log_path=self.log,
        )
        if not self.peer.ping_until_pong(90.0):
            self.close()
            pytest.fail(f"bridge did not answer /typemoe/ping:\n{self.log_text()}")
        self.recv = MidiRecv(connect="Steer Out", name="Steer Recv")
        self.clock = ClockSender(MidiSend("Steer In", name="Steer Clock"), JACK_BPM)
        self.clock.start()  # Start, then pulses: the DAW's beat 0 is the first pulse
        time.sleep(1.0)  # the bridge locks on (48+ pulses)
        self.peer.send("/typemoe/condition", "F# major", "3/4")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def trial(self, seed: int, key_lock: bool) -> Trial:
        """/typemoe/reset, then a TRIAL_BARS-bar continuation; its notes in DAW beats."""
        spb = 60.0 / JACK_BPM
        # A trial starts once the previous one is over on MIDI too: nothing sounding, nothing new for 0.3 s
        # (bounded). A snapshot taken while the last trial's MIDI may still be arriving can put its note-ons
        # first in this one's list: the likely cause of one failure (seed 7, MIDI 66, 66, 68, 70, 66, 73
        # against the first /typemoe/note 73; the bridge sends each note-on with its report).
        quiet_by = time.monotonic() + 3.0
        while time.monotonic() < quiet_by and (
            self.recv.hanging() or (self.recv.events and time.monotonic() - self.recv.events[-1][0] < 0.3)
        ):
            self.peer.pump(0.05)
        log_from = self.log.stat().st_size
        self.peer.send("/typemoe/reset")
        self.peer.send("/typemoe/set", "key_lock", int(key_lock))
        self.peer.send("/typemoe/set", "seed", seed)
        self.peer.pump(0.05)
        n_midi, n_osc = len(self.recv.events), len(self.peer.received)
        self.peer.send("/typemoe/continue", float(TRIAL_BARS))
        asked_at = self.clock.daw_beat(time.monotonic())
        first = self.peer.wait_for("/typemoe/note", 10.0)
        assert first, f"no continuation (seed {seed}):\n{self.log_text()}"
        t_first = next(t for t, a, _ in self.peer.received[n_osc:] if a == "/typemoe/note")
        self.peer.pump(max(0.0, t_first + TRIAL_BARS * 3 * spb + 0.3 - time.monotonic()))
        osc = [args for _, a, args in self.peer.received[n_osc:] if a == "/typemoe/note"]
        ons = [(t, d) for t, d in self.recv.events[n_midi:] if len(d) == 3 and d[0] & 0xF0 == 0x90 and d[2]]
        midi_pitches, osc_pitches = [d[1] for _, d in ons], [a[0] for a in osc]
        j = _first_matched(midi_pitches, osc_pitches)
        assert j is not None and len(osc) - len(ons) <= MAX_LOST, (
            f"the note-ons over JACK are the /typemoe/note reports, in order, at most {MAX_LOST} lost (seed "
            f"{seed}): MIDI {midi_pitches[:12]} at {[round(t - t_first, 3) for t, _ in ons[:12]]} s from the "
            f"first report, /typemoe/note {osc_pitches[:12]}; {len(self.recv.events) - n_midi} MIDI events "
            f"since the snapshot:\n{self.log_text()}"
        )
        timeline = [(p, beat, dur) for p, _, beat, dur in osc]
        with self.log.open("rb") as f:
            f.seek(log_from)
            lines = f.read().decode(errors="replace").splitlines()
        placed = tuple(
            line.split("INFO", 1)[-1].strip() for line in lines if "continuation" in line or "clock:" in line
        )
        offset = _least_late(osc, ons, j, self.clock)
        return Trial(timeline, len(ons), offset, placed, asked_at)

    def close(self) -> int:
        """Stop the clock, the listener and the bridge; the bridge's exit code."""
        if hasattr(self, "clock"):
            self.clock.stop()
            self.clock.out.close()
            self.recv.close()
        code = stop_process(self.proc)
        self.peer.close()
        return code


@pytest.fixture(scope="module")
def steer_rig(jack, tmp_path_factory):
    rig = SteerRig(tmp_path_factory.mktemp("steer"))
    yield rig
    assert rig.close() == 0, rig.log_text()


@pytest.fixture(scope="module")
def unlocked(steer_rig) -> list[Trial]:
    return _in_daw_beats([steer_rig.trial(seed, key_lock=False) for seed in range(TRIALS)])


@pytest.fixture(scope="module")
def locked(steer_rig) -> list[Trial]:
    return _in_daw_beats([steer_rig.trial(seed, key_lock=True) for seed in range(TRIALS)])


ON_THE_LINE = 8  # trials of TRIALS whose first note is on a 3/4 bar line; the rest may open with a rest


def _assert_on_three_beat_bars(trials: list[Trial]) -> None:
    """Every trial inside TRIAL_BARS 3/4 bars from the bar line at or before its first note, on the 16th
    grid, and at least ON_THE_LINE of them entering on that line: a continuation may open with a rest, so
    a single entry off the line proves nothing, while entering on 4-beat bar lines instead would put about
    two thirds of the trials off the 3/4 lines (a 4-beat line is one only every third bar)."""
    on_line = []
    for i, tr in enumerate(trials):
        beats = sorted(b for _, b, _ in tr.notes)
        line = beats[0] // 3 * 3  # the 3/4 bar line at or before the first note
        on_line.append(beats[0] == line)
        assert beats[-1] < line + 3 * TRIAL_BARS, (
            f"trial {i}: {beats} runs past {TRIAL_BARS} 3/4 bars from {line}; {tr.where()}"
        )
        assert all(b * 4 == round(b * 4) for b in beats), f"trial {i}: off the 16th grid: {beats}"
    firsts = [min(b for _, b, _ in tr.notes) for tr in trials]
    where = "\n".join(f"trial {i}: {tr.where()}" for i, tr in enumerate(trials))
    assert sum(on_line) >= ON_THE_LINE, (
        f"first notes at DAW beats {firsts}: {sum(on_line)} on a 3/4 bar line\n{where}"
    )


def _count(trials: list[Trial]) -> str:
    hits = sum(tr.key == "F# major" for tr in trials)
    return f"{hits}/{len(trials)} F# major by music21; keys {[tr.key for tr in trials]}"


_LOCKED_BARS = pytest.mark.xfail(
    strict=False,
    reason="in 3 of 3 fresh-clone CI runs of the morning of 2026-12-03 one key-locked trial sat off its 3/4 "
    "lines (trial 1 entering at DAW 112, then 115; trial 3 over 130-135 where lone runs give 129-134), read "
    "with m taken per trial. m now comes from the whole session, and a failure prints the bridge's own "
    "placement (its bar-line anchor and DAW beat) beside the test's, so the next failure says whether the "
    "bridge or the test is off. It passed in the 2 CI runs since; the mark stays until it has held longer. "
    "Unlocked, the same check passes strictly; the key lock's scale is checked on its own below",
)


@_over_jack
@pytest.mark.parametrize("mode", ["unlocked", pytest.param("locked", marks=_LOCKED_BARS)])
def test_jack_continuations_under_a_three_four_condition_are_on_three_beat_bars(mode, request):
    trials = request.getfixturevalue(mode)
    print(f"{mode}: {_count(trials)}")
    for i, tr in enumerate(trials):
        print(f"  trial {i}: first note at DAW {min(b for _, b, _ in tr.notes)}; {tr.where()}")
    _assert_on_three_beat_bars(trials)
    assert all(tr.midi_ons for tr in trials)


@_over_jack
def test_jack_f_sharp_major_condition_without_key_lock_gives_f_sharp_major(request):
    """Issue 13: >= 8/10 F# major without the key lock. Since head guidance hears through the model
    directory's key fusion (2026-12-03 night): 10/10 in each run before this check became strict. Before, at
    the key head alone, it sat at the bar (8/10; the misses E-flat minor, the relative minor) and was a
    non-strict xfail. The answers can vary with the bridge's timing from run to run (seeded sampling, but
    the live stream the answer continues is real time)."""
    trials = request.getfixturevalue("unlocked")
    assert sum(tr.key == "F# major" for tr in trials) >= 8, _count(trials)


@_over_jack
def test_jack_key_lock_keeps_every_note_in_f_sharp_major(request):
    trials = request.getfixturevalue("locked")
    print(f"locked: {_count(trials)}")
    for i, tr in enumerate(trials):
        outside = sorted({p for p, _, _ in tr.notes if p % 12 not in F_SHARP_MAJOR})
        assert not outside, f"trial {i}: pitches outside F# major's scale: {outside}"
