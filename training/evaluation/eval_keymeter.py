"""Key and meter of held-out pieces: the model's heads (first window, after 1/2/4/8 bars, the whole piece
as the bridge hears it) beside music21's key profiles and the onset-autocorrelation meter baseline, on
the same notes, overall and per source."""

from __future__ import annotations

import math

import numpy as np

from typemoe import analysis, listening
from typemoe.training.evaluation import baselines, metrics
from typemoe.training.evaluation.eval_data import EvalData, EvalPiece, signature_of_key
from typemoe.training.evaluation.eval_report import (
    STREAM_BARS,
    Report,
    _bar_indices,
    _label_index,
    _mirex_with_misses,
    _window,
)


def _parse_pred(names: list[str], probs: np.ndarray, parse) -> int:
    return _label_index(names, int(np.argmax(probs)), parse)


def read_whole_piece(model, music: np.ndarray, shifts=None) -> tuple[listening.Heads, listening.Heads]:
    """A whole piece heard as the bridge hears it (typemoe.listening, as `typemoe analyze`): the (key,
    meter) answers at its end (one hearing, the bridge's) and for the whole piece (the key head heard in
    twelve transpositions as analyze hears it, or `shifts` as listening.key_heads_transposed takes them),
    through the directory's fusions when it has them."""
    heard = listening.listen(model, [int(i) for i in music])
    readers = getattr(model, "ort", None)  # an exported directory; a checkpoint's heads answer alone
    key_heads = listening.key_heads_transposed(model, heard, shifts)
    return listening.at_end(heard, readers), listening.whole_piece(heard, readers, key_heads)


def _readings(model, piece: EvalPiece, window: int, whole_max_tokens: int | None, whole_shifts=None) -> dict:
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
    fused = getattr(getattr(model, "ort", None), "answer", None)  # an exported directory's fusions

    def parse(key_probs, meter_probs):
        return _parse_pred(probs=key_probs, **kp), _parse_pred(probs=meter_probs, **mp)

    def pred(
        ids, key_probs, meter_probs
    ):  # the model's (key, meter) answer, as analyze and the bridge give it
        if fused is not None:
            key_probs, meter_probs = fused(ids, key_probs, meter_probs)
        return parse(key_probs, meter_probs)

    end = order.index(reads["whole"])
    rec = {"first": pred(seq, out.key_probs[end], out.meter_probs[end])}
    for n in STREAM_BARS:
        row = order.index(reads[n])
        rec[n] = pred(seq[: reads[n]], out.key_probs[row], out.meter_probs[row])
    if whole_max_tokens is not None:
        music = piece.tokens[:whole_max_tokens]
        end, whole = read_whole_piece(model, music, whole_shifts)
        rec["whole"] = parse(end.key_probs, end.meter_probs)
        rec["whole_mean"] = parse(whole.key_probs, whole.meter_probs)
    return rec


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
    whole_quick: bool = False,
) -> list[dict]:
    """Head accuracy on the labelled pieces: first window, streaming, whole piece; overall and per source.
    whole_quick: the whole piece's key head from one hearing (`typemoe analyze --quick`), not twelve."""
    labelled = [p for p in data.pieces if p.key is not None or p.meter is not None or p.signature is not None]
    shifts = listening.ONE_HEARING if whole_quick else None
    recs = [_readings(model, p, window, whole_max_tokens, shifts) for p in labelled]
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
