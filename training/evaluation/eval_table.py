"""The per-source table: key and meter of a model beside music21's key profiles and the
onset-autocorrelation baseline, per source and per perturbation, with in-distribution sources marked.

    typemoe eval --source-table --data music21 --data shared:classical_piano --out table.json
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

from typemoe.training.evaluation import baselines
from typemoe.training.evaluation.evaluate import EvalConfig, _fmt, _safe, evaluate

log = logging.getLogger(__name__)

# sources the shipped default model was trained on (typemoe/default_model/MODEL_CARD.md): their test split
# is held out but in-distribution; the others are read whole (split "all"), none of it was ever trained on
SHIPPED_TRAINING_SOURCES = ("music21", "shared:pop909", "shared:emopia", "shared:groove")


def _source_of(data: str) -> str:
    return "music21" if str(data).startswith("music21") else str(data)


def _best(results: dict, prefix: str, suffix: str) -> tuple[str, float]:
    """(name, accuracy) of the best music21 key profile on these pieces (NaN-safe; picked after the fact)."""
    scores = [
        (name, results.get(f"{prefix}key.baselines.{name}{suffix}", math.nan))
        for name in baselines.KEY_BASELINES
    ]
    scores = [(n, v) for n, v in scores if v is not None and not math.isnan(v)]
    return max(scores, key=lambda nv: nv[1]) if scores else ("-", math.nan)


def source_table(configs: list[EvalConfig], perturbs: list[str], out: Path) -> list[Path]:
    """Key/meter of the model beside music21's profiles and the autocorrelation baseline, per source and
    per perturbation ("none" or a training/evaluation/perturb.py kind), on the same pieces and notes.

    Each config is one source; sources the shipped model never trained on are read whole (split "all").
    Writes out (every run's flat results) and out.md (the table). Returns the paths.
    """

    from typemoe.training.evaluation.perturb import PERTURB_KINDS, PROBE_KINDS

    known = ("none", *PERTURB_KINDS, *PROBE_KINDS)
    bad = [p for p in perturbs if p not in known]
    if bad or not perturbs:
        raise ValueError(
            f"unknown table perturbations {bad or perturbs}; expected some of {', '.join(known)}"
        )
    runs = []
    for cfg in configs:
        src = _source_of(cfg.data)
        split = cfg.split if src in SHIPPED_TRAINING_SOURCES else "all"
        for pert in perturbs:
            run_cfg = dataclasses.replace(
                cfg,
                groups=("keymeter",),
                split=split,
                plots=False,
                by_source=False,
                perturb=None if pert == "none" else pert,
            )
            report = evaluate(run_cfg)
            runs.append(
                {
                    "source": src,
                    "split": split,
                    "perturb": pert,
                    "in_distribution_for_shipped": src in SHIPPED_TRAINING_SOURCES,
                    "results": {
                        k: (_safe(v) if isinstance(v, float) else v) for k, v in report.results.items()
                    },
                }
            )
            log.info("%s (%s): done", src, pert)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"runs": runs}, indent=1) + "\n")
    md = out.with_suffix(".md")
    md.write_text(source_table_markdown(runs))
    return [out, md]


def source_table_markdown(runs: list[dict]) -> str:
    """The two tables (key, meter) of source_table's runs."""
    model = runs[0]["results"].get("model", "?") if runs else "?"
    f = _fmt
    lines = [
        f"# Key and meter per source: {model}",
        "",
        "Model = the model's answer (its heads, fused with the notes' pitch classes and rhythm when the "
        "model directory has the fusions); baselines read the same notes. `first` = the first context "
        "window, `whole` = the running estimate at the end of the piece read as the bridge hears it "
        "(sliding windows; fused with the notes of the context at the end), `mean` = `typemoe analyze`'s "
        "answer for the whole piece (the key answers at every bar line averaged, the key head heard in "
        "twelve transpositions unless --whole-quick; the meter head's mean fused with the rhythm of every "
        "note). Best profile = the best of music21's four key profiles on that row (picked after the "
        "fact). Key signature: the predicted key's signature against the file's key-signature meta, for "
        "sources whose files carry only that (always written as major). Perturb `all` = a velocity curve "
        "+ per-note noise + +-1/32-beat jitter + legato/staccato (training/evaluation/perturb.py).",
        "",
        "## Key",
        "",
        "| source | shipped model trained on it | split | perturb | n | model first | model whole | model mean "
        "| best profile first | best profile whole | n sig | sig: model whole | sig: model mean "
        "| sig: best profile whole |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | --- |",
    ]
    for run in runs:
        r = run["results"]
        bf, bw = _best(r, "", ""), _best(r, "", ".whole")
        bs = _best(r, "", ".whole.signature")
        lines.append(
            f"| {run['source']} | {'yes (in-distribution)' if run['in_distribution_for_shipped'] else 'no'} "
            f"| {run['split']} | {run['perturb']} | {r.get('key.n', 0)} | {f(r.get('key.accuracy'))} "
            f"| {f(r.get('key.whole.accuracy'))} | {f(r.get('key.whole_mean.accuracy'))} | {f(bf[1])} ({bf[0]}) "
            f"| {f(bw[1])} ({bw[0]}) | {r.get('key.signature.n', 0)} | {f(r.get('key.whole.signature'))} "
            f"| {f(r.get('key.whole_mean.signature'))} | {f(bs[1])} ({bs[0]}) |"
        )
    lines += [
        "",
        "## Meter",
        "",
        "| source | shipped model trained on it | perturb | n | exact: model first | model whole | model mean "
        "| autocorr first | autocorr whole | family: model first | model whole | model mean "
        "| autocorr first | autocorr whole |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        r = run["results"]
        lines.append(
            f"| {run['source']} | {'yes' if run['in_distribution_for_shipped'] else 'no'} | {run['perturb']} "
            f"| {r.get('meter.n', 0)} | {f(r.get('meter.accuracy'))} | {f(r.get('meter.whole.accuracy'))} "
            f"| {f(r.get('meter.whole_mean.accuracy'))} | {f(r.get('meter.baselines.autocorrelation'))} "
            f"| {f(r.get('meter.baselines.autocorrelation.whole'))} | {f(r.get('meter.family_accuracy'))} "
            f"| {f(r.get('meter.whole.family_accuracy'))} | {f(r.get('meter.whole_mean.family_accuracy'))} "
            f"| {f(r.get('meter.baselines.autocorrelation.family'))} "
            f"| {f(r.get('meter.baselines.autocorrelation.whole.family'))} |"
        )
    return "\n".join(lines) + "\n"
