"""typemoe.decoding, the one decoder: both backends agree through it, eval = runtime, and the steering
features (guidance, key lock, meter-aware bars, one pitch per position, the slide that keeps the controls)."""

from __future__ import annotations

import numpy as np
import pytest

from typemoe import decoding, note_writer
from typemoe.note_writer import Note
from typemoe.streaming import TokenReader

pytestmark = pytest.mark.onnx


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from export_fixtures import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("decoding") / "model")


@pytest.fixture(scope="module")
def ort_model(model_dir):
    from typemoe.export.runtime import OrtModel

    return OrtModel(model_dir, provider="cpu")


@pytest.fixture(scope="module")
def torch_model():
    pytest.importorskip("torch")
    from export_fixtures import tiny_checkpoint_dir

    from typemoe.torch_session import TorchModel

    return TorchModel(tiny_checkpoint_dir())


def _music(vocab, n: int, seed: int) -> list[int]:
    """n grammar-valid ids starting at a Bar."""
    rng = np.random.default_rng(seed)
    ids = [vocab.id("Bar_None")]
    while len(ids) < n:
        ids.append(int(rng.choice(np.flatnonzero(vocab.next_allowed[vocab.family_of[ids[-1]]]))))
    return ids


def _onsets(vocab, ids, cursor, plan=None) -> list[tuple[float, int]]:
    """(beat, pitch) of every note in ids, generated after a stream that stood at `cursor`."""
    notes = note_writer.continuation_notes(vocab, ids, cursor=cursor, plan=plan, ticks_per_quarter=4)
    return [(n.time / 4, n.pitch) for n in notes]


STEERING = [
    {},
    {"guidance": 2.0, "key_lock": "F# major"},
    {"meter": "3/4", "on_downbeat": True, "guidance": 1.5},
]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("steer", STEERING, ids=["plain", "guided-locked", "meter"])
def test_both_backends_give_the_same_ids(ort_model, torch_model, temperature, steer):
    vocab = ort_model.vocab
    prompt = [vocab.bos_id, *vocab.control_ids(key="F# major", meter="3/4"), *_music(vocab, 40, seed=2)]
    runs = []
    for model in (torch_model, ort_model):
        s = model.session()
        s.feed(prompt)
        runs.append(s.generate(n_bars=3, n_tokens=120, temperature=temperature, top_p=0.95, seed=4, **steer))
    assert runs[0] == runs[1] and len(runs[0]) > 0


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_eval_path_equals_the_bridge_path(model_dir, ort_model, torch_model, temperature):
    """`typemoe eval`'s generate (ONNX dir and checkpoint) = OrtSession.generate_steps, what the bridge calls."""
    from export_fixtures import tiny_checkpoint_dir

    from typemoe.training.evaluation.eval_model import open_model

    vocab = ort_model.vocab
    prefix = [vocab.bos_id, *vocab.control_ids(key="A minor"), *_music(vocab, 230, seed=9)]  # slides at 256
    s = ort_model.session()
    s.feed(prefix)
    bridge = list(s.generate_steps(n_tokens=60, temperature=temperature, top_p=0.95, seed=5))
    for path in (model_dir, tiny_checkpoint_dir()):
        got = open_model(path).generate(prefix, 60, temperature=temperature, top_p=0.95, seed=5)
        assert got == bridge, path


def test_torch_slide_keeps_the_control_prefix(torch_model):
    vocab = torch_model.vocab
    controls = [vocab.bos_id, *vocab.control_ids(key="Eb major", meter="6/8")]
    s = torch_model.session()
    s.feed(controls)
    music = _music(vocab, 300, seed=6)
    for i in range(0, 300, 11):
        s.feed(music[i : i + 11])
    assert s.n_past <= torch_model.context_len and s.tokens[:3] == controls
    assert s.tokens[3:] == music[len(music) - (s.n_past - 3) :]
    assert s.bars == music.count(vocab.id("Bar_None"))  # the time base survives the slide


