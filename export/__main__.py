"""python -m typemoe.export CHECKPOINT_DIR OUT_DIR [--no-fp16] [--no-int8] [--force]: the same as `typemoe export`."""

from __future__ import annotations

import argparse
import sys

from typemoe.export.cli import add_export_arguments, run_export


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m typemoe.export",
        description="Export a TypeMoE checkpoint to a checked ONNX model directory.",
    )
    add_export_arguments(p, positional=True)
    return run_export(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
