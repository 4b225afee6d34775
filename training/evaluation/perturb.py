"""Performer perturbations for evaluation: what a human touch changes in a score, one factor at a time.

    from typemoe.training.evaluation import perturb
    loud = perturb.constant_velocity(score, 110)                  # every note at velocity 110
    human = perturb.humanize(score, "all", seed=3)                # curve + noise + jitter + articulation
    up = perturb.transpose(score, 5)                              # pitched notes up a fourth

Every function takes a symusic Score and returns a NEW score (the input is never changed); the random
ones take a seed, so a perturbed copy is reproducible. Drum tracks keep their pitches (transposition
leaves them alone) but get the same velocity and timing treatment.

These are the perturbations `typemoe eval --perturb` and tests/test_invariance.py apply to held-out
pieces. Training augmentation lives elsewhere (training/learn/augment.py) and is deliberately not shared:
an evaluation that reuses the training transform cannot tell when the model learned only that transform.

Timing is perturbed on a fine grid: a score with fewer than FINE_TPQ ticks per quarter is resampled to
FINE_TPQ first, so a 1/32-beat jitter is representable (the tokenizer later quantizes to its own grid,
sixteenths, by rounding to the nearest tick: a jitter below half a grid step moves a grid-aligned note
back where it was, a larger one or an off-grid note can land on a neighbour).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import symusic

FINE_TPQ = 480  # ticks per quarter used for timing perturbations
VELOCITY_RANGE = (1, 127)
PERTURB_KINDS = ("velocity", "timing", "all")
# One property at a time, to find what a head uses (a shortcut): `typemoe eval --source-table
# --table-perturb none,vel40,vel110,...`. A head that reads music answers the same on each.
PROBE_KINDS = {
    "vel40": "every velocity 40",
    "vel110": "every velocity 110",
    "staccato": "durations x 0.5",
    "legato": "durations x 1.6",
    "melody": "top voice only (polyphony removed)",
    "phase": "every onset 1 beat later (bar 1 off the tokenizer's bar line)",
}

# humanize() draws: a performer's dynamics and articulation, broad but musical
CURVE_CENTER = (45, 105)  # the curve's mean velocity, drawn uniformly
CURVE_DEPTH = (5, 30)  # its swing either side of the mean
CURVE_PERIOD_BEATS = (4.0, 32.0)  # one swell lasts 1..8 bars of 4/4
NOISE_SD = 8.0  # per-note velocity noise, standard deviation
JITTER_BEATS = 1 / 32  # onset and duration jitter, uniform in +-this
ARTICULATION = (0.6, 1.3)  # duration scale: staccato below 1, legato above


def _rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _map_notes(score: symusic.Score, fn: Callable[[dict, bool], dict]) -> symusic.Score:
    """A copy of `score` whose every track's note arrays went through fn(arrays, is_drum)."""
    out = score.copy()
    for track in out.tracks:
        arrays = track.notes.numpy()
        if len(arrays["time"]) == 0:
            continue
        new = fn({k: np.asarray(v).copy() for k, v in arrays.items()}, track.is_drum)
        track.notes = symusic.Note.from_numpy(
            time=new["time"].astype(np.int32),
            duration=np.maximum(new["duration"], 1).astype(np.int32),
            pitch=new["pitch"].astype(np.int8),
            velocity=new["velocity"].astype(np.int8),
        )
    return out


def _clip_velocity(v: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(v), *VELOCITY_RANGE).astype(np.int64)


def _fine(score: symusic.Score) -> symusic.Score:
    return score if score.ticks_per_quarter >= FINE_TPQ else score.resample(FINE_TPQ, min_dur=1)


# --------------------------------------------------------------------------- velocity


def constant_velocity(score: symusic.Score, velocity: int) -> symusic.Score:
    """Every note at one velocity (1..127)."""
    if not VELOCITY_RANGE[0] <= int(velocity) <= VELOCITY_RANGE[1]:
        raise ValueError(f"velocity {velocity} outside {VELOCITY_RANGE[0]}..{VELOCITY_RANGE[1]}")

    def fn(a: dict, _drum: bool) -> dict:
        a["velocity"] = np.full_like(a["velocity"], int(velocity))
        return a

    return _map_notes(score, fn)


