"""Baselines that `typemoe eval` scores beside the key and meter heads, on the same pieces (DESIGN.md 6).

Key: music21's key-profile analysers (music21.analysis.discrete): Krumhansl-Schmuckler, Aarden-Essen,
Temperley-Kostka-Payne and SimpleWeights (Sapp). Each correlates the piece's duration-weighted
pitch-class histogram with rotated major and minor profiles and takes the best of the 24. That
histogram is all they read, so we hand music21 a 12-note stream that carries exactly it (one note per
pitch class, lasting that class's total duration): the same answer as the whole piece without building a
music21 stream of every note (tests/test_baselines.py checks the equality on real tunes).

Meter: an onset-autocorrelation detector in the spirit of Brown (1993) and Toiviainen & Eerola (2006):

1. Onset signal on the sixteenth-note grid: s[t] = sum over notes starting at tick t of a durational
   accent min(duration, 2 beats) (long notes tend to fall on strong beats).
2. Autocorrelation of the mean-removed signal, unbiased (divided by the overlap N - L) and normalised by
   its lag-0 value: A(L) in [-1, 1] for lags L = 0..48 sixteenths.
3. Family first: duple (2/x, 4/x) against triple/compound (3/x, 6/8, 9/8, 12/8) by two-bar evidence:
   triple when A(12) + A(24) (one and two bars of 3/4 or 6/8) beats A(16) + A(32) (one and two 4/4 bars).
4. Then the class inside the family, from the beat level:
   triple: compound (6/8, 9/8) when the dotted-quarter pulse A(6) beats the quarter pulse A(4); then 9/8
   when the two-bar 9/8 lag A(36) beats the 6/8 one A(24) by NINE_EIGHT_MARGIN; simple: 3/2 under a slow
   half-note pulse (A(4) < SLOW_PULSE), else 3/4.
   duple: 4/2 under a slow half-note pulse (Palestrina's breves), else 2/4 when there is sixteenth-note
   motion (A(2) > SIXTEENTH_MOTION; folk collections write 2/4 with shorter values than 4/4), else 4/4.
   2/2, 3/8, 6/4, 12/8 and "other" are never predicted: the onsets cannot tell them from their twins.
   The thresholds were picked by hand on 1,189 train-split tunes from a random sample of music21 corpus
   files (Essen, O'Neill, Aird, Ryan, Bach, Palestrina): family accuracy 0.90, class accuracy 0.63 there.

Also the majority class: the most frequent label of the training split, predicted for every piece.

Inputs are plain note arrays (onsets and durations in beats = quarter notes, MIDI pitches), or a
symusic Score via notes_of_score, so the baselines read the same quantized notes the model reads.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from typemoe import analysis
from typemoe.vocab import TICKS_PER_BEAT

KEY_BASELINES: dict[str, str] = {  # result-key name -> music21.analysis.discrete class
    "krumhansl": "KrumhanslSchmuckler",
    "aarden": "AardenEssen",
    "temperley": "TemperleyKostkaPayne",
    "simple": "SimpleWeights",
}
CHECK_KEY_BASELINES: dict[str, str] = {"bellman": "BellmanBudge"}
"""A music21 key profile that the key fusion does not read (KEY_BASELINES are its features): the control
table's second key finder, so a steering that reads the fusion is not judged only by the fusion's own
profiles (training/evaluation/eval_control.py)."""
GRID = TICKS_PER_BEAT  # onset-signal ticks per beat: the tokenizer's grid
ACCENT_CAP_BEATS = 2.0
MAX_LAG = 48  # 3 bars of 4/4
NINE_EIGHT_MARGIN = 0.05  # 9/8 needs A(36) > A(24) + this
SLOW_PULSE = 0.25  # A(4) below this: no quarter-note pulse, the beat is a half note (4/2, 3/2)
SIXTEENTH_MOTION = 0.15  # A(2) above this: sixteenth-note motion, read as 2/4 rather than 4/4


@dataclass(frozen=True)
class Notes:
    """Notes of one piece: onsets and durations in beats (quarter notes), MIDI pitches; all (N,)."""

    onset: np.ndarray
    duration: np.ndarray
    pitch: np.ndarray

    def __post_init__(self) -> None:
        if not (self.onset.shape == self.duration.shape == self.pitch.shape and self.onset.ndim == 1):
            raise ValueError(
                f"note arrays differ in shape: onset {self.onset.shape}, "
                f"duration {self.duration.shape}, pitch {self.pitch.shape}"
            )

    def __len__(self) -> int:
        return len(self.onset)


def notes_of_score(score) -> Notes:
    """The pitched (non-drum) notes of a symusic Score, all tracks merged, times in beats."""
    tpq = float(score.ticks_per_quarter)
    arrays = [t.notes.numpy() for t in score.tracks if not t.is_drum]
    if not arrays:
        return Notes(np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64))
    onset = np.concatenate([a["time"] for a in arrays]) / tpq
    duration = np.concatenate([a["duration"] for a in arrays]) / tpq
    pitch = np.concatenate([a["pitch"] for a in arrays]).astype(np.int64)
    order = np.lexsort((pitch, onset))
    return Notes(onset[order].astype(np.float64), duration[order].astype(np.float64), pitch[order])


# --------------------------------------------------------------------------- key


def pitch_class_histogram(notes: Notes) -> np.ndarray:
    """(12,) total duration in beats of each pitch class: what music21's key-weight analysers read."""
    hist = np.zeros(12)
    np.add.at(hist, notes.pitch % 12, notes.duration)
    return hist


