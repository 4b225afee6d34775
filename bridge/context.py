"""The model context's policy: what it holds and when it is rebuilt. Pure: no model, no thread, no clock.

The context is `[BOS] + control tokens + music`. Music is appended as it arrives (the KV cache grows by
the new ids only). Before it would overflow, leaving `reserve` slots free for a generation, the context is
rebuilt: the control prefix first, then the recent music from a Bar token on, so the controls never slide
out of the window. A new condition or a reset rebuilds it too.

    policy = ContextPolicy(context_len=1024, reserve=256, bos=1, bar=5)
    plan = policy.feed(ids, n_past=session.n_past)
    if plan.rebuild: session = model.session(); out = session.feed(plan.tokens)
    else: out = session.feed(plan.tokens)
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from typemoe import decoding


@dataclass(frozen=True)
class Plan:
    """What to do with the session: feed `tokens` to it, or to a fresh one when `rebuild`."""

    tokens: tuple[int, ...]
    rebuild: bool
    has_music: bool  # False: only BOS + controls (nothing to analyse)


class ContextPolicy:
    """Keeps the control prefix and the recent music; decides appends and rebuilds.

    Args:
        context_len: the model's context length.
        reserve: slots kept free for a generation when music is appended.
        bos, bar: the BOS and Bar token ids.
    """

    def __init__(self, *, context_len: int, reserve: int, bos: int, bar: int) -> None:
        if not 0 <= reserve < context_len:
            raise ValueError(f"reserve must be in 0..{context_len - 1}, got {reserve}")
        self.context_len, self.reserve, self.bos, self.bar = context_len, reserve, bos, bar
        self.controls: tuple[int, ...] = ()
        self._history: deque[int] = deque(maxlen=context_len)
        self.bars = 0  # Bar tokens in the music since the last reset (kept or not): the stream's time base

    @property
    def history(self) -> list[int]:
        return list(self._history)

    def feed(self, ids: tuple[int, ...] | list[int], n_past: int) -> Plan:
        """New music `ids` for a session holding `n_past` tokens: append, or rebuild keeping half."""
        self._history.extend(ids)
        self.bars += sum(1 for i in ids if i == self.bar)
        if n_past + len(ids) > self.context_len - self.reserve:
            return self.rebuild(keep=self.context_len // 2)
        return Plan(tuple(ids), rebuild=False, has_music=True)

    def recondition(self, controls: tuple[int, ...]) -> Plan:
        """A new control prefix; the recent music follows it."""
        self.controls = tuple(controls)
        return self.rebuild(keep=self.context_len // 2)

    def reset(self) -> Plan:
        """Forget the music; the controls stay."""
        self._history.clear()
        self.bars = 0
        return self.rebuild()

    def rebuild(self, keep: int = 0) -> Plan:
        """BOS + controls + up to `keep` recent music tokens starting at a Bar (none if no Bar is there)."""
        room = self.context_len - self.reserve - 1 - len(self.controls)
        keep = max(0, min(keep, room))
        music = list(self._history)[-keep:] if keep else []
        music = music[decoding.from_bar(music, 0, lambda i: i == self.bar) :]  # none without a Bar
        self._history = deque(music, maxlen=self.context_len)
        return Plan((self.bos, *self.controls, *music), rebuild=True, has_music=bool(music))
