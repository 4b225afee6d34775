"""`typemoe bench`: export's model benchmark plus the bridge's latency rows (composed here, so that
export never imports the bridge)."""

from __future__ import annotations


def add_parsers(subparsers) -> None:
    from bridge.bench import run_bridge_bench
    from export import bench, cli

    bench.EXTRA_BENCHES["bridge"] = run_bridge_bench
    b = subparsers.add_parser(
        "bench",
        help="latency benchmark of an exported model (JSON + table)",
        description=bench.__doc__.split("\n")[0],
    )
    bench.add_arguments(b)
    b.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    b.set_defaults(func=cli.run_bench)
