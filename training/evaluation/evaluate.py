"""`typemoe eval`: every metric (training/evaluation/metrics.py) on held-out pieces, as flat JSON + markdown + plots.

    results = evaluate(EvalConfig(models=[Path("runs/pretrain")], data="music21", out=Path("eval/results.json")))

Choices the design leaves open (all fixed here, so numbers compare across runs):

- Sequences are [BOS] + control tokens + music, as in training (training/learn/data.py). A piece is read up
  to `window` tokens (default: the model's context): the "whole piece" is that window.
- Continuation: the prompt is the first bars of the piece, ending at a Bar token, at most
  `prompt_tokens` (256) and at least `min_prompt_tokens` (32) tokens; the target is the next 64 tokens.
  Hits@k pools all target positions of all pieces (every piece gives 64). BLEU-2 is corpus BLEU-2
  (Papineni: n-gram counts pooled over pieces) of the greedy (temperature 0, grammar-masked)
  continuation of 64 tokens against the target, on token strings. A piece too short for a 32-token
  prompt plus 64 targets is skipped for these metrics (counted in skipped.continuation).
- Conditional: the same prompts and targets with the piece's true control tokens (Key_, Meter_, Genre_,
  Emotion_, whichever it has) between BOS and the music; a piece with none is skipped.
- Attribute control: for the first `control_pieces` held-out pieces with a key and a meter label, the
  model generates `control_tokens` tokens from BOS + Key_X + Meter_Y alone (no music prompt, so the
  controls are the only hint), sampled (temperature 1, top-p 0.95, seeded). The notes are analysed by
  music21's Krumhansl-Schmuckler key finder and by the onset-autocorrelation meter detector of
  training/evaluation/baselines.py (music21 has no meter finder); control.key_match / control.meter_match are the
  shares that agree with X / Y (control.meter_family_match: duple vs triple). A continuation with no
  notes counts as a miss. The meter detector is imperfect (see meter.baselines.autocorrelation on real
  music): read control.meter_match against it.
- Key / meter heads, first window (key.accuracy, meter.accuracy, ...): the head at the LAST position of
  the first window (the head is trained at every position, and the last has heard the most).
- Whole piece (key.whole.*, key.whole_mean.*; off with whole_max_tokens=0): the piece, up to
  whole_max_tokens tokens, read as the bridge hears it and as `typemoe analyze` reads it
  (typemoe.listening: one session fed bar by bar, its context sliding when full). "whole" is the
  running estimate at the end of the piece (listening.at_end: the heads fused with the notes of the
  context they read, as the bridge shows it); "whole_mean" the answer for the whole piece
  (listening.whole_piece, `typemoe analyze`'s: the key answers at every bar line averaged, the key head
  there heard in all twelve transpositions and turned back, one hearing with whole_quick as `analyze
  --quick`; the meter head's mean over the bar lines fused with the rhythm of every note). The baselines read
  the same notes (key.baselines.NAME.whole).
- Key signature (key.signature, key.whole.signature, key.baselines.NAME.signature): for sources whose key
  label is only the file's key-signature meta (training/evaluation/eval_data.py META_KEY_SOURCES: classical_piano,
  VGMIDI; the files always say "major"), the share of pieces whose predicted key has the file's signature
  (a key and its relative minor share one). Their meter label is the meta's FIRST time signature.
- Per source: every key/meter and continuation number again under by_source.SOURCE. (a shard dir of
  several sources, or one source spec).
- Perturbed (perturb = velocity | timing | all): the same pieces, humanized by training/evaluation/perturb.py
  before tokenization (seeded per piece); results carry "perturb".
  Streaming after N bars: the head at the Bar token that opens bar N + 1 (bars are the tokenizer's
  4-beat groups, not notated measures), or at the end of a piece that has N bars or fewer.
  Key is scored exact and MIREX-weighted; meter exact and by family.
- Baselines on the same pieces and the same window's notes (decoded from the tokens the model read):
  music21's four key profiles, the autocorrelation meter detector, and the majority class of the
  training split of the same data.
- Classification (fine-tuned models): training/evaluation/eval_classification.py.
A piece missing the label a metric needs is skipped for that metric, and skipped.<metric> counts it.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from typemoe import analysis
from typemoe.training.evaluation import baselines, metrics
from typemoe.training.evaluation.eval_classification import classification
from typemoe.training.evaluation.eval_data import EvalPiece, load_eval_data
from typemoe.training.evaluation.eval_keymeter import (  # noqa: F401  (re-exported)
    key_meter,
    key_meter_baselines,
)
from typemoe.training.evaluation.eval_report import (  # noqa: F401  (re-exported)
    STREAM_BARS,
    Report,
    _bar_indices,
    _label_index,
    _mirex_with_misses,
    _safe,
    _window,
)

log = logging.getLogger(__name__)

GROUPS = ("continuation", "conditional", "control", "keymeter", "classification", "experts", "infill")


@dataclass(kw_only=True)
class EvalConfig:
    """One `typemoe eval` run."""

    models: list[Path | None]  # None = the shipped default; the first is scored on everything
    data: str  # source spec or shard directory
    out: Path  # results.json; results.md and the plots go next to it
    labels_csv: Path | None = None
    split: str = "test"
    max_pieces: int | None = None
    window: int | None = None  # tokens read per piece, BOS included; None = the model's context
    prompt_tokens: int = 256
    min_prompt_tokens: int = 32
    target_tokens: int = 64
    control_pieces: int = 32
    control_tokens: int = 256
    seed: int = 0
    plots: bool = True
    groups: tuple[str, ...] = GROUPS  # which metric groups to compute
    threads: int = 0  # torch CPU threads; 0 = torch's default
    cache_dir: Path | None = None
    shared_dir: Path | None = None
    perturb: str | None = (
        None  # velocity | timing | all: humanize every piece (training/evaluation/perturb.py)
    )
    whole_max_tokens: int = 16384  # whole-piece reading reads at most this many tokens; 0 = off
    whole_quick: bool = False  # the whole piece's key head from one hearing, not twelve transpositions
    by_source: bool = True  # every metric again per source

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("at least one model (or None for the default) is needed")
        unknown = sorted(set(self.groups) - set(GROUPS))
        if unknown:
            raise ValueError(f"unknown metric groups {unknown}; expected a subset of {GROUPS}")
        for name in ("prompt_tokens", "min_prompt_tokens", "target_tokens", "control_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.min_prompt_tokens > self.prompt_tokens:
            raise ValueError(
                f"min_prompt_tokens {self.min_prompt_tokens} > prompt_tokens {self.prompt_tokens}"
            )
        if self.whole_max_tokens < 0:
            raise ValueError(f"whole_max_tokens must be >= 0, got {self.whole_max_tokens}")
        if self.perturb is not None:
            from typemoe.training.evaluation.perturb import PERTURB_KINDS, PROBE_KINDS

            if self.perturb not in (*PERTURB_KINDS, *PROBE_KINDS):
                raise ValueError(
                    f"unknown perturbation {self.perturb!r}; expected one of {', '.join((*PERTURB_KINDS, *PROBE_KINDS))}"
                )
        if self.control_pieces < 0:
            raise ValueError(f"control_pieces must be >= 0, got {self.control_pieces}")
        self.out = Path(self.out)


def _controls(piece: EvalPiece, vocab) -> list[int]:
    genre = piece.genre if piece.genre in analysis.GENRES else None
    return vocab.control_ids(key=piece.key, meter=piece.meter, genre=genre, emotion=piece.emotion)


def _prompt_cut(music: np.ndarray, vocab, cfg: EvalConfig, budget: int) -> int | None:
    """Prompt length in music tokens: the last bar line at or below the limits, else the limit itself."""
    limit = min(cfg.prompt_tokens, len(music) - cfg.target_tokens, budget - cfg.target_tokens)
    if limit < cfg.min_prompt_tokens:
        return None
    bars = [
        i for i in _bar_indices(music[: limit + 1].tolist(), vocab) if cfg.min_prompt_tokens <= i <= limit
    ]
    return bars[-1] if bars else limit


# --------------------------------------------------------------------------- the metric groups


def continuation(
    model, pieces: list[EvalPiece], cfg: EvalConfig, window: int, *, conditional: bool, report: Report
) -> None:
    """Hits@1/5 under teacher forcing and greedy BLEU-2 over the 64 tokens after the prompt."""
    vocab = model.vocab
    prefix = "conditional" if conditional else "continuation"
    all_logits, all_targets, pairs = [], [], []
    for piece in pieces:
        controls = _controls(piece, vocab) if conditional else []
        if conditional and not controls:
            report.skipped[prefix] += 1
            continue
        cut = _prompt_cut(piece.tokens, vocab, cfg, window - 1 - 4)  # room for up to 4 control tokens
        if cut is None:
            report.skipped[prefix] += 1
            continue
        seq = [vocab.bos_id, *controls, *piece.tokens[: cut + cfg.target_tokens].tolist()]
        start = 1 + len(controls) + cut
        at = list(range(start, start + cfg.target_tokens))
        out = model.outputs_at(seq, at)
        all_logits.append(out.logits)
        all_targets.append(np.asarray(seq[start:], dtype=np.int64))
        greedy = model.generate(seq[:start], cfg.target_tokens, temperature=0.0)
        pairs.append(([vocab.token(i) for i in greedy], [vocab.token(i) for i in seq[start:]]))
    r = report.results
    if all_logits:
        logits, targets = np.concatenate(all_logits), np.concatenate(all_targets)
        r[f"{prefix}.hits@1"] = metrics.hits_at_k(logits, targets, 1)
        r[f"{prefix}.hits@5"] = metrics.hits_at_k(logits, targets, 5)
        r[f"{prefix}.bleu2"] = metrics.corpus_bleu2(pairs)
    else:
        r[f"{prefix}.hits@1"] = r[f"{prefix}.hits@5"] = r[f"{prefix}.bleu2"] = math.nan
    r[f"{prefix}.n"] = len(pairs)


def attribute_control(model, pieces: list[EvalPiece], cfg: EvalConfig, report: Report) -> None:
    """Share of generations under Key_X + Meter_Y whose analysed key / meter is X / Y."""
    vocab = model.vocab
    chosen = [p for p in pieces if p.key is not None and p.meter is not None][: cfg.control_pieces]
    report.skipped["control"] += sum(p.key is None or p.meter is None for p in pieces)
    key_hits, meter_hits, family_hits = [], [], []
    for i, piece in enumerate(chosen):
        prefix = [vocab.bos_id, *vocab.control_ids(key=piece.key, meter=piece.meter)]
        ids = model.generate(prefix, cfg.control_tokens, temperature=1.0, top_p=0.95, seed=cfg.seed + i)
        notes = baselines.notes_of_score(vocab.decode(ids))
        if len(notes) == 0:
            key_hits.append(False)
            meter_hits.append(False)
            family_hits.append(False)
            continue
        key, _ = baselines.key_estimate(notes, "krumhansl")
        meter, _ = baselines.meter_estimate(notes)
        key_hits.append(key == piece.key)
        meter_hits.append(meter == piece.meter)
        family_hits.append(analysis.meter_family(meter) == analysis.meter_family(piece.meter))
    r = report.results
    r["control.key_match"] = float(np.mean(key_hits)) if chosen else math.nan
    r["control.meter_match"] = float(np.mean(meter_hits)) if chosen else math.nan
    r["control.meter_family_match"] = float(np.mean(family_hits)) if chosen else math.nan
    r["control.n"] = len(chosen)


def expert_share(model, pieces: list[EvalPiece], window: int, max_pieces: int = 32) -> dict | None:
    """(L, types, experts) share of each token type's tokens sent to each expert, per layer."""
    vocab = model.vocab
    counts = None
    for piece in pieces[:max_pieces]:
        seq = _window(piece, vocab, window)
        routes = model.expert_routes(seq)  # (L, T)
        if routes is None:
            return None
        types = vocab.type_of[np.asarray(seq, dtype=np.int64)]  # (T,)
        n_exp = max(int(routes.max()) + 1, vocab.n_types)
        if counts is None:
            counts = np.zeros((routes.shape[0], vocab.n_types, n_exp), dtype=np.int64)
        if n_exp > counts.shape[2]:
            counts = np.pad(counts, ((0, 0), (0, 0), (0, n_exp - counts.shape[2])))
        for layer in range(routes.shape[0]):
            np.add.at(counts[layer], (types, routes[layer]), 1)
    if counts is None:
        return None
    share = counts / np.maximum(counts.sum(axis=2, keepdims=True), 1)
    return {"share": share.tolist(), "type_names": list(vocab.type_names), "ffn": model.ffn}


