"""typemoe.bridge.worker.ContextPolicy without threads or a model: appends, rebuilds, the control prefix kept."""

from __future__ import annotations

import pytest

from typemoe.bridge.worker import ContextPolicy

BOS, BAR = 1, 5


def _policy(context_len: int = 64, reserve: int = 16) -> ContextPolicy:
    return ContextPolicy(context_len=context_len, reserve=reserve, bos=BOS, bar=BAR)


def _bar(n: int) -> list[int]:
    return [BAR] + [100 + n] * 4  # a bar: Bar then four tokens


def test_music_is_appended_until_the_reserve_then_rebuilt_from_a_bar_behind_the_controls():
    p = _policy()
    start = p.recondition((40, 41))
    assert start.rebuild and start.tokens == (BOS, 40, 41) and not start.has_music
    n_past = len(start.tokens)
    plans = []
    for i in range(20):
        plan = p.feed(_bar(i), n_past)
        plans.append(plan)
        n_past = len(plan.tokens) if plan.rebuild else n_past + len(plan.tokens)
        assert n_past <= 64 - 16
    rebuilt = [pl for pl in plans if pl.rebuild]
    assert rebuilt and not plans[0].rebuild
    for pl in rebuilt:
        assert pl.tokens[:3] == (BOS, 40, 41) and pl.tokens[3] == BAR and pl.has_music
    last = plans.index(rebuilt[-1])
    assert rebuilt[-1].tokens[-5:] == tuple(_bar(last))  # ends with the bar that was being fed


def test_recondition_keeps_recent_music_and_reset_forgets_it():
    p = _policy()
    p.feed(_bar(1) + _bar(2), 1)
    plan = p.recondition((42,))
    assert plan.tokens == (BOS, 42, *_bar(1), *_bar(2))
    plan = p.reset()
    assert plan.tokens == (BOS, 42) and not plan.has_music
    assert p.history == []


def test_music_without_a_bar_is_not_kept_half_a_bar_in():
    p = _policy(context_len=32, reserve=8)
    p.feed([BAR] + [7] * 30, 1)
    plan = p.rebuild(keep=10)
    assert plan.tokens == (BOS,)  # the last 10 tokens hold no Bar: nothing is kept


def test_a_rebuild_never_overflows_even_with_long_controls():
    p = _policy(context_len=32, reserve=8)
    p.recondition(tuple(range(50, 70)))  # 20 control tokens
    p.feed(_bar(1) * 6, 21)
    plan = p.rebuild(keep=16)
    assert len(plan.tokens) <= 32 - 8


def test_bad_reserve_is_refused():
    with pytest.raises(ValueError, match="reserve"):
        ContextPolicy(context_len=16, reserve=16, bos=BOS, bar=BAR)
