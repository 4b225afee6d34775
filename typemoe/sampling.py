"""The sampling rule of the one decoder (typemoe.decoding): from logits to one id. Torch-free (numpy).

- softmax: along the last axis, shifted by the max.
- sample_next: greedy at temperature 0, else nucleus (top-p) sampling from a seeded numpy generator, so two
  backends with equal logits pick equal ids.
- guide: classifier-free guidance, uncond + g * (cond - uncond), on (V,) logits.
- check_sampling: the ValueError every entry point raises for a bad temperature, top_p or guidance.

Callers: typemoe.decoding (Session.generate_steps), typemoe.sample (the batched torch face), the argument
checks of `typemoe generate` and `typemoe infill` (check_sampling), export.validate (softmax).
"""

from __future__ import annotations

import numpy as np


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def log_softmax(z: np.ndarray) -> np.ndarray:
    """log(softmax(z)) over the last axis, computed stably (in z's float type)."""
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def sample_next(
    logits: np.ndarray, allowed: np.ndarray, *, temperature: float, top_p: float, rng: np.random.Generator
) -> int:
    """One id from (V,) logits restricted to `allowed`: greedy at temperature 0, else nucleus sampling."""
    assert allowed.any(), "the decoding masks allow no token"
    masked = np.where(allowed, logits.astype(np.float64), -np.inf)  # (V,)
    if temperature == 0:
        return int(np.argmax(masked))
    probs = softmax(masked / temperature)  # (V,)
    if top_p < 1.0:
        order = np.argsort(-probs, kind="stable")  # (V,)
        sorted_p = probs[order]
        drop = (np.cumsum(sorted_p) - sorted_p) >= top_p  # the most likely id always stays
        probs[order[drop]] = 0.0
        probs /= probs.sum()
    return int(rng.choice(probs.size, p=probs))


DEFAULT_GUIDANCE = 3.0
"""Classifier-free guidance weight of the controls when the caller gives none (`typemoe generate`/`infill`,
the bridge). Guidance acts only where control tokens are present (a stream without them has nothing to
guide, and decodes once); with them each token costs a second decode. The shipped model's bare-prompt key
match rises with it (MODEL_CARD.md, "Attribute control"); 1 turns it off."""


def guide(cond: np.ndarray, uncond: np.ndarray, guidance: float) -> np.ndarray:
    """Classifier-free guidance on (V,) logits: uncond + g * (cond - uncond), in float64, as float32 (V,)."""
    u = uncond.astype(np.float64)
    return (u + guidance * (cond.astype(np.float64) - u)).astype(np.float32)


def check_sampling(temperature: float, top_p: float, guidance: float = 1.0) -> None:
    if temperature < 0 or not 0.0 < top_p <= 1.0:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    if not guidance >= 0:
        raise ValueError(f"guidance must be >= 0 (1 = off), got {guidance}")


def spill_to_bar(logits: np.ndarray, spill: np.ndarray, is_bar: np.ndarray) -> np.ndarray:
    """(V,) logits with the probability of the `spill` ids (Positions past a planned bar's end) added to
    the Bar's: log(p_bar + sum p_spill). Without it a 3-beat bar's end leaves the model only more notes at
    its last position (its 4-beat habits put little on a Bar there), and it stacks chords of every pitch
    the unique-pitch rule leaves."""
    out = np.array(logits, dtype=np.float32)
    z = out[spill].astype(np.float64)
    m = z.max()
    out[is_bar] = np.logaddexp(out[is_bar], m + np.log(np.exp(z - m).sum()))
    return out
