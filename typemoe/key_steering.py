"""Head guidance: the notes are steered toward the asked key by the model's own ear for keys. Torch-free.

Classifier-free guidance (typemoe.sampling.guide) makes the notes keep to the asked key's scale, but the
shipped model's continuations then often dwell on another degree of that scale, and a listener (or a key
finder) hears the relative or the dominant key. The model hears keys: its key head was trained on key
labels from the scores' signatures and endings (never from a key-finding profile), and the model
directory's key fusion (typemoe.key_fusion, what `typemoe analyze` and the bridge answer) weighs the head
with the notes' pitch-class profiles. So at each step where a Pitch may come, the decoder
(typemoe.decoding.Session.generate_steps) asks that ear:

    the k most likely pitches by the (guided) logits stay, every other pitch is dropped;
    each is fed in turn to the ear, a stream of its own that holds [BOS, the music this generation wrote]
    (no control tokens, which the key head was never trained to read, and not the prompt: a prompt in
    another key would drown the new notes), the key head is read after it, and the ear is rewound;
    with a key fusion (the engine's `key` reader, export.runtime.OrtModel.key) the candidate's score is the
    fusion's log P(asked key | the new notes and the candidate, the head's reading); without one, the
    head's log P(asked key);
    logit += w * (score - the best of the k).

This is FUDGE (Yang & Klein 2021, arXiv:2104.05218) with the model's own ear as the discriminator: no
scale is imposed (the key lock does that), and w = 0 turns it off. It acts only where the stream carries
a Key control. The candidate note's duration is not sampled yet when its pitch is scored: the fusion's
duration histogram counts it with the mean (capped) duration of the new notes so far, 1 beat before any.

The head alone hears the key's scale (a passage on C major's notes is C major to it, whatever it dwells
on); the fusion also hears which notes the passage leans on, as a listener does. With the shipped graph,
scored by the fusion at weight 20 the bare-prompt key match (music21's profile) rose from 0.52 (the head
alone, weight 5) to 0.79 on 120 development prompts (eval seed 7; weights 5 / 10 / 20 / 40 gave 0.73 /
0.73 / 0.79 / 0.83, 40 with fewer distinct pitch classes). The fusion reads music21's key profiles among
its features, so that figure is in part agreement by construction; MODEL_CARD.md ("Head guidance by the
key fusion") gives a profile the fusion does not read beside it, on the control table's own prompts.
A tonic cadence goes with it (TonicCadence): where the decoder writes in a meter's bars (a continuation's
window), the asked tonic's pitches gain CADENCE_BONUS (3 logits) on the downbeats of the first and the last
bar, so the phrase opens and closes on its tonic. Chosen on 120 development prompts (bare, eval seed 7,
16-beat passages, meter guidance on; /work/notes/exp/key_dev.py on the VM): key match 0.817 without it,
0.850 on the first downbeat only, 0.875 on the last only, 0.892 on both. It is part of head guidance: 0
turns both off.

Without a key fusion (a PyTorch checkpoint's engine, typemoe.torch_session) the head alone steers at the same
weight: on the first 60 of those prompts 0.533 at weight 20 against 0.467 at 5, with fewer distinct pitch
classes (4.75 against 5.20). Cost: k decode steps per Pitch step plus the ear's own feed of the new music
(typemoe bench, the `head guidance` row).
"""

from __future__ import annotations

import numpy as np

from typemoe.grammar_tables import leading_control
from typemoe.key_fusion import DURATION_CAP_BEATS

DEFAULT_HEAD_GUIDANCE = 20.0
"""Weight w of the ear's log-probability of the asked key when the caller gives none (`typemoe
generate`/`infill`, the bridge, the library's generate). 0 turns it off."""
HEAD_GUIDANCE_MAX = 50.0
CANDIDATES = 6
"""k: the most likely pitches the ear scores at each Pitch step."""
CADENCE_BONUS = 3.0
"""Logit bonus of the tonic on the downbeats of a continuation's first and last bars (TonicCadence)."""


def check_head_guidance(weight: float) -> float:
    """The weight as a float. Raises ValueError naming a weight outside [0, HEAD_GUIDANCE_MAX]."""
    w = float(weight)
    if not 0.0 <= w <= HEAD_GUIDANCE_MAX:
        raise ValueError(f"head guidance must be in [0, {HEAD_GUIDANCE_MAX:g}] (0 = off), got {weight!r}")
    return w


def asked_key(tokens, is_control: np.ndarray, key_of: np.ndarray) -> int | None:
    """The key class of the Key control in the stream's leading control tokens, or None."""
    return leading_control(tokens, is_control, key_of)