def velocity_noise(score: symusic.Score, sd: float = NOISE_SD, *, seed=None) -> symusic.Score:
    """Each note's velocity plus Gaussian noise of standard deviation `sd`, clipped to 1..127."""
    if sd < 0:
        raise ValueError(f"velocity noise sd must be >= 0, got {sd}")
    rng = _rng(seed)

    def fn(a: dict, _drum: bool) -> dict:
        a["velocity"] = _clip_velocity(
            a["velocity"].astype(np.float64) + rng.normal(0.0, sd, len(a["velocity"]))
        )
        return a

    return _map_notes(score, fn)


def velocity_curve(
    score: symusic.Score, center: float, depth: float, period_beats: float, *, seed=None
) -> symusic.Score:
    """Velocities replaced by a slow swell: center + depth * sin(2 pi t / period + random phase).

    The curve replaces the notes' own velocities (the piece's dynamics become the performer's).
    """
    if period_beats <= 0:
        raise ValueError(f"velocity curve period must be > 0 beats, got {period_beats}")
    phase = _rng(seed).uniform(0, 2 * np.pi)
    tpq = float(score.ticks_per_quarter)

    def fn(a: dict, _drum: bool) -> dict:
        t = a["time"] / tpq
        a["velocity"] = _clip_velocity(center + depth * np.sin(2 * np.pi * t / period_beats + phase))
        return a

    return _map_notes(score, fn)


# --------------------------------------------------------------------------- timing


def onset_jitter(
    score: symusic.Score, max_beats: float = JITTER_BEATS, *, durations: bool = True, seed=None
) -> symusic.Score:
    """Each onset moved by uniform(-max_beats, +max_beats) beats (never before 0); with `durations`,
    each duration changed by its own draw of the same size (at least one tick). Resamples to FINE_TPQ."""
    if max_beats < 0:
        raise ValueError(f"jitter must be >= 0 beats, got {max_beats}")
    score = _fine(score)
    rng = _rng(seed)
    span = max_beats * score.ticks_per_quarter

    def fn(a: dict, _drum: bool) -> dict:
        n = len(a["time"])
        a["time"] = np.maximum(np.rint(a["time"] + rng.uniform(-span, span, n)), 0).astype(np.int64)
        if durations:
            a["duration"] = np.maximum(np.rint(a["duration"] + rng.uniform(-span, span, n)), 1).astype(
                np.int64
            )
        return a

    return _map_notes(score, fn)


def scale_durations(score: symusic.Score, factor: float) -> symusic.Score:
    """Every duration times `factor`: < 1 staccato, > 1 legato (at least one tick). Resamples to FINE_TPQ."""
    if factor <= 0:
        raise ValueError(f"duration factor must be > 0, got {factor}")
    score = _fine(score)

    def fn(a: dict, _drum: bool) -> dict:
        a["duration"] = np.maximum(np.rint(a["duration"] * factor), 1).astype(np.int64)
        return a

    return _map_notes(score, fn)


def shift_onsets(score: symusic.Score, beats: float) -> symusic.Score:
    """Every note moved later by `beats` (>= 0): where bar 1 falls against the tokenizer's 4-beat bars."""
    if beats < 0:
        raise ValueError(f"onset shift must be >= 0 beats, got {beats}")
    score = _fine(score)
    ticks = int(round(beats * score.ticks_per_quarter))

    def fn(a: dict, _drum: bool) -> dict:
        a["time"] = a["time"].astype(np.int64) + ticks
        return a

    return _map_notes(score, fn)


# --------------------------------------------------------------------------- polyphony and pitch


