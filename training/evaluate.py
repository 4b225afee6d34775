"""`typemoe eval`: every metric of DESIGN.md section 6 on held-out pieces, as flat JSON + markdown + plots.

    results = evaluate(EvalConfig(models=[Path("runs/pretrain")], data="music21", out=Path("eval/results.json")))

Choices the design leaves open (all fixed here, so numbers compare across runs):

- Sequences are [BOS] + control tokens + music, as in training (training/data.py). A piece is read up
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
  training/baselines.py (music21 has no meter finder); control.key_match / control.meter_match are the
  shares that agree with X / Y (control.meter_family_match: duple vs triple). A continuation with no
  notes counts as a miss. The meter detector is imperfect (see meter.baselines.autocorrelation on real
  music): read control.meter_match against it.
- Key / meter heads: the whole-piece answer is the head at the LAST position of the window (the head
  is trained at every position, and the last has heard the most; SS-MTP's teacher reads the same).
  Streaming after N bars: the head at the Bar token that opens bar N + 1 (bars are the tokenizer's
  4-beat groups, not notated measures), or at the end of a piece that has N bars or fewer.
  Key is scored exact and MIREX-weighted; meter exact and by family.
- Baselines on the same pieces and the same window's notes (decoded from the tokens the model read):
  music21's four key profiles, the autocorrelation meter detector, and the majority class of the
  training split of the same data.
- Classification (fine-tuned models, any number of them): accuracy and macro-F1 per model, reported as
  the mean with `.std` (sample standard deviation) and `.n_models` when several are given.
A piece missing the label a metric needs is skipped for that metric, and skipped.<metric> counts it.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training import baselines, metrics
from training.eval_data import EvalData, EvalPiece, load_eval_data
from typemoe import analysis

log = logging.getLogger(__name__)

STREAM_BARS = (1, 2, 4, 8)
CLS_TASKS = ("genre", "emotion", "composer")
GROUPS = ("continuation", "conditional", "control", "keymeter", "classification", "experts")


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
            raise ValueError(f"min_prompt_tokens {self.min_prompt_tokens} > prompt_tokens {self.prompt_tokens}")
        if self.control_pieces < 0:
            raise ValueError(f"control_pieces must be >= 0, got {self.control_pieces}")
        self.out = Path(self.out)


@dataclass
class Report:
    """Flat metrics plus what the plots and the markdown need."""

    results: dict = field(default_factory=dict)  # flat dotted keys -> number / str / dict
    details: dict = field(default_factory=dict)  # confusion matrices, class names, curves
    skipped: Counter = field(default_factory=Counter)


# --------------------------------------------------------------------------- helpers


def _bar_indices(seq: list[int], vocab) -> list[int]:
    bar = vocab.family_of[np.asarray(seq, dtype=np.int64)] == 0  # family 0 = Bar
    return [int(i) for i in np.flatnonzero(bar)]


def _window(piece: EvalPiece, vocab, window: int) -> list[int]:
    return [vocab.bos_id, *piece.tokens[: window - 1].tolist()]


def _controls(piece: EvalPiece, vocab) -> list[int]:
    genre = piece.genre if piece.genre in analysis.GENRES else None
    return vocab.control_ids(key=piece.key, meter=piece.meter, genre=genre, emotion=piece.emotion)


def _prompt_cut(music: np.ndarray, vocab, cfg: EvalConfig, budget: int) -> int | None:
    """Prompt length in music tokens: the last bar line at or below the limits, else the limit itself."""
    limit = min(cfg.prompt_tokens, len(music) - cfg.target_tokens, budget - cfg.target_tokens)
    if limit < cfg.min_prompt_tokens:
        return None
    bars = [i for i in _bar_indices(music[: limit + 1].tolist(), vocab) if cfg.min_prompt_tokens <= i <= limit]
    return bars[-1] if bars else limit


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


# --------------------------------------------------------------------------- the metric groups


def continuation(model, pieces: list[EvalPiece], cfg: EvalConfig, window: int, *, conditional: bool,
                 report: Report) -> None:
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


def key_meter(model, data: EvalData, window: int, report: Report) -> None:
    """Head accuracy, whole piece and streaming, on the labelled held-out pieces."""
    vocab = model.vocab
    pred = {"key": [], "meter": []}
    true = {"key": [], "meter": []}
    stream = {(t, n): [] for t in ("key", "meter") for n in STREAM_BARS}
    for piece in data.pieces:
        if piece.key is None and piece.meter is None:
            continue
        seq = _window(piece, vocab, window)
        bars = _bar_indices(seq, vocab)
        reads = {n: (bars[n] + 1 if len(bars) > n else len(seq)) for n in STREAM_BARS} | {"whole": len(seq)}
        order = sorted(set(reads.values()))
        out = model.outputs_at(seq, order)
        row = {k: order.index(p) for k, p in reads.items()}
        for task, probs, names, parse in (("key", out.key_probs, model.key_names, analysis.parse_key),
                                          ("meter", out.meter_probs, model.meter_names, analysis.parse_meter)):
            label = getattr(piece, task)
            if label is None:
                continue
            true[task].append(label)
            pred[task].append(_label_index(names, int(np.argmax(probs[row["whole"]])), parse))
            for n in STREAM_BARS:
                stream[(task, n)].append(_label_index(names, int(np.argmax(probs[row[n]])), parse) == label)
    r = report.results
    for task in ("key", "meter"):
        report.skipped[task] += sum(getattr(p, task) is None for p in data.pieces)
        r[f"{task}.accuracy"] = metrics.accuracy(pred[task], true[task])
        for n in STREAM_BARS:
            r[f"{task}.streaming.{n}"] = float(np.mean(stream[(task, n)])) if stream[(task, n)] else math.nan
        r[f"{task}.n"] = len(true[task])
    r["key.mirex"] = metrics.mirex(pred["key"], true["key"]) if true["key"] else math.nan
    r["meter.family_accuracy"] = metrics.meter_family_accuracy(pred["meter"], true["meter"]) if true["meter"] else math.nan
    report.details["key.confusion"] = metrics.confusion_matrix(pred["key"], true["key"], len(analysis.KEYS)).tolist()
    report.details["meter.confusion"] = metrics.confusion_matrix(pred["meter"], true["meter"],
                                                                 len(analysis.METERS)).tolist()
    if true["key"]:
        report.details["key.mirex_breakdown"] = metrics.mirex_breakdown(pred["key"], true["key"])


def key_meter_baselines(vocab, data: EvalData, window: int, report: Report) -> None:
    """The baselines on the same pieces and the same window's notes as key_meter."""
    true = {"key": [], "meter": []}
    base = {name: [] for name in baselines.KEY_BASELINES} | {"autocorrelation": []}
    for piece in data.pieces:
        if piece.key is None and piece.meter is None:
            continue
        notes = baselines.notes_of_score(vocab.decode(_window(piece, vocab, window)[1:]))
        if piece.key is not None:
            true["key"].append(piece.key)
            for name in baselines.KEY_BASELINES:
                base[name].append(baselines.key_estimate(notes, name)[0] if len(notes) else None)
        if piece.meter is not None:
            true["meter"].append(piece.meter)
            base["autocorrelation"].append(baselines.meter_estimate(notes)[0] if len(notes) else None)
    r = report.results
    for name in baselines.KEY_BASELINES:
        r[f"key.baselines.{name}"] = metrics.accuracy(base[name], true["key"])
        r[f"key.baselines.{name}.mirex"] = _mirex_with_misses(base[name], true["key"])
    r["meter.baselines.autocorrelation"] = metrics.accuracy(base["autocorrelation"], true["meter"])
    r["meter.baselines.autocorrelation.family"] = metrics.accuracy(
        [analysis.meter_family(p) if p is not None else None for p in base["autocorrelation"]],
        [analysis.meter_family(t) for t in true["meter"]])
    for task in ("key", "meter"):
        train = [x for x in data.train_labels.get(task, []) if x is not None]
        majority = baselines.majority_class(train) if train else (
            baselines.majority_class(true[task]) if true[task] else None)
        r[f"{task}.baselines.majority"] = metrics.accuracy([majority] * len(true[task]), true[task])
        report.details[f"{task}.majority_class"] = (analysis.KEYS if task == "key" else analysis.METERS)[majority] \
            if majority is not None else None
        report.details[f"{task}.majority_from"] = "train split" if train else "held-out labels (no train split)"
        r.setdefault(f"{task}.n", len(true[task]))
    report.details["meter.baselines.autocorrelation.confusion"] = metrics.confusion_matrix(
        [p if p is not None else analysis.METERS.index("other") for p in base["autocorrelation"]], true["meter"],
        len(analysis.METERS)).tolist()


