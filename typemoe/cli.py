"""The `typemoe` console script: a thin dispatcher from a subcommand to the module that implements it.

    typemoe data build --source music21 --source shared:emopia --out /tmp/shards
    typemoe data stats /tmp/shards
    typemoe train ... / typemoe finetune ...

COMMANDS maps a command name to the module that implements it. That module offers either
  - `main(argv: list[str] | None, prog: str) -> int`: it parses everything after the command name
    itself (training/prepare.py, `typemoe data`), or
  - `add_parsers(subparsers)`: it registers its command(s) on an argparse subparsers object, each with
    `func(args) -> int` as a default (training/cli.py, `typemoe train` and `typemoe finetune`).
Modules are imported only when their command runs, so `typemoe --help` is instant and imports neither
torch nor music21, and this file never imports training/ or export/ statically (DESIGN.md section 2):
it only names them. To add a command (eval, export, bench, analyze, generate), add a row.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "data": (
        "training.prepare",
        "build token shards from music21 / shared / folder sources; show their stats",
    ),
    "train": ("training.cli", "SS-MTP pre-training"),
    "finetune": ("training.cli", "fine-tune a checkpoint: classification or conditional generation"),
    "eval": ("training.eval_cli", "the paper's metrics, baselines, ablations and label efficiency"),
    "export": ("export.cli", "export a checkpoint to an ONNX model directory (parity-checked)"),
    "bench": ("export.cli", "decode/prefill latency, ORT vs PyTorch, TypeMoE vs dense, bridge latency"),
    "analyze": ("export.tools", "key and meter of a MIDI file, with confidences"),
    "generate": ("export.tools", "continue a MIDI file, optionally steered by key/meter/genre/emotion"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="typemoe",
        description="TypeMoE: type-routed mixture-of-experts for symbolic music.",
        epilog="`typemoe COMMAND --help` shows a command's options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        # add_help=False: --help after the command belongs to the command's own parser
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _parser().parse_args(argv[:1]).command  # only the command name is ours
    module = importlib.import_module(COMMANDS[command][0])
    if hasattr(module, "main"):
        return int(module.main(argv[1:], prog=f"typemoe {command}") or 0)
    parser = argparse.ArgumentParser(prog="typemoe")
    module.add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
