"""REMI token ids <-> notes in beats, for the live stream and for generated continuations.

Token strings (typemoe.vocab): `Bar_None`, `Position_p` (p in 0..15, 4 per beat), `Pitch_p`, `Velocity_v`,
`Duration_a.b.c` (a + b/c beats). A bar is 4 beats. Parsing the strings ourselves (rather than
`vocab.decode` -> symusic) keeps beat-exact positions and lets a continuation start where the live stream
stopped: the cursor carries the bar and position of the last token the model has read.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from typemoe.vocab import BEATS_PER_BAR, TICKS_PER_BEAT

POSITIONS_PER_BEAT = TICKS_PER_BEAT


@dataclass(frozen=True, slots=True)
class BeatNote:
    onset: float  # beats from the start of the stream
    duration: float  # beats
    pitch: int
    velocity: int


@dataclass
class TokenCursor:
    """Where a REMI stream stands: bar index (-1 before the first Bar) and position in ticks."""

    bar: int = -1
    position: int = 0

    @property
    def beat(self) -> float:
        return max(self.bar, 0) * BEATS_PER_BAR + self.position / POSITIONS_PER_BEAT

    def copy(self) -> TokenCursor:
        return TokenCursor(self.bar, self.position)


class TokenReader:
    """Turns ids into notes, keeping a cursor. Ill-formed sequences are skipped, never raised."""

    def __init__(self, vocab, cursor: TokenCursor | None = None) -> None:
        self._vocab = vocab
        self.cursor = cursor.copy() if cursor is not None else TokenCursor()
        self._pitch: int | None = None
        self._velocity: int | None = None

    def read(self, ids: Iterable[int]) -> list[BeatNote]:
        notes: list[BeatNote] = []
        for i in ids:
            kind, _, value = self._vocab.token(int(i)).partition("_")
            if kind == "Bar":
                self.cursor.bar += 1
                self.cursor.position = 0
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
