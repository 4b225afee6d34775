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
- Key / meter heads, first window (key.accuracy, meter.accuracy, ...): the head at the LAST position of
  the first window (the head is trained at every position, and the last has heard the most).
- Whole piece (key.whole.*, key.whole_mean.*; off with whole_max_tokens=0): the piece, up to
  whole_max_tokens tokens, read as the bridge hears it: windows of the context that slide by about 3/4
  of a context, each restarting at a bar line after BOS (the bridge's OrtSession keeps 3/4 of its
  context when it slides). "whole" is the running estimate at the end of the piece; "whole_mean" the
  argmax of the key / meter probabilities averaged over every bar line of the piece. The baselines read
  the same notes (key.baselines.NAME.whole).
- Key signature (key.signature, key.whole.signature, key.baselines.NAME.signature): for sources whose key
  label is only the file's key-signature meta (training/eval_data.py META_KEY_SOURCES: classical_piano,
  VGMIDI; the files always say "major"), the share of pieces whose predicted key has the file's signature
  (a key and its relative minor share one). Their meter label is the meta's FIRST time signature.
- Per source: every key/meter and continuation number again under by_source.SOURCE. (a shard dir of
  several sources, or one source spec).
- Perturbed (perturb = velocity | timing | all): the same pieces, humanized by training/perturb.py
  before tokenization (seeded per piece); results carry "perturb".
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
from training.eval_data import EvalData, EvalPiece, load_eval_data, signature_of_key
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
    perturb: str | None = None  # velocity | timing | all: humanize every piece (training/perturb.py)
    whole_max_tokens: int = 16384  # whole-piece reading reads at most this many tokens; 0 = off
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
            from training.perturb import PERTURB_KINDS

            if self.perturb not in PERTURB_KINDS:
                raise ValueError(
                    f"unknown perturbation {self.perturb!r}; expected one of {', '.join(PERTURB_KINDS)}"
                )
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
    bars = [
        i for i in _bar_indices(music[: limit + 1].tolist(), vocab) if cfg.min_prompt_tokens <= i <= limit
    ]
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


def _parse_pred(names: list[str], probs: np.ndarray, parse) -> int:
    return _label_index(names, int(np.argmax(probs)), parse)


def _slide_reads(music: np.ndarray, vocab, window: int) -> list[tuple[int, list[int]]]:
    """Windows that slide through a piece as the bridge hears it: (start, [music index to read after]).

    Each window is [BOS] + music[start : start + window - 1]. The first starts at 0; the next at the last
    bar line at or before 3/4 of the current one (the bridge keeps 3/4 of its context when it slides).
    A window reads after every Bar token in its settled part (from a quarter of a window in, where it
    has heard at least that much; the first window from its start), each bar in exactly one window, and
    the last window also at the piece's end. Index i means "having read music[: i + 1]".
    """
    w = window - 1
    if len(music) <= w:
        bars = [int(i) for i in np.flatnonzero(vocab.family_of[music] == 0)]
        return [(0, sorted(set(bars) | {len(music) - 1}))]
    is_bar = vocab.family_of[music] == 0
    starts = [0]
    while starts[-1] + w < len(music):
        s, target = starts[-1], starts[-1] + 3 * w // 4
        bars = np.flatnonzero(is_bar[s + 1 : target + 1])
        starts.append(s + 1 + int(bars[-1]) if len(bars) else target)
    out = []
    for j, s in enumerate(starts):
        lo = 0 if j == 0 else s + w // 4
        hi = starts[j + 1] + w // 4 if j + 1 < len(starts) else min(s + w, len(music))
        reads = [int(i) for i in np.flatnonzero(is_bar[lo:hi]) + lo]
        if j + 1 == len(starts):
            reads = sorted(set(reads) | {hi - 1})
        out.append((s, reads))
    return out


