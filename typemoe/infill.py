"""Infilling: new notes for a span of bars, between the music before it and the music after it.

Torch-free (numpy, symusic). The model reads the fill-in-the-middle arrangement it was trained on
(training/learn/infill_data.py):

    [BOS, *controls, Infill_Suffix, *suffix, Infill_Bars_<n>, *prefix, Infill_Middle] -> middle, Infill_End

(suffix first: the middle continues its prefix directly, as a continuation continues its prompt)

and the one decoder (typemoe.decoding.Session, either backend) writes the middle. Two readings of it are
mixed (`SuffixMix`): the infilling one (prefix and suffix, the arrangement above) and the continuation one
([BOS, *controls, *prefix], the suffix unseen), log p = c + w (f - c) on their log-softmaxes, w =
SUFFIX_WEIGHT. On held-out music21, POP909/EMOPIA and VGMIDI pieces the mix predicts the true middle a
little better than either reading alone (a tie on performed classical piano and humanized VGMIDI;
MODEL_CARD.md, "Infilling").
Under `SpanGrammar`, a
decoding hook that makes the span a hard guarantee: exactly n Bar tokens, no Position at or past the span's
end, no Duration that would carry a note past it, and Infill_End once the n-th bar is open (where a Bar
could come). Generation stops at Infill_End, or when the span or the token budget is full. Controls,
classifier-free guidance and key lock work as in continuation (guidance's unconditioned stream is the same
arrangement without the control tokens).

    session = model.session()
    mid = generate_middle(session, prefix_ids, suffix_ids, n_bars=2, controls=vocab.control_ids(key="D minor"))
    mid.notes    # Note(time, duration, pitch, velocity) in grid ticks from the middle's first bar line

On a file (`typemoe infill`): `infill_score` cuts the notes of bars first..last (the file's own bars,
from its time signatures) out of a copy of the score and puts the generated ones in; every other event
(notes, tempo, time and key signatures, controllers) is the file's own, untouched. The REMI grid is
lined up so that the span starts on a REMI bar line, and the middle is written in REMI bars of the
file's meter at the span (middle_bar_beats: a 3/4 or 6/8 span in 3-beat bars, one per file bar; 4/4 in
REMI's own), as a continuation is (typemoe.grammar_tables.BarPlan); the prefix and suffix stay in REMI's
4-beat bars, as the model was trained.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from typemoe import key_steering, note_writer, sampling
from typemoe.grammar_tables import BarPlan, bar_part_beats, tables_of
from typemoe.note_writer import Note
from typemoe.vocab import (
    BEATS_PER_BAR,
    FAMILIES,
    INFILL_TOKENS,
    MAX_EMPTY_BARS,
    MAX_INFILL_BARS,
    TICKS_PER_BAR,
    TICKS_PER_BEAT,
)

_VELOCITY = FAMILIES.index("Velocity")
_LONGEST_TICKS = 16 * TICKS_PER_BEAT  # durations are clipped here before tokenizing (as vocab does)
TOKENS_PER_BAR = 128  # middle budget per bar (a dense piano bar is ~100 tokens)
SUFFIX_WEIGHT = 0.5
"""w of SuffixMix: 0 = the continuation reading (the suffix unseen), 1 = the infilling reading alone, > 1
the suffix's pull amplified (as guidance amplifies the controls'). 0.5 was picked on validation pieces of
music21 and POP909/EMOPIA with an earlier infill model (Hits@1 of the true middle tokens over w in 0..3);
the shipped model's val pieces agree (MODEL_CARD.md, "Infilling")."""
SUFFIX_WEIGHT_MAX = 4.0  # the largest weight start_middle (and the bridge's setting) takes


class InfillError(ValueError):
    """A model without the infilling tokens, or a span that cannot be filled, named in the message."""


def bar_grid_ticks(bar_beats: float) -> int:
    """Grid ticks of a REMI bar of bar_beats beats (0 < bar_beats <= 4, a whole number of grid steps), e.g.
    remi_bar_beats("9/8") = 2.25 -> 9. Raises InfillError naming a bar the grid cannot hold."""
    ticks = bar_beats * TICKS_PER_BEAT
    if not (0 < bar_beats <= BEATS_PER_BAR and abs(ticks - round(ticks)) < 1e-9):
        raise InfillError(
            f"bars of {bar_beats:g} beats do not fit REMI's grid (whole {1 / TICKS_PER_BEAT:g}-beat steps, "
            f"at most {BEATS_PER_BAR} beats)"
        )
    return int(round(ticks))