# --------------------------------------------------------------------------- the run


def require_music21(cfg: EvalConfig, *, baselines_only: bool = False) -> None:
    """Fail before any work when the run needs music21 (the music21 source, the key baselines, the
    attribute-control key finder) and it is not installed.

    Raises:
        ValueError: naming what needs it and how to install it.
    """
    import importlib.util

    needs = [
        what
        for what, used in (
            (
                "--data music21 (the corpus ships inside the music21 package)",
                str(cfg.data).startswith("music21"),
            ),
            ("the key baselines (music21's key profiles)", baselines_only or "keymeter" in cfg.groups),
            (
                "attribute control (music21's key finder)",
                not baselines_only and "control" in cfg.groups and cfg.control_pieces > 0,
            ),
        )
        if used
    ]
    if needs and importlib.util.find_spec("music21") is None:
        raise ValueError(
            "music21 is not installed, and this eval needs it for "
            + "; ".join(needs)
            + ": pip install 'typemoe[train]' (or pip install music21), or drop those metric groups"
        )


def _whole(cfg: EvalConfig) -> int | None:
    return cfg.whole_max_tokens or None


def evaluate(cfg: EvalConfig) -> Report:
    """Open the models, load the held-out pieces, compute every metric; nothing is written."""
    from typemoe.training.evaluation.eval_model import open_model

    require_music21(cfg)
    if cfg.threads > 0:
        import torch

        torch.set_num_threads(cfg.threads)
    models = [open_model(m) for m in cfg.models]
    main = models[0]
    for m in models[1:]:
        if m.vocab.hash != main.vocab.hash:
            raise ValueError(f"{m.path} uses another vocabulary than {main.path}; evaluate them separately")
    window = min(cfg.window or main.context_len, main.context_len)
    if window < cfg.min_prompt_tokens + cfg.target_tokens + 8:
        raise ValueError(
            f"window {window} is too short for a {cfg.min_prompt_tokens}-token prompt and "
            f"{cfg.target_tokens} targets"
        )
    data = load_eval_data(
        cfg.data,
        vocab=main.vocab,
        labels_csv=cfg.labels_csv,
        split=cfg.split,
        max_pieces=cfg.max_pieces,
        cache_dir=cfg.cache_dir,
        shared_dir=cfg.shared_dir,
        perturb=cfg.perturb,
        seed=cfg.seed,
    )
    if not data.pieces:
        raise ValueError(f"{cfg.data}: no {cfg.split} pieces to evaluate (skipped: {dict(data.skipped)})")
    report = Report()
    log.info(
        "evaluating %s on %d %s pieces of %s%s",
        main.path,
        len(data.pieces),
        cfg.split,
        cfg.data,
        f", perturbed ({cfg.perturb})" if cfg.perturb else "",
    )
    sources = sorted(data.sources) if cfg.by_source else []
    for group, conditional in (("continuation", False), ("conditional", True)):
        if group in cfg.groups:
            continuation(main, data.pieces, cfg, window, conditional=conditional, report=report)
            for src in sources:
                if len(sources) == 1:  # one source: its numbers are the overall ones, no second pass
                    sub = Report(
                        results={k: v for k, v in report.results.items() if k.startswith(group + ".")}
                    )
                else:
                    sub = Report()
                    pieces = [p for p in data.pieces if p.source == src]
                    continuation(main, pieces, cfg, window, conditional=conditional, report=sub)
                report.results.update({f"by_source.{src}.{k}": v for k, v in sub.results.items()})
    if "control" in cfg.groups:
        attribute_control(main, data.pieces, cfg, report)
    if "keymeter" in cfg.groups:
        key_meter(
            main,
            data,
            window,
            report,
            whole_max_tokens=_whole(cfg),
            by_source=cfg.by_source,
            whole_quick=cfg.whole_quick,
        )
        key_meter_baselines(
            main.vocab, data, window, report, whole_max_tokens=_whole(cfg), by_source=cfg.by_source
        )
    if "classification" in cfg.groups:
        classification(models, data, window, report)
    if (
        "infill" in cfg.groups
    ):  # infilling vs continuation on the same bars (training/evaluation/eval_infill.py)
        from typemoe.training.evaluation.eval_infill import infill_metrics

        infill_metrics(main, data.pieces, cfg, window, report)
    r = report.results
    r["n_pieces"] = len(data.pieces)
    r["sources"] = data.sources
    r["model"] = str(main.path)
    r["model.kind"] = main.kind
    r["model.ffn"] = main.ffn
    r["data"] = cfg.data
    r["split"] = cfg.split
    r["window"] = window
    r["perturb"] = cfg.perturb or "none"
    r["whole_max_tokens"] = cfg.whole_max_tokens
    r.update({f"skipped.{k}": v for k, v in sorted(report.skipped.items())})
    r.update({f"skipped.loading.{k}": v for k, v in sorted(data.skipped.items())})
    report.details["key.names"] = list(analysis.KEYS)
    report.details["meter.names"] = list(analysis.METERS)
    if "experts" in cfg.groups:
        report.details["experts"] = expert_share(main, data.pieces, window)
    return report


