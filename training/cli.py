"""`typemoe train` and `typemoe finetune`: subcommands for the console script (typemoe/cli.py wires them).

    add_parsers(subparsers)    # registers both; each sets func(args) -> exit code
"""

from __future__ import annotations

import argparse


def _train(args: argparse.Namespace) -> int:
    from training import pretrain

    return pretrain.run(args)


def _finetune(args: argparse.Namespace) -> int:
    from training import finetune

    return finetune.run(args)


def add_parsers(subparsers) -> None:
    """Register `train` and `finetune` on an argparse subparsers object."""
    from training import finetune, pretrain

    p = subparsers.add_parser("train", help="SS-MTP pre-training (or --objective clm)",
                              description=pretrain.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    pretrain.add_arguments(p)
    p.set_defaults(func=_train)
    f = subparsers.add_parser("finetune", help="fine-tune a checkpoint: classification or conditional generation",
                              description=finetune.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    finetune.add_arguments(f)
    f.set_defaults(func=_finetune)