def test_guidance_one_is_unguided_and_g_mixes_the_two_streams(ort_model, monkeypatch):
    vocab = ort_model.vocab
    prompt = [vocab.bos_id, *vocab.control_ids(key="D major"), *_music(vocab, 30, seed=1)]

    def run(**kw):
        s = ort_model.session()
        s.feed(prompt)
        seen = []
        ids = s.generate(
            n_tokens=40,
            temperature=1.0,
            seed=8,
            hooks=[lambda _s, lg, _a: seen.append(lg.copy())],
            head_guidance=0.0,  # guidance alone here (head guidance also reads the music-only stream)
            **kw,
        )
        return ids, seen

    plain, _ = run()
    calls = []
    real = decoding.Session.unconditioned
    monkeypatch.setattr(decoding.Session, "unconditioned", lambda self: calls.append(1) or real(self))
    assert run(guidance=1.0)[0] == plain and not calls  # g = 1: no second stream at all
    _, mixed = run(guidance=3.0)
    assert calls
    cond = ort_model.session()
    cond.feed(prompt)
    uncond = ort_model.session()
    uncond.feed([vocab.bos_id, *prompt[2:]])  # the same stream without its control token
    want = uncond.last.logits + 3.0 * (cond.last.logits - uncond.last.logits)
    np.testing.assert_allclose(mixed[0], want, atol=1e-4)


def test_the_unconditioned_twin_is_kept_up_to_date_not_rebuilt(ort_model):
    """A live session (the bridge's) guides many continuations: the twin guidance runs on is rewound and
    fed what changed, and answers as a twin built from scratch would."""
    vocab = ort_model.vocab
    s = ort_model.session()
    s.feed([vocab.bos_id, *vocab.control_ids(key="D major", meter="3/4"), *_music(vocab, 40, seed=2)])

    def fresh_twin_logits() -> np.ndarray:
        u = ort_model.session()
        u.feed([vocab.bos_id, *s.tokens[3:]])
        return u.last.logits

    twin = s.unconditioned()
    np.testing.assert_allclose(twin.last.logits, fresh_twin_logits(), atol=1e-4)
    n = s.n_past
    s.generate(n_tokens=12, temperature=1.0, seed=3, guidance=3.0)  # feeds the twin too
    s.rewind(n)  # the continuation is dropped, as the bridge does when the performer plays on
    s.feed(_music(vocab, 60, seed=4)[1:20])
    runs = []
    real_run = ort_model.run

    def counting_run(ids, n_past, cache):
        runs.append(len(ids))
        return real_run(ids, n_past, cache)

    ort_model.run = counting_run
    try:
        again = s.unconditioned()
    finally:
        del ort_model.run
    assert again is twin and sum(runs) == 19, runs  # only the 19 new tokens ran, on the same twin
    assert again.tokens == [vocab.bos_id, *s.tokens[3:]] and again.bars == s.bars
    np.testing.assert_allclose(again.last.logits, fresh_twin_logits(), atol=1e-4)
    assert s.unconditioned() is twin  # nothing new: nothing runs
    fork = s.fork()  # the bridge generates on a fork of its live session: the fork finds the same twin
    fork.generate(n_tokens=8, temperature=1.0, seed=6, guidance=3.0)
    assert fork.unconditioned() is twin and twin.tokens == [vocab.bos_id, *fork.tokens[3:]]
    assert s.unconditioned() is twin and twin.tokens == [vocab.bos_id, *s.tokens[3:]]
    np.testing.assert_allclose(twin.last.logits, fresh_twin_logits(), atol=1e-4)
    s.reset()
    s.feed([vocab.bos_id, *vocab.control_ids(key="E minor"), *_music(vocab, 10, seed=5)])
    rebuilt = s.unconditioned()
    assert rebuilt is not twin and rebuilt.tokens == [vocab.bos_id, *s.tokens[2:]]


def test_guidance_without_controls_changes_nothing(ort_model):
    vocab = ort_model.vocab
    outs = []
    for g in (1.0, 4.0):
        s = ort_model.session()
        s.feed([vocab.bos_id, *_music(vocab, 20, seed=3)])
        outs.append(s.generate(n_tokens=30, temperature=1.0, seed=2, guidance=g))
    assert outs[0] == outs[1]


@pytest.mark.parametrize("key", ["Eb major", "C# minor"])
def test_key_lock_yields_only_scale_pitches(ort_model, key):
    vocab = ort_model.vocab
    scale = decoding.scale_pitch_classes(key)
    s = ort_model.session()
    s.feed([vocab.bos_id, vocab.id("Bar_None")])
    ids = s.generate(n_tokens=300, temperature=1.5, top_p=1.0, seed=0, key_lock=key)
    pcs = [int(vocab.token(i).split("_")[1]) % 12 for i in ids if vocab.token(i).startswith("Pitch_")]
    assert len(pcs) > 20 and all(scale[pc] for pc in pcs), sorted(set(pcs))
    free = ort_model.session()
    free.feed([vocab.bos_id, vocab.id("Bar_None")])
    unlocked = free.generate(n_tokens=300, temperature=1.5, top_p=1.0, seed=0)
    pcs = [int(vocab.token(i).split("_")[1]) % 12 for i in unlocked if vocab.token(i).startswith("Pitch_")]
    assert not all(scale[pc] for pc in pcs)  # the random model leaves the scale without the lock