@dataclass(frozen=True)
class InfillIds:
    suffix: int
    middle: int
    end: int
    bars: tuple[int, ...]  # Infill_Bars_1 .. Infill_Bars_MAX

    @classmethod
    def of(cls, vocab, where: str = "the model") -> InfillIds:
        """The ids, or InfillError naming the missing tokens (a vocabulary from before infilling)."""
        missing = [t for t in INFILL_TOKENS if t not in set(vocab.tokens)]
        if missing:
            raise InfillError(
                f"{where} cannot infill: its vocabulary (hash {vocab.hash[:12]}) has no "
                f"{', '.join(missing[:3])}{f' (nor {len(missing) - 3} more Infill_* tokens)' if len(missing) > 3 else ''}"
                "; it was trained before infilling. Fine-tune it with the infilling "
                "objective (`typemoe train --init CKPT --infill-p 0.25 ...`, which grows the vocabulary), "
                "then export that checkpoint"
            )
        bars = tuple(vocab.id(f"Infill_Bars_{n}") for n in range(1, MAX_INFILL_BARS + 1))
        return cls(*(vocab.id(t) for t in INFILL_TOKENS[:3]), bars)

    def span(self, n_bars: int) -> int:
        return self.bars[min(n_bars, MAX_INFILL_BARS) - 1]


class SpanGrammar:
    """Decoding hook (session, logits, allowed): keeps the middle inside n_bars bars of bar_ticks grid ticks
    (REMI's 16, or the bars of the music's meter the middle is written in) and span_ticks grid ticks (<=
    n_bars * bar_ticks) from its first bar line, and allows Infill_End once the last bar is open, where a
    Bar could come; a Bar there would leave the span, so its probability is added to Infill_End's (as
    continuation stops at a Bar past its window). `bars0` is session.bars when the middle starts (its first
    Bar opens bar bars0 + 1), `start_beat` the stream beat where that Bar opens."""

    def __init__(
        self,
        tables,
        ids: InfillIds,
        *,
        n_bars: int,
        span_ticks: int,
        bars0: int,
        start_beat: float | None = None,
        bar_ticks: int = TICKS_PER_BAR,
    ):
        if not (n_bars - 1) * bar_ticks < span_ticks <= n_bars * bar_ticks:
            raise InfillError(
                f"a span of {span_ticks} grid ticks does not end in the last of {n_bars} bars of {bar_ticks}"
            )
        self.t, self.ids, self.n_bars, self.span_ticks, self.bars0 = tables, ids, n_bars, span_ticks, bars0
        self.bar_ticks = bar_ticks
        self.start_beat = bars0 * tables.beats_per_bar if start_beat is None else float(start_beat)

    def onset_ticks(self, session) -> int:
        """Grid ticks from the middle's first bar line to the current position."""
        return int(round((session.beat_now() - self.start_beat) * self.t.positions_per_beat))

    def __call__(self, session, logits: np.ndarray, allowed: np.ndarray) -> None:
        t = self.t
        k = session.bars - self.bars0  # middle bars opened so far
        last = session.tokens[-1]
        if k >= self.n_bars:
            if t.is_bar[last] or t.duration_of[last] >= 0:  # where a Bar could come: the middle may end,
                allowed[self.ids.end] = True  # and a Bar past the span means just that: its odds go to End
                logits[self.ids.end] = np.logaddexp(logits[self.ids.end], logits[t.is_bar].max())
            allowed &= ~t.is_bar
        if k >= 1:
            tick = (k - 1) * self.bar_ticks + np.maximum(t.position_of, 0)  # (V,)
            past = allowed & (t.position_of >= 0) & (tick >= self.span_ticks)
            if past.any() and allowed[self.ids.end]:  # a note past the span's end: the middle ends here
                logits[self.ids.end] = np.logaddexp(logits[self.ids.end], np.logaddexp.reduce(logits[past]))
            allowed &= ~past
            if t.family_of[last] == _VELOCITY:  # a Duration comes: the note must end inside the span
                end = self.onset_ticks(session) + t.duration_of  # (V,)
                allowed &= ~((t.duration_of >= 0) & (end > self.span_ticks))


def mix_readings(fim: np.ndarray, cont: np.ndarray, weight: float, end_id: int) -> np.ndarray:
    """(..., V) logits of the infilling reading `fim` and the continuation reading `cont` of the same
    middle tokens -> the mixed log-probabilities c + weight * (f - c) of their log-softmaxes (float32).
    Infill_End keeps the infilling reading's log-probability: the continuation reading never learned when
    a middle ends."""
    f, c = (sampling.log_softmax(np.asarray(x, dtype=np.float64)) for x in (fim, cont))
    out = c + weight * (f - c)
    out[..., end_id] = f[..., end_id]
    return out.astype(np.float32)


