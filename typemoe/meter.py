"""Meter from rhythm and from the model, fused: torch-free (numpy), read by analyze, eval and the bridge.

REMI's Bar token falls every 4 beats of the performer's grid, whatever the meter, so a 3/4 bar drifts
across it and the model's meter head must find a period the grid does not mark. The onset
autocorrelation finds exactly that period, and does not care about velocity. So the meter estimate is a
multinomial logistic regression over

  - the autocorrelation of two onset signals on the sixteenth grid, at lags 1..48 (three 4/4 bars):
    one weighted by a durational accent (long notes fall on strong beats), one by onset count only (so
    legato and staccato playing give the same evidence);
  - the model's meter-head log-probabilities, when a model is there (zeros otherwise).

Its weights are fitted by training/evaluation/fit_meter.py on humanized training windows and saved beside the
model as `meter_fusion.json`. The fit is plain numpy (full-batch gradient descent on the softmax
cross-entropy with L2), so the runtime stays free of torch and scikit-learn.

The answer is then kept inside one family, duple or triple (within_family). The family judge of
typemoe/meter_family.py (`meter_family.json`) decides it where the model directory has one; else the
onset-autocorrelation rule below does (rhythm_family). On music never trained on, either one reads the
family better than the fusion, which trusts the head too much there.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from typemoe.analysis import meter_family
from typemoe.sampling import log_softmax
from typemoe.vocab import TICKS_PER_BEAT

GRID = TICKS_PER_BEAT  # the onset signal's ticks per beat: the tokenizer's grid
MAX_LAG = 48
ACCENT_CAP_BEATS = 2.0
FILE = "meter_fusion.json"


def autocorrelation(s: np.ndarray, max_lag: int = MAX_LAG) -> np.ndarray:
    """(max_lag + 1,) unbiased autocorrelation of the mean-removed s over its lag-0 value (0 if undefined)."""
    n = len(s)
    out = np.zeros(max_lag + 1)
    if n < 2:
        return out
    s = s - s.mean()
    lags = min(max_lag, n - 1)
    full = np.correlate(s, s, mode="full")[n - 1 : n + lags]  # lags 0..lags
    out[: lags + 1] = full / (n - np.arange(lags + 1))
    return out / out[0] if out[0] > 0 else np.zeros(max_lag + 1)


def rhythm_features(onset_beats: np.ndarray, duration_beats: np.ndarray) -> np.ndarray:
    """(2 * MAX_LAG,) autocorrelations (lags 1..MAX_LAG) of the accent and the count onset signals."""
    onset = np.asarray(onset_beats, dtype=np.float64)
    if onset.size == 0:
        return np.zeros(2 * MAX_LAG)
    ticks = np.round((onset - onset.min()) * GRID).astype(np.int64)
    accent = np.zeros(int(ticks.max()) + 1)
    count = np.zeros_like(accent)
    np.add.at(accent, ticks, np.minimum(np.asarray(duration_beats, dtype=np.float64), ACCENT_CAP_BEATS))
    np.add.at(count, ticks, 1.0)
    count = np.minimum(count, 1.0)  # a chord is one onset
    return np.concatenate([autocorrelation(accent)[1:], autocorrelation(count)[1:]])


@dataclass
class MeterFusion:
    """Softmax regression: probs = softmax(([rhythm, head log-probs] @ W + b) / temperature)."""

    weights: np.ndarray  # (F, M)
    bias: np.ndarray  # (M,)
    meters: tuple[str, ...]
    uses_head: bool
    mean: np.ndarray  # (F,) feature standardisation
    scale: np.ndarray  # (F,)
    info: dict
    temperature: float = 1.0  # calibration (calibrate): changes how sure the answer is, never which it is

    def features(self, rhythm: np.ndarray, head_log_probs: np.ndarray | None) -> np.ndarray:
        parts = [np.asarray(rhythm, dtype=np.float64)]
        if self.uses_head:
            if head_log_probs is None:
                raise ValueError(
                    "this meter fusion was fitted with the model's meter head; pass its log-probs"
                )
            parts.append(np.maximum(np.asarray(head_log_probs, dtype=np.float64), -20.0))
        return (np.concatenate(parts, axis=-1) - self.mean) / self.scale

    def probs(self, rhythm: np.ndarray, head_log_probs: np.ndarray | None = None) -> np.ndarray:
        """(M,) meter probabilities (or (N, M) for stacked inputs)."""
        return np.exp(log_softmax(self._logits(rhythm, head_log_probs) / self.temperature))

    def _logits(self, rhythm: np.ndarray, head_log_probs: np.ndarray | None) -> np.ndarray:
        """The regression's logits before the temperature."""
        return self.features(rhythm, head_log_probs) @ self.weights + self.bias

    def calibrate(
        self, rhythm: np.ndarray, labels: np.ndarray, head_log_probs: np.ndarray | None = None
    ) -> float:
        """Set `temperature` to the one that minimises the mean negative log-likelihood of (N,) labels
        (temperature scaling, Guo et al. 2017; a grid over 0.05..5, log-spaced) and return it. The
        consistency term of `fit` shrinks the weights, so its probabilities come out flatter than their
        accuracy warrants; the live readout's hysteresis compares probabilities, so they should mean what
        they say."""
        y = np.asarray(labels, dtype=np.int64)
        z = self._logits(rhythm, head_log_probs)  # (N, M)
        grid = np.exp(np.linspace(np.log(0.05), np.log(5.0), 201))
        nll = [-log_softmax(z / g)[np.arange(len(y)), y].mean() for g in grid]
        self.temperature = float(grid[int(np.argmin(nll))])
        return self.temperature

    @classmethod
    def fit(
        cls,
        rhythm: np.ndarray,
        labels: np.ndarray,
        meters: tuple[str, ...],
        head_log_probs: np.ndarray | None = None,
        *,
        l2: float = 1e-3,
        steps: int = 1500,
        lr: float = 0.5,
        info: dict | None = None,
        twins: tuple[np.ndarray, np.ndarray | None] | None = None,
        consistency: float = 0.0,
    ) -> MeterFusion:
        """Full-batch gradient descent on the mean cross-entropy, classes balanced (each class's samples
        weigh 1 / its count, so 4/4 cannot win by frequency alone).

        twins: (rhythm, head log-probs) of the same windows played with another touch (a second
        humanization: other velocities, other timing), row for row. With `consistency` > 0 the fit also
        pays consistency * mean ||(f(window) - f(twin)) W||^2, the change of the logits between the two
        touches, so that weight moves off the features a touch changes (the heads' velocity reading).
        """
        x = cls._stack(rhythm, head_log_probs)
        y = np.asarray(labels, dtype=np.int64)
        M = len(meters)
        mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
        x = (x - mean) / scale
        d = None  # (N, F) standardized feature change between a window and its twin
        if twins is not None and consistency > 0:
            d = (cls._stack(twins[0], twins[1] if head_log_probs is not None else None) - mean) / scale - x
        counts = np.bincount(y, minlength=M).astype(np.float64)
        w_sample = 1.0 / np.maximum(counts[y], 1.0)
        w_sample /= w_sample.sum()
        onehot = np.eye(M)[y]
        W, b = np.zeros((x.shape[1], M)), np.log(np.maximum(counts, 1.0) / counts.sum()) * 0.0
        mW, vW, mb, vb = np.zeros_like(W), np.zeros_like(W), np.zeros_like(b), np.zeros_like(b)
        for t in range(1, steps + 1):  # Adam
            p = np.exp(log_softmax(x @ W + b))
            g = (p - onehot) * w_sample[:, None]  # (N, M)
            gW, gb = x.T @ g + l2 * W, g.sum(axis=0)
            if d is not None:
                gW += (2.0 * consistency / len(d)) * (d.T @ (d @ W))
            mW, vW = 0.9 * mW + 0.1 * gW, 0.999 * vW + 0.001 * gW**2
            mb, vb = 0.9 * mb + 0.1 * gb, 0.999 * vb + 0.001 * gb**2
            c1, c2 = 1 - 0.9**t, 1 - 0.999**t
            W -= lr * 0.02 * (mW / c1) / (np.sqrt(vW / c2) + 1e-8)
            b -= lr * 0.02 * (mb / c1) / (np.sqrt(vb / c2) + 1e-8)
        return cls(W, b, tuple(meters), head_log_probs is not None, mean, scale, dict(info or {}))

    @staticmethod
    def _stack(rhythm, head_log_probs) -> np.ndarray:
        """(N, F) raw features: rhythm, then the head's log-probs (floored at -20) when given."""
        x = np.asarray(rhythm, dtype=np.float64)
        if head_log_probs is None:
            return x
        return np.concatenate([x, np.maximum(np.asarray(head_log_probs, dtype=np.float64), -20.0)], axis=1)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / FILE
        doc = {
            "format": "typemoe-meter-fusion",
            "version": 1,
            "meters": list(self.meters),
            "uses_head": self.uses_head,
            "grid": GRID,
            "max_lag": MAX_LAG,
            "weights": self.weights.tolist(),
            "bias": self.bias.tolist(),
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "temperature": self.temperature,
            "info": self.info,
        }
        path.write_text(json.dumps(doc) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> MeterFusion | None:
        """The fusion saved in a model directory, or None when it has none.

        Raises:
            ValueError: a meter_fusion.json that is corrupt or from another format.
        """
        path = Path(directory) / FILE
        if not path.is_file():
            return None
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if doc.get("format") != "typemoe-meter-fusion" or doc.get("max_lag") != MAX_LAG:
                raise ValueError(f"format {doc.get('format')!r}, max_lag {doc.get('max_lag')!r}")
            return cls(
                np.asarray(doc["weights"]),
                np.asarray(doc["bias"]),
                tuple(doc["meters"]),
                bool(doc["uses_head"]),
                np.asarray(doc["mean"]),
                np.asarray(doc["scale"]),
                dict(doc.get("info", {})),
                float(doc.get("temperature", 1.0)),
            )
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path} is not a readable meter fusion: {err}") from err