def test_no_pitch_twice_at_one_position(ort_model):
    vocab = ort_model.vocab
    s = ort_model.session()
    s.feed([vocab.bos_id, vocab.id("Bar_None")])
    ids = s.generate(n_tokens=600, temperature=2.0, top_p=1.0, seed=1)
    here: set[int] = set()
    n_chords = 0
    for i in ids:
        tok = vocab.token(i)
        if tok.startswith(("Bar", "Position")):
            here = set()
        elif tok.startswith("Pitch_"):
            assert i not in here, "a pitch repeated at one position"
            here.add(i)
            n_chords += len(here) > 1
    assert n_chords > 0  # positions with several notes happen, so the rule was exercised


@pytest.mark.parametrize(
    "meter, span, remi", [("3/4", 3.0, 3.0), ("6/8", 3.0, 3.0), ("2/4", 2.0, 2.0), ("12/8", 6.0, 3.0)]
)
def test_meter_window_starts_on_the_meters_bar_line(ort_model, meter, span, remi):
    """The continuation opens on the next bar line of the meter, stays n_bars bars of it, and is written
    in REMI bars of the meter (BarPlan): every generated Bar opens on start + k * remi, every note lies
    inside its bar, and a reader with the plan puts each note where the session's own clock stood."""
    vocab = ort_model.vocab
    s = ort_model.session()
    prompt = _music(vocab, 90, seed=5)
    s.feed([vocab.bos_id, *prompt])
    start = s.next_bar_line(meter)
    assert start % span == 0 and start > s.beat_now()
    assert decoding.remi_bar_beats(meter) == remi
    cursor, plan = s.cursor(), decoding.BarPlan.of(meter, start)
    for seed in range(3):
        g = s.fork()
        ids, clock, bar_opens = [], [], []
        steps = g.generate_steps(
            n_bars=2, meter=meter, on_downbeat=True, temperature=1.0, top_p=1.0, seed=seed
        )
        for i in steps:
            ids.append(i)
            if vocab.token(i).startswith("Pitch_"):
                clock.append((g.beat_now(), g.bar_start, i))
            if vocab.token(i) == "Bar_None":
                bar_opens.append(g.bar_start)
        beats = [b for b, _ in _onsets(vocab, ids, cursor, plan)]
        assert beats and min(beats) == start and max(beats) < start + 2 * span, (start, beats)
        assert bar_opens and bar_opens == [start + k * remi for k in range(len(bar_opens))], bar_opens
        for beat, bar_start, _ in clock:  # inside the REMI bar it was written in
            assert bar_start <= beat < bar_start + remi, (beat, bar_start, remi)
        read = [(n.onset, n.pitch) for n in TokenReader(vocab, cursor, plan).read(ids)]
        pitch_of = decoding.tables_of(vocab).pitch_of
        assert len(read) >= len(clock) - 1  # the token budget may end the last note early
        assert read == [(b, int(pitch_of[i])) for b, _, i in clock[: len(read)]]
        assert g._plan is None  # a generation's plan ends with it: fed Bars are 4 beats again


class LateBarEngine:
    """A model with a 4-beat habit: one note a beat, each on the Position a beat after the last one
    (0, 4, 8, 12 after a Bar), every Pitch so-so, a Bar unlikely. Its state (the ids of its stream) lives
    in the cache each session gets, so forks and second streams follow their own ids."""

    def __init__(self, vocab, context_len: int = 512, *, pickup: bool = False):
        self.vocab, self.context_len, self.pickup = (
            vocab,
            context_len,
            pickup,
        )  # pickup: a bar opens on beat 3
        t = decoding.tables_of(vocab)
        self.t = t
        self.base = np.where(t.pitch_of >= 0, -3.0, 0.0).astype(np.float32)
        self.base[t.is_bar] = -5.0

    def new_cache(self):
        return []

    def copy_cache(self, dst, src, n_rows):
        dst[:] = src[:n_rows]

    def run(self, ids, past_len, cache):
        del cache[past_len:]
        rows = []
        for i in ids:
            cache.append(int(i))
            pos = -1
            for j in reversed(cache):
                if self.t.is_bar[j]:
                    break
                if self.t.position_of[j] >= 0:
                    pos = int(self.t.position_of[j])
                    break
            row = self.base.copy()
            row[self.t.position_of == ((12 if self.pickup else 0) if pos < 0 else pos + 4)] = 10.0
            rows.append(row)
        T = len(ids)
        return {"logits": np.stack(rows), "key_logits": np.zeros((T, 24)), "meter_logits": np.zeros((T, 12))}


