"""Emotion from the notes' rhythm, register and mode and from the model's class head, fused: torch-free
(numpy), read by analyze and eval.

The class head (a linear head on the frozen trunk) reads EMOPIA's own clips at 0.50 and another source's
(VGMIDI's game pieces) below chance. Simple descriptions of the notes carry much of what listeners call
arousal and valence: how dense and how fast the notes come, how long they are held, how high and how
widely they move, how major or minor the pitch classes sound. So the answer is a softmax regression over

  - `note_features` of every note heard (NOTE_FEATURES, below), each standardized;
  - the head's log-probabilities of the classes;

fitted on EMOPIA's train split, its L2 weight picked on the val split (training/evaluation/fit_emotion.py),
saved in `emotion_fusion.json`. Velocity is left out on purpose: the fit with velocity scored EMOPIA's test
clips no better and VGMIDI's pieces worse (0.36 against 0.43), the source shortcut the key and meter heads
once took. Features are in beats, as the tokens hold them (REMI has no tempo).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from typemoe import key_fusion
from typemoe.grammar_tables import tables_of

FILE = "emotion_fusion.json"
# Krumhansl-Kessler probe-tone profiles on C (major, minor), the published values music21 also uses.
KK_MAJOR = (6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88)
KK_MINOR = (6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17)
NOTE_FEATURES = (
    "notes_per_beat",
    "onsets_per_beat",
    "log_median_ioi_beats",
    "pitch_mean",
    "pitch_sd",
    "pitch_range_5_95",
    "log_median_duration_beats",
    "polyphony",
    "major_fit",
    "minor_fit",
    "major_minus_minor",
    "mean_abs_step",
)


_KK_ROTATED = key_fusion.rotated_profiles(np.array([[KK_MAJOR, KK_MINOR]]))  # (1, 24, 12)


def note_features(onsets: np.ndarray, durations: np.ndarray, pitches: np.ndarray) -> np.ndarray:
    """(len(NOTE_FEATURES),) description of notes given by onset and duration in beats and MIDI pitch.

    Raises:
        ValueError: fewer than 2 notes (nothing to describe).
    """
    on, du, p = (np.asarray(a, dtype=np.float64) for a in (onsets, durations, pitches))
    if len(on) < 2:
        raise ValueError(f"emotion needs at least 2 notes, got {len(on)}")
    order = np.lexsort((p, on))
    on, du, p = on[order], du[order], p[order]
    span = max(float((on + du).max() - on[0]), 0.25)
    starts = np.unique(on)
    ioi = np.diff(starts) if len(starts) > 1 else np.array([span])
    # Pearson correlation of the duration-weighted pitch classes (the key fusion's first histogram) with
    # the profiles rotated to each of the 24 keys; the best major key's and the best minor key's.
    fit = key_fusion.profile_features(key_fusion.histograms(p, du), _KK_ROTATED)[:, 0]  # (24,)
    major, minor = float(fit[:12].max()), float(fit[12:].max())
    return np.array(
        [
            len(on) / span,
            len(starts) / span,
            np.log(np.median(ioi) + 1e-3),
            p.mean(),
            p.std(),
            np.percentile(p, 95) - np.percentile(p, 5),
            np.log(np.median(du) + 1e-3),
            du.sum() / span,
            major,
            minor,
            major - minor,
            np.abs(np.diff(p)).mean(),
        ]
    )


@dataclass
class EmotionFusion:
    """A softmax regression over standardized [note_features, head log-probs]; see the module docstring."""

    classes: list[str]
    mean: np.ndarray  # (F + C,)
    scale: np.ndarray  # (F + C,)
    weight: np.ndarray  # (F + C, C)
    bias: np.ndarray  # (C,)
    info: dict = field(default_factory=dict)

    @staticmethod
    def inputs(features: np.ndarray, head_probs: np.ndarray) -> np.ndarray:
        """The regression's input row: the note features, then the head's log-probabilities."""
        return np.concatenate([features, np.log(np.asarray(head_probs, dtype=np.float64) + 1e-6)])

    def probs(self, features: np.ndarray, head_probs: np.ndarray) -> np.ndarray:
        z = (self.inputs(features, head_probs) - self.mean) / self.scale @ self.weight + self.bias
        e = np.exp(z - z.max())
        return e / e.sum()

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, classes: list[str], l2: float, steps: int = 4000):
        """Full-batch gradient descent on the mean cross-entropy + l2/2 |W|^2 (x: (N, F + C) inputs)."""
        mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-9
        z = (x - mean) / scale
        n_cls = len(classes)
        w, b, onehot = np.zeros((z.shape[1], n_cls)), np.zeros(n_cls), np.eye(n_cls)[y]
        for _ in range(steps):
            logits = z @ w + b
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            g = (p - onehot) / len(y)
            w -= 0.1 * (z.T @ g + l2 * w)
            b -= 0.1 * g.sum(axis=0)
        return cls(list(classes), mean, scale, w, b)

    def save(self, model_dir: str | Path) -> Path:
        path = Path(model_dir) / FILE
        data = {
            "features": [*NOTE_FEATURES, *(f"head_log_p_{c}" for c in self.classes)],
            "classes": self.classes,
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "weight": self.weight.tolist(),
            "bias": self.bias.tolist(),
            "info": self.info,
        }
        path.write_text(json.dumps(data, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, model_dir: str | Path) -> EmotionFusion | None:
        """The directory's fusion, or None when it has none.

        Raises:
            ValueError: the file is there but unreadable or of the wrong shape (the message names it).
        """
        path = Path(model_dir) / FILE
        if not path.is_file():
            return None
        try:
            d = json.loads(path.read_text())
            f = cls(
                list(d["classes"]),
                *(np.asarray(d[k], dtype=np.float64) for k in ("mean", "scale", "weight", "bias")),
                info=d.get("info", {}),
            )
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not an emotion fusion ({err})") from err
        n_in, n_cls = len(NOTE_FEATURES) + len(f.classes), len(f.classes)
        if f.mean.shape != (n_in,) or f.scale.shape != (n_in,) or f.weight.shape != (n_in, n_cls):
            raise ValueError(f"{path}: shapes do not match {len(NOTE_FEATURES)} features and {n_cls} classes")
        return f


class EmotionReader:
    """An exported model's emotion answer: the fusion over the notes of the ids when there is one, else
    the head. `probs_of(notes, head_probs)` with notes from RemiNotes.notes."""

    def __init__(self, fusion: EmotionFusion | None, vocab, remi) -> None:
        self.fusion, self.remi = fusion, remi
        self.pitch_of = tables_of(vocab).pitch_of  # MIDI pitch of each Pitch id, else -1

    def features(self, notes: np.ndarray) -> np.ndarray:
        tpb = self.remi.ticks_per_beat
        return note_features(notes[:, 0] / tpb, notes[:, 3] / tpb, self.pitch_of[notes[:, 1]])

    def fusion_inputs(self, notes: np.ndarray, head_probs) -> np.ndarray:
        return EmotionFusion.inputs(self.features(notes), head_probs)

    def probs_of(self, notes: np.ndarray, head_probs) -> np.ndarray:
        head = np.asarray(head_probs, dtype=np.float64)
        if self.fusion is None or len(notes) < 2:
            return head
        return self.fusion.probs(self.features(notes), head)
