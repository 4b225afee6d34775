"""Best of N: several continuations of one stream, and the one the model's own analysis hears most in the
asked key is kept. Torch-free.

Classifier-free guidance and head guidance (typemoe.key_steering) steer each pitch; they cannot see the
passage whole, and a passage that keeps to the asked key's notes can still be heard in its relative or its
dominant key. So `typemoe generate --candidates N` samples N continuations (forks of the same stream, each
with its own seed), reads each as `typemoe analyze` reads music (the key head over the new notes alone,
fused with their pitch classes by the model directory's key reader, typemoe.key_fusion), and keeps the one
with the highest probability of the asked key. It is generate-and-test, not a scale lock: no pitch is
forbidden, and the answer is one the model wrote. Cost: N generations plus N short readings (`typemoe
bench`'s `candidates` row). Without a Key control in the stream there is nothing to judge and one
continuation is generated.

    ids = best_of(session, 8, readers=model, n_bars=4, meter="3/4", seed=1, guidance=3.0)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from typemoe.key_steering import asked_key

MAX_CANDIDATES = 32
DEFAULT_CANDIDATES = 1
"""`typemoe generate`'s default: one continuation (no reranking)."""


def check_candidates(n: int) -> int:
    """n as an int. Raises ValueError naming a count outside [1, MAX_CANDIDATES]."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= int(n) <= MAX_CANDIDATES:
        raise ValueError(f"candidates must be an integer in [1, {MAX_CANDIDATES}], got {n!r}")
    return int(n)


def candidate_seeds(seed: int | None, n: int) -> list[int | None]:
    """The seed of each candidate: `seed` itself first (so one candidate is exactly a plain generate), then
    n - 1 seeds drawn from it; all None (fresh entropy) without a seed."""
    if seed is None:
        return [None] * n
    rest = np.random.SeedSequence(int(seed)).generate_state(max(n - 1, 0), dtype=np.uint32)
    return [int(seed), *(int(s) for s in rest)]


def key_score(session, new: Sequence[int], key: int, readers=None) -> float:
    """log P(key | the new music alone): the key head of a blank session of the same engine fed [BOS, new]
    (its last context's worth), fused with the notes by `readers.key` when the model has a key reader."""
    t = session.tables
    ear = session.blank()
    ids = [int(i) for i in new][-(ear.engine.context_len - 1) :]
    out = ear.feed([t.bos_id, *ids])
    probs = np.asarray(out.key_probs, dtype=np.float64)
    reader = getattr(readers, "key", None)
    if reader is not None and len(ids):
        probs = np.asarray(reader.probs(ids, probs), dtype=np.float64)
    return float(np.log(probs[key] + 1e-12))


def best_of(session, n: int, *, readers=None, seed: int | None = None, **kwargs) -> list[int]:
    """Generate n continuations on forks of `session` (generate_steps' kwargs, seeds candidate_seeds), feed
    the one with the best key_score of the stream's asked key into `session` and return its ids. With n = 1
    or no Key control this is exactly session.generate(seed=seed, **kwargs)."""
    n = check_candidates(n)
    t = session.tables
    key = asked_key(session.tokens, t.is_control, t.key_of)
    if n == 1 or key is None:
        return session.generate(seed=seed, **kwargs)
    best, best_score = None, -np.inf
    for s in candidate_seeds(seed, n):
        new = session.fork().generate(seed=s, **kwargs)
        score = key_score(session, new, key, readers)
        if best is None or score > best_score:
            best, best_score = new, score
    if best:
        session.feed(best)
    return best
