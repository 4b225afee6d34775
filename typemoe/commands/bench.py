"""`typemoe bench`: export's model benchmark plus the bridge's latency rows (composed here, so that
export never imports the bridge)."""

from __future__ import annotations


def add_parsers(subparsers) -> None:
    from bridge.bench import run_bridge_bench
    from export import bench, cli

    bench.EXTRA_BENCHES["bridge"] = run_bridge_bench
    cli.add_bench_parser(subparsers)