def test_positions_past_a_planned_bar_go_to_the_next_bar_not_into_a_chord():
    """Under a 3/4 plan the Positions of beat 3 are masked; their probability is the Bar's (spill_to_bar),
    so a model that wants them moves to the next bar instead of stacking every pitch at the bar's last
    position (which it did before: ~60 notes on one 16th)."""
    from typemoe.vocab import TypedVocab

    vocab = TypedVocab.default()
    s = decoding.Session(LateBarEngine(vocab))
    s.feed([vocab.bos_id, *_music(vocab, 40, seed=1)])
    cursor = s.cursor()
    plan = s.bar_plan("3/4")
    ids = s.generate(n_bars=4, meter="3/4", temperature=1.0, top_p=1.0, seed=0)
    onsets = [b for b, _ in _onsets(vocab, ids, cursor, plan)]
    assert sum(vocab.token(i) == "Bar_None" for i in ids) >= 4  # four bars of 3/4, each opened
    assert onsets and max(np.unique(onsets, return_counts=True)[1]) <= 3, onsets
    logits = np.zeros(6, np.float32)
    spill = np.array([0, 0, 1, 1, 0, 0], bool)
    bar = np.array([0, 0, 0, 0, 0, 1], bool)
    np.testing.assert_allclose(decoding.spill_to_bar(logits, spill, bar)[5], np.log(3.0), rtol=1e-6)


