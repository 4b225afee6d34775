"""Latency samples and drop counters kept by the engine and the shell (bounded), and the token bucket that
limits how many notes and error replies a second the engine takes."""

from __future__ import annotations

import math
from collections import Counter, deque

import numpy as np

_KEEP = 10_000  # samples per series


class Stats:
    def __init__(self) -> None:
        self.series: dict[str, deque[float]] = {}
        self.counts: Counter[str] = Counter()

    def add(self, name: str, value_ms: float) -> None:
        self.series.setdefault(name, deque(maxlen=_KEEP)).append(value_ms)

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    def percentiles(self, name: str, qs: tuple[int, ...] = (50, 99)) -> dict[str, float]:
        xs = self.series.get(name)
        if not xs:
            return {}
        values = np.percentile(np.fromiter(xs, float), qs)
        return {f"p{q}": float(v) for q, v in zip(qs, values)}

    def summary(self) -> str:
        parts = []
        for name in sorted(self.series):
            p = self.percentiles(name)
            parts.append(f"{name} p50 {p['p50']:.1f} ms p99 {p['p99']:.1f} ms (n={len(self.series[name])})")
        parts += [f"{k} {v}" for k, v in sorted(self.counts.items())]
        return "; ".join(parts) if parts else "no events yet"


class Bucket:
    """Token bucket: `take(t)` is False once more than `rate` per second (burst `rate`) were taken."""

    def __init__(self, rate: float) -> None:
        self.rate, self.level, self.t = rate, rate, -math.inf

    def take(self, t: float) -> bool:
        if t > self.t:  # stamps from different sources arrive slightly out of order: never refill backwards
            gain = (t - self.t) * self.rate if self.t > -math.inf else self.rate
            self.level, self.t = min(self.rate, self.level + gain), t
        if self.level >= 1.0:
            self.level -= 1.0
            return True
        return False
