"""Key from the notes' pitch classes and from the model, fused: torch-free (numpy), read by analyze, eval
and the bridge.

The key head learned its keys from the training corpora, and on music unlike them it can lose to a key
profile, which only counts pitch classes. Profiles do not care about velocity or timing, and they turn
with a transposition by construction. So the key estimate scores every one of the 24 keys with

  - the correlation of the notes' pitch-class histogram with each key profile (music21's Krumhansl-
    Schmuckler, Aarden-Essen, Temperley-Kostka-Payne and simple weights, major or minor, rotated to the
    key's tonic), for two histograms: weighted by duration (capped at 2 beats, what music21 reads) and by
    note count (so legato and staccato playing give the same evidence);
  - the model's key-head log-probability of that key, when a model is there;

and one weight per feature, shared by all 24 keys, plus a bias for minor: a softmax regression with 10
parameters. Sharing the weights keeps the profile part exactly transposition-equivariant, and leaves too
few parameters to learn a corpus's key distribution. The profile vectors are read from music21 when the
fusion is fitted (training/evaluation/fit_key.py) and saved with the weights in `key_fusion.json`, so the runtime
needs neither music21 nor torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from typemoe.sampling import log_softmax

FILE = "key_fusion.json"
DURATION_CAP_BEATS = 2.0
N_KEYS = 24  # typemoe.analysis.KEYS: index = tonic pitch class + 12 * minor
ENDING_BEATS = 0.25  # a piece's last chord: the notes starting within this many beats of its last onset
ENDING_WEIGHT = 1.0  # log-odds added to the keys whose tonic is the last chord's lowest pitch class


def ending_bass(pitches: np.ndarray, onsets_beats: np.ndarray, window: float = ENDING_BEATS) -> int | None:
    """Pitch class of the lowest note of the last chord (the notes starting within `window` beats of the
    last onset; a melody's last note), or None without notes."""
    onsets = np.asarray(onsets_beats, dtype=np.float64)
    if not len(onsets):
        return None
    return int(np.asarray(pitches)[onsets >= onsets.max() - window].min()) % 12


def with_ending(key_probs: np.ndarray, bass: int | None, weight: float = ENDING_WEIGHT) -> np.ndarray:
    """(24,) a whole piece's key probabilities, the keys whose tonic is `bass` raised by exp(weight).

    A piece ends on its tonic far more often than on any other degree, and the bass of the last chord
    tells a key from its relative (A minor from C major), the key answer's commonest miss. Chosen on
    held-out pieces of the training sources before any unseen one was read: music21 val 0.919 -> 0.937,
    POP909 val 0.902 either way (weight 1.0 of 0, 0.5, 1, 2, 4; the last bass is the tonic in 0.69 and 0.56
    of them). Turns with a transposition and ignores velocity, as the rest of the answer does."""
    p = np.asarray(key_probs, dtype=np.float64)
    if bass is None:
        return p
    p = p * np.exp(weight * (np.arange(N_KEYS) % 12 == bass))
    return p / p.sum()


def histograms(pitches: np.ndarray, durations_beats: np.ndarray) -> np.ndarray:
    """(2, 12) pitch-class histograms of notes: duration-weighted (capped) and count-weighted."""
    pc = np.asarray(pitches, dtype=np.int64) % 12
    h = np.zeros((2, 12))
    np.add.at(h[0], pc, np.minimum(np.asarray(durations_beats, dtype=np.float64), DURATION_CAP_BEATS))
    np.add.at(h[1], pc, 1.0)
    return h


def rotated_profiles(profiles: np.ndarray) -> np.ndarray:
    """(P, 24, 12) z-scored profiles rotated to every key, from (P, 2, 12) [major, minor] profiles on C."""
    profiles = np.asarray(profiles, dtype=np.float64)
    out = np.empty((len(profiles), N_KEYS, 12))
    for k in range(N_KEYS):
        tonic, minor = k % 12, k // 12
        out[:, k] = np.roll(profiles[:, minor], tonic, axis=-1)
    out -= out.mean(axis=-1, keepdims=True)
    return out / (out.std(axis=-1, keepdims=True) + 1e-12)


def profile_features(hists: np.ndarray, rotated: np.ndarray) -> np.ndarray:
    """(24, 2 * P) Pearson correlations of each histogram with each profile rotated to each key (0 for an
    empty or flat histogram)."""
    h = np.asarray(hists, dtype=np.float64)
    h = h - h.mean(axis=-1, keepdims=True)
    sd = h.std(axis=-1, keepdims=True)
    h = np.where(sd > 0, h / np.where(sd > 0, sd, 1.0), 0.0)  # (2, 12)
    corr = np.einsum("pkc,hc->khp", rotated, h) / 12.0  # (24, 2, P)
    return corr.reshape(N_KEYS, -1)


@dataclass
class KeyFusion:
    """Softmax regression over keys: logit_k = features_k . weights + minor_bias * [k is minor]."""

    profiles: np.ndarray  # (P, 2, 12) [major, minor] weights on C, as music21 gives them
    profile_names: tuple[str, ...]
    weights: np.ndarray  # (2P + 1,) or (2P,) without the head
    minor_bias: float
    uses_head: bool
    info: dict

    def __post_init__(self) -> None:
        self._rotated = rotated_profiles(self.profiles)

    def features(self, hists: np.ndarray, head_log_probs: np.ndarray | None) -> np.ndarray:
        """(24, F) features of every key, for one (2, 12) histogram pair."""
        parts = [profile_features(hists, self._rotated)]
        if self.uses_head:
            if head_log_probs is None:
                raise ValueError("this key fusion was fitted with the model's key head; pass its log-probs")
            parts.append(np.maximum(np.asarray(head_log_probs, dtype=np.float64), -20.0)[:, None])
        return np.concatenate(parts, axis=1)

    def logits(self, feats: np.ndarray) -> np.ndarray:
        minor = (np.arange(N_KEYS) >= 12).astype(np.float64)
        return feats @ self.weights + self.minor_bias * minor

    def probs(self, hists: np.ndarray, head_log_probs: np.ndarray | None = None) -> np.ndarray:
        """(24,) key probabilities."""
        return np.exp(log_softmax(self.logits(self.features(hists, head_log_probs))))

    @classmethod
    def fit(
        cls,
        profiles: np.ndarray,
        profile_names: tuple[str, ...],
        hists: np.ndarray,
        labels: np.ndarray,
        head_log_probs: np.ndarray | None = None,
        *,
        l2: float = 1e-3,
        steps: int = 800,
        lr: float = 0.05,
        info: dict | None = None,
        twins: tuple[np.ndarray, np.ndarray | None, np.ndarray] | None = None,
        consistency: float = 0.0,
    ) -> KeyFusion:
        """Full-batch Adam on the mean cross-entropy of (N, 2, 12) histograms with (N,) key labels.

        twins: (histograms, head log-probs, shifts (N,)) of the same windows transposed by `shifts`
        semitones. With `consistency` > 0 the fit also pays consistency * mean over windows and keys of the
        change of a key's logit between the window and its twin's logit for that key moved by the shift:
        the answer should turn with the music (the profiles do exactly; the head only nearly).
        """
        uses_head = head_log_probs is not None
        P = len(profiles)
        probe = cls(
            np.asarray(profiles, dtype=np.float64),
            tuple(profile_names),
            np.zeros(2 * P + uses_head),
            0.0,
            uses_head,
            {},
        )
        x = np.stack(
            [
                probe.features(h, None if head_log_probs is None else head_log_probs[i])
                for i, h in enumerate(hists)
            ]
        )  # (N, 24, F)
        d = None  # (N, 24, F): a twin's features, moved back by its shift, less the window's
        if twins is not None and consistency > 0:
            h2, lp2, shifts = twins
            x2 = np.stack([probe.features(h, None if lp2 is None else lp2[i]) for i, h in enumerate(h2)])
            k = np.arange(N_KEYS)
            moved = (k[None, :] % 12 + np.asarray(shifts)[:, None]) % 12 + 12 * (k[None, :] // 12)  # (N, 24)
            d = np.take_along_axis(x2, moved[:, :, None], axis=1) - x
        y = np.asarray(labels, dtype=np.int64)
        onehot = np.eye(N_KEYS)[y]
        minor = (np.arange(N_KEYS) >= 12).astype(np.float64)
        theta = np.zeros(x.shape[-1] + 1)  # weights, minor bias
        theta[: 2 * P] = 1.0  # start from "the profiles agree"
        m, v = np.zeros_like(theta), np.zeros_like(theta)
        for t in range(1, steps + 1):
            z = x @ theta[:-1] + theta[-1] * minor
            p = np.exp(log_softmax(z))
            g = (p - onehot) / len(y)  # (N, 24)
            grad = np.append(np.einsum("nk,nkf->f", g, x), (g * minor).sum()) + l2 * theta
            if d is not None:
                dz = d @ theta[:-1]  # (N, 24) logit changes
                grad[:-1] += (2.0 * consistency / dz.size) * np.einsum("nk,nkf->f", dz, d)
            m, v = 0.9 * m + 0.1 * grad, 0.999 * v + 0.001 * grad**2
            theta -= lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        probe.weights, probe.minor_bias, probe.info = theta[:-1], float(theta[-1]), dict(info or {})
        return probe

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / FILE
        doc = {
            "format": "typemoe-key-fusion",
            "version": 1,
            "profile_names": list(self.profile_names),
            "profiles": self.profiles.tolist(),
            "weights": self.weights.tolist(),
            "minor_bias": self.minor_bias,
            "uses_head": self.uses_head,
            "duration_cap_beats": DURATION_CAP_BEATS,
            "info": self.info,
        }
        path.write_text(json.dumps(doc) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> KeyFusion | None:
        """The fusion saved in a model directory, or None when it has none.

        Raises:
            ValueError: a key_fusion.json that is corrupt or from another format.
        """
        path = Path(directory) / FILE
        if not path.is_file():
            return None
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if (
                doc.get("format") != "typemoe-key-fusion"
                or doc.get("duration_cap_beats") != DURATION_CAP_BEATS
            ):
                raise ValueError(f"format {doc.get('format')!r}, cap {doc.get('duration_cap_beats')!r}")
            profiles = np.asarray(doc["profiles"], dtype=np.float64)
            weights = np.asarray(doc["weights"], dtype=np.float64)
            uses_head = bool(doc["uses_head"])
            if (
                profiles.ndim != 3
                or profiles.shape[1:] != (2, 12)
                or len(weights) != 2 * len(profiles) + uses_head
            ):
                raise ValueError(f"profiles {profiles.shape} and {len(weights)} weights do not fit")
            return cls(
                profiles,
                tuple(doc["profile_names"]),
                weights,
                float(doc["minor_bias"]),
                uses_head,
                dict(doc.get("info", {})),
            )
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path} is not a readable key fusion: {err}") from err


class KeyReader:
    """A model directory's key answer: the fusion of the notes' pitch classes and the key head.

    Args:
        fusion: the directory's KeyFusion (KeyFusion.load), or None: then the head alone answers.
        vocab: the model's TypedVocab (to read notes out of token ids).
        remi: tables to read notes with (typemoe.remi_notes.RemiNotes), shared with the meter reader.
    """

    def __init__(self, fusion: KeyFusion | None, vocab, remi=None):
        from typemoe.grammar_tables import tables_of
        from typemoe.remi_notes import RemiNotes

        self.fusion = fusion
        self.remi = remi if remi is not None else RemiNotes(vocab)
        self.pitch_of = tables_of(vocab).pitch_of  # MIDI pitch of each Pitch id, else -1

    def hists(self, ids) -> np.ndarray:
        """(2, 12) histograms of the whole notes in ids (control and special ids are ignored)."""
        return self.hists_of(self.remi.notes(np.asarray(ids, dtype=np.int64))[0])

    def hists_of(self, notes: np.ndarray) -> np.ndarray:
        """(2, 12) histograms of RemiNotes.notes() rows."""
        return histograms(self.pitch_of[notes[:, 1]], notes[:, 3] / self.remi.ticks_per_beat)

    def ending(self, ids) -> int | None:
        """ending_bass of the whole notes in the token ids `ids`."""
        return self.ending_of(self.remi.notes(np.asarray(ids, dtype=np.int64))[0])

    def ending_of(self, notes: np.ndarray) -> int | None:
        """The same from already read notes (RemiNotes.notes rows)."""
        return ending_bass(self.pitch_of[notes[:, 1]], notes[:, 0] / self.remi.ticks_per_beat)

    def probs(self, ids, head_key_probs: np.ndarray) -> np.ndarray:
        """(24,) key probabilities after hearing the token ids `ids`, given the key head's at their end."""
        return self.probs_of(self.remi.notes(np.asarray(ids, dtype=np.int64))[0], head_key_probs)

    def probs_of(self, notes: np.ndarray, head_key_probs: np.ndarray) -> np.ndarray:
        """The same from already read notes (RemiNotes.notes rows): the bridge reads them once for both
        readers."""
        head = np.asarray(head_key_probs, dtype=np.float64)
        if self.fusion is None:
            return head
        h = self.hists_of(notes)
        if h[1].sum() < 2:
            return head  # no pitches yet: nothing to fuse
        return self.fused(h, head)

    def fused(self, hists: np.ndarray, head_key_probs: np.ndarray) -> np.ndarray:
        """(24,) the fusion's key probabilities of (2, 12) histograms, given the key head's probabilities."""
        head = np.asarray(head_key_probs, dtype=np.float64)
        return self.fusion.probs(hists, np.log(np.maximum(head, 1e-9)))
