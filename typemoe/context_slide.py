"""The one rule of what a full context keeps when it slides (torch-free: numpy).

The decoder (typemoe.decoding.Session.feed) re-prefills `slide_keep`'s indices when its context is full;
the bridge's context rebuilds (bridge/worker.py's ContextPolicy) open their window with `from_bar` too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

SLIDE_KEEP = 3 / 4  # a slide keeps this fraction of the context


def from_bar(ids: Sequence[int], start: int, is_bar: Callable[[int], bool]) -> int:
    """The first index at or after `start` whose id is a Bar, len(ids) when there is none: where a window
    keeping the recent ids ids[start:] opens on a bar line. The one rule of what a slide keeps, for the
    decoder (slide_keep) and the bridge's context rebuilds (bridge/worker.py's ContextPolicy)."""
    for i in range(max(0, start), len(ids)):
        if is_bar(ids[i]):
            return i
    return len(ids)


def slide_keep(
    tokens: Sequence[int],
    is_control: np.ndarray,
    context_len: int,
    is_bar: Callable[[int], bool] | None = None,
) -> list[int]:
    """Indices of `tokens` to re-prefill when the context is full: the leading control tokens (at most a
    quarter of the context), then the most recent tokens, SLIDE_KEEP of the context in all, from their
    first bar line when `is_bar` is given and they hold one."""
    n_pre = 0
    while n_pre < min(len(tokens), context_len // 4) and is_control[tokens[n_pre]]:
        n_pre += 1
    start = max(n_pre, len(tokens) - (int(SLIDE_KEEP * context_len) - n_pre))
    if is_bar is not None:
        aligned = from_bar(tokens, start, is_bar)
        start = aligned if aligned < len(tokens) else start
    return [*range(n_pre), *range(start, len(tokens))]
