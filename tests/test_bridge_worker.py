"""ModelThread: ordered calls off the loop, merged feeds, context re-prefill keeping BOS + controls first."""

from __future__ import annotations

import queue

from bridge_fixtures import toy_vocab

from bridge.events import Analysis, Feed, Generate, Generated, Recondition
from bridge.toy_model import ToyModel
from bridge.worker import ModelThread


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