def key_hooks(tokens, tables, weight: float, window: tuple[float, float] | None, reader=None) -> list:
    """The generate_steps hooks of head guidance at `weight` for a stream of `tokens`: none without a Key
    control (or at weight 0); else the tonic cadence when the decoder writes in a window of bars (before the
    ear, so a tonic it nudges is among the pitches the ear scores), then the ear (KeyHeadGuide, scoring by
    `reader`, the engine's key reader)."""
    key = asked_key(tokens, tables.is_control, tables.key_of) if weight > 0 else None
    if key is None:
        return []
    cadence = [TonicCadence(key, window)] if window is not None else []
    return [*cadence, KeyHeadGuide(key, weight, reader=reader)]


class TonicCadence:
    """A generate_steps hook (session, logits, allowed) that opens and closes a continuation on the asked key's
    tonic: at a Pitch step on the downbeat of the window's first bar or of its last, every allowed pitch of
    the tonic's class gains `bonus` (a nudge, not a lock: the model still picks). A phrase that starts and
    ends on its tonic is how a listener (and a key profile, which weighs the long downbeat notes meter
    guidance writes) hears its key. See the module docstring for what it adds."""

    def __init__(self, key: int, window: tuple[float, float], bonus: float = CADENCE_BONUS):
        self.pc, (self.start, self.end), self.bonus = int(key) % 12, window, float(bonus)

    def __call__(self, session, logits: np.ndarray, allowed: np.ndarray) -> None:
        if session.bar_position != 0 or self.bonus == 0:
            return
        first = abs(session.bar_start - self.start) < 1e-9
        last = session.bar_start >= self.start - 1e-9 and session.next_bar_start() >= self.end - 1e-9
        if first or last:
            t = session.tables
            logits[allowed & (t.pitch_of >= 0) & (np.maximum(t.pitch_of, 0) % 12 == self.pc)] += self.bonus


class KeyHeadGuide:
    """A generate_steps hook (session, logits, allowed): see the module docstring. One per generation: its
    ear hears what this generation wrote, from its first call on.

    reader: a typemoe.key_fusion.KeyReader; with a fusion the candidates are scored by it (the notes and
    the head), else (None, or a reader without a fusion) by the head alone."""

    def __init__(self, key: int, weight: float, *, candidates: int = CANDIDATES, reader=None):
        self.key, self.weight, self.k = int(key), check_head_guidance(weight), int(candidates)
        self.reader = reader if getattr(reader, "fusion", None) is not None else None
        self.scored = 0  # candidates fed so far (the cost)
        self.ear = None  # [BOS, the new music]: a Session of the stream's engine, made at the first call
        self._heard: list[int] = []  # new ids the ear has not been fed yet
        self._calls = 0

    def __call__(self, session, logits: np.ndarray, allowed: np.ndarray) -> None:
        if self._calls:  # the generation fed exactly one id since the last call (the context may have slid)
            self._heard.append(session.tokens[-1])
        self._calls += 1
        t = session.tables
        cand = np.flatnonzero(allowed & (t.pitch_of >= 0))
        if self.weight == 0 or len(cand) < 2:
            return
        if self.ear is None:
            self.ear = session.blank()
            self._heard.insert(0, t.bos_id)
        ear = self.ear
        if self._heard:
            ear.feed(self._heard)
            self._heard = []
        if ear.n_past >= ear.engine.context_len:  # a candidate would slide it, and a slide cannot be rewound
            return
        top = cand[np.argsort(-logits[cand], kind="stable")[: self.k]]
        n = ear.n_past
        heard = self._fused_scorer(ear.tokens, t.pitch_of) if self.reader is not None else None
        score = np.empty(len(top))
        for j, c in enumerate(top):
            head = ear.feed([int(c)]).key_probs
            ear.rewind(n)
            score[j] = np.log(float(head[self.key] if heard is None else heard(int(c), head)) + 1e-9)
        self.scored += len(top)
        rest = np.setdiff1d(cand, top)
        allowed[rest] = False
        logits[rest] = -np.inf
        logits[top] += self.weight * (score - score.max())

    def _fused_scorer(self, ids, pitch_of: np.ndarray):
        """score(candidate id, head key probs) -> the fusion's P(asked key) of the new notes in `ids` plus
        the candidate (counted once, with the mean capped duration of those notes, 1 beat without any)."""
        reader = self.reader
        notes = reader.remi.notes(np.asarray(ids, dtype=np.int64))[0]
        hists = reader.hists_of(notes)
        beats = np.minimum(notes[:, 3] / reader.remi.ticks_per_beat, DURATION_CAP_BEATS)
        duration = float(beats.mean()) if len(beats) else 1.0

        def score(c: int, head_probs: np.ndarray) -> float:
            h = hists.copy()
            pc = int(pitch_of[c]) % 12
            h[0, pc] += duration
            h[1, pc] += 1.0
            return float(reader.fused(h, head_probs)[self.key])

        return score