def read_whole_piece(
    model, music: np.ndarray, window: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The heads over a whole piece: (key, meter) probabilities at its end as the sliding windows hear
    it, and (key, meter) probabilities averaged over every bar line (each heard once, _slide_reads)."""
    vocab = model.vocab
    keys, meters = [], []
    for start, reads in _slide_reads(music, vocab, window):
        if not reads:
            continue
        seq = [vocab.bos_id, *music[start : start + window - 1].tolist()]
        out = model.outputs_at(seq, [i - start + 2 for i in reads])
        keys.append(out.key_probs)
        meters.append(out.meter_probs)
    k, m = np.concatenate(keys), np.concatenate(meters)
    return k[-1], m[-1], k.mean(axis=0), m.mean(axis=0)


def _readings(model, piece: EvalPiece, window: int, whole_max_tokens: int | None) -> dict:
    """The model's key/meter answers on one piece: first window (end and after 1/2/4/8 bars), whole piece
    (end of the slide, and the mean over bars)."""
    vocab = model.vocab
    seq = _window(piece, vocab, window)
    bars = _bar_indices(seq, vocab)
    reads = {n: (bars[n] + 1 if len(bars) > n else len(seq)) for n in STREAM_BARS} | {"whole": len(seq)}
    order = sorted(set(reads.values()))
    out = model.outputs_at(seq, order)
    kp = dict(names=model.key_names, parse=analysis.parse_key)
    mp = dict(names=model.meter_names, parse=analysis.parse_meter)
    reader = meter_reader(model)

    def meter(ids, head):  # the model's meter answer: rhythm + head when the model has a fusion
        return reader.probs(ids, head) if reader is not None else head

    end = order.index(reads["whole"])
    rec = {
        "first": (
            _parse_pred(probs=out.key_probs[end], **kp),
            _parse_pred(probs=meter(seq, out.meter_probs[end]), **mp),
        )
    }
    for n in STREAM_BARS:
        row = order.index(reads[n])
        rec[n] = (
            _parse_pred(probs=out.key_probs[row], **kp),
            _parse_pred(probs=meter(seq[: reads[n]], out.meter_probs[row]), **mp),
        )
    if whole_max_tokens is not None:
        music = piece.tokens[:whole_max_tokens]
        k_end, m_end, k_mean, m_mean = read_whole_piece(model, music, window)
        rec["whole"] = (_parse_pred(probs=k_end, **kp), _parse_pred(probs=meter(music, m_end), **mp))
        rec["whole_mean"] = (_parse_pred(probs=k_mean, **kp), _parse_pred(probs=meter(music, m_mean), **mp))
    return rec


def meter_reader(model):
    """The exported model directory's typemoe.meter.MeterReader when it holds a meter fusion, else None
    (the meter head answers alone)."""
    reader = getattr(getattr(model, "ort", None), "meter", None)
    return reader if reader is not None and reader.fusion is not None else None


def _baseline_readings(vocab, piece: EvalPiece, window: int, whole_max_tokens: int | None) -> dict:
    """The music21 key profiles and the autocorrelation meter on the notes the model read: the first window,
    and (with whole_max_tokens) the whole piece. None where there are no notes."""
    spans = {"first": _window(piece, vocab, window)[1:]}
    if whole_max_tokens is not None:
        spans["whole"] = piece.tokens[:whole_max_tokens].tolist()
    rec = {}
    for span, ids in spans.items():
        notes = baselines.notes_of_score(vocab.decode(ids))
        has_key = len(notes) > 0 and (piece.key is not None or piece.signature is not None)
        for name in baselines.KEY_BASELINES:
            rec[(span, name)] = baselines.key_estimate(notes, name)[0] if has_key else None
        has_meter = len(notes) > 0 and piece.meter is not None
        rec[(span, "autocorrelation")] = baselines.meter_estimate(notes)[0] if has_meter else None
    return rec


def _sig(k: int | None) -> int | None:
    return None if k is None else signature_of_key(k)


def _score_key_meter(
    pieces: list[EvalPiece],
    model_recs: list[dict] | None,
    base_recs: list[dict] | None,
    prefix: str,
    report: Report,
) -> None:
    """Every key/meter number of a set of pieces (all of them, or one source) under `prefix`."""
    r = report.results
    keyed = [i for i, p in enumerate(pieces) if p.key is not None]
    metered = [i for i, p in enumerate(pieces) if p.meter is not None]
    signed = [i for i, p in enumerate(pieces) if p.signature is not None]
    true_key = [pieces[i].key for i in keyed]
    true_meter = [pieces[i].meter for i in metered]
    true_sig = [pieces[i].signature for i in signed]
    r[f"{prefix}key.n"], r[f"{prefix}meter.n"] = len(keyed), len(metered)
    if signed:
        r[f"{prefix}key.signature.n"] = len(signed)
    fam = analysis.meter_family
    if model_recs is not None:
        for reading, name in (("first", ""), ("whole", "whole."), ("whole_mean", "whole_mean.")):
            if reading not in model_recs[0]:
                continue
            pk = [model_recs[i][reading][0] for i in keyed]
            pm = [model_recs[i][reading][1] for i in metered]
            r[f"{prefix}key.{name}accuracy"] = metrics.accuracy(pk, true_key)
            r[f"{prefix}key.{name}mirex"] = metrics.mirex(pk, true_key) if keyed else math.nan
            r[f"{prefix}meter.{name}accuracy"] = metrics.accuracy(pm, true_meter)
            r[f"{prefix}meter.{name}family_accuracy"] = (
                metrics.meter_family_accuracy(pm, true_meter) if metered else math.nan
            )
            if signed:
                r[f"{prefix}key.{name}signature"] = metrics.accuracy(
                    [_sig(model_recs[i][reading][0]) for i in signed], true_sig
                )
        for n in STREAM_BARS:
            r[f"{prefix}key.streaming.{n}"] = metrics.accuracy([model_recs[i][n][0] for i in keyed], true_key)
            r[f"{prefix}meter.streaming.{n}"] = metrics.accuracy(
                [model_recs[i][n][1] for i in metered], true_meter
            )
    if base_recs is not None:
        for span, name in (("first", ""), ("whole", ".whole")):
            if (span, "autocorrelation") not in base_recs[0]:
                continue
            for b in baselines.KEY_BASELINES:
                pk = [base_recs[i][(span, b)] for i in keyed]
                r[f"{prefix}key.baselines.{b}{name}"] = metrics.accuracy(pk, true_key)
                r[f"{prefix}key.baselines.{b}{name}.mirex"] = _mirex_with_misses(pk, true_key)
                if signed:
                    r[f"{prefix}key.baselines.{b}{name}.signature"] = metrics.accuracy(
                        [_sig(base_recs[i][(span, b)]) for i in signed], true_sig
                    )
            pm = [base_recs[i][(span, "autocorrelation")] for i in metered]
            r[f"{prefix}meter.baselines.autocorrelation{name}"] = metrics.accuracy(pm, true_meter)
            r[f"{prefix}meter.baselines.autocorrelation{name}.family"] = metrics.accuracy(
                [fam(p) if p is not None else None for p in pm], [fam(t) for t in true_meter]
            )


def key_meter(
    model,
    data: EvalData,
    window: int,
    report: Report,
    *,
    whole_max_tokens: int | None = None,
    by_source: bool = True,
) -> list[dict]:
    """Head accuracy on the labelled pieces: first window, streaming, whole piece; overall and per source."""
    labelled = [p for p in data.pieces if p.key is not None or p.meter is not None or p.signature is not None]
    recs = [_readings(model, p, window, whole_max_tokens) for p in labelled]
    for task in ("key", "meter"):
        report.skipped[task] += sum(getattr(p, task) is None for p in data.pieces)
    if labelled:
        _score_key_meter(labelled, recs, None, "", report)
    if by_source:
        for src in sorted({p.source for p in labelled}):
            idx = [i for i, p in enumerate(labelled) if p.source == src]
            _score_key_meter(
                [labelled[i] for i in idx], [recs[i] for i in idx], None, f"by_source.{src}.", report
            )
    pred = {
        "key": [rec["first"][0] for p, rec in zip(labelled, recs) if p.key is not None],
        "meter": [rec["first"][1] for p, rec in zip(labelled, recs) if p.meter is not None],
    }
    true = {
        "key": [p.key for p in labelled if p.key is not None],
        "meter": [p.meter for p in labelled if p.meter is not None],
    }
    report.results.setdefault("key.accuracy", math.nan)
    report.results.setdefault("meter.accuracy", math.nan)
    report.details["key.confusion"] = metrics.confusion_matrix(
        pred["key"], true["key"], len(analysis.KEYS)
    ).tolist()
    report.details["meter.confusion"] = metrics.confusion_matrix(
        pred["meter"], true["meter"], len(analysis.METERS)
    ).tolist()
    if true["key"]:
        report.details["key.mirex_breakdown"] = metrics.mirex_breakdown(pred["key"], true["key"])
    return recs


def key_meter_baselines(
    vocab,
    data: EvalData,
    window: int,
    report: Report,
    *,
    whole_max_tokens: int | None = None,
    by_source: bool = True,
) -> None:
    """The baselines on the same pieces and the same notes as key_meter (first window; whole piece)."""
    labelled = [p for p in data.pieces if p.key is not None or p.meter is not None or p.signature is not None]
    recs = [_baseline_readings(vocab, p, window, whole_max_tokens) for p in labelled]
    if labelled:
        _score_key_meter(labelled, None, recs, "", report)
    if by_source:
        for src in sorted({p.source for p in labelled}):
            idx = [i for i, p in enumerate(labelled) if p.source == src]
            _score_key_meter(
                [labelled[i] for i in idx], None, [recs[i] for i in idx], f"by_source.{src}.", report
            )
    r = report.results
    true = {
        "key": [p.key for p in labelled if p.key is not None],
        "meter": [p.meter for p in labelled if p.meter is not None],
    }
    for task in ("key", "meter"):
        train = [x for x in data.train_labels.get(task, []) if x is not None]
        majority = (
            baselines.majority_class(train)
            if train
            else (baselines.majority_class(true[task]) if true[task] else None)
        )
        r[f"{task}.baselines.majority"] = metrics.accuracy([majority] * len(true[task]), true[task])
        report.details[f"{task}.majority_class"] = (
            (analysis.KEYS if task == "key" else analysis.METERS)[majority] if majority is not None else None
        )
        report.details[f"{task}.majority_from"] = (
            "train split" if train else "held-out labels (no train split)"
        )
        r.setdefault(f"{task}.n", len(true[task]))
    auto = [rec[("first", "autocorrelation")] for p, rec in zip(labelled, recs) if p.meter is not None]
    report.details["meter.baselines.autocorrelation.confusion"] = metrics.confusion_matrix(
        [p if p is not None else analysis.METERS.index("other") for p in auto],
        true["meter"],
        len(analysis.METERS),
    ).tolist()


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
            {
                "model": str(model.path),
                "accuracy": _safe(per_task[task][-1][0]),
                "macro_f1": _safe(per_task[task][-1][1]),
                "n": len(true),
            }
        )
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
    from training.eval_model import open_model

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
        key_meter(main, data, window, report, whole_max_tokens=_whole(cfg), by_source=cfg.by_source)
        key_meter_baselines(
            main.vocab, data, window, report, whole_max_tokens=_whole(cfg), by_source=cfg.by_source
        )
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


# --------------------------------------------------------------------------- the per-source table (issue 12)

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
    per perturbation ("none" or a training/perturb.py kind), on the same pieces and notes.

    Each config is one source; sources the shipped model never trained on are read whole (split "all").
    Writes out (every run's flat results) and out.md (the table). Returns the paths.
    """
    import dataclasses

    bad = [p for p in perturbs if p not in ("none", "velocity", "timing", "all")]
    if bad or not perturbs:
        raise ValueError(
            f"unknown table perturbations {bad or perturbs}; expected none, velocity, timing, all"
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
        "Model = the key / meter head; baselines read the same notes. `first` = the first context window "
        "(what `typemoe analyze` reads), `whole` = the running estimate at the end of the piece read as "
        "the bridge hears it (sliding windows), `mean` = the whole piece's probabilities averaged over its "
        "bar lines. Best profile = the best of music21's four key profiles on that row (picked after the "
        "fact). Key signature: the predicted key's signature against the file's key-signature meta, for "
        "sources whose files carry only that (always written as major). Perturb `all` = a velocity curve "
        "+ per-note noise + +-1/32-beat jitter + legato/staccato (training/perturb.py).",
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
