"""Incremental REMI tokenization of live notes, equal to the offline tokenization of the same notes.

Torch-free: the bridge runs this on every incoming note.

A note can only be written once its Duration token is known, i.e. once it has ended, and REMI writes notes
in the canonical order (onset, duration, pitch, velocity) on the quantized grid (see
`TypedVocab.prepare_score`). So a pending note is emitted when:
  1. it has ended;
  2. every note that sorts before it has been emitted;
  3. no note still sounding or yet to come can sort before it: no open note started earlier, an open note
     that started on the same tick can only be longer once the grid has moved past our note's end, and
     a future note-on lands on a tick >= the current one, so the current tick must be past our onset.
Times are beats (quarter notes) from the start of the stream; the grid is `TICKS_PER_BEAT` per beat.

The inverse, ids -> notes in beats, is `TokenReader` (below): the live stream's notes as the model heard
them, and a generated continuation's. It parses the token strings itself (`Bar_None`, `Position_p`,
`Pitch_p`, `Velocity_v`, `Duration_a.b.c` = a + b/c beats) rather than `vocab.decode` -> symusic, which
keeps beat-exact positions and lets a continuation start where the live stream stopped: the cursor carries
the bar and position of the last token read.
"""

from __future__ import annotations

import bisect
import copy
from collections.abc import Iterable
from dataclasses import dataclass, field

from typemoe.grammar_tables import BarPlan, next_bar_start
from typemoe.vocab import MAX_EMPTY_BARS, TICKS_PER_BAR, TICKS_PER_BEAT, TypedVocab


@dataclass(order=True)
class _Closed:
    onset: int
    duration: int
    pitch: int
    velocity: int


@dataclass
class _Open:
    onset: int
    velocity: int


@dataclass
class StreamingTokenizer:
    """Feed note-ons and note-offs in time order; get REMI token ids back as soon as they are final."""

    vocab: TypedVocab
    max_history: int | None = None
    """Keep at most about this many emitted ids in `tokens` (None = all). A live session runs for hours and
    its consumer (the bridge) takes the returned chunks, so it passes 0 and memory stays bounded."""
    tokens: list[int] = field(default_factory=list)
    _open: dict[int, _Open] = field(default_factory=dict)  # pitch -> sounding note
    _closed: list[_Closed] = field(default_factory=list)  # ended, not yet emitted, kept sorted
    _bar: int = -1  # last bar a Bar token was written for
    _last_onset: int = -1  # onset tick of the last written note (REMI writes Position on change)
    _tick: int = 0  # latest grid tick seen

    def __post_init__(self) -> None:
        lo, hi = self.vocab.tokenizer.config.pitch_range
        self._pitch_range = range(lo, hi + 1)  # miditok's pitch_range is inclusive
        self._bar_id = self.vocab.id("Bar_None")
        self._pos_ids = [self.vocab.id(f"Position_{p}") for p in range(TICKS_PER_BAR)]
        self._pitch_ids = {p: self.vocab.id(f"Pitch_{p}") for p in self._pitch_range}

    @staticmethod
    def to_tick(beat: float) -> int:
        return int(round(beat * TICKS_PER_BEAT))

    def reset(self) -> None:
        self.tokens.clear()
        self._open.clear()
        self._closed.clear()
        self._bar, self._last_onset, self._tick = -1, -1, 0

    @property
    def n_open(self) -> int:
        return len(self._open)

    def note_on(self, pitch: int, velocity: int, beat: float) -> list[int]:
        """A key went down at `beat`. Velocity 0 is a note-off, as in MIDI."""
        if velocity <= 0:
            return self.note_off(pitch, beat)
        out = self.advance(beat)
        if pitch in self._open:  # re-struck while sounding: the old note ends here
            out += self.note_off(pitch, beat)
        if pitch in self._pitch_range:
            self._open[pitch] = _Open(self._tick, min(int(velocity), 127))
        return out

    def note_off(self, pitch: int, beat: float) -> list[int]:
        """A key went up at `beat`. An off without a matching on is ignored."""
        out = self.advance(beat)
        note = self._open.pop(pitch, None)
        if note is not None:
            bisect.insort(
                self._closed, _Closed(note.onset, max(self._tick - note.onset, 1), pitch, note.velocity)
            )
        return out + self._emit()

    def advance(self, beat: float) -> list[int]:
        """Time moved on to `beat` (monotonic; an earlier time is treated as now)."""
        self._tick = max(self._tick, self.to_tick(beat))
        return self._emit()

    def flush(self, beat: float) -> list[int]:
        """End every sounding note at `beat` and emit everything pending (end of a phrase or stream)."""
        self.advance(beat)
        for pitch in list(self._open):
            note = self._open.pop(pitch)
            bisect.insort(
                self._closed, _Closed(note.onset, max(self._tick - note.onset, 1), pitch, note.velocity)
            )
        return self._emit(final=True)

    def provisional(self, beat: float) -> list[int]:
        """The ids that would follow if every sounding note ended at `beat` (at least one grid step long).

        The stream itself is unchanged: this is what is known now, for an analysis that must not wait for
        held notes to end; the final ids come later from note_off/advance as usual.
        """
        twin = copy.copy(self)
        twin.tokens, twin.max_history = [], 0
        twin._open, twin._closed = dict(self._open), list(self._closed)
        return twin.flush(beat)

    def _emit(self, final: bool = False) -> list[int]:
        out: list[int] = []
        while self._closed:
            head = self._closed[0]
            if not final and not self._is_final(head):
                break
            self._closed.pop(0)
            out += self._note_tokens(head)
        self.tokens += out
        if self.max_history is not None and len(self.tokens) > 2 * self.max_history:
            del self.tokens[: len(self.tokens) - self.max_history]  # amortised O(1) per id
        return out

    def _is_final(self, head: _Closed) -> bool:
        if self._tick <= head.onset:
            return False  # a note-on still to come could land on this tick and sort first
        for o in self._open.values():
            if o.onset < head.onset:
                return False
            if o.onset == head.onset and self._tick <= head.onset + head.duration:
                return False  # it could still end on our end tick and sort before us by pitch
        return True

    def _note_tokens(self, n: _Closed) -> list[int]:
        out = []
        bar = n.onset // TICKS_PER_BAR
        if bar > self._bar:  # a silence over MAX_EMPTY_BARS bars is cut, as in TypedVocab.prepare_score
            out += [self._bar_id] * min(bar - self._bar, MAX_EMPTY_BARS + 1)
            self._bar = bar
        if n.onset != self._last_onset:
            out.append(self._pos_ids[n.onset - bar * TICKS_PER_BAR])
            self._last_onset = n.onset
        out += [
            self._pitch_ids[n.pitch],
            int(self.vocab.velocity_id[n.velocity]),
            self.vocab.duration_token_id(n.duration),
        ]
        return out


