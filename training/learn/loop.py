"""The training loop shared by pre-training and fine-tuning (nanoGPT's train.py, as a function).

Each optimizer step is training/learn/stepper.py's Stepper (batch_size windows over all ranks); around it
this module sets the LR schedule and the per-step seeds, builds the model, EMA, optimizer and sampler,
resumes, validates and saves. Rank 0 prints the progress line, appends DIR/metrics.jsonl, writes
TensorBoard scalars and checkpoints; validation runs sharded on all ranks.

metrics.jsonl, one object per logged step:
    step, loss, lm, key, meter, semi, consistency, aux (switch), cls (fine-tuning): train losses (mean over
    the step's global batch; "loss" is the weighted sum that was optimized), lr, tokens_per_s,
    elapsed_s; on validation steps also val_lm, val_key_acc, val_meter_acc (held-out pieces, one
    unaugmented window each, heads read at the window's last position) and val_cls_acc when fine-tuning.

Resume is exact: the data stream, the per-step torch seed and the LR are functions of the step, and the
checkpoint holds weights, EMA and optimizer state. Lines of metrics.jsonl after the resumed step are
dropped, so the file reads as if the run had never stopped.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from typemoe import analysis
from typemoe.checkpoint import CheckpointError
from typemoe.model import TypeMoE
from typemoe.training.learn import ckpt, losses
from typemoe.training.learn.config import OFF_WHEN_ABSENT, TrainConfig
from typemoe.training.learn.data import Pieces, TokenOps, WindowSampler, eval_batches
from typemoe.training.learn.dist import Dist, all_sum, barrier
from typemoe.training.learn.prefetch import Prefetcher
from typemoe.training.learn.stepper import Stepper, cpu_autocast, cuda_autocast, loss_weights
from typemoe.vocab import INFILL_TOKENS

# config fields that may change on --resume: bookkeeping, and max_steps (to extend or shorten a run; the
# cosine schedule then follows the new length, so that run is no longer identical to an uninterrupted one)
RESUMABLE_CHANGES = {"log_every", "eval_every", "eval_pieces", "ckpt_every", "device", "threads", "max_steps"}
# deadline (training/learn/gpu_recipe.py): steps FIT_SKIP+1 .. FIT_SKIP+FIT_STEPS are timed to fit max_steps to the budget
FIT_SKIP, FIT_STEPS = 2, 8


def freeze_all_but_rows(model: TypeMoE, ids: list[int]) -> list[int]:
    """Of all the weights, only rows `ids` of the (tied) embedding learn. A hook zeroes every other row's
    gradient, and the embedding has no weight decay (param_groups), so AdamW leaves those rows, and every
    weight outside the embedding, exactly as they were. Returns `ids`."""
    model.requires_grad_(False)
    w = model.wte.weight
    w.requires_grad_(True)
    keep = torch.zeros(w.shape[0], 1, dtype=w.dtype, device=w.device)
    keep[ids] = 1.0
    w.register_hook(lambda g: g * keep)
    return ids


def freeze_all_but_controls(model: TypeMoE, vocab) -> list[int]:
    """cfg.controls_only: only the control tokens' rows of the embedding learn (freeze_all_but_rows)."""
    known = set(vocab.tokens)
    ids = [vocab.id(t) for kind in analysis.CONTROLS for t in kind.tokens() if t in known]
    return freeze_all_but_rows(model, ids)