class MeterReader:
    """A model directory's meter answer: the fusion of the notes' rhythm and the meter head, inside the family
    the family judge hears.

    Args:
        fusion: the directory's MeterFusion (MeterFusion.load), or None: then the head alone answers.
        vocab: the model's TypedVocab (to read notes out of token ids).
        remi: tables to read notes with (typemoe.remi_notes.RemiNotes), shared with the key reader.
        judge: the directory's family judge (typemoe.meter_family.FamilyJudge.load), or None: then the
            onset-autocorrelation rule (rhythm_family) decides the family.
    """

    def __init__(self, fusion: MeterFusion | None, vocab, remi=None, judge=None):
        from typemoe.grammar_tables import tables_of
        from typemoe.remi_notes import RemiNotes

        self.fusion = fusion
        self.judge = judge
        self.remi = remi if remi is not None else RemiNotes(vocab)
        self.pitch_of = tables_of(vocab).pitch_of  # (V,) MIDI pitch of each Pitch id

    def probs(self, ids, head_meter_probs: np.ndarray) -> np.ndarray:
        """(M,) meter probabilities after hearing the token ids `ids` (control and special ids are ignored),
        given the meter head's probabilities at their end."""
        return self.probs_of(self.remi.notes(np.asarray(ids, dtype=np.int64))[0], head_meter_probs)

    def probs_of(self, notes: np.ndarray, head_meter_probs: np.ndarray) -> np.ndarray:
        """The same from already read notes (RemiNotes.notes rows)."""
        head = np.asarray(head_meter_probs, dtype=np.float64)
        if self.fusion is None or len(notes) < 2:
            return head  # no fusion, or no rhythm yet: the head answers
        tpb = self.remi.ticks_per_beat
        rhythm = rhythm_features(notes[:, 0] / tpb, notes[:, 3] / tpb)
        probs = self.fusion.probs(rhythm, np.log(np.maximum(head, 1e-9)))
        return within_family(probs, self.family_of(notes, rhythm), self.fusion.meters)

    def family_of(self, notes: np.ndarray, rhythm: np.ndarray | None = None) -> str | None:
        """'duple', 'triple' or None (too little music) of RemiNotes.notes rows: the judge's, else the rule's."""
        onset, duration = notes[:, 0] / self.remi.ticks_per_beat, notes[:, 3] / self.remi.ticks_per_beat
        if rhythm is None:
            rhythm = rhythm_features(onset, duration)
        if self.judge is None:
            return rhythm_family(rhythm)
        from typemoe.meter_family import family_features

        return self.judge.family(family_features(onset, duration, self.pitch_of[notes[:, 1]], rhythm))


