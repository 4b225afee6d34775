"""`typemoe eval --groups infill`: infilling against continuation on the same held-out bars.

Per held-out piece (its first `window` tokens, from its first bar), a span of n = 1-4 whole REMI bars
is masked, n and the start drawn from default_rng((seed, piece index)), with at least one bar before it
and one after it in the window. Prefix (the bars before) and suffix (from the bar after) are cut to fit
the context as typemoe/infill.py cuts them at decoding time. Then, on the same middle tokens:

- infill.hits@1 / infill.hits@5: the share of middle tokens that are the top-1 / top-5 of what the
  infilling decoder predicts under teacher forcing: typemoe.infill.mix_readings of the infilling reading
  ([BOS, Infill_Suffix, suffix, Infill_Bars_n, prefix, Infill_Middle, middle], typemoe/infill.py's
  arrangement) and the continuation reading ([BOS, prefix, middle]) at infill.suffix_weight
  (typemoe.infill.SUFFIX_WEIGHT), as the decoder mixes them. infill.fim.hits@1: the infilling reading
  alone. infill.continuation.hits@1 / @5: the continuation reading alone (no suffix). The infilling
  reading is read as the decoder reads it: Infill_End, which is never a target here, is ruled out where
  the span grammar rules it out (`forbid_early_end`: a middle of n bars cannot end before its n-th Bar,
  nor inside its last bar except where a Bar could come). infill.end_anywhere.hits@1: the mix without that rule (Infill_End allowed at every
  position), which counts a Bar target missed to a token the decoder can never emit there.
- infill.bleu2: corpus BLEU-2 (token strings) of the greedy middle (typemoe.infill.generate_middle:
  temperature 0, the span grammar) against the true middle; infill.continuation.bleu2: the greedy
  continuation of n bars from the prefix (typemoe.decoding, the grammar of `typemoe generate`).
- Leading into the suffix, infill.lead.{model,true,continuation}: the mean |pitch difference| between
  the last note of the middle (the highest pitch at its last onset) and the first note of the suffix (the
  highest pitch at its first onset), for the generated middle, the true middle and the continuation; a
  middle without notes is left out of that mean (infill.lead.*.n counts the rest).
- infill.ended: share of generated middles closed by the model's own Infill_End (else the span was full).
- infill.gain.hits@1 = infill.hits@1 - infill.continuation.hits@1, with infill.gain.ci95: its 95 % interval
  from resampling whole pieces (metrics.paired_gain), so "infilling beats continuation" is read off an
  interval, not two numbers a few tokens apart.
- infill.other_suffix.hits@1: the same middles, prefixes and spans with the suffix of another piece (the
  next piece's, cut to the same length at a bar line), mixed the same way. infill.suffix_gain.hits@1 (.ci95), the true
  suffix over that one, says whether the model reads the suffix at all; a wrong suffix also misleads, so
  it is larger than what the true suffix adds over no suffix.

A model without the infilling tokens gets no infill.* numbers (skipped.infill counts its pieces).
"""

from __future__ import annotations

import math

import numpy as np

from typemoe import infill
from typemoe.grammar_tables import tables_of
from typemoe.training.evaluation import metrics

MAX_BARS = 4


def _top_pitch(notes, last: bool) -> int | None:
    """The highest pitch at the last (or first) onset of notes, None without notes."""
    if not notes:
        return None
    t = max(n.time for n in notes) if last else min(n.time for n in notes)
    return max(n.pitch for n in notes if n.time == t)


def _middle_logits(model, ids, suffix: list[int], n: int, prefix: list[int], middle: list[int]) -> np.ndarray:
    """(len(middle), V) next-token logits of the middle's ids under teacher forcing in the infilling
    arrangement (typemoe/infill.py: suffix first, then the span, the prefix and the middle)."""
    fim = [model.vocab.bos_id, ids.suffix, *suffix, ids.span(n), *prefix, ids.middle, *middle]
    return model.outputs_at(fim, range(len(fim) - len(middle), len(fim))).logits