def _cls_task(model) -> str | None:
    if model.class_names is None:
        return None
    if model.task in CLS_TASKS:
        return model.task
    names = set(model.class_names)
    if names <= set(analysis.EMOTIONS):
        return "emotion"
    if names <= set(analysis.GENRES):
        return "genre"
    return "composer"


def classification(models: list, data: EvalData, window: int, report: Report) -> None:
    """Accuracy and macro-F1 of each fine-tuned classification head; mean and spread per task."""
    per_task: dict[str, list[tuple[float, float]]] = {}
    for model in models:
        task = _cls_task(model)
        if task is None:
            continue
        pred, true = [], []
        for piece in data.pieces:
            label = getattr(piece, task)
            if label is None:
                continue
            probs = model.class_probs(_window(piece, model.vocab, window))
            pred.append(model.class_names[int(np.argmax(probs))])
            true.append(label)
        report.skipped[task] += len(data.pieces) - len(true)
        per_task.setdefault(task, []).append((metrics.accuracy(pred, true), metrics.macro_f1(pred, true)))
        report.details.setdefault(f"{task}.per_model", []).append(
            {"model": str(model.path), "accuracy": _safe(per_task[task][-1][0]),
             "macro_f1": _safe(per_task[task][-1][1]), "n": len(true)})
    r = report.results
    for task, scores in per_task.items():
        for j, name in enumerate(("accuracy", "macro_f1")):
            mean, std = metrics.mean_std([s[j] for s in scores])
            r[f"{task}.{name}"] = mean
            r[f"{task}.{name}.std"] = std
        r[f"{task}.n_models"] = len(scores)


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