def rhythm_family(rhythm: np.ndarray) -> str | None:
    """'triple' or 'duple' by the accent autocorrelation at the two families' bar lengths (3 beats + 6
    beats against 4 + 8, in sixteenths), or None when they tie (too little music to tell).

    This is the onset-autocorrelation baseline's family rule (training/evaluation/baselines.py). On pieces the fusion
    never saw it is a better judge of the family than the fusion (classical piano 0.81 against the fusion's
    0.78, VGMIDI 0.82 against 0.79), while the fusion is the better judge of the meter within it (6/8 or
    3/4, 2/4 or 4/4); rhythm_features' first MAX_LAG values are the accent autocorrelation at lags
    1..MAX_LAG. The family judge (typemoe.meter_family) weighs this rule with four more signals, and
    decides where a model directory has one.
    """
    a = np.asarray(rhythm, dtype=np.float64)
    triple, duple = a[12 - 1] + a[24 - 1], a[16 - 1] + a[32 - 1]
    if triple == duple:
        return None
    return "triple" if triple > duple else "duple"


@functools.lru_cache(maxsize=8)
def _families(meters: tuple[str, ...]) -> np.ndarray:
    """(M,) family name of each meter, worked out once per meter list (it is read on every analysis)."""
    return np.array([meter_family(m) for m in meters])


def within_family(probs: np.ndarray, family: str | None, meters: tuple[str, ...]) -> np.ndarray:
    """probs renormalised over the meters of `family` (analysis.meter_family); unchanged for None."""
    if family is None:
        return probs
    keep = _families(tuple(meters)) == family  # (M,) bool
    mass = float(probs[keep].sum())
    if mass <= 0.0:
        return probs
    return np.where(keep, probs, 0.0) / mass
