"""The SS-MTP objective: language modelling + key and meter recognition + semi-supervised terms.

Every term is a sum, not a mean, and `term_counts` gives its denominator from the batch alone (no forward
needed): the training loop adds the counts over all micro-batches and ranks of a step first, and
divides each sum by that global count. So a step's loss is
the same number whether it runs on 1 rank with 4 micro-batches or on 4 ranks with 1, and a term with no
labelled positions in the whole step is exactly 0 with exactly zero gradient for its head.

Terms, per window (training/learn/data.py builds the windows):
  lm           next-token cross-entropy on every real token (never on pads, BOS or control tokens).
  key, meter   cross-entropy of the per-position heads on labelled pieces, at every position from the
               2nd Bar token on (`head` mask): the streaming estimate is trained to be right early,
               after one 4-beat group, and keeps being trained as the window grows.
  semi         pseudo-labels for pieces without that label. The teacher is an EMA of the student
               (Mean Teacher, Tarvainen & Valpola 2017). It reads the untransposed window; its
               prediction at the window's LAST position (the whole-window view, the most informed one)
               becomes a hard label for every head position of the student, if its probability is at
               least `pseudo_threshold` (FixMatch, Sohn et al. 2020). For the key, the label is moved by
               the student's transposition. Rows below the threshold count in the denominator but add
               nothing (FixMatch's convention: the term fades when the teacher is unsure).
  consistency  transposition equivariance of the key head on unlabelled pieces: at each head position
               the student, reading the window transposed by k, must match the teacher's distribution on
               the original window rolled by k semitones (KL(teacher_shifted || student)).
  aux          the Switch baseline's load-balancing loss (ffn="switch" only), mean over micro-batches.
  cls          sequence classification (fine-tuning), on rows with a class label.

Why an EMA teacher and not the student itself: the student's own whole-window prediction is free but
confirms its own mistakes; the EMA averages over ~1/(1-decay) steps, is steadier, and costs one
no-grad forward on the unlabelled rows only.

Dimensions: B batch, T time, V vocab, K keys (24), M meters, C classes
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from typemoe.training.learn.data import Batch


def _ce_sum(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy; target -1 = ignore. An all-ignored target gives 0 with zero gradient."""
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(), target.reshape(-1), ignore_index=-1, reduction="sum"
    )