# --------------------------------------------------------------------------- ids -> notes


@dataclass(frozen=True, slots=True)
class BeatNote:
    onset: float  # beats from the start of the stream
    duration: float  # beats
    pitch: int
    velocity: int


@dataclass
class TokenCursor:
    """Where a REMI stream stands: bar index (-1 before the first Bar), position in ticks, and the beat
    where the current bar opened (4 beats a bar, except the bars a BarPlan placed)."""

    bar: int = -1
    position: int = 0
    bar_start: float = 0.0

    @property
    def beat(self) -> float:
        return self.bar_start + self.position / TICKS_PER_BEAT

    def copy(self) -> TokenCursor:
        return TokenCursor(self.bar, self.position, self.bar_start)


class TokenReader:
    """Turns ids into notes, keeping a cursor. Ill-formed sequences are skipped, never raised.

    plan: the BarPlan a continuation was generated under (typemoe.decoding: generate(meter=...) writes
    REMI bars of the meter's length), None for REMI's 4-beat bars; read a continuation with the plan of
    its generation and the notes land where the decoder put them.
    """

    def __init__(self, vocab, cursor: TokenCursor | None = None, plan: BarPlan | None = None) -> None:
        self._vocab = vocab
        self.cursor = cursor.copy() if cursor is not None else TokenCursor()
        self.plan = plan
        self._pitch: int | None = None
        self._velocity: int | None = None

    def read(self, ids: Iterable[int]) -> list[BeatNote]:
        notes: list[BeatNote] = []
        for i in ids:
            kind, _, value = self._vocab.token(int(i)).partition("_")
            if kind == "Bar":
                c = self.cursor
                c.bar_start = next_bar_start(c.bar_start, self.plan) if c.bar >= 0 else 0.0
                c.bar += 1
                c.position = 0
                self._pitch = self._velocity = None
            elif kind == "Position":
                self.cursor.position = int(value)
                self._pitch = self._velocity = None
            elif kind == "Pitch":
                self._pitch, self._velocity = int(value), None
            elif kind == "Velocity" and self._pitch is not None:
                self._velocity = int(value)
            elif kind == "Duration" and self._pitch is not None and self._velocity is not None:
                notes.append(BeatNote(self.cursor.beat, _duration_beats(value), self._pitch, self._velocity))
                self._pitch = self._velocity = None
        return notes


def _duration_beats(value: str) -> float:
    """'1.2.4' -> 1.5 beats (whole beats . ticks . ticks per beat)."""
    a, b, c = (int(x) for x in value.split("."))
    return a + b / c
