"""`typemoe bench`: export's model benchmark plus the bridge's latency rows, analyze's, infill's and best-of-N's cost
(composed here, so that export never imports the bridge or the CLI's commands), and `typemoe bench --train`, the CPU training throughput
(training/learn/bench_train.py: the bare model step against the real loop's, old and new, in one run)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parsers(subparsers) -> None:
    from typemoe.bridge.bench import run_bridge_bench
    from typemoe.commands.analyze_bench import run_analyze_bench
    from typemoe.commands.candidates_bench import run_candidates_bench
    from typemoe.commands.infill_bench import run_infill_bench
    from typemoe.export import bench, cli

    bench.EXTRA_BENCHES["bridge"] = run_bridge_bench
    bench.EXTRA_BENCHES["analyze"] = run_analyze_bench
    bench.EXTRA_BENCHES["infill"] = run_infill_bench
    bench.EXTRA_BENCHES["candidates"] = run_candidates_bench
    b = cli.add_bench_parser(subparsers)
    b.add_argument(
        "--train",
        action="store_true",
        help="measure CPU training tokens/s instead (bare step vs the loop's; --preset, default small; all "
        "cores; --out gets the JSON)",
    )
    b.add_argument(
        "--train-data", type=Path, action="append", default=[], metavar="DIR", help="--train: token shards"
    )
    b.add_argument("--train-steps", type=int, default=5, help="--train: timed steps per row (default 5)")
    model_bench = b.get_default("func")
    b.set_defaults(func=lambda args: _train_bench(args) if args.train else model_bench(args))


def _train_bench(args: argparse.Namespace) -> int:
    from typemoe.training.learn import bench_train

    argv = ["--preset", args.preset or "small", "--steps", str(args.train_steps), "--json", str(args.out)]
    for d in args.train_data:
        argv += ["--data", str(d)]
    return bench_train.main(argv)
