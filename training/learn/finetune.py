"""Fine-tuning a pre-trained checkpoint: piece classification or conditional generation.

The run behind `typemoe finetune` and `python -m typemoe.training.learn.finetune`; its flags and help text live in
training/learn/cli.py (torch-free, so that `--help` works without torch).

Classification (genre, emotion, composer): a linear head over the mean-pooled final hidden states
(TypeMoE's cls head) on top of the pre-trained trunk, trained with cross-entropy on the pieces that carry
the label. The label set is the classes present in the data, in the shard's order; it is saved in the
checkpoint meta as `class_names` (with `task`), and a checkpoint or resumed run whose label set differs
is refused before any step.

Conditional generation: the LM objective on windows prefixed with the piece's control tokens
(Key_, Meter_, Genre_, Emotion_ when known), each dropped with probability --control-dropout so the
model still generates without them. The key control moves with the transposition. The key/meter heads
are not trained here: with a Key_ token in the prefix they would learn to copy it.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

from typemoe import analysis, checkpoint
from typemoe.model import TypeMoE
from typemoe.training.learn import ckpt, cli, dist, infill_data, loop
from typemoe.training.learn.cli import CLS_TASKS
from typemoe.training.learn.config import LossConfig, OptimConfig, TrainConfig
from typemoe.training.learn.data import Pieces, load_pieces
from typemoe.training.learn.pretrain import apply_overrides, split_pieces


def label_set(pieces: Pieces, task: str) -> tuple[list[str], Pieces]:
    """The classes of `task` present in the data, and the pieces relabelled to indices into them."""
    lab = pieces.label(task)
    names = list(pieces.label_names.get(task, ()))
    present = sorted({int(c) for c in lab[lab >= 0]})
    if not present:
        raise ValueError(
            f"no piece in the data has a {task!r} label; build the shards from a source that "
            f"has it (e.g. shared:emopia for emotion, shared:genre_freemidi for genre)"
        )
    remap = np.full(max(len(names), max(present) + 1), -1, dtype=np.int64)
    remap[present] = np.arange(len(present))
    labels = dict(pieces.labels)
    labels[task] = np.where(lab >= 0, remap[np.maximum(lab, 0)], -1)
    relabelled = Pieces(
        ids=pieces.ids,
        tokens=pieces.tokens,
        labels=labels,
        label_names=pieces.label_names,
        split=pieces.split,
        vocab_hash=pieces.vocab_hash,
    )
    return [names[c] if c < len(names) else str(c) for c in present], relabelled


def _check_label_set(where: str, meta: dict, task: str, class_names: list[str]) -> None:
    if (
        meta.get("task") == task
        and meta.get("class_names") is not None
        and meta["class_names"] != class_names
    ):
        raise ValueError(
            f"label set mismatch: {where} was fine-tuned for {task} on {meta['class_names']}, "
            f"the data has {class_names}"
        )


def init_model(src: Path, task: str, class_names: list[str] | None, vocab=None) -> TypeMoE:
    """The pre-trained model, with a fresh classification head of len(class_names) classes if needed; one
    from before the infilling tokens grown to `vocab` (training/infill_data.grow_vocab)."""
    pre = checkpoint.load(src)
    if vocab is not None and pre.cfg.vocab_size != vocab.size:
        pre = infill_data.grow_vocab(pre, vocab)
    if class_names is None:
        return pre.train()
    cfg = replace(pre.cfg, n_classes=len(class_names))
    model = TypeMoE(cfg, pre.router.type_of_id)
    state = pre.state_dict()
    if pre.cfg.n_classes != cfg.n_classes:  # another head: start it fresh
        state = {k: v for k, v in state.items() if not k.startswith("cls_head.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("cls_head.") for k in missing), (missing, unexpected)
    return model.train()


def _own_vocab(src: Path):
    """The vocabulary a checkpoint was saved with (its tokenizer.json and types.json)."""
    from typemoe.vocab import TypedVocab, VocabError

    try:
        return TypedVocab.load(src)
    except VocabError as err:
        raise ValueError(f"--from {src}: --head-only needs the checkpoint's own vocabulary: {err}") from err


def build_config(args, model_cfg, task: str) -> TrainConfig:
    cls = task in CLS_TASKS
    cfg = TrainConfig(
        model=model_cfg,
        optim=OptimConfig(lr=3e-4, min_lr=3e-5, warmup_steps=50),
        loss=LossConfig(lm=0.0 if cls else 1.0),
        task=task,
        objective="clm",
        seq_len=min(512, model_cfg.context_len),
        batch_size=16,
        micro_batch=8,
        max_steps=500,
        transpose=6,
        phase_shift=True,
        control_dropout=args.control_dropout,
        log_every=10,
        eval_every=100,
        eval_pieces=512,
        ckpt_every=100,
    )
    cfg = apply_overrides(cfg, args)
    return replace(
        cfg,
        infill_p=getattr(args, "infill_p", None) or 0.0,
        head_only=getattr(args, "head_only", False),
        humanize=not getattr(args, "no_humanize", False),
    )


def run(args) -> int:
    """`typemoe finetune`: returns a process exit code (0 ok, 2 bad input)."""
    from typemoe.vocab import TypedVocab

    d = dist.setup(args.device, args.threads)
    echo = print if d.master else (lambda s: None)
    logging.basicConfig(level=logging.INFO if d.master else logging.WARNING, format="%(message)s")
    logging.getLogger("typemoe.checkpoint").setLevel(logging.WARNING)
    try:
        if not args.from_.exists():
            raise ValueError(f"--from {args.from_}: no such checkpoint or run directory")
        try:
            src = ckpt.resolve(args.from_)
            pre_cfg, _, pre_meta = checkpoint.read_config(src)
        except checkpoint.CheckpointError as err:
            raise ValueError(f"--from {args.from_}: {err}") from err
        vocab = TypedVocab.default()
        if pre_meta.get("vocab_hash") is not None and not vocab.reads(pre_meta["vocab_hash"]):
            raise ValueError(
                f"--from {src} was trained with vocabulary {pre_meta['vocab_hash'][:12]}, "
                f"this code has {vocab.hash[:12]}"
            )
        if getattr(args, "head_only", False) and pre_cfg.vocab_size != vocab.size:
            vocab = _own_vocab(src)  # nothing may grow: every other weight stays as --from had it
        loop.check_resume_target(args.out, args.resume)
        pieces = load_pieces(args.data, vocab)
        class_names = None
        if args.task in CLS_TASKS:
            class_names, pieces = label_set(pieces, args.task)
            _check_label_set(f"--from {src}", pre_meta, args.task, class_names)
            if args.resume and ckpt.has_checkpoint(args.out):
                _, _, out_meta = checkpoint.read_config(ckpt.resolve(args.out))
                _check_label_set(f"--resume {args.out}", out_meta, args.task, class_names)
            pieces = pieces.subset(pieces.label(args.task) >= 0)
        train, val = split_pieces(pieces, args.data)
        model = init_model(src, args.task, class_names, vocab)
        cfg = build_config(args, model.cfg, args.task)
        cfg.check_world(d.world)
        echo(
            f"finetune {args.task} from {src}: {len(train)} train / {len(val)} val pieces"
            + (f", {len(class_names)} classes {class_names}" if class_names else "")
            + f" | {cfg.max_steps} steps on {d.world} rank(s), {d.device}"
        )
        meta = {"data": [str(p) for p in args.data], "from": str(src)}
        if class_names is not None:
            meta["class_names"] = class_names
        else:
            meta.update(
                controls=[kind.name for kind in analysis.CONTROLS], control_dropout=cfg.control_dropout
            )
        loop.train(
            cfg,
            vocab=vocab,
            train_pieces=train,
            val_pieces=val,
            out_dir=args.out,
            d=d,
            model=model,
            meta=meta,
            resume=args.resume,
            echo=echo,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        dist.teardown()
    echo(f"done: {args.out / 'latest'}")
    return 0


def main(argv: list[str] | None = None, prog: str = "python -m typemoe.training.learn.finetune") -> int:
    return run(cli.finetune_parser(prog).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
