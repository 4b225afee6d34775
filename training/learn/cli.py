"""`typemoe train` and `typemoe finetune`: their flags, help texts and the torch check before they run.

    add_parsers(subparsers)    # registers both; each sets func(args) -> exit code
    train_parser(prog) / finetune_parser(prog)    # the same flags as standalone parsers

This module imports neither torch nor the training code, so `--help` works on a machine without torch,
and a command that needs torch says how to install it instead of failing with a traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from typemoe.cli import TORCH_INSTALL_HINT
from typemoe.training.learn.presets import PRESETS

CLS_TASKS = ("genre", "emotion", "composer")

TRAIN_DESCRIPTION = """\
SS-MTP pre-training (or plain next-token training with --objective clm).

    typemoe train --preset small --data /tmp/typemoe_m21 --out runs/small
    typemoe train --preset tiny --data shards/ --out runs/tiny --max-steps 200
    torchrun --nproc_per_node=2 -m typemoe.training.learn.pretrain --preset tiny --data shards/ --out runs/ddp
    typemoe train ... --resume            # continue runs/small/latest exactly

Every bad input is reported before the first step: an unknown preset or bad value, a shard directory
built with another tokenizer, an empty training split, an --out that already holds a run (without
--resume), or a --resume whose configuration differs from the saved one.
"""

FINETUNE_DESCRIPTION = """\
Fine-tune a pre-trained checkpoint: piece classification or conditional generation.

    typemoe finetune --task genre --from runs/small --data shards_genre/ --out runs/genre
    typemoe finetune --task conditional --from runs/small --data /tmp/typemoe_m21 --out runs/cond

