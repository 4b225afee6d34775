"""One optimizer step of training/learn/loop.py on one rank: the Stepper, its loss weights and autocasts.

One optimizer step = batch_size windows over all ranks: each rank runs its micro-batches with gradient
accumulation (DDP syncs on the last), every loss term is divided by its global count (training/learn/losses.py),
then clip, AdamW, EMA update. The autocast contexts (bf16 on CUDA, none on CPU) are the ones the loop's
validation uses too.
"""

from __future__ import annotations

import contextlib

import torch

from typemoe.training.learn import losses
from typemoe.training.learn.config import TrainConfig
from typemoe.training.learn.data import Batch, TokenOps
from typemoe.training.learn.dist import all_sum


def loss_weights(cfg: TrainConfig) -> dict[str, float]:
    """Term name -> weight of the objective (before the semi-supervised ramp)."""
    o = cfg.loss
    return {
        "lm": o.lm,
        "key": o.key,
        "meter": o.meter,
        "semi": o.semi,
        "consistency": o.consistency,
        "aux": o.aux,
        "cls": o.cls,
    }


def cpu_autocast():
    return contextlib.nullcontext()


def cuda_autocast():
    return torch.autocast("cuda", dtype=torch.bfloat16)


class Stepper:
    """One optimizer step on one rank's micro-batches: counts, teacher, forward/backward, clip, AdamW, EMA.

    loop.train() calls it once per step and training/learn/bench_train.py times it. teacher_rows picks how much of a
    micro-batch the EMA teacher reads (the only term that reads it, semi + consistency, is masked to the
    unlabelled rows, so both give the same loss up to float rounding):
      "unlabelled"  only the rows missing a key or meter label, cut to their longest window (default);
      "all"         the whole padded micro-batch, as the older loop did (kept for the benchmark).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        model,
        ddp_model,
        ema,
        opt,
        names,
        cls_task,
        ops: TokenOps,
        device,
        autocast=cpu_autocast,
        world: int = 1,
        ddp: bool = False,
        teacher_rows: str = "unlabelled",
    ):
        if teacher_rows not in ("unlabelled", "all"):
            raise ValueError(f"teacher_rows must be 'unlabelled' or 'all', got {teacher_rows!r}")
        self.cfg, self.model, self.ddp_model, self.ema, self.opt = cfg, model, ddp_model, ema, opt
        self.names, self.cls_task, self.ops, self.device = names, cls_task, ops, device
        self.autocast, self.world, self.ddp, self.teacher_rows = autocast, world, ddp, teacher_rows
        self.w = loss_weights(cfg)

    def teacher(self, b: Batch) -> dict[str, torch.Tensor] | None:
        """The EMA teacher's soft targets for micro-batch b (None when every row is labelled)."""
        rows = losses.unlabelled_rows(b)  # (B,)
        if not bool(rows.any()):
            return None
        idx = losses.untranspose(b, self.ops.pitch_lo, self.ops.pitch_hi)  # (B, T)
        if self.teacher_rows == "all":
            with torch.no_grad(), self.autocast():
                t_out = self.ema(idx)
            return losses.teacher_targets(t_out.key_logits, t_out.meter_logits, b)
        sel = rows.nonzero().squeeze(1)  # (R,) the unlabelled rows
        t_len = int(b.last[sel].max()) + 1  # causal: cutting the pads after the longest row changes nothing
        with torch.no_grad(), self.autocast():
            t_out = self.ema(idx[sel, :t_len])  # (R, t_len) -> heads (R, t_len, K | M)
        sub = losses.teacher_targets(
            t_out.key_logits,
            t_out.meter_logits,
            Batch(
                idx=idx[sel, :t_len],
                targets=b.targets[sel, :t_len],
                valid=b.valid[sel, :t_len],
                head=b.head[sel, :t_len],
                last=b.last[sel],
                shift=b.shift[sel],
            ),
        )
        return losses.scatter_teacher(sub, sel, b.idx.shape)

    def __call__(self, batches: list[Batch], step: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Run step `step` on this rank's micro-batches; returns (term sums (N,), counts (N + 1,), ramp).

        counts are summed over ranks (the last entry is real tokens); sums are this rank's.
        """
        cfg, names = self.cfg, self.names
        counts = torch.zeros(len(names) + 1, dtype=torch.float64)
        for b in batches:
            c = losses.term_counts(b, names, self.cls_task)
            counts[:-1] += torch.tensor([c[n] for n in names], dtype=torch.float64)
            counts[-1] += b.n_tokens
        counts = all_sum(counts)
        ramp = min(1.0, (step + 1) / cfg.loss.semi_rampup) if cfg.loss.semi_rampup else 1.0
        scale = {
            n: self.w[n]
            * (ramp if n in ("semi", "consistency") else 1.0)
            * self.world
            / max(float(counts[i]), 1.0)
            for i, n in enumerate(names)
        }
        sums = torch.zeros(len(names), dtype=torch.float64)
        for m, b in enumerate(batches):
            b = b.to(self.device)
            teacher = self.teacher(b) if self.ema is not None else None
            last = m == len(batches) - 1
            sync = contextlib.nullcontext() if (last or not self.ddp) else self.ddp_model.no_sync()
            with sync:
                with self.autocast():
                    out = self.ddp_model(b.idx, valid_mask=b.valid)
                s = losses.term_sums(
                    out,
                    b,
                    names,
                    threshold=cfg.loss.pseudo_threshold,
                    teacher=teacher,
                    cls_task=self.cls_task,
                )
                loss = sum(scale[n] * s[n] for n in names)
                loss.backward()
            sums += torch.tensor([float(s[n].detach()) for n in names], dtype=torch.float64)
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.ema is not None:
            with torch.no_grad():
                torch._foreach_lerp_(
                    list(self.ema.parameters()), list(self.model.parameters()), 1.0 - cfg.loss.ema_decay
                )
        return sums, counts, ramp
