"""`typemoe eval --ablation` and `--label-efficiency`: train variants on the same data and steps, evaluate
each on the same held-out pieces, and write one comparison (the README's ablation table).

    typemoe eval --ablation --data music21 --steps 500 --out ablation/results.json
    typemoe eval --label-efficiency --data /tmp/shards --steps 500 --out labeleff/results.json

Variants (all through typemoe.training.learn.pretrain, the same entry point as `typemoe train`, same preset, seed,
data and number of steps):

    --ablation           typemoe (TypeMoE + SS-MTP), dense (a dense FFN of the same active parameters),
                         switch (a learned top-1 router over as many experts), clm (TypeMoE, language
                         modelling only: SS-MTP vs CLM). typemoe is the reference for both comparisons.
    --label-efficiency   TypeMoE + SS-MTP keeping the key/meter labels of 5, 10, 25 and 100 % of the
                         training pieces (training.data.keep_label_fraction, chosen by piece id).

Runs go to <out dir>/runs/<name>; a run that already holds a checkpoint of the requested step count is
reused, so an interrupted ablation resumes where it stopped. A data source (not a shard dir) is built
into <out dir>/shards first with `typemoe data build`'s code. The variants are pre-trained only, so the
comparison scores continuation and the key/meter heads (attribute control needs control-token
fine-tuning and is left out); the label-efficiency runs score only the heads.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

from typemoe.training.evaluation.evaluate import EvalConfig, evaluate, require_music21, write_outputs

log = logging.getLogger(__name__)

ABLATION_VARIANTS: dict[str, list[str]] = {  # name -> typemoe.training.learn.pretrain flags
    "typemoe": ["--ffn", "typemoe", "--objective", "ssmtp"],
    "dense": ["--ffn", "dense", "--objective", "ssmtp"],
    "switch": ["--ffn", "switch", "--objective", "ssmtp"],
    "clm": ["--ffn", "typemoe", "--objective", "clm"],
}
LABEL_FRACTIONS = (0.05, 0.10, 0.25, 1.0)
TABLE_COLUMNS = (
    "continuation.hits@1",
    "continuation.hits@5",
    "continuation.bleu2",
    "key.accuracy",
    "key.mirex",
    "key.streaming.4",
    "meter.accuracy",
    "meter.family_accuracy",
    "meter.streaming.4",
)
LABEL_COLUMNS = ("key.accuracy", "key.mirex", "key.streaming.4", "meter.accuracy", "meter.family_accuracy")


@dataclass(kw_only=True)
class AblationConfig:
    eval: EvalConfig  # the data, split, limits and output path; its models are replaced per variant
    steps: int
    preset: str = "tiny"
    seed: int = 0
    train_args: list[str] = field(
        default_factory=list
    )  # extra typemoe.training.learn.pretrain flags (batch size, ...)

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {self.steps}")


def _shards(cfg: AblationConfig, out_dir: Path) -> Path:
    from typemoe.training.evaluation.eval_data import is_shard_dir

    if is_shard_dir(cfg.eval.data):
        return Path(cfg.eval.data)
    from typemoe.training.data.prepare import BuildConfig, build

    kw = {}
    if cfg.eval.cache_dir is not None:
        kw["cache_dir"] = cfg.eval.cache_dir
    if cfg.eval.shared_dir is not None:
        kw["shared_dir"] = cfg.eval.shared_dir
    target = out_dir / "shards"
    build(BuildConfig(sources=[cfg.eval.data], labels_csv=cfg.eval.labels_csv, out_dir=target, **kw))
    return target


def _step_of(run: Path) -> int | None:
    from typemoe.checkpoint import CheckpointError, read_config
    from typemoe.training.learn import ckpt

    try:
        return int(read_config(ckpt.resolve(run))[2].get("step", -1))
    except CheckpointError:
        return None


def train_variant(cfg: AblationConfig, shards: Path, run: Path, flags: list[str]) -> Path:
    """Train one variant with typemoe.training.learn.pretrain (or reuse a finished run). Raises RuntimeError on failure."""
    from typemoe.training.learn import pretrain

    step = _step_of(run)
    if step is not None and step >= cfg.steps:
        log.info("%s already holds step %d: reused", run, step)
        return run
    if run.exists() and any(run.iterdir()):
        raise RuntimeError(f"{run} holds an unfinished or different run (step {step}); remove it to retrain")
    argv = [
        "--preset",
        cfg.preset,
        "--data",
        str(shards),
        "--out",
        str(run),
        "--max-steps",
        str(cfg.steps),
        "--seed",
        str(cfg.seed),
        *flags,
        *cfg.train_args,
    ]
    log.info("training %s: %s", run.name, " ".join(argv))
    code = pretrain.main(argv)
    if code != 0:
        raise RuntimeError(f"training {run.name} failed with exit code {code} (arguments: {' '.join(argv)})")
    return run


def _table(rows: dict[str, dict], columns: tuple[str, ...], first: str) -> str:
    def fmt(v) -> str:
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"

    lines = [f"| {first} | " + " | ".join(columns) + " |", "| --- |" + " --- |" * len(columns)]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(fmt(r.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def _evaluate_run(cfg: AblationConfig, run: Path, groups: tuple[str, ...], out: Path) -> dict:
    ev = replace(cfg.eval, models=[run], out=out, groups=groups)
    report = evaluate(ev)
    write_outputs(report, out, plots=ev.plots)
    return report.results


def run_ablation(cfg: AblationConfig) -> dict:
    """Train and evaluate the four variants; writes <out>.json / .md (the comparison) next to per-variant
    results in <out dir>/<name>/results.json. Returns {variant: flat results}."""
    require_music21(replace(cfg.eval, groups=("continuation", "keymeter", "experts")))  # before any training
    out = cfg.eval.out
    out.parent.mkdir(parents=True, exist_ok=True)
    shards = _shards(cfg, out.parent)
    rows = {}
    for name, flags in ABLATION_VARIANTS.items():
        run = train_variant(cfg, shards, out.parent / "runs" / name, flags)
        rows[name] = _evaluate_run(
            cfg, run, ("continuation", "keymeter", "experts"), out.parent / name / "results.json"
        )
    doc = {
        "kind": "ablation",
        "steps": cfg.steps,
        "preset": cfg.preset,
        "seed": cfg.seed,
        "data": cfg.eval.data,
        "variants": rows,
    }
    out.write_text(json.dumps(doc, indent=1, default=float) + "\n")
    md = [
        f"# Ablation: {cfg.steps} steps of preset {cfg.preset} on `{cfg.eval.data}` (seed {cfg.seed})",
        "",
        "typemoe = TypeMoE + SS-MTP; dense = dense FFN, same active parameters; switch = learned top-1 "
        "router; clm = TypeMoE trained on language modelling only.",
        "",
        _table(rows, TABLE_COLUMNS, "variant"),
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(md))
    return rows


def run_label_efficiency(cfg: AblationConfig) -> dict:
    """Train with 5/10/25/100 % of the key/meter labels, evaluate the heads, plot the curve."""
    from typemoe.training.evaluation import eval_plots

    require_music21(replace(cfg.eval, groups=("keymeter",)))  # before any training
    out = cfg.eval.out
    out.parent.mkdir(parents=True, exist_ok=True)
    shards = _shards(cfg, out.parent)
    rows = {}
    for frac in LABEL_FRACTIONS:
        name = f"labels_{round(100 * frac)}pct"
        run = train_variant(
            cfg,
            shards,
            out.parent / "runs" / name,
            ["--ffn", "typemoe", "--objective", "ssmtp", "--labelled-fraction", str(frac)],
        )
        rows[f"{100 * frac:g}%"] = _evaluate_run(cfg, run, ("keymeter",), out.parent / name / "results.json")
    doc = {
        "kind": "label_efficiency",
        "steps": cfg.steps,
        "preset": cfg.preset,
        "seed": cfg.seed,
        "data": cfg.eval.data,
        "fractions": list(LABEL_FRACTIONS),
        "variants": rows,
    }
    out.write_text(json.dumps(doc, indent=1, default=float) + "\n")
    first = next(iter(rows.values()))
    curves = {f"{t} head": [r.get(f"{t}.accuracy") for r in rows.values()] for t in ("key", "meter")}
    bases = {
        "Krumhansl (key)": first.get("key.baselines.krumhansl"),
        "autocorrelation (meter)": first.get("meter.baselines.autocorrelation"),
    }
    eval_plots.label_efficiency(
        list(LABEL_FRACTIONS), curves, out.parent / f"{out.stem}.label_efficiency.png", bases
    )
    md = [
        f"# Label efficiency: {cfg.steps} steps of preset {cfg.preset} on `{cfg.eval.data}` (seed {cfg.seed})",
        "",
        _table(rows, LABEL_COLUMNS, "labels kept"),
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(md))
    return rows
