"""The `typemoe` console script: a thin dispatcher from a subcommand to the module that implements it.

    typemoe data build --source music21 --source shared:emopia --out /tmp/shards
    typemoe data stats /tmp/shards
    typemoe train ... / typemoe finetune ...

COMMANDS maps a command name to the module that implements it. That module offers either
  - `main(argv: list[str] | None, prog: str) -> int`: it parses everything after the command name
    itself (training/data/prepare.py, `typemoe data`), or
  - `add_parsers(subparsers)`: it registers its command(s) on an argparse subparsers object, each with
    `func(args) -> int` as a default (training/learn/cli.py, `typemoe train` and `typemoe finetune`).
Modules are imported only when their command runs, so `typemoe --help` is instant and imports neither
torch nor music21, and this file never imports training/ or export/ statically (the library does not
import its users): it only names them. To add a command, add a row.

A command that needs an optional package the user has not installed (torch, music21, onnx, ...) ends
with a message that names the package and how to install it, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

TORCH_INSTALL_HINT = (
    "for a CPU-only wheel: pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu "
    "(GPU wheels: https://pytorch.org/get-started/locally/), then pip install 'typemoe[train]'"
)
# optional packages (pyproject's train extra) -> how to get them
OPTIONAL_PACKAGES: dict[str, str] = {
    "torch": TORCH_INSTALL_HINT,
    **{
        name: "pip install 'typemoe[train]'"
        for name in (
            "onnx",
            "onnxscript",
            "music21",
            "safetensors",
            "tqdm",
            "matplotlib",
            "tensorboard",
            "filelock",
        )
    },
}

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "data": (
        "typemoe.training.data.prepare",
        "build token shards from music21 / shared / folder sources; show their stats",
    ),
    "train": ("typemoe.training.learn.cli", "SS-MTP pre-training"),
    "finetune": (
        "typemoe.training.learn.cli",
        "fine-tune a checkpoint: classification or conditional generation",
    ),
    "eval": (
        "typemoe.training.evaluation.eval_cli",
        "the paper's metrics, baselines, ablations and label efficiency",
    ),
    "export": ("typemoe.export.cli", "export a checkpoint to an ONNX model directory (parity-checked)"),
    "bench": (
        "typemoe.commands.bench",
        "decode/prefill latency, ORT vs PyTorch, TypeMoE vs dense, bridge latency",
    ),
    "analyze": ("typemoe.commands.tools", "key and meter of a MIDI file, with confidences"),
    "generate": (
        "typemoe.commands.tools",
        "continue a MIDI file, optionally steered by key/meter/genre/emotion",
    ),
    "infill": (
        "typemoe.commands.infill",
        "rewrite bars in the middle of a MIDI file, between before and after",
    ),
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


def missing_package_message(command: str, err: ModuleNotFoundError) -> str | None:
    """The message for an optional package that is not installed, or None for any other missing module."""
    name = (err.name or "").split(".")[0]
    if name not in OPTIONAL_PACKAGES:
        return None
    return f"error: `{command}` needs the Python package {name!r}, which is not installed; {OPTIONAL_PACKAGES[name]}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _parser().parse_args(argv[:1]).command  # only the command name is ours
    try:
        return _run(command, argv)
    except ModuleNotFoundError as err:
        message = missing_package_message(f"typemoe {command}", err)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 2


def _run(command: str, argv: list[str]) -> int:
    module = importlib.import_module(COMMANDS[command][0])
    if hasattr(module, "main"):
        return int(module.main(argv[1:], prog=f"typemoe {command}") or 0)
    parser = argparse.ArgumentParser(prog="typemoe")
    module.add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
