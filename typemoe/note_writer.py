"""Generated ids -> clean notes in a MIDI file's own time base. Torch-free (numpy, symusic).

    notes = continuation_notes(vocab, new_ids, cursor=cursor, plan=plan, ticks_per_quarter=480)
    track = to_track(notes, "TypeMoE continuation")
    ensure_tempo(score)                          # the file carries a tempo (the prompt's, else 120 qpm)

Clean means: onsets exactly on the grid (integer ticks of the target resolution, no rounding drift), no
two notes of one pitch at one onset (the longer is kept), and no overlapping notes of one pitch (the
earlier one is cut where the later one starts), which a MIDI channel cannot play.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import symusic

from typemoe.grammar_tables import BarPlan
from typemoe.streaming import TokenCursor, TokenReader
from typemoe.vocab import TICKS_PER_BEAT

DEFAULT_QPM = 120.0


class Note(NamedTuple):
    time: int  # onset, ticks
    duration: int  # ticks, >= 1
    pitch: int
    velocity: int


def clean_notes(notes: Sequence[Note]) -> list[Note]:
    """Notes sorted by (time, pitch) with same-pitch duplicates dropped and same-pitch overlaps cut."""
    by_pitch: dict[int, list[Note]] = {}
    for n in sorted(notes, key=lambda n: (n.pitch, n.time, -n.duration)):
        run = by_pitch.setdefault(n.pitch, [])
        if run and run[-1].time == n.time:  # a duplicate onset: the longer one (sorted first) stays
            continue
        if run and run[-1].time + run[-1].duration > n.time:  # overlap: cut the earlier note
            run[-1] = run[-1]._replace(duration=n.time - run[-1].time)
        run.append(n)
    return sorted((n for run in by_pitch.values() for n in run), key=lambda n: (n.time, n.pitch))


def grid_ticks(steps: int, ticks_per_quarter: int) -> int:
    """Ticks of `steps` grid steps (TICKS_PER_BEAT per quarter) at the target resolution, exact when the
    resolution is a multiple of the grid's (480, 960, ...), else the nearest tick."""
    if ticks_per_quarter % TICKS_PER_BEAT == 0:
        return steps * (ticks_per_quarter // TICKS_PER_BEAT)
    return int(round(steps * ticks_per_quarter / TICKS_PER_BEAT))


def continuation_notes(
    vocab,
    new_ids: Sequence[int],
    *,
    cursor: TokenCursor,
    plan: BarPlan | None = None,
    ticks_per_quarter: int,
) -> list[Note]:
    """The notes of `new_ids`, generated after a stream that stood at `cursor` (Session.cursor()) under
    the BarPlan of that generation, at their absolute time in a file of ticks_per_quarter, cleaned
    (clean_notes)."""
    notes = []
    for n in TokenReader(vocab, cursor, plan).read(new_ids):
        steps = int(round(n.onset * TICKS_PER_BEAT))  # the grid: onsets are whole steps
        length = max(1, int(round(n.duration * TICKS_PER_BEAT)))
        notes.append(
            Note(
                grid_ticks(steps, ticks_per_quarter),
                max(1, grid_ticks(length, ticks_per_quarter)),
                n.pitch,
                n.velocity,
            )
        )
    return clean_notes(notes)


def to_track(notes: Sequence[Note], name: str, program: int = 0) -> symusic.Track:
    track = symusic.Track(name, program, False)
    for n in notes:
        track.notes.append(symusic.Note(n.time, n.duration, n.pitch, n.velocity))
    return track


def ensure_tempo(score: symusic.Score, qpm: float | None = None) -> None:
    """Give a score without a tempo event one at time 0: `qpm` (e.g. the bridge's tempo), else 120."""
    if not len(score.tempos):
        score.tempos.append(symusic.Tempo(0, float(qpm or DEFAULT_QPM)))
