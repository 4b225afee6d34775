"""SkipLog: what a build or an eval load leaves out, counted per reason and named in the log.

Every reader of pieces (training/data/sources.py, training/data/prepare.py, training/evaluation/eval_data.py) reports a bad
item here instead of stopping: the first few of each reason at WARNING (INFO for exclusions by design),
the rest at DEBUG, with a few examples per reason kept for the summary.
"""

from __future__ import annotations

import logging
from collections import Counter

# the name skip lines had before SkipLog left sources.py: `typemoe prepare` prints it (%(name)s)
log = logging.getLogger("typemoe.training.data.sources")


class SkipLog:
    """Counts skipped items per reason and names each one in the log (the first few at WARNING)."""

    def __init__(self, *, loud_per_reason: int = 10, examples_per_reason: int = 20) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self._loud = loud_per_reason
        self._keep = examples_per_reason

    def add(self, reason: str, item: str, detail: str = "", *, expected: bool = False) -> None:
        """Count and name one skipped item; `expected` exclusions (by design) log at INFO, not WARNING."""
        self.counts[reason] += 1
        msg = f"{item}: {detail}" if detail else item
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < self._keep:
            self.examples[reason].append(msg)
        level = logging.WARNING if self.counts[reason] <= self._loud else logging.DEBUG
        log.log(
            logging.INFO if expected and level == logging.WARNING else level, "skipped (%s) %s", reason, msg
        )

    def merge(self, other: SkipLog) -> None:
        """Add another log's counts (e.g. per-source logs into a build total)."""
        self.counts.update(other.counts)
        for reason, items in other.examples.items():
            self.examples.setdefault(reason, []).extend(
                items[: self._keep - len(self.examples.get(reason, []))]
            )

    def summary(self) -> str:
        return ", ".join(f"{n} {r}" for r, n in sorted(self.counts.items())) or "nothing"

    def as_dict(self) -> dict:
        return {"counts": dict(sorted(self.counts.items())), "examples": self.examples}

    def __len__(self) -> int:
        return sum(self.counts.values())