def evaluate_baselines(cfg: EvalConfig) -> Report:
    """The key/meter baselines alone (no model): the project vocabulary, windows of cfg.window tokens
    (default 1024, the shipped model's context), on the same held-out pieces a model would get."""
    from typemoe.vocab import TypedVocab

    require_music21(cfg, baselines_only=True)
    vocab = TypedVocab.default()
    window = cfg.window or 1024
    data = load_eval_data(
        cfg.data,
        vocab=vocab,
        labels_csv=cfg.labels_csv,
        split=cfg.split,
        max_pieces=cfg.max_pieces,
        cache_dir=cfg.cache_dir,
        shared_dir=cfg.shared_dir,
        perturb=cfg.perturb,
        seed=cfg.seed,
    )
    if not data.pieces:
        raise ValueError(f"{cfg.data}: no {cfg.split} pieces to evaluate (skipped: {dict(data.skipped)})")
    report = Report()
    key_meter_baselines(vocab, data, window, report, whole_max_tokens=_whole(cfg), by_source=cfg.by_source)
    r = report.results
    for task in ("key", "meter"):
        report.skipped[task] += sum(getattr(p, task) is None for p in data.pieces)
    r.update(
        {
            "n_pieces": len(data.pieces),
            "sources": data.sources,
            "model": "none (baselines only)",
            "data": cfg.data,
            "split": cfg.split,
            "window": window,
            "perturb": cfg.perturb or "none",
            "whole_max_tokens": cfg.whole_max_tokens,
        }
    )
    r.update({f"skipped.{k}": v for k, v in sorted(report.skipped.items())})
    r.update({f"skipped.loading.{k}": v for k, v in sorted(data.skipped.items())})
    report.details["meter.names"] = list(analysis.METERS)
    return report


