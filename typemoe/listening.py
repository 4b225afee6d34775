"""Hearing a whole piece as the bridge hears it: one session fed bar by bar, its context sliding when full.

Torch-free. `typemoe analyze` (typemoe/commands/tools.py) and `typemoe eval`'s whole-piece numbers
(training/evaluation/eval_keymeter.py) both read a piece through `listen`, so the two cannot drift apart; the session
is typemoe.decoding's (either backend), whose slide keeps the control prefix.

    heard = listen(model, ids, report_bars=(1, 2, 4, 8))
    at_end(heard, readers)      # the running estimate when the piece is over, as the bridge shows it
    whole_piece(heard, readers, key_heads_transposed(model, heard))  # the whole piece's answer

`readers` is an exported directory's OrtModel (its `key` and `meter` readers fuse the heads with the notes:
typemoe.key_fusion, typemoe.meter); None (a PyTorch checkpoint) leaves the heads to answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from typemoe import analysis
from typemoe.key_fusion import with_ending


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
    contexts: list[np.ndarray]  # the ids the session held at each of at_bars: what those heads read
    ids: list[int]  # the piece (no BOS)


def listen(model, ids: Sequence[int], *, report_bars: Sequence[int] = ()) -> Heard:
    """Feed [BOS, *ids] through one session bar by bar, as the bridge hears a performance."""
    session = model.session()
    session.feed([model.vocab.bos_id])
    bar = model.vocab.id("Bar_None")
    ids = [int(i) for i in ids]
    seen, after, at_bars, contexts = 0, {}, [], []

    def mark() -> None:
        at_bars.append(session.last)
        contexts.append(np.asarray(session.tokens, dtype=np.int32))

    for chunk in bar_chunks(model.vocab, ids, max(1, model.context_len // 4)):
        if chunk[0] == bar:
            seen += 1
            if seen > 1:  # the chunk opens bar `seen`: bar seen-1 is complete
                mark()
            if seen - 1 in report_bars:
                after[seen - 1] = session.last
        session.feed(chunk)
    if seen in report_bars:
        after[seen] = session.last
    mark()
    return Heard(session, after, at_bars, contexts, ids)


@dataclass
class Heads:
    """Key and meter head probabilities (a StepOut's two heads)."""

    key_probs: np.ndarray
    meter_probs: np.ndarray


def _answer(o, ctx, readers) -> Heads:
    if readers is None:
        return Heads(np.asarray(o.key_probs), np.asarray(o.meter_probs))
    return Heads(*readers.answer(ctx, o.key_probs, o.meter_probs))


def answers(heard: Heard, readers=None) -> list[Heads]:
    """The answer at every bar line (heard.at_bars): the heads there fused with the notes of the context
    they read; the bridge reports the same fusion over the music it holds (bridge/worker.py: at most a
    context of ids, so after a slide a few bars more than the session's). The heads alone without
    readers."""
    return [_answer(o, ctx, readers) for o, ctx in zip(heard.at_bars, heard.contexts)]


def at_end(heard: Heard, readers=None) -> Heads:
    """The running estimate when the piece is over: the last bar line's answer (the context at the end)."""
    return _answer(heard.at_bars[-1], heard.contexts[-1], readers)


REGISTER = (57, 69)  # the 12 hearings put the notes' mean pitch here: A3 <= mean < A4
ONE_HEARING = "one"  # key_heads_transposed(..., shifts=ONE_HEARING): the piece as it is (analyze --quick)


def turn_back(key_probs, shift: int) -> np.ndarray:
    """(24,) probabilities over the keys of a piece moved `shift` semitones up -> over the piece's own keys
    (typemoe.analysis.KEYS order: tonic pitch class + 12 * minor)."""
    return np.asarray(key_probs)[[analysis.transpose_key(k, shift) for k in range(len(analysis.KEYS))]]


def register_shifts(pitches: np.ndarray, register: tuple[int, int] = REGISTER) -> tuple[int, ...]:
    """The 12 consecutive shifts that put the mean of `pitches` into `register` (a half-open octave), in
    exact integer arithmetic; (0,) for no notes. A piece moved by k semitones gets these shifts less k,
    so both are heard as the very same twelve sequences."""
    lo, hi = register
    if hi - lo != 12:
        raise ValueError(f"register must span one octave, got {register}")
    p = np.asarray(pitches, dtype=np.int64)
    if not len(p):
        return (0,)
    n, total = len(p), int(p.sum())
    first = -((total - lo * n) // n)  # the least s with total + s * n >= lo * n: ceil((lo * n - total) / n)
    return tuple(range(first, first + 12))


def _key_heads(at_bars) -> np.ndarray:
    """(len(at_bars), 24) the key head's probabilities at those steps."""
    return np.stack([np.asarray(o.key_probs) for o in at_bars])


def key_heads_transposed(model, heard: Heard, shifts=None) -> np.ndarray:
    """(len(heard.at_bars), 24) the key head at every bar line, averaged over the piece heard in twelve
    transpositions and turned back to the piece's keys.

    A key profile turns with a transposition by construction; the key head learned its corpora's keys and
    turns only nearly (0.933 of the invariance suite's pieces). So the piece is heard in the twelve
    transpositions that put its notes' mean pitch into one octave (register_shifts): a piece and any
    transposition of it are then heard as the same twelve token sequences, and the averaged answer turns
    with the music exactly (as long as the transposition pushed no note out of the pitch range). On held-out
    pieces of the training sources it reads as well as one hearing (music21 val 0.919 and POP909 val 0.902
    either way; with whole_piece's last-bass step 0.944 against 0.937 on music21 val); it costs about
    eleven times the time of one hearing (`typemoe bench`'s analyze row), so the bridge keeps its one.

    shifts: the transpositions to hear (None: register_shifts of the piece; ONE_HEARING: the piece as it
    is, heard already). A transposition drops the notes it pushes out of the pitch range
    (typemoe.transpose); when that shortens the piece by its last bars, those bar lines read the
    transposed hearing's end.
    """
    from typemoe.transpose import Transposer

    n = len(heard.at_bars)
    if shifts == ONE_HEARING:
        return _key_heads(heard.at_bars)
    transposer = Transposer(model.vocab)
    ids = np.asarray(heard.ids, dtype=np.int64)
    if shifts is None:
        pitches = transposer.pitch_of[ids]
        shifts = register_shifts(pitches[pitches >= 0])
    total = np.zeros((n, 24))
    for s in shifts:
        if s == 0:
            bars = _key_heads(heard.at_bars)
        else:
            other = listen(model, transposer.transpose(ids, s)[0].tolist()).at_bars
            bars = np.stack([turn_back(o.key_probs, s) for o in other])
        total += bars[np.minimum(np.arange(n), len(bars) - 1)]
    return total / len(shifts)


def whole_piece(heard: Heard, readers=None, key_heads: np.ndarray | None = None) -> Heads:
    """The answer for the whole piece: a piece's key is the one it keeps, not the one it ends in.

    key: the answers at every bar line (each bar heard once, as the sliding context heard it) averaged, so
    a piece that modulates and returns keeps its home key, and each fused answer reads the span of notes
    the key fusion was fitted on (windows of at most a context), not a whole piece's pitch classes pooled.
    Chosen on held-out pieces of the training sources (POP909 val 0.902 against 0.878 for the mean head
    fused with the whole piece's notes; music21 val 0.919 against 0.915), before the unseen sources. With
    a key fusion, the keys whose tonic is the bass of the piece's last chord are then raised
    (key_fusion.with_ending).
    meter: the meter head averaged over the bar lines, fused with the rhythm of every note of the piece
    (a meter rarely changes, and its rhythm evidence grows with the music: on music21 val exact 0.666,
    family 0.868, against 0.625 and 0.845 for the bar-line answers averaged); the heads' means without
    readers.
    key_heads: (len(heard.at_bars), 24) key head probabilities to use at the bar lines instead of the
    hearing's own, e.g. key_heads_transposed's (what `typemoe analyze` answers).
    """
    meter_head = np.mean([o.meter_probs for o in heard.at_bars], axis=0)
    if key_heads is None:
        key_heads = _key_heads(heard.at_bars)
    if len(key_heads) != len(heard.at_bars):
        raise ValueError(f"key_heads has {len(key_heads)} rows for {len(heard.at_bars)} bar lines")
    if readers is None:
        return Heads(np.mean(key_heads, axis=0), meter_head)
    key = np.mean([readers.key.probs(ctx, h) for h, ctx in zip(key_heads, heard.contexts)], axis=0)
    notes = readers.key.remi.notes(np.asarray(heard.ids, dtype=np.int64))[0]  # the whole piece's, read once
    if readers.key.fusion is not None:  # a piece's last bass is most often its tonic (key_fusion.with_ending)
        key = with_ending(key, readers.key.ending_of(notes))
    return Heads(key, readers.meter.probs_of(notes, meter_head))