def _analyser(method: str):
    from music21.analysis import discrete

    names = {**KEY_BASELINES, **CHECK_KEY_BASELINES}
    if method not in names:
        raise ValueError(f"unknown key baseline {method!r}; expected one of {', '.join(names)}")
    return getattr(discrete, names[method])()


def _histogram_stream(hist: np.ndarray):
    """A music21 stream of one note per pitch class lasting that class's total duration."""
    from music21 import note, stream

    s = stream.Stream()
    offset = 0.0
    for pc in range(12):
        if hist[pc] > 0:
            n = note.Note(pc + 60)
            n.quarterLength = float(hist[pc])
            s.insert(offset, n)
            offset += float(hist[pc])
    return s


def key_estimate(notes: Notes, method: str) -> tuple[int, float]:
    """Key class (index into typemoe.analysis.KEYS) and correlation coefficient of a music21 key profile.

    Raises:
        ValueError: for an unknown method or a piece without notes.
    """
    hist = pitch_class_histogram(notes)
    if hist.sum() <= 0:
        raise ValueError("cannot estimate the key of a piece without notes")
    # process() is getSolution() without building the 23 alternative Key objects (20x faster)
    (tonic, mode, coefficient), _ = _analyser(method).process(_histogram_stream(hist))
    return analysis.parse_key(f"{tonic.name} {mode}"), float(coefficient)


def key_estimate_stream(stream_obj, method: str) -> tuple[int, float]:
    """The same analyser run on a whole music21 stream (the slow reference path, for tests)."""
    k = _analyser(method).getSolution(stream_obj)
    return analysis.parse_key(k), float(k.correlationCoefficient)


# --------------------------------------------------------------------------- meter


def onset_signal(notes: Notes, grid: int = GRID) -> np.ndarray:
    """(N,) durational-accent onset signal on a grid of `grid` ticks per beat, starting at the first onset."""
    if len(notes) == 0:
        return np.zeros(0)
    ticks = np.round((notes.onset - notes.onset.min()) * grid).astype(np.int64)
    s = np.zeros(int(ticks.max()) + 1)
    np.add.at(s, ticks, np.minimum(notes.duration, ACCENT_CAP_BEATS))
    return s


def autocorrelation(s: np.ndarray, max_lag: int = MAX_LAG) -> np.ndarray:
    """(max_lag + 1,) unbiased autocorrelation of the mean-removed s, over its lag-0 value (0 if undefined)."""
    s = s - s.mean() if len(s) else s
    n = len(s)
    out = np.zeros(max_lag + 1)
    for lag in range(min(max_lag, n - 1) + 1):
        out[lag] = float(np.dot(s[: n - lag], s[lag:])) / (n - lag)
    return out / out[0] if n and out[0] > 0 else np.zeros(max_lag + 1)


def meter_features(notes: Notes) -> np.ndarray:
    """Autocorrelation of the onset signal at lags 0..MAX_LAG sixteenths."""
    return autocorrelation(onset_signal(notes))


def _meter_from_features(a: np.ndarray) -> tuple[str, float]:
    """Meter name and a confidence in [0.5, 1] (how clearly the winning family's evidence wins)."""
    duple, triple = a[16] + a[32], a[12] + a[24]
    scale = abs(duple) + abs(triple)
    confidence = 0.5 + 0.5 * abs(triple - duple) / scale if scale > 0 else 0.5
    if triple > duple:
        if a[6] > a[4]:
            return ("9/8" if a[36] > a[24] + NINE_EIGHT_MARGIN else "6/8"), confidence
        return ("3/2" if a[4] < SLOW_PULSE else "3/4"), confidence
    if a[4] < SLOW_PULSE and scale > 0:
        return "4/2", confidence
    return ("2/4" if a[2] > SIXTEENTH_MOTION else "4/4"), confidence


def meter_estimate(notes: Notes) -> tuple[int, float]:
    """Meter class (index into typemoe.analysis.METERS) and a confidence, from onsets only.

    Raises:
        ValueError: for a piece without notes.
    """
    if len(notes) == 0:
        raise ValueError("cannot estimate the meter of a piece without notes")
    name, confidence = _meter_from_features(meter_features(notes))
    return analysis.parse_meter(name), float(confidence)


# --------------------------------------------------------------------------- majority


def majority_class(train_labels: Sequence) -> object:
    """The most frequent label (ties: the first seen). Raises ValueError when there are no labels."""
    counts = Counter(x for x in train_labels if x is not None)
    if not counts:
        raise ValueError("majority baseline needs at least one training label")
    return counts.most_common(1)[0][0]
