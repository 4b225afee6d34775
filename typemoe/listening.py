"""Hearing a whole piece as the bridge hears it: one session fed bar by bar, its context sliding when full.

Torch-free. `typemoe analyze` (typemoe/commands/tools.py) and `typemoe eval`'s whole-piece numbers
(training/evaluation/eval_keymeter.py) both read a piece through `listen`, so the two cannot drift apart; the session
is typemoe.decoding's (either backend), whose slide keeps the control prefix.

    heard = listen(model, ids, report_bars=(1, 2, 4, 8))
    heard.session.last          # the heads at the end (the running estimate)
    whole_piece(heard)          # the heads averaged over every bar line: the answer for the whole piece
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def bar_chunks(vocab, ids: Sequence[int], max_len: int) -> list[list[int]]:
    """`ids` cut before every Bar token (one chunk per bar), long bars cut further to max_len ids, so a
    session fed chunk by chunk runs every token once even when its context slides."""
    bar = vocab.id("Bar_None")
    chunks: list[list[int]] = []
    for i in ids:
        if not chunks or i == bar or len(chunks[-1]) >= max_len:
            chunks.append([])
        chunks[-1].append(int(i))
    return chunks


@dataclass
class Heard:
    """A piece heard through one session (listen)."""

    session: object  # its `last` holds the heads at the end
    after: dict[int, object]  # bars -> the StepOut after that many whole bars (the asked report_bars)
    at_bars: list[object]  # the StepOut at every bar line after the first bar, and at the end


def listen(model, ids: Sequence[int], *, report_bars: Sequence[int] = ()) -> Heard:
    """Feed [BOS, *ids] through one session bar by bar, as the bridge hears a performance."""
    session = model.session()
    session.feed([model.vocab.bos_id])
    bar = model.vocab.id("Bar_None")
    seen, after, at_bars = 0, {}, []
    for chunk in bar_chunks(model.vocab, ids, max(1, model.context_len // 4)):
        if chunk[0] == bar:
            seen += 1
            if seen > 1:  # the chunk opens bar `seen`: bar seen-1 is complete
                at_bars.append(session.last)
            if seen - 1 in report_bars:
                after[seen - 1] = session.last
        session.feed(chunk)
    if seen in report_bars:
        after[seen] = session.last
    at_bars.append(session.last)
    return Heard(session, after, at_bars)


@dataclass
class Heads:
    """Key and meter head probabilities (a StepOut's two heads)."""

    key_probs: np.ndarray
    meter_probs: np.ndarray


def whole_piece(heard: Heard) -> Heads:
    """The heads over the whole piece: their probabilities averaged over every bar line (each bar heard
    once, as the sliding context heard it), so a piece's key is the one it keeps, not the one it ends in."""
    return Heads(
        np.mean([o.key_probs for o in heard.at_bars], axis=0),
        np.mean([o.meter_probs for o in heard.at_bars], axis=0),
    )