def freeze_all_but_infill(model: TypeMoE, vocab) -> list[int]:
    """cfg.infill_only: only the infilling tokens' rows of the embedding learn (freeze_all_but_rows)."""
    return freeze_all_but_rows(model, [vocab.id(t) for t in INFILL_TOKENS])


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to min_lr at max_steps."""
    o = cfg.optim
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    span = max(cfg.max_steps - o.warmup_steps, 1)
    t = min(1.0, (step - o.warmup_steps) / span)
    return o.min_lr + 0.5 * (o.lr - o.min_lr) * (1 + math.cos(math.pi * t))


def term_names(cfg: TrainConfig, model_cfg) -> tuple[str, ...]:
    """The loss terms this run optimizes."""
    if cfg.task in ("genre", "emotion", "composer"):
        names = ("cls",) + (("lm",) if cfg.loss.lm > 0 else ())
    elif cfg.objective == "clm" or cfg.task == "conditional":
        names = ("lm",)
    else:
        names = ("lm", "key", "meter")
        if cfg.labelled_fraction < 1.0 or cfg.loss.semi > 0 or cfg.loss.consistency > 0:
            names += ("semi", "consistency")
    if model_cfg.ffn == "switch":
        names += ("aux",)
    return names


def _step_seed(seed: int, step: int, rank: int) -> int:
    return int(np.random.SeedSequence((seed, step, rank)).generate_state(1)[0])


def _diff_config(saved: dict, now: dict, prefix: str = "") -> list[str]:
    """The differences between two TrainConfig dicts that forbid a resume. A field of OFF_WHEN_ABSENT counts
    as absent while off, whichever way a run saved it (before the field existed, or after)."""
    if not prefix:
        saved, now = (
            {k: v for k, v in d.items() if not (k in OFF_WHEN_ABSENT and v == OFF_WHEN_ABSENT[k])}
            for d in (saved, now)
        )
    out = []
    for k in sorted(set(saved) | set(now)):
        a, b = saved.get(k), now.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff_config(a, b, f"{prefix}{k}.")
        elif a != b and k not in RESUMABLE_CHANGES:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def _fmt_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    m = int(seconds // 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m" if m else f"{int(seconds)}s"


def progress_line(rec: dict[str, Any], names: tuple[str, ...], eta_s: float) -> str:
    """`step 01200 | loss 2.314 | lm 2.100 | key 0.710 | ... | lr 3.0e-04 | 41.2k tok/s | eta 12m`."""
    parts = [f"step {rec['step']:05d}", f"loss {rec['loss']:.3f}"]
    parts += [f"{n} {rec[n]:.3f}" for n in names if n in rec]
    parts += [f"lr {rec['lr']:.1e}", f"{rec['tokens_per_s'] / 1000:.1f}k tok/s", f"eta {_fmt_eta(eta_s)}"]
    if "val_lm" in rec:
        parts.append(f"val_lm {rec['val_lm']:.3f}")
        for k in ("val_key_acc", "val_meter_acc", "val_cls_acc"):
            if k in rec:
                parts.append(f"{k[4:]} {rec[k]:.2f}")
    return " | ".join(parts)


@torch.no_grad()
def evaluate(model: TypeMoE, batches, device, autocast, cls_task: str | None) -> dict[str, float]:
    """Held-out LM loss and whole-window head accuracies, summed over ranks."""
    model.eval()
    s = torch.zeros(6, dtype=torch.float64)  # lm_sum, lm_n, key_ok, key_n, meter_ok, meter_n
    cls = torch.zeros(2, dtype=torch.float64)  # cls_ok, cls_n
    for b in batches:
        b = b.to(device)
        with autocast():
            out = model(b.idx, valid_mask=b.valid)
        rows = torch.arange(b.idx.size(0), device=device)
        s[0] += float(losses._ce_sum(out.logits, b.targets))
        s[1] += float((b.targets >= 0).sum())
        for j, (task, logits) in enumerate((("key", out.key_logits), ("meter", out.meter_logits))):
            lab = b.labels[task]
            pred = logits[rows, b.last].argmax(-1)  # (B,) the whole-window view
            s[2 + 2 * j] += float(((pred == lab) & (lab >= 0)).sum())
            s[3 + 2 * j] += float((lab >= 0).sum())
        if cls_task is not None and out.cls_logits is not None:
            lab = b.labels[cls_task]
            cls[0] += float(((out.cls_logits.argmax(-1) == lab) & (lab >= 0)).sum())
            cls[1] += float((lab >= 0).sum())
    s = all_sum(s)
    cls = all_sum(cls)
    model.train()
    r = {"val_lm": float(s[0] / max(s[1], 1))}
    if s[3] > 0:
        r["val_key_acc"] = float(s[2] / s[3])
    if s[5] > 0:
        r["val_meter_acc"] = float(s[4] / s[5])
    if cls[1] > 0:
        r["val_cls_acc"] = float(cls[0] / cls[1])
    return r


def _tensorboard(out_dir: Path, start: int, echo: Callable[[str], None]):
    """A SummaryWriter in out_dir/tb, or None where tensorboard is not installed (metrics.jsonl has it all)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:  # e.g. a bare GPU image; the recipe must not need pip installs
        echo(f"note: no TensorBoard scalars ({err}); metrics.jsonl has every value")
        return None
    return SummaryWriter(str(out_dir / "tb"), purge_step=start if start else None)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop lines logged after `step` (a killed run logged past its last checkpoint)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (json.JSONDecodeError, KeyError):  # a line cut by the kill
            continue
    path.write_text("".join(k + "\n" for k in keep))