def test_a_pickup_wish_in_an_empty_short_bar_does_not_skip_the_bar():
    """A model that opens every bar on beat 3 (a 4-beat pickup): in an empty 3-beat bar those Positions are
    only masked, not moved to the next Bar, so every bar of the window gets notes instead of the first
    ones being skipped (a bare prompt's continuation had shrunk to its last bar that way)."""
    from typemoe.vocab import TypedVocab

    vocab = TypedVocab.default()
    s = decoding.Session(LateBarEngine(vocab, pickup=True))
    s.feed([vocab.bos_id, *_music(vocab, 40, seed=1)])
    cursor, plan = s.cursor(), s.bar_plan("3/4")
    ids = s.generate(n_bars=4, meter="3/4", temperature=1.0, top_p=1.0, seed=0)
    onsets = [b for b, _ in _onsets(vocab, ids, cursor, plan)]
    assert {int((b - plan.start) // 3) for b in onsets} == {0, 1, 2, 3}, (plan.start, onsets)


def test_bar_plan_opens_bars_on_the_meters_lines():
    plan = decoding.BarPlan.of("3/4", 9.0)
    assert plan.beats == 3.0
    assert plan.next_start(4.0) == 8.0  # REMI's own bars until the one that holds the start
    assert plan.next_start(8.0) == 9.0  # that bar is cut at the start
    assert [plan.next_start(b) for b in (9.0, 12.0, 15.0)] == [12.0, 15.0, 18.0]
    assert decoding.next_bar_start(8.0, None) == 12.0
    assert [decoding.remi_bar_beats(m) for m in ("4/4", "2/2", "3/8", "3/2", "9/8")] == [4, 4, 1.5, 3, 2.25]
    with pytest.raises(ValueError, match="beats"):
        decoding.BarPlan(0.0, 5.0)


def test_rewind_and_fork_keep_the_bar_clock(ort_model):
    """A Bar generated under a plan opens where the plan says; rewinding it restores the clock, and a fork
    carries it."""
    vocab = ort_model.vocab
    s = ort_model.session()
    s.feed([vocab.bos_id, *_music(vocab, 60, seed=3)])
    before = (s.bars, s.bar_start, s.beat_now())
    n = s.n_past
    ids = s.generate(n_bars=3, meter="3/4", temperature=1.0, top_p=1.0, seed=0)
    assert s.bars > before[0] and s.bar_start != before[1] + 4 * (s.bars - before[0])
    f = s.fork()
    assert (f.bars, f.bar_start, f.beat_now()) == (s.bars, s.bar_start, s.beat_now())
    s.rewind(n)
    assert (s.bars, s.bar_start, s.beat_now()) == before
    s.feed(ids)  # fed, not generated: REMI's 4-beat bars
    assert s.bar_start == before[1] + 4 * (s.bars - before[0])


def test_meter_math_and_bad_values():
    assert decoding.meter_beats("3/4") == 3 and decoding.meter_beats("6/8") == 3
    assert decoding.meter_beats("4/4") == 4 and decoding.meter_beats("9/8") == 4.5
    with pytest.raises(ValueError, match="7/8"):
        decoding.meter_beats("7/8")  # a valid signature without a class: "other", no bar length
    assert np.flatnonzero(decoding.scale_pitch_classes("G major")).tolist() == [0, 2, 4, 6, 7, 9, 11]
    with pytest.raises(ValueError, match="H major"):
        decoding.scale_pitch_classes("H major")


def test_bad_generate_options_are_named(ort_model):
    s = ort_model.session()
    s.feed([ort_model.vocab.bos_id])
    with pytest.raises(ValueError, match="guidance"):
        s.generate(n_tokens=3, guidance=-1)
    with pytest.raises(ValueError, match="n_bars"):
        s.generate(n_tokens=3, meter="3/4")
    with pytest.raises(ValueError, match="top_p"):
        s.generate(n_tokens=3, top_p=0)


def test_slide_keep_and_rewind_state(ort_model):
    is_control = np.zeros(10, dtype=bool)
    is_control[[0, 1]] = True
    keep = decoding.slide_keep([0, 1, *[5] * 98], is_control, context_len=40)
    assert keep[:2] == [0, 1] and len(keep) == 30 and keep[-1] == 99
    bars = [0, 1, *([7] + [5] * 9) * 10]  # a Bar (7) every 10 ids
    keep = decoding.slide_keep(bars, is_control, context_len=40, is_bar=lambda i: i == 7)
    assert keep[:2] == [0, 1] and bars[keep[2]] == 7 and len(keep) == 2 + 20  # from the first bar line kept
    no_bar = decoding.slide_keep([0, 1, *[5] * 98], is_control, context_len=40, is_bar=lambda i: i == 7)
    assert len(no_bar) == 30  # no bar line in reach: the recent ids as they are
    vocab = ort_model.vocab
    ids = _music(vocab, 80, seed=12)
    s = ort_model.session()
    s.feed([vocab.bos_id, *ids[:50]])
    state = (s.bars, s._bar_position, set(s._pitches_here), s.allowed_next().copy())
    s.feed(ids[50:])
    s.rewind(51)
    assert (s.bars, s._bar_position, s._pitches_here) == state[:3]
    assert (s.allowed_next() == state[3]).all()


def test_recondition_swaps_the_controls_and_keeps_recent_bars(ort_model):
    vocab = ort_model.vocab
    old, new = vocab.control_ids(key="C major"), vocab.control_ids(key="F# major", meter="3/4")
    music = [i for k in range(10) for i in _music(vocab, 20, seed=k)]  # a Bar every 20 tokens
    s = ort_model.session()
    s.feed([vocab.bos_id, *old, *music])
    bars, now = s.bars, s.beat_now()
    s.recondition(new, keep=50)
    assert s.tokens[:3] == [vocab.bos_id, *new] and vocab.token(s.tokens[3]) == "Bar_None"
    recent = music[-50:]
    assert s.tokens[3:] == recent[recent.index(vocab.id("Bar_None")) :]
    assert (s.bars, s.beat_now()) == (bars, now)  # the stream's time base is unchanged
    ref = ort_model.session()
    ref.feed(s.tokens)
    np.testing.assert_allclose(s.last.logits, ref.last.logits, atol=1e-4)


# --------------------------------------------------------------------------- the note writer


def test_clean_notes_drops_duplicates_and_cuts_overlaps():
    notes = [
        Note(0, 8, 60, 80),
        Note(0, 4, 60, 90),
        Note(4, 8, 60, 70),
        Note(2, 2, 64, 80),
        Note(20, 4, 60, 80),
    ]
    got = note_writer.clean_notes(notes)
    assert got == [Note(0, 4, 60, 80), Note(2, 2, 64, 80), Note(4, 8, 60, 70), Note(20, 4, 60, 80)]
    for a, b in zip(got, got[1:]):
        if a.pitch == b.pitch:
            assert a.time + a.duration <= b.time


def test_grid_is_exact_and_files_carry_a_tempo():
    import symusic

    assert note_writer.grid_ticks(7, 480) == 840 and note_writer.grid_ticks(3, 96) == 72
    score = symusic.Score(480)
    note_writer.ensure_tempo(score)
    assert len(score.tempos) == 1 and score.tempos[0].qpm == pytest.approx(120)
    note_writer.ensure_tempo(score, qpm=90)  # a tempo already there stays
    assert len(score.tempos) == 1
