"""SS-MTP pre-training: the run behind `typemoe train` and `python -m typemoe.training.learn.pretrain`.

Its flags and help text live in training/learn/cli.py (torch-free, so that `--help` works without torch).
Every bad input is reported before the first step: an unknown preset or bad value, a shard directory
built with another tokenizer, an empty training split, an --out that already holds a run (without
--resume), or a --resume whose configuration differs from the saved one.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import replace

from typemoe.training.learn import ckpt, cli, dist, loop
from typemoe.training.learn.data import keep_label_fraction, load_pieces
from typemoe.training.learn.presets import PRESETS


def apply_overrides(cfg, args):
    """The preset with the command line's explicit values on top (None = keep the preset's)."""
    top = {
        "max_steps": args.max_steps,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "micro_batch": args.micro_batch,
        "seq_len": args.seq_len,
        "log_every": args.log_every,
        "eval_every": args.eval_every,
        "ckpt_every": args.ckpt_every,
    }
    kw = {k: v for k, v in top.items() if v is not None}
    kw.update(device=args.device, threads=args.threads)
    if args.micro_batch is not None and args.batch_size is None:
        kw["batch_size"] = max(cfg.batch_size // args.micro_batch, 1) * args.micro_batch
    optim = {k: v for k, v in {"lr": args.lr, "warmup_steps": args.warmup_steps}.items() if v is not None}
    if "lr" in optim:
        optim["min_lr"] = min(cfg.optim.min_lr, optim["lr"] / 10)
    return replace(cfg, optim=replace(cfg.optim, **optim), **kw)


def build_config(args, vocab):
    """The run's TrainConfig: the preset, or with --resume the saved run's own configuration (so
    `typemoe train --out RUN --resume --max-steps N` continues any run, however it was started), with the
    command line's explicit values on top."""
    saved = _saved_config(args)
    if saved is not None:
        from typemoe.training.learn.config import TrainConfig

        cfg = apply_overrides(TrainConfig.from_dict(saved), args)
    else:
        model_kw = {"ffn": args.ffn} if getattr(args, "ffn", None) else {}
        cfg = apply_overrides(PRESETS[args.preset](vocab, **model_kw), args)
        cfg = replace(cfg, objective="ssmtp", labelled_fraction=1.0)
    if getattr(args, "objective", None) is not None:
        cfg = replace(cfg, objective=args.objective)
    if getattr(args, "labelled_fraction", None) is not None:
        cfg = replace(cfg, labelled_fraction=args.labelled_fraction)
    if getattr(args, "control_p", None) is not None:
        cfg = replace(cfg, control_p=args.control_p)
    for name in ("control_window", "control_start_p", "control_dropout"):
        if getattr(args, name, None) is not None:
            cfg = replace(cfg, **{name: getattr(args, name)})
    if getattr(args, "minor_share", None) is not None:
        cfg = replace(cfg, minor_share=args.minor_share)
    if getattr(args, "no_humanize", False):
        cfg = replace(cfg, humanize=False)
    if getattr(args, "no_phase_shift", False):
        cfg = replace(cfg, phase_shift=False)
    if getattr(args, "own_bars", None) is not None:
        cfg = replace(cfg, own_bars=args.own_bars)
    if getattr(args, "clean_rhythm", False):
        cfg = replace(cfg, clean_rhythm=True)
    infill_p = getattr(args, "infill_p", None)
    if infill_p is not None:
        cfg = replace(cfg, infill_p=infill_p)
    elif saved is None:
        cfg = replace(cfg, infill_p=0.25 if vocab.has_infill else 0.0)
    # the rows-only modes last: their checks read control_p and infill_p
    rows = {name: True for name in ("controls_only", "infill_only") if getattr(args, name, False)}
    return replace(cfg, **rows) if rows else cfg


def _saved_config(args) -> dict | None:
    """The configuration saved in --out's checkpoint when resuming one, else None."""
    out = getattr(args, "out", None)
    if not getattr(args, "resume", False) or out is None or not ckpt.has_checkpoint(out):
        return None
    return ckpt.read_state(ckpt.resolve(out)).get("config")