def train(
    cfg: TrainConfig,
    *,
    vocab,
    train_pieces: Pieces,
    val_pieces: Pieces | None,
    out_dir: Path,
    d: Dist,
    model: TypeMoE | None = None,
    meta: dict[str, Any] | None = None,
    resume: bool = False,
    echo: Callable[[str], None] = lambda s: None,
    teacher_rows: str = "unlabelled",
    deadline: float | None = None,
    data_workers: int = 0,
) -> list[dict[str, Any]]:
    """Run (or continue) training to cfg.max_steps; returns this process's metric records (rank 0).

    Args:
        model: a model to start from (fine-tuning); None builds a fresh one from cfg.model.
        meta: saved into every checkpoint's config.json meta (label sets, task, data).
        resume: continue from out_dir/latest when it exists. Without it an existing checkpoint is an error.
        teacher_rows: which rows the EMA teacher reads (see Stepper); "all" is the pre-issue-15 path.
        deadline: a time.time() to stop at (the GPU recipe's budget): steps FIT_SKIP+1 .. FIT_SKIP+FIT_STEPS
            are timed and max_steps is cut to what fits before it (the LR schedule follows); a run still
            going at the deadline stops there, with its final validation and checkpoint.
        data_workers: processes that build the next steps' windows while this one trains (a GPU waits for
            them otherwise); 0 builds them in this process. The batches are the same either way.
    """
    out_dir = Path(out_dir)
    device = d.device
    torch.manual_seed(cfg.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    if model is None:
        model = TypeMoE(cfg.model, vocab.type_of)
    model.to(device).train()
    if cfg.head_only:  # only the classification head learns; the trunk and the other heads stay as they are
        model.requires_grad_(False)
        model.cls_head.requires_grad_(True)
    if cfg.controls_only:
        freeze_all_but_controls(model, vocab)
    if cfg.infill_only:
        freeze_all_but_infill(model, vocab)
    names = term_names(cfg, model.cfg)
    cls_task = cfg.task if "cls" in names else None
    ema = None
    if "semi" in names or "consistency" in names:
        ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(
        model.param_groups(cfg.optim.weight_decay),
        lr=cfg.optim.lr,
        betas=(cfg.optim.beta1, cfg.optim.beta2),
        fused=device.type == "cuda",
    )
    sampler = WindowSampler(train_pieces, vocab, cfg, rank=d.rank, world=d.world)
    ops = TokenOps(vocab)
    start = 0
    metrics_path = out_dir / "metrics.jsonl"
    if ckpt.has_checkpoint(out_dir):
        if not resume:
            raise ValueError(
                f"{out_dir} already holds a checkpoint; pass --resume to continue it, or choose another --out"
            )
        ck = ckpt.resolve(out_dir)
        saved = ckpt.read_state(ck)
        diff = _diff_config(saved.get("config", {}), cfg.to_dict())
        if diff:
            raise ValueError(f"cannot --resume {ck}: the configuration changed: " + "; ".join(diff))
        if saved.get("config", {}).get("max_steps", cfg.max_steps) != cfg.max_steps:
            echo(
                f"note: max_steps {saved['config']['max_steps']} -> {cfg.max_steps}; the LR schedule follows"
            )
        state = ckpt.load_training(ck, model=model, ema=ema, optimizer=opt, device=device)
        sampler.load_state(state["sampler"])
        start = int(state["step"])
        if d.master:
            _truncate_metrics(metrics_path, start)
        echo(f"resumed from {ck} at step {start}")
    elif resume:
        echo(f"--resume: no checkpoint in {out_dir} yet, starting from step 0")
    barrier()

    ddp_model = (
        DDP(model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
        if d.ddp
        else model
    )
    autocast = cuda_autocast if device.type == "cuda" else cpu_autocast
    val = (
        eval_batches(val_pieces, vocab, cfg, rank=d.rank, world=d.world)
        if val_pieces is not None and len(val_pieces)
        else None
    )
    writer = None
    if d.master:
        out_dir.mkdir(parents=True, exist_ok=True)
        writer = _tensorboard(out_dir, start, echo)
    save_meta = {
        "task": cfg.task,
        "objective": cfg.objective,
        "key_names": list(analysis.KEYS),
        "meter_names": list(analysis.METERS),
        **(meta or {}),
    }
    w = loss_weights(cfg)
    stepper = Stepper(
        cfg,
        model=model,
        ddp_model=ddp_model,
        ema=ema,
        opt=opt,
        names=names,
        cls_task=cls_task,
        ops=ops,
        device=device,
        autocast=autocast,
        world=d.world,
        ddp=d.ddp,
        teacher_rows=teacher_rows,
    )

    def save(step: int) -> None:
        if d.master:
            ckpt.save(
                out_dir,
                model=model,
                vocab=vocab,
                meta={**save_meta, "step": step},
                ema=ema,
                optimizer=opt,
                state={
                    "step": step,
                    "sampler": sampler.state.to_dict(),
                    "config": cfg.to_dict(),
                    "world": d.world,
                },
            )
        barrier()

    # after a resume's load_state: the workers build windows from the sampler's step on (daemonic: an
    # exception that ends the process ends them too)
    data = Prefetcher(sampler, data_workers) if data_workers > 0 else sampler
    records: list[dict[str, Any]] = []
    t_start, t_last, tokens_since, steps_timed = time.time(), time.time(), 0, 0
    step_time = float("nan")
    t_fit = t_start
    step = start - 1
    while step + 1 < cfg.max_steps:
        step += 1
        torch.manual_seed(_step_seed(cfg.seed, step, d.rank))  # dropout: the step is the RNG state
        lr = lr_at(step, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        batches = data.next_step()
        sums, counts, ramp = stepper(batches, step)
        done = step + 1
        if deadline is not None:
            now = time.time()
            if done == start + FIT_SKIP:
                t_fit = now  # the first steps pay for allocator and kernel warm-up: not timed
            elif done == start + FIT_SKIP + FIT_STEPS or now >= deadline:
                per_step = (now - t_fit) / max(done - start - FIT_SKIP, 1)
                fitted = done + max(int((deadline - now) / per_step), 0) if now < deadline else done
                if fitted < cfg.max_steps:
                    cfg = replace(
                        cfg, max_steps=fitted
                    )  # resumable (RESUMABLE_CHANGES): the schedule follows
                    echo(f"budget: {per_step:.3f} s a step, max_steps -> {fitted}")
                    if fitted < cfg.optim.warmup_steps:
                        echo(
                            f"note: the budget ends inside the {cfg.optim.warmup_steps}-step warmup; the LR "
                            "never reaches its peak (pass --warmup-steps to shorten it)"
                        )
        tokens_since += int(counts[-1])
        is_log = done % cfg.log_every == 0 or done == cfg.max_steps or done == 1
        is_eval = val is not None and (done % cfg.eval_every == 0 or done == cfg.max_steps)
        if is_log or is_eval:
            sums = all_sum(sums)
            now = time.time()
            steps_timed += 1
            rate = tokens_since / max(now - t_last, 1e-9)
            step_time = (now - t_start) / (done - start)
            t_last, tokens_since = now, 0
            rec: dict[str, Any] = {"step": done}
            vals = {n: float(sums[i] / max(float(counts[i]), 1.0)) for i, n in enumerate(names)}
            rec["loss"] = sum(
                w[n] * (ramp if n in ("semi", "consistency") else 1.0) * v for n, v in vals.items()
            )
            rec.update(vals)
            rec.update(lr=lr, tokens_per_s=rate, elapsed_s=now - t_start)
            if is_eval:
                rec.update(evaluate(model, val, device, autocast, cls_task))
            if d.master:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                for k, v in rec.items():
                    if k != "step" and writer is not None:
                        writer.add_scalar(("val/" if k.startswith("val_") else "train/") + k, v, done)
                echo(progress_line(rec, names, step_time * (cfg.max_steps - done)))
            records.append(rec)
        if done % cfg.ckpt_every == 0 or done == cfg.max_steps:
            save(done)
    if data is not sampler:
        data.close()
    if start >= cfg.max_steps and not ckpt.has_checkpoint(out_dir):
        save(start)
    if writer is not None:
        writer.close()
    return records


def check_resume_target(out_dir: Path, resume: bool) -> None:
    """Early, data-free version of train()'s checkpoint checks (so errors come before loading shards)."""
    if ckpt.has_checkpoint(out_dir) and not resume:
        raise ValueError(
            f"{out_dir} already holds a checkpoint; pass --resume to continue it, or choose another --out"
        )
    if resume and ckpt.has_checkpoint(out_dir):
        try:
            ckpt.read_state(ckpt.resolve(out_dir))
        except CheckpointError as err:
            raise ValueError(str(err)) from err
