"""ModelThread: ordered calls off the loop, merged feeds, context re-prefill keeping BOS + controls first."""

from __future__ import annotations

import queue
import time

from bridge_fixtures import toy_vocab

from typemoe.bridge.events import Analysis, CancelGenerate, Feed, Generate, Generated, Recondition
from typemoe.bridge.toy_model import ToyModel, ToySession
from typemoe.bridge.worker import ModelThread
from typemoe.vocab import FAMILIES


class _Recording(ToyModel):
    """Toy model whose sessions record every feed."""

    def __init__(self, context_len: int) -> None:
        super().__init__(toy_vocab(), context_len=context_len)
        self.feeds: list[list[int]] = []

    def session(self):
        s = super().session()
        feed = s.feed

        def recording_feed(ids):
            self.feeds.append(list(ids))
            return feed(ids)

        s.feed = recording_feed
        return s


def _run(model, actions, n_results):
    results: queue.Queue = queue.Queue()
    w = ModelThread(model, results.put, lambda: 0.0)
    w.start()
    for a in actions:
        w.submit(a)
    out = [results.get(timeout=10) for _ in range(n_results)]
    w.close()
    return out


def test_feeds_in_order_then_generation():
    v = toy_vocab()
    model = _Recording(1024)
    bar, pos, pitch = v.id("Bar_None"), v.id("Position_0"), v.id("Pitch_60")
    vel, dur = int(v.velocity_id[90]), v.duration_token_id(4)
    ids = (bar, pos, pitch, vel, dur)
    out = _run(model, [Feed(ids, 1.0), Generate(1, 2, 1.0, 0.95, 0)], 2)
    assert isinstance(out[0], Analysis) and out[0].cause_t == 1.0
    assert isinstance(out[1], Generated) and out[1].tokens and out[1].error is None
    assert model.feeds[0] == [v.bos_id] and model.feeds[1] == list(ids)


def test_context_overflow_re_prefills_controls_first():
    v = toy_vocab()
    model = _Recording(64)
    controls = tuple(v.control_ids(key="A minor"))
    note = (
        v.id("Bar_None"),
        v.id("Position_0"),
        v.id("Pitch_60"),
        int(v.velocity_id[90]),
        v.duration_token_id(4),
    )
    actions = [Recondition(controls)] + [Feed(note, float(i)) for i in range(20)]
    _run(model, actions, 1)  # at least one analysis; the thread then drains the rest before close
    primes = [f for f in model.feeds if f[0] == v.bos_id]
    assert all(f[1 : 1 + len(controls)] == list(controls) for f in primes[1:])
    assert all(len(f) <= 64 for f in model.feeds)


class _SlowSession(ToySession):
    """Generation takes DELAY seconds per token (a big model on a slow CPU)."""

    DELAY = 0.01

    def fork(self):
        twin = super().fork()
        twin.__class__ = _SlowSession
        return twin

    def generate_steps(self, **kwargs):
        for i in self.generate(**kwargs):
            time.sleep(self.DELAY)
            yield i


class _Slow(ToyModel):
    def session(self):
        return _SlowSession(self)


def _note(v, pitch: int) -> tuple[int, ...]:
    return (
        v.id("Bar_None"),
        v.id("Position_0"),
        v.id(f"Pitch_{pitch}"),
        int(v.velocity_id[90]),
        v.duration_token_id(4),
    )


def _start(model):
    results: queue.Queue = queue.Queue()
    w = ModelThread(model, results.put, time.monotonic)
    w.start()
    return w, results


