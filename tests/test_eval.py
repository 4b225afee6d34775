"""`typemoe eval` end to end on real tunes with a tiny random model: stable result keys, skips, outputs,
the ONNX and torch adapters agreeing, an oracle through the metric pipeline, and the ablations.

The labelled tune folder (`labelled_folder`, N_TUNES tunes) and the tiny checkpoint (`ckpt`) are conftest's.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import N_TUNES

pytest.importorskip("torch")

from typemoe.training.evaluation import evaluate  # noqa: E402
from typemoe.training.evaluation.eval_model import open_model  # noqa: E402

STABLE_KEYS = (
    "continuation.hits@1",
    "continuation.hits@5",
    "continuation.bleu2",
    "conditional.hits@1",
    "conditional.hits@5",
    "conditional.bleu2",
    "control.key_match",
    "control.meter_match",
    "key.accuracy",
    "key.mirex",
    *(f"key.streaming.{n}" for n in (1, 2, 4, 8)),
    *(f"key.baselines.{b}" for b in ("krumhansl", "aarden", "temperley", "simple")),
    "meter.accuracy",
    "meter.family_accuracy",
    *(f"meter.streaming.{n}" for n in (1, 2, 4, 8)),
    "meter.baselines.autocorrelation",
    "meter.baselines.majority",
    "emotion.accuracy",
    "emotion.macro_f1",
    "n_pieces",
    "sources",
)


def _cfg(folder, out, models, **kw):
    d, _ = folder
    base = dict(
        models=models,
        data=f"folder:{d}",
        labels_csv=d / "labels.csv",
        split="all",
        out=out,
        control_pieces=2,
        control_tokens=32,
        threads=1,
    )
    return evaluate.EvalConfig(**{**base, **kw})


def test_eval_end_to_end(labelled_folder, ckpt, tmp_path):
    out = tmp_path / "eval" / "results.json"
    report = evaluate.evaluate(_cfg(labelled_folder, out, [ckpt, ckpt]))
    written = evaluate.write_outputs(report, out)
    doc = json.loads(out.read_text())
    for k in STABLE_KEYS:
        assert k in doc, k
    for k, v in doc.items():
        if (
            k.split(".")[0] in ("continuation", "conditional", "control", "key", "meter", "emotion")
            and isinstance(v, float)
            and not k.endswith((".std", ".n"))
        ):
            assert 0.0 <= v <= 1.0, (k, v)
    _, rows = labelled_folder
    assert doc["n_pieces"] == N_TUNES and sum(doc["sources"].values()) == N_TUNES
    assert doc["key.n"] == sum(bool(r["key"]) for r in rows)
    assert doc["skipped.key"] == sum(not r["key"] for r in rows)  # unlabelled pieces skipped and counted
    assert doc["emotion.n_models"] == 2 and doc["emotion.accuracy.std"] == 0.0  # the same model twice
    assert doc["continuation.n"] + doc.get("skipped.continuation", 0) == N_TUNES
    assert len(doc["details"]["key.confusion"]) == 24
    names = {p.name for p in written}
    assert {
        "results.json",
        "results.md",
        "results.key_confusion.png",
        "results.meter_confusion.png",
        "results.streaming.png",
        "results.expert_share.png",
    } <= names
    assert "| continuation.hits@1 |" in (tmp_path / "eval" / "results.md").read_text()
    # issue 12: the whole piece as the bridge hears it, and every number again per source
    for k in (
        "key.whole.accuracy",
        "key.whole_mean.accuracy",
        "meter.whole.accuracy",
        "meter.whole_mean.family_accuracy",
        "key.baselines.simple.whole",
        "meter.baselines.autocorrelation.whole.family",
    ):
        assert 0.0 <= doc[k] <= 1.0, k
    src = next(iter(doc["sources"]))
    for k in (
        "key.accuracy",
        "key.whole.accuracy",
        "meter.family_accuracy",
        "continuation.hits@1",
        "key.baselines.temperley",
        "meter.baselines.autocorrelation",
    ):
        assert doc[f"by_source.{src}.{k}"] == doc[k], k  # one source: per source == overall
    assert doc["perturb"] == "none"


def test_onnx_and_torch_models_agree(ckpt, tmp_path):
    """The eval adapter reads the same heads from the checkpoint and from its ONNX export."""
    pytest.importorskip("onnx")
    from export_fixtures import make_tiny_model_dir

    onnx_model = open_model(make_tiny_model_dir(tmp_path / "model"))
    torch_model = open_model(ckpt)
    assert (onnx_model.kind, torch_model.kind) == ("onnx", "torch")
    rng = np.random.default_rng(0)
    seq = [torch_model.vocab.bos_id, *rng.integers(4, 200, size=40).tolist()]
    at = [5, 6, 20, 41]
    a, b = torch_model.outputs_at(seq, at), onnx_model.outputs_at(seq, at)
    np.testing.assert_allclose(a.logits, b.logits, atol=2e-3)
    np.testing.assert_allclose(a.key_probs, b.key_probs, atol=1e-3)
    np.testing.assert_allclose(a.meter_probs, b.meter_probs, atol=1e-3)
    np.testing.assert_allclose(torch_model.class_probs(seq), onnx_model.class_probs(seq), atol=1e-3)
    music = [torch_model.vocab.bos_id, *torch_model.vocab.encode_score(_tune())[:40]]
    assert torch_model.generate(music, 24, temperature=0.0) == onnx_model.generate(music, 24, temperature=0.0)


def _tune():
    from conftest import music21_scores

    return music21_scores(1)[0][1]


class _Oracle:
    """A fake model that knows every piece: perfect next-token logits, greedy continuations and heads.

    It records where the key/meter heads are read, to pin down the streaming definition.
    """

    kind, ffn, task, class_names, path = "oracle", "typemoe", None, None, "oracle"

    def __init__(self, vocab, pieces):
        from typemoe import analysis

        self.vocab, self.context_len = vocab, 4096
        self.key_names, self.meter_names = list(analysis.KEYS), list(analysis.METERS)
        self.by_music = {tuple(p.tokens[:16].tolist()): p for p in pieces}
        self.reads: list[tuple[int, list[int]]] = []

    def _piece(self, seq):
        music = [t for t in seq if self.vocab.family_of[t] != 5]
        return self.by_music[tuple(music[:16])], music

    def outputs_at(self, seq, at):
        from typemoe.training.evaluation.eval_model import HeadOutputs

        piece, _ = self._piece(seq)
        self.reads.append((len(seq), list(at)))
        logits = np.zeros((len(at), self.vocab.size))
        for row, p in enumerate(at):
            if p < len(seq):
                logits[row, seq[p]] = 1.0
        keys = np.zeros((len(at), 24))
        keys[:, piece.key if piece.key is not None else 0] = 1
        meters = np.zeros((len(at), len(self.meter_names)))
        meters[:, piece.meter if piece.meter is not None else 0] = 1
        return HeadOutputs(logits, keys, meters)

    def generate(self, prefix, n, **kw):
        piece, music = self._piece(prefix)
        return piece.tokens[len(music) : len(music) + n].tolist()


def test_metric_pipeline_on_an_oracle(labelled_folder, vocab):
    """Known answers through the whole pipeline: an oracle scores 1.0, and heads are read where documented."""
    from typemoe.training.evaluation.eval_data import load_eval_data

    d, _ = labelled_folder
    data = load_eval_data(f"folder:{d}", vocab=vocab, labels_csv=d / "labels.csv", split="all")
    oracle = _Oracle(vocab, data.pieces)
    cfg = evaluate.EvalConfig(models=[None], data="x", out="r.json")
    report = evaluate.Report()
    evaluate.continuation(oracle, data.pieces, cfg, 1024, conditional=False, report=report)
    evaluate.continuation(oracle, data.pieces, cfg, 1024, conditional=True, report=report)
    oracle.reads.clear()
    evaluate.key_meter(oracle, data, 1024, report)
    r = report.results
    for k in (
        "continuation.hits@1",
        "continuation.hits@5",
        "continuation.bleu2",
        "conditional.hits@1",
        "conditional.bleu2",
        "key.accuracy",
        "key.mirex",
        "meter.accuracy",
        "key.streaming.1",
        "meter.streaming.8",
    ):
        assert r[k] == pytest.approx(1.0), k
    piece = next(p for p in data.pieces if p.key is not None)
    seq = [vocab.bos_id, *piece.tokens[:1023].tolist()]
    bars = [i for i, t in enumerate(seq) if vocab.family_of[t] == 0]
    want = sorted({bars[n] + 1 if len(bars) > n else len(seq) for n in (1, 2, 4, 8)} | {len(seq)})
    assert (len(seq), want) in oracle.reads  # after N bars = through the Bar token that opens bar N + 1


@pytest.mark.slow
def test_ablation_and_label_efficiency(tmp_path, monkeypatch):
    """Every variant trains through typemoe.training.learn.pretrain for 2 steps and is evaluated; tables and plot appear."""
    from training_fixtures import build_shards

    from typemoe.training.evaluation import ablation

    shards = build_shards(tmp_path / "shards", n=24)
    monkeypatch.setattr(ablation, "LABEL_FRACTIONS", (0.5, 1.0))
    train_args = [
        "--batch-size",
        "2",
        "--micro-batch",
        "2",
        "--seq-len",
        "64",
        "--threads",
        "1",
        "--log-every",
        "1",
        "--eval-every",
        "1000",
        "--ckpt-every",
        "1000",
    ]
    ev = evaluate.EvalConfig(
        models=[None],
        data=str(shards),
        out=tmp_path / "abl" / "results.json",
        split="all",
        max_pieces=3,
        window=160,
        prompt_tokens=64,
        threads=1,
        plots=False,
    )
    rows = ablation.run_ablation(ablation.AblationConfig(eval=ev, steps=2, train_args=train_args))
    assert set(rows) == {"typemoe", "dense", "switch", "clm"}
    assert rows["dense"]["model.ffn"] == "dense" and rows["switch"]["model.ffn"] == "switch"
    table = (tmp_path / "abl" / "results.md").read_text()
    assert "| switch |" in table and "continuation.hits@1" in table
    again = ablation.run_ablation(ablation.AblationConfig(eval=ev, steps=2, train_args=train_args))
    assert again["typemoe"]["continuation.hits@1"] == rows["typemoe"]["continuation.hits@1"]  # runs reused
    ev2 = evaluate.EvalConfig(
        models=[None],
        data=str(shards),
        out=tmp_path / "le" / "results.json",
        split="all",
        max_pieces=3,
        window=160,
        threads=1,
        plots=True,
    )
    rows = ablation.run_label_efficiency(ablation.AblationConfig(eval=ev2, steps=2, train_args=train_args))
    assert set(rows) == {"50%", "100%"}
    assert (tmp_path / "le" / "results.label_efficiency.png").is_file()
