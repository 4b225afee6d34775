"""typemoe.bridge.bench: the latency keys `typemoe bench` reports, measured through real JACK and UDP (short run)."""

from __future__ import annotations

import math

import pytest
from test_bridge_jack import pytestmark  # noqa: F401 - same skips (jackd, rtmidi JACK) and markers

from typemoe.bridge.bench import run_bridge_bench


def test_bench_reports_every_key():
    r = run_bridge_bench("toy", n_notes=8, n_triggers=2)
    for name in ("analysis_ms", "end_to_end_ms", "first_note_ms", "first_note_conditioned_ms"):
        for q in ("p50", "p99"):
            v = r[f"bridge.{name}.{q}"]
            assert math.isfinite(v) and 0 <= v < 1000, (name, q, v)
    assert r["bridge.n_notes"] == 8 and r["bridge.n_continuations"] == 2 and r["bridge.n_conditioned"] == 2
    assert r["bridge.analysis_ms.p50"] <= r["bridge.analysis_ms.p99"] + 1e-9
    with pytest.raises(Exception, match="model"):
        run_bridge_bench("/nonexistent/model", n_notes=1, n_triggers=0)