def write_outputs(report: Report, out: Path, *, plots: bool = True) -> list[Path]:
    """results.json (flat metrics + "details"), results.md next to it, and the PNG plots."""
    from typemoe.training.evaluation import eval_plots

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {k: (_safe(v) if isinstance(v, float) else v) for k, v in report.results.items()}
    doc["details"] = report.details
    out.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n")
    md = out.with_suffix(".md")
    md.write_text(markdown_table(report.results))
    written = [out, md]
    if plots:
        written += eval_plots.plot_report(report.results, report.details, out.parent, prefix=out.stem)
    return written


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def markdown_table(results: dict) -> str:
    """The metrics as a markdown table, grouped by prefix, in the order they were computed."""
    lines = [
        f"# TypeMoE evaluation: {results.get('model', '?')}",
        "",
        f"Data: `{results.get('data')}` ({results.get('split')} split), {results.get('n_pieces')} pieces, "
        f"window {results.get('window')} tokens, perturbation: {results.get('perturb', 'none')}.",
        "",
        "| metric | value |",
        "| --- | --- |",
    ]
    for k, v in results.items():
        if k in ("model", "data", "split", "n_pieces", "window", "sources", "perturb") or isinstance(v, dict):
            continue
        lines.append(f"| {k} | {_fmt(v)} |")
    lines += ["", "Sources: " + ", ".join(f"{s} ({n})" for s, n in results.get("sources", {}).items()), ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the per-source table
