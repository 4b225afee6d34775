"""Head guidance: the notes are steered toward the asked key by the model's own key head. Torch-free.

Classifier-free guidance (typemoe.sampling.guide) makes the notes keep to the asked key's scale, but the
shipped model's continuations then often dwell on another degree of that scale, and a listener (or a key
finder) hears the relative or the dominant key. The model's key head hears keys: it was trained on key
labels from the scores' signatures and endings (never from a key-finding profile), on the music alone.
So at each step where a Pitch may come, the decoder (typemoe.decoding.Session.generate_steps) asks it:

    the k most likely pitches by the (guided) logits stay, every other pitch is dropped;
    each is fed in turn to the ear, a stream of its own that holds [BOS, the music this generation wrote]
    (no control tokens, which the key head was never trained to read, and not the prompt: a prompt in
    another key would drown the new notes), the key head is read after it, and the ear is rewound;
    logit += w * (log P_head(asked key | new music + pitch) - the best of the k).

This is FUDGE (Yang & Klein 2021, arXiv:2104.05218) with the model's own head as the discriminator: no
scale is imposed (the key lock does that), and w = 0 turns it off. It acts only where the stream carries
a Key control. Cost: k decode steps per Pitch step plus the ear's own feed of the new music (typemoe bench,
the `head guidance` row). The weight and k were picked on bare prompts, the ear on music prompts asked to
move (MODEL_CARD.md, "Head guidance").
"""

from __future__ import annotations

import numpy as np

DEFAULT_HEAD_GUIDANCE = 5.0
"""Weight w of the key head's log-probability when the caller gives none (`typemoe generate`/`infill`, the
bridge, the library's generate). 0 turns it off."""
HEAD_GUIDANCE_MAX = 50.0
CANDIDATES = 6
"""k: the most likely pitches the key head scores at each Pitch step."""


def check_head_guidance(weight: float) -> float:
    """The weight as a float. Raises ValueError naming a weight outside [0, HEAD_GUIDANCE_MAX]."""
    w = float(weight)
    if not 0.0 <= w <= HEAD_GUIDANCE_MAX:
        raise ValueError(f"head guidance must be in [0, {HEAD_GUIDANCE_MAX:g}] (0 = off), got {weight!r}")
    return w


def asked_key(tokens, is_control: np.ndarray, key_of: np.ndarray) -> int | None:
    """The key class of the Key control in the stream's leading control tokens, or None."""
    for i in tokens:
        if not is_control[i]:
            return None
        if key_of[i] >= 0:
            return int(key_of[i])
    return None


class KeyHeadGuide:
    """A generate_steps hook (session, logits, allowed): see the module docstring. One per generation: its
    ear hears what this generation wrote, from its first call on."""

    def __init__(self, key: int, weight: float, *, candidates: int = CANDIDATES):
        self.key, self.weight, self.k = int(key), check_head_guidance(weight), int(candidates)
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
        score = np.empty(len(top))
        for j, c in enumerate(top):
            score[j] = np.log(float(ear.feed([int(c)]).key_probs[self.key]) + 1e-9)
            ear.rewind(n)
        self.scored += len(top)
        rest = np.setdiff1d(cand, top)
        allowed[rest] = False
        logits[rest] = -np.inf
        logits[top] += self.weight * (score - score.max())
