"""The meter's family (duple or triple) from what was heard: five onset rules, weighed by a fitted judge.

The onset-autocorrelation rule (typemoe.meter.rhythm_family) asks one question of one signal: does the
accent come back after 3 + 6 beats more than after 4 + 8? The judge asks it of five signals and lets a
logistic regression weigh the answers:

  - accent:  onsets weighted by their (capped) length, the rule's own signal;
  - count:   onsets alone, a chord is one (legato and staccato give the same evidence);
  - bass:    onsets whose lowest note lies below the piece's median pitch (the bass marks the bar in
             piano music: a waltz's bass on one, its chords on two and three);
  - harmony: the pitch-class content of each beat, compared with the beat 3 + 6 against 4 + 8 before
             (harmony changes with the bar);
  - pattern: the onset pattern inside each beat, compared the same way (a bar's rhythm comes back).

Each signal gives one margin: its self-similarity at the triple family's bar lengths minus the duple's. None
reads velocity, and a transposition changes none of them. Five weights and a bias, fitted on humanized
windows of the training sources (training/evaluation/fit_meter_family.py) and saved beside the model as
`meter_family.json`. Torch-free (numpy), read by the meter reader on every answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from typemoe.meter import GRID, autocorrelation, rhythm_features

FILE = "meter_family.json"
SIGNALS = ("accent", "count", "bass", "harmony", "pattern")
TRIPLE_BEATS, DUPLE_BEATS = (3, 6), (4, 8)  # the two families' bar lengths (one bar and two), in beats
BASS_CAP_BEATS = 2.0
MIN_NOTES = 2


def _tick_margin(ac: np.ndarray) -> float:
    """Triple minus duple of an autocorrelation at lags 1..: the bar lengths in sixteenths."""
    at = lambda beats: sum(float(ac[b * GRID - 1]) for b in beats)  # noqa: E731
    return at(TRIPLE_BEATS) - at(DUPLE_BEATS)


def _beat_margin(rows: np.ndarray) -> float:
    """Triple minus duple of the mean cosine similarity of each beat's row with the row a lag of beats before
    (a lag longer than the music counts 0)."""
    unit = rows / (np.linalg.norm(rows, axis=1, keepdims=True) + 1e-9)

    def sim(lag: int) -> float:
        return float(np.mean(np.sum(unit[lag:] * unit[:-lag], axis=1))) if len(unit) > lag else 0.0

    return sum(map(sim, TRIPLE_BEATS)) - sum(map(sim, DUPLE_BEATS))


def family_features(onset_beats, duration_beats, pitch, rhythm: np.ndarray | None = None) -> np.ndarray:
    """(5,) margins, triple minus duple, of the SIGNALS (module docstring) of notes given in beats. `rhythm`:
    their rhythm_features when the caller has them already (the meter reader does).

    All zeros for fewer than MIN_NOTES notes: no music, no say.
    """
    onset = np.asarray(onset_beats, dtype=np.float64)
    duration = np.asarray(duration_beats, dtype=np.float64)
    pitch = np.asarray(pitch, dtype=np.int64)
    if onset.size < MIN_NOTES:
        return np.zeros(len(SIGNALS))
    if rhythm is None:
        rhythm = rhythm_features(onset, duration)  # accent then count autocorrelation, lags 1..MAX_LAG
    n_lag = len(rhythm) // 2
    t0 = onset.min()
    ticks = np.round((onset - t0) * GRID).astype(np.int64)
    lowest = np.full(int(ticks.max()) + 1, np.iinfo(np.int64).max)
    np.minimum.at(lowest, ticks, pitch)
    longest = np.zeros(len(lowest))
    np.maximum.at(longest, ticks, np.minimum(duration, BASS_CAP_BEATS))
    bass = np.where(lowest < np.median(pitch), longest, 0.0)
    beat = np.floor(onset - t0).astype(np.int64)
    n_beats = int(beat.max()) + 1
    chroma = np.zeros((n_beats, 12))
    np.add.at(chroma, (beat, pitch % 12), np.minimum(duration, 1.0))
    pattern = np.zeros((n_beats, GRID))
    inside = np.clip(np.floor((onset - t0 - beat) * GRID).astype(np.int64), 0, GRID - 1)
    pattern[beat, inside] = 1.0

    return np.array(
        [
            _tick_margin(rhythm[:n_lag]),
            _tick_margin(rhythm[n_lag:]),
            _tick_margin(autocorrelation(bass)[1:]),
            _beat_margin(chroma),
            _beat_margin(pattern),
        ]
    )


@dataclass
class FamilyJudge:
    """P(triple) = sigmoid(standardised margins @ weights + bias)."""

    weights: np.ndarray  # (5,)
    bias: float
    mean: np.ndarray  # (5,) feature standardisation
    scale: np.ndarray  # (5,)
    info: dict

    def p_triple(self, features: np.ndarray) -> np.ndarray:
        """P(triple) of (5,) margins (or (N,) for (N, 5))."""
        z = ((np.asarray(features, dtype=np.float64) - self.mean) / self.scale) @ self.weights + self.bias
        return 1.0 / (1.0 + np.exp(-z))

    def family(self, features: np.ndarray) -> str | None:
        """'triple' or 'duple', or None when nothing was heard (every margin zero)."""
        features = np.asarray(features, dtype=np.float64)
        if not features.any():
            return None
        return "triple" if self.p_triple(features) > 0.5 else "duple"

    @classmethod
    def fit(cls, features: np.ndarray, triple: np.ndarray, *, l2: float, info: dict | None = None):
        """Logistic regression by Newton's method (IRLS), the families balanced (each weighs half, so duple
        cannot win by frequency alone), L2 `l2` on the weights (not the bias) of standardised margins."""
        x = np.asarray(features, dtype=np.float64)
        y = np.asarray(triple, dtype=np.float64)
        if not 0 < y.sum() < len(y):
            raise ValueError(f"the family judge needs both families; got {int(y.sum())} triple of {len(y)}")
        mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-9
        xb = np.concatenate([(x - mean) / scale, np.ones((len(x), 1))], axis=1)
        w_sample = np.where(y > 0, 0.5 / y.sum(), 0.5 / (1 - y).sum()) * len(y)
        reg = np.full(xb.shape[1], float(l2))
        reg[-1] = 0.0
        beta = np.zeros(xb.shape[1])
        for _ in range(100):
            p = 1.0 / (1.0 + np.exp(-(xb @ beta)))
            grad = xb.T @ (w_sample * (p - y)) + reg * beta
            hess = (xb * (w_sample * p * (1 - p))[:, None]).T @ xb + np.diag(reg + 1e-9)
            step = np.linalg.solve(hess, grad)
            beta -= step
            if np.abs(step).max() < 1e-10:
                break
        return cls(beta[:-1], float(beta[-1]), mean, scale, dict(info or {}))

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / FILE
        doc = {
            "format": "typemoe-meter-family",
            "version": 1,
            "signals": list(SIGNALS),
            "grid": GRID,
            "weights": self.weights.tolist(),
            "bias": self.bias,
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "info": self.info,
        }
        path.write_text(json.dumps(doc) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> FamilyJudge | None:
        """The judge saved in a model directory, or None when it has none.

        Raises:
            ValueError: a meter_family.json that is corrupt, from another format, or for other signals.
        """
        path = Path(directory) / FILE
        if not path.is_file():
            return None
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if doc.get("format") != "typemoe-meter-family" or doc.get("grid") != GRID:
                raise ValueError(f"format {doc.get('format')!r}, grid {doc.get('grid')!r}")
            if tuple(doc.get("signals", ())) != SIGNALS:
                raise ValueError(f"signals {doc.get('signals')!r}, expected {list(SIGNALS)}")
            arrays = [np.asarray(doc[k], dtype=np.float64) for k in ("weights", "mean", "scale")]
            if any(a.shape != (len(SIGNALS),) for a in arrays):
                raise ValueError(f"weights/mean/scale must hold {len(SIGNALS)} numbers each")
            return cls(arrays[0], float(doc["bias"]), arrays[1], arrays[2], dict(doc.get("info", {})))
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path} is not a readable meter family judge: {err}") from err
