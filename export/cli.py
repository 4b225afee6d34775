"""`typemoe export` and `typemoe bench`: argparse glue over export/onnx_export.py and export/bench.py.

    typemoe export --checkpoint CKPT --out MODEL_DIR [--no-fp16] [--no-int8] [--force]
    typemoe bench [--model MODEL_DIR | --preset small] --out bench.json

typemoe/cli.py calls add_parsers(subparsers); each command's func(args) returns an exit code. Heavy
modules (torch, onnx) are imported only when a command runs.
"""

from __future__ import annotations

import argparse
import logging
import warnings
from pathlib import Path

log = logging.getLogger(__name__)

_CHATTY = ("onnxscript", "onnx_ir", "torch.onnx", "torch._export", "torch.export", "torch.fx")  # set to ERROR


def quiet_exporter_logs() -> None:
    """The exporter's passes log every rewrite at INFO and torch warns about absent torchvision ops:
    useful when debugging the exporter, noise for a user. Called only by entry points."""
    for name in _CHATTY:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*torchvision.*")
    warnings.filterwarnings("ignore", message=r".*axis name.*will not be used.*")
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)


def _setup_logging(verbose: bool) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
        )
    if not verbose:
        quiet_exporter_logs()


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register `export` and `bench` on a subparsers object (`typemoe bench` itself comes from
    typemoe/commands/bench.py, which adds the bridge's rows)."""
    p = subparsers.add_parser(
        "export",
        help="export a checkpoint to an ONNX model directory (parity-checked)",
        description=_export_doc(),
    )
    add_export_arguments(p)
    p.set_defaults(func=run_export)
    add_bench_parser(subparsers)


def _export_doc() -> str:
    return (
        "Write a self-contained model directory (ONNX step graph with KV cache, fp16 twin for CUDA, "
        "int8-expert twin for CPU, "
        "vocabulary, manifest with sha256) and check it against PyTorch. CKPT is a checkpoint directory, "
        "or a training output directory: its `latest` entry or else its newest step_* sub-directory is used."
    )


def add_export_arguments(p: argparse.ArgumentParser, *, positional: bool = False) -> None:
    if positional:
        p.add_argument("checkpoint", type=Path, help="checkpoint or training output directory")
        p.add_argument("out", type=Path, help="model directory to write")
    else:
        p.add_argument(
            "--checkpoint", type=Path, required=True, help="checkpoint or training output directory"
        )
        p.add_argument("--out", type=Path, required=True, help="model directory to write")
    p.add_argument("--no-fp16", action="store_true", help="skip model_fp16.onnx (the CUDA graph)")
    p.add_argument("--no-int8", action="store_true", help="skip model_int8.onnx (int8 experts for CPU)")
    p.add_argument("--force", action="store_true", help="replace an existing model directory at --out")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging, exporter passes included")


def run_export(args: argparse.Namespace) -> int:
    _setup_logging(args.verbose)
    from typemoe.checkpoint import CheckpointError
    from typemoe.export.onnx_export import export_checkpoint
    from typemoe.export.validate import ExportMismatchError

    if not args.verbose:
        quiet_exporter_logs()  # again: importing torch re-levels its own loggers

    try:
        out = export_checkpoint(
            args.checkpoint, args.out, fp16=not args.no_fp16, int8=not args.no_int8, overwrite=args.force
        )
    except (FileNotFoundError, FileExistsError, CheckpointError, ValueError) as err:
        log.error("%s", err)
        return 2
    except ExportMismatchError as err:
        log.error("%s", err)
        return 1
    log.info("model directory ready: %s", out)
    return 0


def run_bench(args: argparse.Namespace) -> int:
    _setup_logging(args.verbose)
    from typemoe.export import bench

    return bench.run(args)


def add_bench_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `bench` (the CLI's room adds the bridge's rows to typemoe.export.bench.EXTRA_BENCHES first)."""
    from typemoe.export import bench

    b = subparsers.add_parser(
        "bench",
        help="latency benchmark of an exported model (JSON + table)",
        description=bench.__doc__.split("\n")[0],
    )
    bench.add_arguments(b)
    b.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    b.set_defaults(func=run_bench)
    return b
