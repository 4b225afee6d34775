"""Best of N: several continuations of one stream, and the one the model's own analysis hears most in the
asked key and meter is kept. Torch-free.

Classifier-free guidance and head guidance (typemoe.key_steering) steer each pitch; they cannot see the
passage whole, and a passage that keeps to the asked key's notes can still be heard in its relative or its
dominant key, or its rhythm in two when three was asked. So `typemoe generate --candidates N` samples N
continuations (forks of the same stream, each with its own seed), reads each as `typemoe analyze` reads
music (the new notes alone, moved from the bars of their meter to where they sound and written in REMI's
4-beat bars; the key and meter heads over them, fused with their pitch classes and rhythm by the model
directory's readers, typemoe.key_fusion and typemoe.meter), and keeps the one with the highest
log P(asked key) + log P(the asked meter's family). It is generate-and-test, not a scale lock: no pitch is
forbidden, and the answer is one the model wrote. Cost: N generations plus N short readings (`typemoe
bench`'s `candidates` row). Without a Key control in the stream there is nothing to judge and one
continuation is generated.

What the judge shares with the control table's analysers (training/evaluation/eval_control.py): the key
fusion reads music21's four key profiles among its features (Krumhansl's is the table's key finder), and
the meter reader's duple/triple family weighs the table's onset-autocorrelation rule among its five signals
(typemoe.meter_family; the rule itself where a model directory has no meter_family.json). So the table's
rows for best of N measure, in part, agreement by construction; MODEL_CARD.md reports them apart from the
default's.

    ids = best_of(session, 8, readers=model, n_bars=4, meter="3/4", seed=1, guidance=3.0)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from typemoe import analysis
from typemoe.grammar_tables import meter_beats
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


def in_four(readers, new: Sequence[int], meter: str | None) -> list[int]:
    """The new ids as the analysis reads music: notes written in bars of `meter` (generate(meter=...))
    moved to where they sound and written again in REMI's 4-beat bars (how `typemoe analyze` and the bridge
    tokenize what they hear, so the readers' onsets are right); unchanged without a meter or readers.
    Not training's resplit_bars (training/data/rebar.py, the other direction): the notes are written again
    in canonical order, as `typemoe analyze`'s tokenizer writes a file's."""
    remi = getattr(getattr(readers, "key", None), "remi", None)
    if meter is None or remi is None:
        return [int(i) for i in new]
    notes, _ = remi.notes(np.asarray(new, dtype=np.int64))  # ticks as if every bar were REMI's 4 beats
    if not len(notes):
        return [int(i) for i in new]
    bar, pos = np.divmod(notes[:, 0], remi.n_pos)
    notes = notes.copy()
    notes[:, 0] = bar * int(round(meter_beats(meter) * remi.ticks_per_beat)) + pos
    n_bars = int((notes[:, 0] + notes[:, 3]).max() // remi.n_pos) + 1
    return [int(i) for i in remi.tokens(notes, n_bars)]


def score(session, new: Sequence[int], key: int, meter: str | None = None, readers=None) -> float:
    """log P(key | the new music alone) + log P(meter's family | the new music alone), as the model's analysis
    hears them: the heads of a blank session of the same engine fed [BOS, new] (its last context's worth),
    fused with the notes by the model directory's readers (`readers.answer`, OrtModel's: the notes read once
    for both) when there are readers. Without them the key head alone is scored; the family term needs
    them and their meter class names (`readers.meter_names`)."""
    ear = session.blank()
    ids = in_four(readers, new, meter)[-(ear.engine.context_len - 1) :]
    out = ear.feed([session.tables.bos_id, *ids])
    answer = getattr(readers, "answer", None)
    if answer is None:
        return float(np.log(np.asarray(out.key_probs, dtype=np.float64)[key] + 1e-12))
    key_probs, meter_probs = answer(ids, out.key_probs, out.meter_probs)
    total = float(np.log(key_probs[key] + 1e-12))
    names = getattr(readers, "meter_names", None)
    if meter is not None and names is not None:
        family = analysis.meter_family(analysis.parse_meter(meter))
        mass = sum(float(p) for p, name in zip(meter_probs, names) if analysis.meter_family(name) == family)
        total += float(np.log(mass + 1e-12))
    return total


def best_of(session, n: int, *, readers=None, seed: int | None = None, **kwargs) -> list[int]:
    """Generate n continuations on forks of `session` (generate_steps' kwargs, seeds candidate_seeds), feed
    the one with the best `score` (the stream's asked key, the family of kwargs' meter) into `session` and
    return its ids. With n = 1 or no Key control this is exactly session.generate(seed=seed, **kwargs)."""
    n = check_candidates(n)
    t = session.tables
    key = asked_key(session.tokens, t.is_control, t.key_of)
    if n == 1 or key is None:
        return session.generate(seed=seed, **kwargs)
    best, best_score = None, -np.inf
    for s in candidate_seeds(seed, n):
        new = session.fork().generate(seed=s, **kwargs)
        judged = score(session, new, key, kwargs.get("meter"), readers)
        if best is None or judged > best_score:
            best, best_score = new, judged
    if best:
        session.feed(best)
    return best