def evaluate(cfg: EvalConfig) -> Report:
    """Open the models, load the held-out pieces, compute every metric; nothing is written."""
    from training.eval_model import open_model

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
        raise ValueError(f"window {window} is too short for a {cfg.min_prompt_tokens}-token prompt and "
                         f"{cfg.target_tokens} targets")
    data = load_eval_data(cfg.data, vocab=main.vocab, labels_csv=cfg.labels_csv, split=cfg.split,
                          max_pieces=cfg.max_pieces, cache_dir=cfg.cache_dir, shared_dir=cfg.shared_dir)
    if not data.pieces:
        raise ValueError(f"{cfg.data}: no {cfg.split} pieces to evaluate (skipped: {dict(data.skipped)})")
    report = Report()
    log.info("evaluating %s on %d %s pieces of %s", main.path, len(data.pieces), cfg.split, cfg.data)
    if "continuation" in cfg.groups:
        continuation(main, data.pieces, cfg, window, conditional=False, report=report)
    if "conditional" in cfg.groups:
        continuation(main, data.pieces, cfg, window, conditional=True, report=report)
    if "control" in cfg.groups:
        attribute_control(main, data.pieces, cfg, report)
    if "keymeter" in cfg.groups:
        key_meter(main, data, window, report)
        key_meter_baselines(main.vocab, data, window, report)
    if "classification" in cfg.groups:
        classification(models, data, window, report)
    r = report.results
    r["n_pieces"] = len(data.pieces)
    r["sources"] = data.sources
    r["model"] = str(main.path)
    r["model.kind"] = main.kind
    r["model.ffn"] = main.ffn
    r["data"] = cfg.data
    r["split"] = cfg.split
    r["window"] = window
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

    vocab = TypedVocab.default()
    window = cfg.window or 1024
    data = load_eval_data(cfg.data, vocab=vocab, labels_csv=cfg.labels_csv, split=cfg.split,
                          max_pieces=cfg.max_pieces, cache_dir=cfg.cache_dir, shared_dir=cfg.shared_dir)
    if not data.pieces:
        raise ValueError(f"{cfg.data}: no {cfg.split} pieces to evaluate (skipped: {dict(data.skipped)})")
    report = Report()
    key_meter_baselines(vocab, data, window, report)
    r = report.results
    for task in ("key", "meter"):
        report.skipped[task] += sum(getattr(p, task) is None for p in data.pieces)
    r.update({"n_pieces": len(data.pieces), "sources": data.sources, "model": "none (baselines only)",
              "data": cfg.data, "split": cfg.split, "window": window})
    r.update({f"skipped.{k}": v for k, v in sorted(report.skipped.items())})
    r.update({f"skipped.loading.{k}": v for k, v in sorted(data.skipped.items())})
    report.details["meter.names"] = list(analysis.METERS)
    return report


def write_outputs(report: Report, out: Path, *, plots: bool = True) -> list[Path]:
    """results.json (flat metrics + "details"), results.md next to it, and the PNG plots."""
    from training import eval_plots

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
    lines = [f"# TypeMoE evaluation: {results.get('model', '?')}", "",
             f"Data: `{results.get('data')}` ({results.get('split')} split), {results.get('n_pieces')} pieces, "
             f"window {results.get('window')} tokens.", "", "| metric | value |", "| --- | --- |"]
    for k, v in results.items():
        if k in ("model", "data", "split", "n_pieces", "window", "sources") or isinstance(v, dict):
            continue
        lines.append(f"| {k} | {_fmt(v)} |")
    lines += ["", "Sources: " + ", ".join(f"{s} ({n})" for s, n in results.get("sources", {}).items()), ""]
    return "\n".join(lines)
