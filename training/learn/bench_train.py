"""CPU training throughput of a preset: the bare model step against the real training loop's step.

    python -m typemoe.training.learn.bench_train --data /work/data/M21 --data /work/data/SHIP --steps 6
    python -m typemoe.training.learn.bench_train --data shards/ --preset tiny --steps 3 --json out.json

Two measurements in one process, on the same model shapes:

  bare   forward + next-token loss + backward + AdamW on random (batch x seq_len) ids (default 8 x 512):
         the floor the loop cannot beat.
  loop   training/learn/stepper.py's Stepper on real shards, data included: sampling and augmentation
         (WindowSampler.next_step), the EMA teacher pass, the SS-MTP losses, backward, clipping, AdamW and
         the EMA update. One row per teacher_rows mode ("all" = the teacher on every row, as the older loop
         did; "unlabelled" = today's); the modes run alternately on the same batches (each with its own model and optimizer), so
         a change in machine load hits both alike. tokens/s counts real (unpadded) tokens.

Each row is the median over --steps timed steps after --warmup untimed ones. On a machine shared with
other work the absolute numbers move by tens of percent; the ratio between rows taken in the same run is
the number to quote.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

MODES = ("all", "unlabelled")  # Stepper.teacher_rows: the older loop's, today's


def _median_rate(tokens: list[int], seconds: list[float]) -> dict[str, float]:
    rates = [t / s for t, s in zip(tokens, seconds)]
    return {
        "tokens_per_s": statistics.median(rates),
        "step_s": statistics.median(seconds),
        "tokens_per_step": statistics.median(tokens),
    }


def bench_bare(model_cfg, type_of, *, batch: int, seq_len: int, steps: int, warmup: int) -> dict[str, Any]:
    """forward + LM loss + backward + AdamW on random ids: (batch, seq_len) tokens a step."""
    from typemoe.model import TypeMoE

    torch.manual_seed(0)
    model = TypeMoE(model_cfg, type_of).train()
    opt = torch.optim.AdamW(model.param_groups(0.1), lr=1e-4)
    times = []
    for i in range(warmup + steps):
        idx = torch.randint(0, model_cfg.vocab_size, (batch, seq_len))  # (B, T)
        t0 = time.perf_counter()
        out = model(idx)
        loss = F.cross_entropy(out.logits[:, :-1].reshape(-1, out.logits.size(-1)), idx[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return {"batch": batch, "seq_len": seq_len, **_median_rate([batch * seq_len] * len(times), times)}


def bench_loop(cfg, vocab, pieces, *, steps: int, warmup: int, modes=MODES) -> dict[str, Any]:
    """The real step per teacher_rows mode, alternating modes step by step on identical batches."""
    from typemoe.model import TypeMoE
    from typemoe.training.learn import loop
    from typemoe.training.learn.data import TokenOps, WindowSampler
    from typemoe.training.learn.stepper import Stepper

    torch.manual_seed(cfg.seed)
    base = TypeMoE(cfg.model, vocab.type_of).train()
    names = loop.term_names(cfg, base.cfg)
    ops = TokenOps(vocab)
    runs = {}
    for mode in modes:
        model = copy.deepcopy(base)
        ema = copy.deepcopy(model).eval().requires_grad_(False) if "semi" in names else None
        opt = torch.optim.AdamW(model.param_groups(cfg.optim.weight_decay), lr=cfg.optim.lr)
        stepper = Stepper(
            cfg, model=model, ddp_model=model, ema=ema, opt=opt, names=names, cls_task=None, ops=ops,
            device=torch.device("cpu"), teacher_rows=mode,
        )  # fmt: skip
        runs[mode] = (stepper, WindowSampler(pieces, vocab, cfg))
    rec = {m: {"tokens": [], "padded": [], "seconds": [], "data_s": []} for m in modes}
    for i in range(warmup + steps):
        for mode in modes:
            stepper, sampler = runs[mode]
            torch.manual_seed(loop._step_seed(cfg.seed, i, 0))
            t0 = time.perf_counter()
            batches = sampler.next_step()
            t1 = time.perf_counter()
            stepper(batches, i)
            t2 = time.perf_counter()
            if i >= warmup:
                r = rec[mode]
                r["tokens"].append(sum(b.n_tokens for b in batches))
                r["padded"].append(sum(b.idx.numel() for b in batches))
                r["seconds"].append(t2 - t0)
                r["data_s"].append(t1 - t0)
    out = {}
    for mode, r in rec.items():
        out[mode] = {
            **_median_rate(r["tokens"], r["seconds"]),
            "data_s": statistics.median(r["data_s"]),
            "pad_fraction": 1 - sum(r["tokens"]) / max(sum(r["padded"]), 1),
        }
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from typemoe.training.learn.data import keep_label_fraction, load_pieces
    from typemoe.training.learn.presets import PRESETS
    from typemoe.vocab import TypedVocab

    if args.threads:
        torch.set_num_threads(args.threads)
    vocab = TypedVocab.default()
    cfg = PRESETS[args.preset](vocab)
    res: dict[str, Any] = {
        "preset": args.preset,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "steps": args.steps,
        "warmup": args.warmup,
    }
    res["bare"] = bench_bare(
        cfg.model, vocab.type_of, batch=args.bare_batch, seq_len=args.bare_seq_len, steps=args.steps,
        warmup=args.warmup,
    )  # fmt: skip
    if args.data:
        pieces = load_pieces(args.data, vocab).with_split("train")
        pieces = keep_label_fraction(pieces, cfg.labelled_fraction)
        res["loop"] = bench_loop(cfg, vocab, pieces, steps=args.steps, warmup=args.warmup)
        res["loop_batch"] = {
            "batch_size": cfg.batch_size,
            "micro_batch": cfg.micro_batch,
            "seq_len": cfg.seq_len,
        }
        old, new = res["loop"]["all"]["tokens_per_s"], res["loop"]["unlabelled"]["tokens_per_s"]
        res["speedup_new_over_old"] = new / old
    return res


def format_result(res: dict[str, Any]) -> str:
    b = res["bare"]
    lines = [
        f"preset {res['preset']} | {res['threads']} threads | torch {res['torch']} | median of {res['steps']} steps",
        f"bare  {b['batch']}x{b['seq_len']} random ids: {b['tokens_per_s']:8.0f} tok/s ({b['step_s']:.2f} s a step)",
    ]
    for mode, r in res.get("loop", {}).items():
        lines.append(
            f"loop  teacher_rows={mode:<10} {r['tokens_per_s']:8.0f} tok/s ({r['step_s']:.2f} s a step, "
            f"data {r['data_s'] * 1000:.0f} ms, {r['tokens_per_step']:.0f} real tokens, pad {r['pad_fraction']:.0%})"
        )
    if "speedup_new_over_old" in res:
        lines.append(f"loop new/old: {res['speedup_new_over_old']:.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from typemoe.training.learn.presets import PRESETS

    p = argparse.ArgumentParser(
        prog="python -m typemoe.training.learn.bench_train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--data", type=Path, action="append", default=[], metavar="DIR", help="token shard directory"
    )
    p.add_argument("--preset", default="small", choices=sorted(PRESETS))
    p.add_argument("--steps", type=int, default=5, help="timed steps per row")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--bare-batch", type=int, default=8)
    p.add_argument("--bare-seq-len", type=int, default=512)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        p.error(f"need --steps >= 1 and --warmup >= 0, got {args.steps}, {args.warmup}")
    res = run(args)
    print(format_result(res))
    if args.json is not None:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