def test_generation_streams_whole_notes_and_equals_the_one_piece_generation():
    v = toy_vocab()
    model = ToyModel(v)
    w, results = _start(model)
    w.submit(Feed(_note(v, 60), 0.0))
    w.submit(Generate(7, 2, 1.0, 0.95, 5))
    assert isinstance(results.get(timeout=10), Analysis)
    chunks = []
    while not chunks or not chunks[-1].done:
        chunks.append(results.get(timeout=10))
    w.close()
    assert all(isinstance(c, Generated) and c.request_id == 7 and c.error is None for c in chunks)
    assert len(chunks) > 8
    for c in chunks[:-1]:  # every chunk before the last is whole notes: it ends on a Duration
        assert c.tokens and v.family_of[c.tokens[-1]] == FAMILIES.index("Duration")
    s = model.session()
    s.feed([v.bos_id, *_note(v, 60)])
    assert [i for c in chunks for i in c.tokens] == s.fork().generate(n_bars=2, temperature=1.0, seed=5)


def test_a_note_played_during_a_generation_is_analysed_before_it_ends():
    v = toy_vocab()
    w, results = _start(_Slow(toy_vocab()))  # ~66 tokens: ~0.7 s of generation
    w.submit(Generate(1, 2, 1.0, 0.95, 0))
    first = results.get(timeout=10)
    assert isinstance(first, Generated) and not first.done
    w.submit(Feed(_note(v, 62), time.monotonic()))
    seen = []
    while not any(isinstance(r, Analysis) for r in seen):
        seen.append(results.get(timeout=10))
    w.close()
    assert not any(isinstance(r, Generated) and r.done for r in seen)  # the generation was still running


def test_cancel_stops_the_generation():
    v = toy_vocab()
    w, results = _start(_Slow(toy_vocab()))
    w.submit(Generate(3, 2, 1.0, 0.95, 0))
    assert isinstance(results.get(timeout=10), Generated)
    w.submit(CancelGenerate(3))
    w.submit(Feed(_note(v, 64), 0.0))  # processed after the cancel
    while not isinstance(results.get(timeout=10), Analysis):
        pass
    time.sleep(0.2)  # ~20 more tokens' time: nothing more may come for request 3
    assert results.empty()
    w.close()


def test_queued_reconditions_collapse_to_the_last_and_a_reset_drops_queued_feeds():
    from typemoe.bridge.events import ResetModel

    w = ModelThread(_Recording(1024), lambda ev: None, lambda: 0.0)  # not started: the queue only
    for i in range(300):  # a knob: 300 values queued behind one slow model call
        w.submit(Recondition((i,)))
        w.submit(Feed((1,), 0.0))
    jobs = list(w._jobs)
    assert [j for j in jobs if isinstance(j, Recondition)] == [Recondition((299,))]
    w.submit(ResetModel())
    assert [type(j) for j in w._jobs] == [Recondition, ResetModel]


def test_analysis_is_the_model_directorys_fused_answer_over_the_music_held():
    """With key/meter fusions in the model directory (OrtModel.key / .meter), the readout is the fused
    answer over the music the session holds, as `typemoe analyze` gives it, not the bare heads."""
    import numpy as np

    v = toy_vocab()
    seen = []

    class Reader:
        fusion = object()

        def __init__(self, n: int, pick: int) -> None:
            self.n, self.pick = n, pick

        def probs(self, ids, head):
            seen.append(list(ids))
            return np.eye(self.n)[self.pick]

    model = _Recording(1024)
    model.key, model.meter = Reader(24, 6), Reader(len(model.meter_names), 2)
    model.answer = lambda ids, k, m: (model.key.probs(ids, k), model.meter.probs(ids, m))  # OrtModel.answer
    bar, pos, pitch = v.id("Bar_None"), v.id("Position_0"), v.id("Pitch_60")
    ids = (bar, pos, pitch, int(v.velocity_id[90]), v.duration_token_id(4))
    (a,) = _run(model, [Feed(ids, 1.0)], 1)
    assert isinstance(a, Analysis) and int(a.key_probs.argmax()) == 6 and int(a.meter_probs.argmax()) == 2
    assert seen[-2:] == [list(ids), list(ids)]  # both readers read the music the session holds
