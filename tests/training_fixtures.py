"""Shared helpers for the training tests: a small shard directory of real music21 tunes.

The shards are built the way a user builds them (`folder:` source + labels CSV through
training/data/prepare.py), from the first tunes of an Essen collection, so every test trains on real music.
Labels come from the notation: meter from the first time signature, key from the key signature read as
major (a plausible label is all these tests need); every 4th tune has no key label (unlabelled), and
alternate tunes are called "folk" / "classical" to give the classification tests two classes.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from typemoe import analysis

REPO = Path(__file__).resolve().parents[1]
MAJOR_OF_SHARPS = {s: (7 * s) % 12 for s in range(-7, 8)}


def build_shards(out: Path, n: int = 48) -> Path:
    """Shards of the first n tunes of essenFolksong/altdeu10 (cached per directory)."""
    from conftest import music21_scores

    from typemoe.training.data.prepare import BuildConfig, build

    if (out / "manifest.json").is_file():
        return out
    midi_dir = out.parent / (out.name + "_midi")
    midi_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (_, score) in enumerate(music21_scores(n)):
        path = midi_dir / f"tune{i:03d}.mid"
        ts = score.time_signatures
        meter = f"{ts[0].numerator}/{ts[0].denominator}" if len(ts) else ""
        if meter and analysis.meter_name(analysis.parse_meter(meter)) == "other":
            meter = ""
        ks = score.key_signatures
        key = analysis.KEYS[MAJOR_OF_SHARPS[ks[0].key]] if len(ks) and i % 4 else ""
        score.dump_midi(str(path))
        rows.append(
            {
                "path": path.name,
                "key": key,
                "meter": meter,
                "genre": ("folk", "classical")[i % 2],
                "emotion": "",
            }
        )
    labels = midi_dir / "labels.csv"
    with labels.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "key", "meter", "genre", "emotion"])
        w.writeheader()
        w.writerows(rows)
    build(BuildConfig(sources=[f"folder:{midi_dir}"], labels_csv=labels, out_dir=out, workers=1))
    return out


def tiny_args(data: Path, out: Path, *, steps: int = 6, extra: tuple[str, ...] = ()) -> list[str]:
    """Arguments of a tiny, fast, fully deterministic pre-training run."""
    return [
        "--preset",
        "tiny",
        "--data",
        str(data),
        "--out",
        str(out),
        "--max-steps",
        str(steps),
        "--batch-size",
        "4",
        "--micro-batch",
        "2",
        "--seq-len",
        "64",
        "--log-every",
        "1",
        "--eval-every",
        "1000",
        "--ckpt-every",
        "1000",
        "--threads",
        "1",
        "--labelled-fraction",
        "0.5",
        *extra,
    ]


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def losses_of(run: Path, keys=("loss", "lm", "key", "meter", "semi", "consistency")) -> np.ndarray:
    recs = read_metrics(run)
    return np.array([[r["step"]] + [r.get(k, np.nan) for k in keys] for r in recs], dtype=float)


def python_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return env


def run_module(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, env=python_env(), capture_output=True, text=True, **kw
    )