def init_model(path, cfg, vocab=None, *, own_shapes: bool = False):
    """The weights to start from (--init): they must have the preset's shapes (or, with own_shapes, keep
    their own: --controls-only); a checkpoint from before the infilling tokens is grown to `vocab`
    (training/infill_data.grow_vocab)."""
    from typemoe import checkpoint
    from typemoe.training.learn import ckpt, infill_data

    try:
        model = checkpoint.load(ckpt.resolve(path))
        if vocab is not None and model.cfg.vocab_size != vocab.size:
            model = infill_data.grow_vocab(model, vocab)
    except (checkpoint.CheckpointError, ValueError) as err:
        raise ValueError(f"--init {path}: {err}") from err
    # a classification head (the shipped emotion head) is kept as it is: pre-training never trains it
    trunk = replace(model.cfg, n_classes=cfg.model.n_classes)
    if trunk != cfg.model and not own_shapes:
        raise ValueError(
            f"--init {path}: its model shapes differ from the preset's ({model.cfg} vs {cfg.model})"
        )
    return model.train()


def init_meta(path) -> dict:
    """The meta of the checkpoint --init names."""
    from typemoe import checkpoint

    return checkpoint.read_config(ckpt.resolve(path))[2]


def split_pieces(pieces, dirs):
    """(train, val) of loaded shards; an empty train split is an error."""
    train, val = pieces.with_split("train"), pieces.with_split("val")
    if len(train) == 0:
        raise ValueError(
            f"empty dataset: {[str(d) for d in dirs]} hold {len(pieces)} pieces and none in the train split"
        )
    return train, val


def run(args) -> int:
    """`typemoe train`: returns a process exit code (0 ok, 2 bad input)."""
    from typemoe.vocab import TypedVocab

    d = dist.setup(args.device, args.threads)
    echo = print if d.master else (lambda s: None)
    logging.basicConfig(level=logging.INFO if d.master else logging.WARNING, format="%(message)s")
    logging.getLogger("typemoe.checkpoint").setLevel(logging.WARNING)  # one line per save is noise
    try:
        vocab = TypedVocab.default()
        controls_only = getattr(args, "controls_only", False)
        rows_only = controls_only or getattr(args, "infill_only", False)
        if args.resume and ckpt.has_checkpoint(args.out):  # a run keeps its own vocabulary
            vocab = TypedVocab.load(ckpt.resolve(args.out))
        elif controls_only:  # the controls learn on --init's own vocabulary and shapes: nothing else changes
            if getattr(args, "init", None) is None:
                raise ValueError("--controls-only trains the controls of an existing model: give --init")
            vocab = TypedVocab.load(ckpt.resolve(args.init))
        elif rows_only and getattr(args, "init", None) is None:  # --infill-only grows --init to this vocab
            raise ValueError("--infill-only teaches an existing model to infill: give --init")
        cfg = build_config(args, vocab)
        cfg.check_world(d.world)
        loop.check_resume_target(args.out, args.resume)
        pieces = load_pieces(args.data, vocab)
        train, val = split_pieces(pieces, args.data)
        train = keep_label_fraction(train, cfg.labelled_fraction)
        n_key = int((train.label("key") >= 0).sum())
        n_meter = int((train.label("meter") >= 0).sum())
        echo(
            f"data: {len(train)} train pieces ({sum(len(t) for t in train.tokens):,} tokens; key labels "
            f"{n_key}, meter labels {n_meter}), {len(val)} val | model {cfg.model.ffn} "
            f"d{cfg.model.d_model} L{cfg.model.n_layer} | {d.world} rank(s) on {d.device} | "
            f"{cfg.batch_size} windows x <= {cfg.seq_len} tokens a step, {cfg.max_steps} steps"
        )
        meta = {"data": [str(p) for p in args.data], "labelled_fraction": cfg.labelled_fraction}
        model = None
        if getattr(args, "init", None) is not None:
            model = init_model(args.init, cfg, vocab, own_shapes=rows_only)
            cfg = replace(cfg, model=model.cfg)
            meta["init"] = str(args.init)
            if model.cfg.n_classes:  # the class head is --init's own, and so are its class names
                names = init_meta(args.init).get("class_names")
                meta.update({"class_names": names} if names else {})
        loop.train(
            cfg,
            vocab=vocab,
            train_pieces=train,
            val_pieces=val,
            out_dir=args.out,
            d=d,
            meta=meta,
            resume=args.resume,
            echo=echo,
            model=model,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        dist.teardown()
    echo(f"done: {args.out / 'latest'}")
    return 0


def main(argv: list[str] | None = None, prog: str = "python -m typemoe.training.learn.pretrain") -> int:
    """`python -m typemoe.training.learn.pretrain ...`, and the `typemoe train` row of typemoe/cli.py."""
    return run(cli.train_parser(prog).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