Classification (genre, emotion, composer) trains a linear head over the pre-trained model on the pieces
that carry the label; the classes are those present in the data. Conditional generation trains the
model to continue music under key, meter, genre and emotion control tokens, each dropped with
probability --control-dropout so that it still generates without them.
"""


def add_common_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared by train and finetune: data, output, run length and hardware."""
    p.add_argument(
        "--data",
        type=Path,
        action="append",
        required=True,
        metavar="DIR",
        help="token shard directory from `typemoe data build` (repeat for several)",
    )
    p.add_argument("--out", type=Path, required=True, help="run directory (it is also the checkpoint)")
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps (default: the preset's)")
    p.add_argument("--resume", action="store_true", help="continue --out's latest checkpoint exactly")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the preset's)")
    p.add_argument("--batch-size", type=int, default=None, help="windows per step, all ranks together")
    p.add_argument("--micro-batch", type=int, default=None, help="windows per rank per forward")
    p.add_argument("--seq-len", type=int, default=None, help="longest training window in tokens")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate")
    p.add_argument("--warmup-steps", type=int, default=None, help="steps of linear learning-rate warm-up")
    p.add_argument("--log-every", type=int, default=None, help="steps between metric lines")
    p.add_argument("--eval-every", type=int, default=None, help="steps between validation passes")
    p.add_argument("--ckpt-every", type=int, default=None, help="steps between checkpoints")
    p.add_argument(
        "--infill-p",
        type=float,
        default=None,
        help="share of windows trained as fill-in-the-middle (1-4 bars between what comes before and after; "
        "default: 0.25 for train, 0 for finetune; 0 = off)",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads per rank (default: 0 = cores / ranks)")


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--preset",
        default="small",
        choices=sorted(PRESETS),
        help="model + training preset (default: small; with --resume the run keeps its own)",
    )
    add_common_arguments(p)
    p.add_argument(
        "--objective",
        choices=("ssmtp", "clm"),
        default=None,
        help="ssmtp: LM + key + meter + semi-supervised terms; clm: LM only (default: ssmtp, or the "
        "resumed run's)",
    )
    p.add_argument(
        "--labelled-fraction",
        type=float,
        default=None,
        help="keep key/meter labels of this fraction of pieces (by piece id); the rest are unlabelled "
        "(default: 1.0, or the resumed run's)",
    )
    p.add_argument(
        "--ffn",
        choices=("typemoe", "dense", "switch"),
        default=None,
        help="feed-forward kind: type-routed experts, the dense baseline or a learned top-1 router",
    )
    p.add_argument(
        "--init",
        type=Path,
        default=None,
        metavar="CKPT",
        help="start from this checkpoint's weights (a run directory, a checkpoint directory, or one rebuilt "
        "from the shipped model by `python -m typemoe.training.learn.from_onnx`); a new run: fresh optimizer and schedule",
    )
    p.add_argument(
        "--control-p",
        type=float,
        default=None,
        help="share of windows that carry their control tokens (default: the preset's, 0.5)",
    )
    p.add_argument(
        "--control-window",
        type=int,
        default=None,
        metavar="TOKENS",
        help="windows with controls hold at most this many tokens, so the controls weigh in the loss "
        "(default: 0 = --seq-len)",
    )
    p.add_argument(
        "--control-start-p",
        type=float,
        default=None,
        metavar="P",
        help="share of the windows with controls that start at their piece's first bar (default: 0)",
    )
    p.add_argument(
        "--minor-share",
        type=float,
        default=None,
        help="repeat pieces in a minor key until they make this share of the key-labelled pieces of an "
        "epoch (default: 0 = each piece once, or the resumed run's)",
    )
    p.add_argument(
        "--control-dropout",
        type=float,
        default=None,
        metavar="P",
        help="drop each control token of a window that carries them with this probability (default: 0.5)",
    )
    p.add_argument(
        "--controls-only",
        action="store_true",
        help="train the control tokens' embeddings alone (with --init): every other weight stays, so the "
        "model reads and continues music without controls exactly as before",
    )
    p.add_argument(
        "--infill-only",
        action="store_true",
        help="train the infilling tokens' embeddings alone (with --init and --infill-p > 0): every other "
        "weight stays, so the model reads and continues music exactly as before and learns to infill",
    )
    p.add_argument(
        "--no-humanize",
        action="store_true",
        help="train on the windows as they are, without performer augmentation (for ablations only)",
    )
    p.add_argument(
        "--no-phase-shift",
        action="store_true",
        help="keep each window's bars as the shards have them (shards re-barred in the music's own meter, "
        "training/data/rebar.py); by default windows are shifted 0-3 beats against REMI's 4-beat bars",
    )
    p.add_argument(
        "--own-bars",
        type=float,
        default=None,
        metavar="P",
        help="share of the windows of a metered piece (3/4, 6/8, 2/4, ...) written in REMI bars of its meter, "
        "as a continuation in that meter is decoded; heads learn only from their 4-beat part (default: 0, "
        "or the resumed run's)",
    )
    p.add_argument(
        "--clean-rhythm",
        action="store_true",
        help="learn no Bar/Position/Duration target in a window whose rhythm the humanizer redrew: heads "
        "and pitches still learn from it, the decoder does not learn to write its jitter (default: off, "
        "or the resumed run's)",
    )


def add_finetune_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--task",
        required=True,
        choices=(*CLS_TASKS, "conditional"),
        help="a label to classify, or conditional generation",
    )
    p.add_argument(
        "--from",
        dest="from_",
        type=Path,
        required=True,
        metavar="CKPT",
        help="pre-trained checkpoint: a run directory or a checkpoint directory",
    )
    add_common_arguments(p)
    p.add_argument(
        "--control-dropout",
        type=float,
        default=0.5,
        help="conditional: drop each control token with this probability (default: 0.5)",
    )
    p.add_argument(
        "--no-humanize",
        action="store_true",
        help="train on the windows as they are, without performer augmentation (a classification head "
        "whose label lives in the playing itself: emotion's arousal in the velocities)",
    )
    p.add_argument(
        "--head-only",
        action="store_true",
        help="classification: train the new head alone; every other weight and head stays as --from had it",
    )


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def train_parser(prog: str) -> argparse.ArgumentParser:
    p = _parser(prog, TRAIN_DESCRIPTION)
    add_train_arguments(p)
    return p


def finetune_parser(prog: str) -> argparse.ArgumentParser:
    p = _parser(prog, FINETUNE_DESCRIPTION)
    add_finetune_arguments(p)
    return p


def torch_missing(command: str) -> bool:
    """True (after telling the user how to install it) when torch cannot be imported."""
    try:
        found = importlib.util.find_spec("torch") is not None
    except ValueError:  # torch in sys.modules as None: deliberately hidden
        found = False
    if found:
        return False
    print(f"error: `{command}` needs PyTorch, which is not installed; {TORCH_INSTALL_HINT}", file=sys.stderr)
    return True


def _train(args: argparse.Namespace) -> int:
    if torch_missing("typemoe train"):
        return 2
    from typemoe.training.learn import pretrain

    return pretrain.run(args)


def _finetune(args: argparse.Namespace) -> int:
    if torch_missing("typemoe finetune"):
        return 2
    from typemoe.training.learn import finetune

    return finetune.run(args)


def add_parsers(subparsers) -> None:
    """Register `train` and `finetune` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "train",
        help="SS-MTP pre-training (or --objective clm)",
        description=TRAIN_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_train_arguments(p)
    p.set_defaults(func=_train)
    f = subparsers.add_parser(
        "finetune",
        help="fine-tune a checkpoint: classification or conditional generation",
        description=FINETUNE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_finetune_arguments(f)
    f.set_defaults(func=_finetune)