def top_voice(score: symusic.Score) -> symusic.Score:
    """Melody only: the highest pitched note at each onset, all pitched tracks merged into one (drums
    dropped); a polyphonic piece becomes one line, a monophonic one is unchanged."""
    out = score.copy()
    arrays = [t.notes.numpy() for t in out.tracks if not t.is_drum and len(t.notes)]
    track = symusic.Track("top voice", 0, False)
    if arrays:
        a = {k: np.concatenate([x[k] for x in arrays]) for k in ("time", "duration", "pitch", "velocity")}
        order = np.lexsort((-a["pitch"].astype(np.int64), a["time"]))  # by onset, highest first
        first = np.ones(len(order), dtype=bool)
        first[1:] = a["time"][order][1:] != a["time"][order][:-1]
        keep = order[first]
        track.notes = symusic.Note.from_numpy(**{k: v[keep] for k, v in a.items()})
    out.tracks.clear()
    out.tracks.append(track)
    return out


def pitch_span(score: symusic.Score) -> tuple[int, int] | None:
    """(lowest, highest) pitch of the pitched (non-drum) notes; None when there are none."""
    arrays = [t.notes.numpy()["pitch"] for t in score.tracks if not t.is_drum and len(t.notes)]
    if not arrays:
        return None
    p = np.concatenate(arrays)
    return int(p.min()), int(p.max())


def transpose(score: symusic.Score, semitones: int, *, lo: int = 0, hi: int = 127) -> symusic.Score:
    """Pitched notes moved by `semitones` (drums untouched).

    Raises:
        ValueError: naming the shift, when a note would leave lo..hi.
    """
    span = pitch_span(score)
    if span is not None and not (lo <= span[0] + semitones and span[1] + semitones <= hi):
        raise ValueError(
            f"transposing by {semitones:+d} moves pitches {span[0]}..{span[1]} outside {lo}..{hi}"
        )

    def fn(a: dict, drum: bool) -> dict:
        if not drum:
            a["pitch"] = a["pitch"].astype(np.int64) + int(semitones)
        return a

    return _map_notes(score, fn)


def random_transposition(score: symusic.Score, *, lo: int = 21, hi: int = 108, seed=None) -> int:
    """A nonzero shift in -5..+6 that keeps every pitched note in lo..hi (0 when none does)."""
    span = pitch_span(score)
    if span is None:
        return 0
    ok = [k for k in range(-5, 7) if k != 0 and lo <= span[0] + k and span[1] + k <= hi]
    return int(_rng(seed).choice(ok)) if ok else 0


# --------------------------------------------------------------------------- a performer


def humanize(score: symusic.Score, kind: str, *, seed: int | None = 0) -> symusic.Score:
    """A performed copy: "velocity" (a random swell, then per-note noise), "timing" (onset and duration
    jitter of +-1/32 beat, then a random legato/staccato scale), or "all" (both). All draws from `seed`.
    Or one PROBE_KINDS property changed alone (no randomness)."""
    if kind in PROBE_KINDS:
        return _probe(score, kind)
    if kind not in PERTURB_KINDS:
        raise ValueError(
            f"unknown perturbation {kind!r}; expected one of {', '.join((*PERTURB_KINDS, *PROBE_KINDS))}"
        )
    rng = _rng(seed)
    out = score
    if kind in ("velocity", "all"):
        out = velocity_curve(
            out,
            rng.uniform(*CURVE_CENTER),
            rng.uniform(*CURVE_DEPTH),
            rng.uniform(*CURVE_PERIOD_BEATS),
            seed=rng,
        )
        out = velocity_noise(out, NOISE_SD, seed=rng)
    if kind in ("timing", "all"):
        out = onset_jitter(out, JITTER_BEATS, seed=rng)
        out = scale_durations(out, rng.uniform(*ARTICULATION))
    return out


def _probe(score: symusic.Score, kind: str) -> symusic.Score:
    if kind.startswith("vel"):
        return constant_velocity(score, int(kind[3:]))
    if kind in ("staccato", "legato"):
        return scale_durations(score, 0.5 if kind == "staccato" else 1.6)
    if kind == "melody":
        return top_voice(score)
    return shift_onsets(score, 1.0)
