"""What every evaluation group shares: the report, the stream readout points and small helpers."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from typemoe import analysis
from typemoe.training.evaluation.eval_data import EvalPiece
from typemoe.vocab import FAMILIES

STREAM_BARS = (1, 2, 4, 8)


@dataclass
class Report:
    """Flat metrics plus what the plots and the markdown need."""

    results: dict = field(default_factory=dict)  # flat dotted keys -> number / str / dict
    details: dict = field(default_factory=dict)  # confusion matrices, class names, curves
    skipped: Counter = field(default_factory=Counter)


# --------------------------------------------------------------------------- helpers


def _bar_indices(seq: list[int], vocab) -> list[int]:
    bar = vocab.family_of[np.asarray(seq, dtype=np.int64)] == FAMILIES.index("Bar")
    return [int(i) for i in np.flatnonzero(bar)]


def _window(piece: EvalPiece, vocab, window: int) -> list[int]:
    return [vocab.bos_id, *piece.tokens[: window - 1].tolist()]


def _label_index(names: list[str], i: int, parse) -> int:
    """A head's argmax as a typemoe.analysis index (the model's label names may be ordered differently)."""
    return parse(names[i])


def _mirex_with_misses(pred: list, true: list) -> float:
    """MIREX score where a missing prediction (None: no notes to analyse) weighs 0."""
    if not true:
        return math.nan
    return float(np.mean([analysis.mirex_score(p, t) if p is not None else 0.0 for p, t in zip(pred, true)]))


def _safe(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)