def forbid_early_end(logits: np.ndarray, middle: list[int], n: int, tables, end: int) -> np.ndarray:
    """The infilling reading's (len(middle), V) logits with Infill_End at -inf wherever the span grammar
    (typemoe.infill.SpanGrammar) does not let a middle of n bars end: before its n-th Bar is open, and
    inside the last bar except where a Bar could come (after a Bar or a Duration). So the reading is
    scored as the decoder reads it; without the rule, a reading unsure how many bars it owes puts mass on
    ending a middle that cannot end yet, and a Bar target is missed for a token the decoder never emits
    there. The continuation reading has no Infill_End to rule out."""
    mid = np.asarray(middle, dtype=np.int64)
    is_bar = tables.is_bar[mid]
    opened = np.cumsum(is_bar) - is_bar  # (m,) bars open before each position
    prev = np.concatenate([[-1], mid[:-1]])  # the token before each position (-1: Infill_Middle)
    may_close = (prev >= 0) & (tables.is_bar[prev] | (tables.duration_of[prev] >= 0))
    out = np.array(logits, dtype=np.float32, copy=True)
    out[~((opened >= n) & may_close), end] = -np.inf
    return out


def _hits(logits: np.ndarray, target: np.ndarray) -> int:
    """Tokens of `target` that are the top-1 of their logits (metrics.hits_at_k's tie rule)."""
    return int(round(metrics.hits_at_k(logits, target, 1) * len(target)))


def _cut_like(suffix: list[int], length: int, bar: int) -> list[int]:
    """The start of another piece's suffix, at most `length` ids, cut before a Bar where one lies inside:
    infill.fit_context's cut of a suffix with no prefix beside it."""
    return infill.fit_context([], list(suffix), length, bar)[1]


def choose(tokens: np.ndarray, bar: int, rng: np.random.Generator) -> tuple[int, int] | None:
    """(first bar, n): a span with a bar before and after it, or None when the window has under 3 bars."""
    k = int((tokens == bar).sum())
    if k < 3:
        return None
    n = int(rng.integers(1, min(MAX_BARS, k - 2) + 1))
    return int(rng.integers(1, k - n)), n


