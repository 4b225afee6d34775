"""Key and meter label rules on plain note arrays, with no music21 in them.

Shared by the music21 conversion (training/data/music21_source.py: the Essen third rule, the finalis rule, the
meter label) and the MIDI sources (training/data/sources.py: classical_piano's key and meter from the file's
meta), so both label a piece the same way:

- key_name: a tonic pitch class and mode as an analysis.KEYS name ("Eb minor").
- finalis_key: a key signature read as its major tonic or relative minor, whichever the finalis (pitch
  class of the lowest note sounding at the end, final_bass_pc) names; any other finalis is unlabelled.
- third_mode: minor if the minor third above the tonic holds >= THIRD_SHARE of the duration of both
  thirds, major for the major third, undecided when neither dominates or neither occurs.
- longest_meter: the time signature covering the most duration (an anacrusis bar does not win).

A changed rule changes the labels in the music21 cache: bump music21_source.CONVERTER_VERSION with it.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from typemoe import analysis

THIRD_SHARE = 0.75  # Essen mode rule: share of the winning third among both thirds


def key_name(pc: int, minor: bool) -> str:
    """Name in analysis.KEYS spelling ("Eb minor") of a tonic pitch class and mode."""
    return analysis.KEYS[pc % 12 + 12 * minor]


def finalis_key(sharps: int, final_bass_pc: int | None) -> tuple[str | None, str]:
    """Major tonic of the signature or its relative minor, whichever the finalis names.

    Returns (key name or None, rule tag). Shared with the MIDI sources (piano-midi.de), whose key
    signature events always claim major.
    """
    if final_bass_pc is None:
        return None, "none:no-finalis"
    major_pc = (7 * sharps) % 12
    if final_bass_pc == major_pc:
        return key_name(major_pc, False), "finalis"
    if final_bass_pc == (major_pc + 9) % 12:
        return key_name(major_pc + 9, True), "finalis"
    return None, "none:modal-finalis"


def final_bass_pc(onsets: np.ndarray, ends: np.ndarray, pitches: np.ndarray) -> int | None:
    """Pitch class of the lowest note still sounding at the very end (the finalis)."""
    if len(pitches) == 0:
        return None
    end = ends.max()
    sounding = (onsets < end) & (ends >= end)
    return int(pitches[sounding].min()) % 12


def third_mode(tonic_pc: int, pitches: np.ndarray, durations: np.ndarray) -> bool | None:
    """True (minor) / False (major) from the thirds above the tonic, None if neither dominates."""
    pcs = pitches % 12
    minor = float(durations[pcs == (tonic_pc + 3) % 12].sum())
    major = float(durations[pcs == (tonic_pc + 4) % 12].sum())
    if minor + major == 0:
        return None
    if minor >= THIRD_SHARE * (minor + major):
        return True
    if major >= THIRD_SHARE * (minor + major):
        return False
    return None


def longest_meter(spans: list[tuple[float, str]], end: float) -> str | None:
    """The time signature (ratio string) covering the most duration; spans = (offset, ratio) sorted."""
    if not spans:
        return None
    cover: Counter[str] = Counter()
    for i, (offset, ratio) in enumerate(spans):
        stop = spans[i + 1][0] if i + 1 < len(spans) else max(end, offset)
        cover[ratio] += stop - offset
    # ties (e.g. a zero-length piece) go to the first signature, which is what a reader sees
    best = max(cover.values())
    return next(r for _, r in spans if cover[r] == best)