class SuffixMix:
    """Decoding hook (session, logits, allowed): mixes the session's logits (the infilling reading, guided
    as the session guides them) with the continuation reading of `reader`, a second session already fed
    [BOS, *controls, *prefix], which the hook keeps up with the middle: it feeds the reader every id the
    session took after its first `n0`. With guidance != 1 the reader is guided the same way (its own twin
    without the controls)."""

    def __init__(self, reader, n0: int, *, weight: float, guidance: float, end_id: int):
        self.reader, self.n0, self.weight, self.guidance, self.end_id = reader, n0, weight, guidance, end_id
        self.start = reader.n_past  # the reader's length when the middle starts

    def __call__(self, session, logits: np.ndarray, allowed: np.ndarray) -> None:
        new = session.tokens[self.n0 + self.reader.n_past - self.start :]
        if new:
            self.reader.feed(new)
        cont = self.reader.last.logits
        if self.guidance != 1.0:
            uncond = self.reader.unconditioned()
            if uncond is not None:
                cont = sampling.guide(cont, uncond.last.logits, self.guidance)
        if session.spill is not None:  # the session's bar ends here: so does the reader's (its logits, too)
            cont = sampling.spill_to_bar(cont, session.spill, session.tables.is_bar)
        logits[:] = mix_readings(logits, cont, self.weight, self.end_id)


@dataclass
class Middle:
    ids: list[int]  # the generated ids: Bars and notes, Infill_End left out
    notes: list[Note]  # grid ticks (TICKS_PER_BEAT a beat) from the middle's first bar line, cleaned
    ended: bool  # the model closed the middle with Infill_End (else the span or the budget was full)


def middle_notes(tables, ids: Sequence[int], bar_ticks: int = TICKS_PER_BAR) -> list[Note]:
    """The complete notes of middle ids (Position, Pitch, Velocity, Duration), at grid ticks from the
    first Bar, each Bar bar_ticks after the one before (the bars the middle was written in); a note cut off
    by the budget is dropped. Velocity from the token's value."""
    t, notes = tables, []
    bar, pos, pitch, vel = -1, 0, -1, -1
    for i in ids:
        if t.is_bar[i]:
            bar, pitch = bar + 1, -1
        elif t.position_of[i] >= 0:
            pos, pitch = int(t.position_of[i]), -1
        elif t.pitch_of[i] >= 0:
            pitch, vel = int(t.pitch_of[i]), -1
        elif t.family_of[i] == _VELOCITY:
            vel = int(t.velocity_of[i])
        elif t.duration_of[i] >= 0 and pitch >= 0 and vel > 0 and bar >= 0:
            notes.append(Note(bar * bar_ticks + pos, int(t.duration_of[i]), pitch, vel))
            pitch = -1
    return note_writer.clean_notes(notes)