def head_sum(logits: torch.Tensor, labels: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    """Per-position head CE on rows with a label: logits (B, T, K), labels (B,), head (B, T) bool."""
    mask = head & (labels >= 0).unsqueeze(1)  # (B, T)
    target = torch.where(mask, labels.unsqueeze(1).expand_as(mask), -1)  # (B, T)
    return _ce_sum(logits, target)


def shift_keys(probs: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Move key distributions up by shift[b] semitones, mode kept: (B, T, 24), (B,) -> (B, T, 24).

    Class j = tonic + 12 * minor; the shifted distribution at j is the original at ((j % 12) - k) % 12 +
    12 * (j // 12).
    """
    j = torch.arange(probs.size(-1), device=probs.device)  # (K,)
    src = ((j % 12).unsqueeze(0) - shift.unsqueeze(1)) % 12 + 12 * (j // 12).unsqueeze(0)  # (B, K)
    return torch.gather(probs, -1, src.unsqueeze(1).expand_as(probs))  # (B, T, K)


def pseudo_sum(
    logits: torch.Tensor, teacher_last: torch.Tensor, rows: torch.Tensor, head: torch.Tensor, threshold: float
) -> torch.Tensor:
    """Hard pseudo-labels from the teacher's whole-window view.

    logits (B, T, K) student; teacher_last (B, K) teacher probabilities at the last position (already
    shifted for keys); rows (B,) bool, the unlabelled rows.
    """
    conf, label = teacher_last.max(-1)  # (B,), (B,)
    mask = head & (rows & (conf >= threshold)).unsqueeze(1)  # (B, T)
    target = torch.where(mask, label.unsqueeze(1).expand_as(mask), -1)  # (B, T)
    return _ce_sum(logits, target)


def consistency_sum(
    logits: torch.Tensor, teacher: torch.Tensor, rows: torch.Tensor, head: torch.Tensor
) -> torch.Tensor:
    """KL(teacher || student) summed over head positions of `rows`: logits, teacher probs (B, T, K)."""
    mask = (head & rows.unsqueeze(1)).float()  # (B, T)
    logp = F.log_softmax(logits.float(), dim=-1)  # (B, T, K)
    q = teacher.float()
    kl = (q * (q.clamp_min(1e-8).log() - logp)).sum(-1)  # (B, T)
    return (kl * mask).sum()


def teacher_targets(
    key_logits: torch.Tensor, meter_logits: torch.Tensor, batch: Batch
) -> dict[str, torch.Tensor]:
    """Soft targets from the teacher's outputs on the untransposed batch, moved to the student's keys."""
    key_p = shift_keys(key_logits.float().softmax(-1), batch.shift)  # (B, T, K)
    meter_p = meter_logits.float().softmax(-1)  # (B, T, M)
    rows = torch.arange(key_p.size(0), device=key_p.device)
    return {"key": key_p, "key_last": key_p[rows, batch.last], "meter_last": meter_p[rows, batch.last]}


def scatter_teacher(
    sub: dict[str, torch.Tensor], rows: torch.Tensor, shape: tuple[int, int]
) -> dict[str, torch.Tensor]:
    """Teacher targets of R selected rows (cut to T' <= T positions) placed into a full (B, T) batch.

    The other rows and positions get zeros, which no term reads: pseudo_sum and consistency_sum are
    masked to unlabelled rows at head positions, and head positions end at each row's last real token.
    """
    B, T = shape
    key = sub["key"].new_zeros(B, T, sub["key"].size(-1))  # (B, T, K)
    key[rows, : sub["key"].size(1)] = sub["key"]  # (R, T', K) into (B, T, K)
    out = {"key": key}
    for name in ("key_last", "meter_last"):
        full = sub[name].new_zeros(B, sub[name].size(-1))  # (B, K | M)
        full[rows] = sub[name]
        out[name] = full
    return out


def untranspose(batch: Batch, pitch_lo: int, pitch_hi: int) -> torch.Tensor:
    """The batch's input ids before transposition: (B, T) -> (B, T)."""
    idx = batch.idx
    is_pitch = (idx >= pitch_lo) & (idx <= pitch_hi)
    return torch.where(is_pitch, idx - batch.shift.unsqueeze(1), idx)


def unlabelled_rows(batch: Batch) -> torch.Tensor:
    """(B,) bool: rows missing the key or the meter label, the ones the teacher must read."""
    return (batch.labels["key"] < 0) | (batch.labels["meter"] < 0)


def term_counts(batch: Batch, names: tuple[str, ...], cls_task: str | None = None) -> dict[str, float]:
    """The denominator of every term, from the batch alone (so it is known before any forward)."""
    head = batch.head
    n: dict[str, float] = {}
    if "lm" in names:
        n["lm"] = float((batch.targets >= 0).sum())
    for t in ("key", "meter"):
        if t in names:
            n[t] = float((head & (batch.labels[t] >= 0).unsqueeze(1)).sum())
    if "semi" in names:
        n["semi"] = sum(float((head & (batch.labels[t] < 0).unsqueeze(1)).sum()) for t in ("key", "meter"))
    if "consistency" in names:
        n["consistency"] = float((head & (batch.labels["key"] < 0).unsqueeze(1)).sum())
    if "aux" in names:
        n["aux"] = 1.0  # the balance loss is a per-micro-batch mean: average it over micro-batches
    if "cls" in names:
        n["cls"] = float((batch.labels[cls_task] >= 0).sum())
    return n


def term_sums(
    out,
    batch: Batch,
    names: tuple[str, ...],
    *,
    threshold: float = 0.9,
    teacher: dict[str, torch.Tensor] | None = None,
    cls_task: str | None = None,
) -> dict[str, torch.Tensor]:
    """Summed loss of every requested term for one micro-batch; see the module docstring."""
    s: dict[str, torch.Tensor] = {}
    if "lm" in names:
        s["lm"] = _ce_sum(out.logits, batch.targets)  # (B, T, V) vs (B, T)
    if "key" in names:
        s["key"] = head_sum(out.key_logits, batch.labels["key"], batch.head)
    if "meter" in names:
        s["meter"] = head_sum(out.meter_logits, batch.labels["meter"], batch.head)
    if "semi" in names or "consistency" in names:
        key, meter = batch.labels["key"], batch.labels["meter"]
        zero = out.key_logits.sum() * 0.0  # keeps the graph (and DDP's bookkeeping) the same in every step
        if teacher is None:  # no unlabelled row in this micro-batch
            s["semi"], s["consistency"] = zero, zero
        else:
            s["semi"] = pseudo_sum(
                out.key_logits, teacher["key_last"], key < 0, batch.head, threshold
            ) + pseudo_sum(out.meter_logits, teacher["meter_last"], meter < 0, batch.head, threshold)
            s["consistency"] = consistency_sum(out.key_logits, teacher["key"], key < 0, batch.head)
    if "aux" in names:
        s["aux"] = out.aux.balance
    if "cls" in names:
        s["cls"] = _ce_sum(out.cls_logits, batch.labels[cls_task])  # (B, C) vs (B,)
    return s