def infill_metrics(model, pieces, cfg, window: int, report) -> None:
    """The infill.* numbers of the module docstring, on `pieces` (training.eval_data.EvalPiece)."""
    vocab = model.vocab
    try:
        ids = infill.InfillIds.of(vocab, where=str(getattr(model, "path", "the model")))
    except infill.InfillError:
        report.skipped["infill"] += len(pieces)
        return
    t = tables_of(vocab)
    bar = vocab.id("Bar_None")
    logits = {"infill": [], "fim": [], "continuation": [], "other_suffix": [], "end_anywhere": []}
    w = infill.SUFFIX_WEIGHT
    targets, pairs, cont_pairs, ended, spans = [], [], [], [], []
    lead = {"model": [], "true": [], "continuation": []}
    for i, piece in enumerate(pieces):
        music = np.asarray(piece.tokens, dtype=np.int64)
        starts = np.flatnonzero(music == bar)
        music = music[starts[0] : starts[0] + window] if len(starts) else music[:0]
        span = choose(music, bar, np.random.default_rng((cfg.seed, i)))
        if span is None:
            report.skipped["infill"] += 1
            continue
        at = np.flatnonzero(music == bar)
        a, n = span
        middle = music[at[a] : at[a + n]].tolist()
        room = window - 1 - 3 - len(middle) - 1
        if room < 16:
            report.skipped["infill"] += 1
            continue
        prefix, suffix = infill.fit_context(music[: at[a]].tolist(), music[at[a + n] :].tolist(), room, bar)
        cont = [vocab.bos_id, *prefix, *middle]
        m = len(middle)
        raw = _middle_logits(model, ids, suffix, n, prefix, middle)
        fim = forbid_early_end(raw, middle, n, t, ids.end)
        logits["continuation"].append(model.outputs_at(cont, range(len(cont) - m, len(cont))).logits)
        logits["fim"].append(fim)
        logits["infill"].append(infill.mix_readings(fim, logits["continuation"][-1], w, ids.end))
        logits["end_anywhere"].append(infill.mix_readings(raw, logits["continuation"][-1], w, ids.end))
        targets.append(np.asarray(middle, dtype=np.int64))
        spans.append((prefix, suffix, n, middle))
        mid = infill.generate_middle(
            model.session(), prefix, suffix, n_bars=n, temperature=0.0, seed=cfg.seed
        )
        cont_ids = model.generate([vocab.bos_id, *prefix], len(middle) + 64, temperature=0.0, n_bars=n + 1)
        pairs.append(([vocab.token(j) for j in mid.ids], [vocab.token(j) for j in middle]))
        cont_pairs.append(([vocab.token(j) for j in cont_ids], [vocab.token(j) for j in middle]))
        ended.append(mid.ended)
        first = _top_pitch(infill.middle_notes(t, suffix), last=False)
        for name, notes in (
            ("model", mid.notes),
            ("true", infill.middle_notes(t, middle)),
            ("continuation", infill.middle_notes(t, cont_ids)),
        ):
            last = _top_pitch(notes, last=True)
            if first is not None and last is not None:
                lead[name].append(abs(last - first))
    r = report.results
    r["infill.n"] = len(targets)
    r["infill.suffix_weight"] = w
    if not targets:
        for k in ("hits@1", "hits@5", "bleu2", "continuation.hits@1", "continuation.hits@5"):
            r[f"infill.{k}"] = math.nan
        return
    y = np.concatenate(targets)
    if len(spans) > 1:  # the next piece's suffix, cut like the true one: what the format gives without it
        for k, (prefix, suffix, n, middle) in enumerate(spans):
            other = _cut_like(spans[(k + 1) % len(spans)][1], len(suffix), bar)
            wrong = forbid_early_end(
                _middle_logits(model, ids, other, n, prefix, middle), middle, n, t, ids.end
            )
            logits["other_suffix"].append(infill.mix_readings(wrong, logits["continuation"][k], w, ids.end))
    tokens = [len(t) for t in targets]
    hits = {name: [_hits(x, t) for x, t in zip(v, targets)] for name, v in logits.items()}
    for name, key in (
        ("infill", "infill"),
        ("fim", "infill.fim"),
        ("continuation", "infill.continuation"),
        ("other_suffix", "infill.other_suffix"),
        ("end_anywhere", "infill.end_anywhere"),
    ):
        if hits[name]:
            r[f"{key}.hits@1"] = sum(hits[name]) / len(y)
    for name, key in (("infill", "infill"), ("continuation", "infill.continuation")):
        r[f"{key}.hits@5"] = metrics.hits_at_k(np.concatenate(logits[name]), y, 5)
    for key, base in (("gain", "continuation"), ("suffix_gain", "other_suffix")):
        if hits.get(base):
            gain, lo, hi = metrics.paired_gain(hits["infill"], hits[base], tokens, seed=cfg.seed)
            r[f"infill.{key}.hits@1"], r[f"infill.{key}.ci95"] = gain, [round(lo, 4), round(hi, 4)]
    r["infill.bleu2"] = metrics.corpus_bleu2(pairs)
    r["infill.continuation.bleu2"] = metrics.corpus_bleu2(cont_pairs)
    r["infill.ended"] = float(np.mean(ended))
    r["infill.tokens"] = int(len(y))
    for name, vals in lead.items():
        r[f"infill.lead.{name}"] = float(np.mean(vals)) if vals else math.nan
        r[f"infill.lead.{name}.n"] = len(vals)