def fit_context(prefix: list[int], suffix: list[int], room: int, bar: int) -> tuple[list[int], list[int]]:
    """prefix (the end of it, from a Bar) and suffix (the start, to before a Bar) within `room` ids, two
    thirds for the prefix; whole bars where possible."""
    if len(prefix) + len(suffix) <= room:
        return prefix, suffix
    s_room = max(room // 3, room - len(prefix))
    if len(suffix) > s_room:
        cuts = [j for j, i in enumerate(suffix[: s_room + 1]) if i == bar and j > 0]
        suffix = suffix[: cuts[-1]] if cuts else suffix[:s_room]
    p_room = room - len(suffix)
    if len(prefix) > p_room:
        tail = prefix[len(prefix) - p_room :]
        cuts = [j for j, i in enumerate(tail) if i == bar]
        prefix = tail[cuts[0] :] if cuts else tail
    return prefix, suffix


@dataclass
class MiddleRun:
    """A middle being written: each id of `steps` is sampled and fed (one token per next()); `finish` turns
    the ids it gave into the Middle. What start_middle returns, so a caller can interleave other work."""

    steps: Iterator[int]
    tables: object  # typemoe.grammar_tables.Tables
    end_id: int
    bar_ticks: int = TICKS_PER_BAR  # grid ticks of the bars the middle is written in

    def finish(self, out: Sequence[int]) -> Middle:
        out = [int(i) for i in out]
        ended = bool(out) and out[-1] == self.end_id
        body = out[:-1] if ended else out
        return Middle(body, middle_notes(self.tables, body, self.bar_ticks), ended)


def start_middle(
    session,
    prefix: Sequence[int],
    suffix: Sequence[int],
    *,
    n_bars: int,
    span_ticks: int | None = None,
    bar_beats: float = BEATS_PER_BAR,
    controls: Sequence[int] = (),
    max_tokens: int | None = None,
    temperature: float = 1.0,
    top_p: float = 0.95,
    seed: int | np.random.Generator | None = None,
    guidance: float = 1.0,
    key_lock: str | int | None = None,
    suffix_weight: float = SUFFIX_WEIGHT,
    head_guidance: float = key_steering.DEFAULT_HEAD_GUIDANCE,
) -> MiddleRun:
    """Set up the fill of n_bars bars between `prefix` (music ids up to the span's first bar line, empty
    bars included) and `suffix` (music ids from a Bar on): the session is reset and fed the FIM
    arrangement; both are cut to fit the context (prefix from its end, suffix from its start) with room
    left for the middle. The middle is written in REMI bars of bar_beats beats (middle_bar_beats of the
    music's meter: 3 for 3/4 and 6/8; REMI's own 4 by default), the prefix and suffix in REMI's 4-beat bars
    as the model was trained. span_ticks (default: the whole n_bars) ends the span inside its last bar.
    suffix_weight mixes the continuation reading in (SuffixMix; 1 = the infilling reading alone, no second
    stream). Nothing is sampled until the returned run's steps are drawn.

    Raises:
        InfillError: the model has no infilling tokens, or n_bars < 1; ValueError: bad sampling options.
    """
    vocab = session.engine.vocab
    ids = InfillIds.of(vocab)
    if n_bars < 1:
        raise InfillError(f"a middle needs at least 1 bar, got {n_bars}")
    sampling.check_sampling(temperature, top_p, guidance)  # now, not at the first step
    key_steering.check_head_guidance(head_guidance)
    if not 0.0 <= suffix_weight <= SUFFIX_WEIGHT_MAX:
        raise InfillError(
            f"suffix_weight must be in 0..{SUFFIX_WEIGHT_MAX:g} (1 = the infilling reading alone): {suffix_weight}"
        )
    bar_ticks = bar_grid_ticks(bar_beats)
    span_ticks = n_bars * bar_ticks if span_ticks is None else int(span_ticks)
    t = tables_of(vocab)
    ctx = session.engine.context_len
    budget = min(n_bars * TOKENS_PER_BAR, ctx // 2) if max_tokens is None else int(max_tokens)
    head = [t.bos_id, *[int(c) for c in controls]]
    room = ctx - len(head) - 3 - budget - 1  # 3 markers before the middle, Infill_End after it
    bar = vocab.id("Bar_None")
    pre, suf = fit_context([int(i) for i in prefix], [int(i) for i in suffix], max(room, 0), bar)
    session.reset()
    session.feed([*head, ids.suffix, *suf, ids.span(n_bars), *pre, ids.middle])
    start = session.next_bar_start()  # the stream beat where the middle's first Bar opens
    plan = None if bar_ticks == TICKS_PER_BAR else BarPlan(start, bar_beats)
    grammar = SpanGrammar(
        t,
        ids,
        n_bars=n_bars,
        span_ticks=span_ticks,
        bars0=session.bars,
        start_beat=start,
        bar_ticks=bar_ticks,
    )
    hooks = [grammar]
    if suffix_weight != 1.0:
        reader = session.blank()
        reader.feed([*head, *pre])
        mix = SuffixMix(reader, session.n_past, weight=suffix_weight, guidance=guidance, end_id=ids.end)
        hooks.insert(0, mix)  # first: the span grammar then moves a Bar's odds to Infill_End of the mix
    steps = session.generate_steps(
        n_tokens=max(1, min(budget, ctx - session.n_past)),
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        guidance=guidance,
        key_lock=key_lock,
        head_guidance=head_guidance,
        bar_plan=plan,
        hooks=hooks,
        stop_ids=(ids.end,),
    )
    return MiddleRun(steps, t, ids.end, bar_ticks)


def generate_middle(session, prefix: Sequence[int], suffix: Sequence[int], **kwargs) -> Middle:
    """start_middle(...) run to its end: the middle, written in one call (arguments as start_middle's)."""
    run = start_middle(session, prefix, suffix, **kwargs)
    return run.finish(list(run.steps))


# --------------------------------------------------------------------------- files


def bar_lines(score, first: int, last: int) -> tuple[int, int]:
    """(start tick of bar `first`, start tick of bar `last` + 1) of a score, bars numbered from 1 by its
    time signatures (4/4 before the first one, or without any). Raises InfillError."""
    if not 1 <= first <= last:
        raise InfillError(f"bars must be 1 <= first <= last, got {first}-{last}")
    tpq = score.ticks_per_quarter
    sigs = sorted((int(ts.time), int(ts.numerator), int(ts.denominator)) for ts in score.time_signatures)
    tick, num, den, j = 0, 4, 4, 0
    starts = {}
    for b in range(1, last + 2):
        while j < len(sigs) and sigs[j][0] <= tick:
            _, num, den = sigs[j]
            j += 1
        starts[b] = tick
        tick += num * tpq * 4 // den
    return starts[first], starts[last + 1]


def meter_at(score, tick: int) -> str:
    """The time signature in force at `tick` of a score, e.g. "3/4" ("4/4" before the first one, or
    without any)."""
    sigs = sorted((int(ts.time), int(ts.numerator), int(ts.denominator)) for ts in score.time_signatures)
    num, den = 4, 4
    for time, n, d in sigs:
        if time > tick:
            break
        num, den = n, d
    return f"{num}/{den}"


def middle_bar_beats(meter: str) -> float:
    """Beats of the REMI bars a middle in the time signature `meter` ("NUM/DEN") is written in: the bar
    itself when it fits in REMI's 4 beats (3/4, 6/8 -> 3, 5/8 -> 2.5), else its smallest whole part that
    does (12/8 -> 3, 9/8 -> 2.25, 5/4 -> 2.5), as remi_bar_beats does for the model's meter classes; REMI's
    own 4 for a bar the 16th-note grid cannot hold (its last bar is then cut at the span's end)."""
    try:
        num, den = (int(x) for x in meter.split("/"))
        beats = bar_part_beats(num * BEATS_PER_BAR / den)
        bar_grid_ticks(beats)
    except (ValueError, ZeroDivisionError, InfillError):
        return float(BEATS_PER_BAR)
    return beats


@dataclass
class Split:
    prefix: list[int]
    suffix: list[int]
    n_bars: int  # bars of the middle, of bar_beats beats each (the last one cut at span_ticks)
    span_ticks: int  # grid ticks of the span
    t0: int  # span in file ticks [t0, t1)
    t1: int
    bar_beats: float = BEATS_PER_BAR  # beats of the REMI bars the middle is written in


def _grid(ticks, tpq: int) -> np.ndarray:
    return np.rint(np.asarray(ticks, dtype=np.float64) * TICKS_PER_BEAT / tpq).astype(np.int64)


def _encode(vocab, notes: dict[str, np.ndarray]) -> list[int]:
    import symusic

    if len(notes["time"]) == 0:
        return []
    score = symusic.Score(TICKS_PER_BEAT)
    score.tracks.append(
        note_writer.to_track(
            [
                Note(*map(int, n))
                for n in zip(notes["time"], notes["duration"], notes["pitch"], notes["velocity"])
            ],
            "merged",
        )
    )
    return vocab.encode_score(score)


def split_score(vocab, score, t0: int, t1: int, *, bar_beats: float = BEATS_PER_BAR) -> Split:
    """The prefix and suffix ids around the span [t0, t1) (file ticks), on a REMI grid shifted so that t0
    is a REMI bar line, and the span's length in bars of bar_beats beats (the bars its middle is written
    in). Notes are those the vocabulary reads (pitched tracks, its pitch range), quantized to the grid; a
    prefix note rounded into the span stays just before it (a suffix note, at its start)."""
    tpq = score.ticks_per_quarter
    lo, hi = vocab.tokenizer.config.pitch_range
    arrays = [tr.notes.numpy() for tr in score.tracks if not tr.is_drum]
    keys = ("time", "duration", "pitch", "velocity")
    notes = {
        k: np.concatenate([a[k] for a in arrays]).astype(np.int64) if arrays else np.zeros(0, np.int64)
        for k in keys
    }
    keep = (notes["pitch"] >= lo) & (notes["pitch"] <= hi) & (notes["velocity"] > 0)
    notes = {k: v[keep] for k, v in notes.items()}
    g0, g1 = int(_grid(t0, tpq)), int(_grid(t1, tpq))
    if g1 <= g0:
        raise InfillError(f"the span {t0}..{t1} ticks is shorter than one grid step")
    shift = -g0 % TICKS_PER_BAR  # t0 onto a REMI bar line
    onset = _grid(notes["time"], tpq) + shift
    dur = np.clip(_grid(notes["duration"], tpq), 1, _LONGEST_TICKS)
    k0 = (g0 + shift) // TICKS_PER_BAR
    k1 = (g1 + shift) // TICKS_PER_BAR  # the REMI bar the suffix starts in
    n_bars = -(-(g1 - g0) // bar_grid_ticks(bar_beats))
    before, after = notes["time"] < t0, notes["time"] >= t1
    pre = {k: v[before] for k, v in notes.items()}
    pre.update(time=np.minimum(onset[before], g0 + shift - 1), duration=dur[before])
    prefix = _encode(vocab, pre)
    if prefix:  # empty bars between the last prefix note and the span, as in a whole-piece window
        gap = k0 - int(pre["time"].max()) // TICKS_PER_BAR - 1
        prefix += [vocab.id("Bar_None")] * min(max(gap, 0), MAX_EMPTY_BARS)
    suf = {k: v[after] for k, v in notes.items()}
    suf.update(time=np.maximum(onset[after], g1 + shift) - k1 * TICKS_PER_BAR, duration=dur[after])
    suffix = _encode(vocab, suf)
    return Split(prefix, suffix, n_bars, g1 - g0, t0, t1, float(bar_beats))


def replace_span(score, t0: int, t1: int, notes: Sequence[Note]):
    """A copy of `score` whose pitched notes starting in [t0, t1) are replaced by `notes` (file ticks).

    The new notes go to the pitched track that held most of the span's notes (the first pitched track
    when none did; a new track when there is none). A new note that would start while a kept note of its
    pitch still sounds in that track is left out, so no kept note can change when the file is read back.
    """
    import symusic

    out = score.copy()
    pitched = [j for j, tr in enumerate(out.tracks) if not tr.is_drum]
    counts = {}
    for j in pitched:
        tr = out.tracks[j]
        a = tr.notes.numpy()
        inside = (a["time"] >= t0) & (a["time"] < t1)
        counts[j] = int(inside.sum())
        if inside.any():
            tr.notes = symusic.Note.from_numpy(
                **{k: a[k][~inside] for k in ("time", "duration", "pitch", "velocity")}
            )
    if not pitched:
        out.tracks.append(symusic.Track("TypeMoE infill", 0, False))
        pitched = [len(out.tracks) - 1]
    dest = out.tracks[max(pitched, key=lambda j: (counts.get(j, 0), -j))]
    a = dest.notes.numpy()
    for n in notes:
        sounding = (a["pitch"] == n.pitch) & (a["time"] <= n.time) & (a["time"] + a["duration"] > n.time)
        if not sounding.any():
            dest.notes.append(symusic.Note(int(n.time), int(n.duration), int(n.pitch), int(n.velocity)))
    dest.notes.sort()
    return out


def to_file_notes(notes: Sequence[Note], t0: int, t1: int, tpq: int) -> list[Note]:
    """Middle notes (grid ticks from the span start) at file ticks, each ending by t1."""
    out = []
    for n in notes:
        time = t0 + note_writer.grid_ticks(n.time, tpq)
        if time < t1:
            dur = min(max(1, note_writer.grid_ticks(n.duration, tpq)), t1 - time)
            out.append(Note(time, dur, n.pitch, n.velocity))
    return out


def infill_score(model, score, first_bar: int, last_bar: int, *, controls: Sequence[int] = (), **generate):
    """(new score, Middle, Split): bars first_bar..last_bar of `score` filled by `model` (an OrtModel or
    TorchModel: anything with .session()); every other event kept. `generate`: generate_middle's
    sampling and steering options."""
    InfillIds.of(model.vocab)
    t0, t1 = bar_lines(score, first_bar, last_bar)
    split = split_score(model.vocab, score, t0, t1, bar_beats=middle_bar_beats(meter_at(score, t0)))
    if not split.prefix and not split.suffix:
        raise InfillError("the file has no notes outside the span to infill between")
    mid = generate_middle(
        model.session(),
        split.prefix,
        split.suffix,
        n_bars=split.n_bars,
        span_ticks=split.span_ticks,
        bar_beats=split.bar_beats,
        controls=controls,
        **generate,
    )
    notes = to_file_notes(mid.notes, t0, t1, score.ticks_per_quarter)
    return replace_span(score, t0, t1, notes), mid, split
