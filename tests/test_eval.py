"""`typemoe eval` end to end on real tunes with a tiny random model: stable keys, skips, outputs, ablations."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

pytest.importorskip("torch")

from training import eval_cli, evaluate  # noqa: E402
from training.eval_model import open_model  # noqa: E402

STABLE_KEYS = (
    "continuation.hits@1", "continuation.hits@5", "continuation.bleu2",
    "conditional.hits@1", "conditional.hits@5", "conditional.bleu2",
    "control.key_match", "control.meter_match",
    "key.accuracy", "key.mirex", *(f"key.streaming.{n}" for n in (1, 2, 4, 8)),
    *(f"key.baselines.{b}" for b in ("krumhansl", "aarden", "temperley", "simple")),
    "meter.accuracy", "meter.family_accuracy", *(f"meter.streaming.{n}" for n in (1, 2, 4, 8)),
    "meter.baselines.autocorrelation", "meter.baselines.majority",
    "emotion.accuracy", "emotion.macro_f1", "n_pieces", "sources",
)
N_TUNES = 12


@pytest.fixture(scope="module")
def labelled_folder(tmp_path_factory):
    """Real Essen tunes as MIDI + a labels CSV (key on 3 of 4 tunes, meter, emotion cycling Q1..Q4)."""
    from conftest import music21_scores

    from typemoe import analysis

    d = tmp_path_factory.mktemp("tunes")
    rows = []
    for i, (_, score) in enumerate(music21_scores(N_TUNES)):
        ts, ks = score.time_signatures, score.key_signatures
        meter = f"{ts[0].numerator}/{ts[0].denominator}" if len(ts) else ""
        key = analysis.KEYS[(7 * ks[0].key) % 12] if len(ks) and i % 4 else ""
        score.dump_midi(str(d / f"tune{i:02d}.mid"))
        rows.append({"path": f"tune{i:02d}.mid", "key": key, "meter": meter, "genre": "folk",
                     "emotion": f"Q{i % 4 + 1}"})
    with (d / "labels.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "key", "meter", "genre", "emotion"])
        w.writeheader()
        w.writerows(rows)
    return d, rows


@pytest.fixture(scope="module")
def ckpt():
    from export_fixtures import tiny_checkpoint_dir

    return tiny_checkpoint_dir()


def _cfg(folder, out, models, **kw):
    d, _ = folder
    base = dict(models=models, data=f"folder:{d}", labels_csv=d / "labels.csv", split="all", out=out,
                control_pieces=2, control_tokens=32, threads=1)
    return evaluate.EvalConfig(**{**base, **kw})


def test_eval_end_to_end(labelled_folder, ckpt, tmp_path):
    out = tmp_path / "eval" / "results.json"
    report = evaluate.evaluate(_cfg(labelled_folder, out, [ckpt, ckpt]))
    written = evaluate.write_outputs(report, out)
    doc = json.loads(out.read_text())
    for k in STABLE_KEYS:
        assert k in doc, k
    for k, v in doc.items():
        if k.split(".")[0] in ("continuation", "conditional", "control", "key", "meter", "emotion") \
                and isinstance(v, float) and not k.endswith((".std", ".n")):
            assert 0.0 <= v <= 1.0, (k, v)
    _, rows = labelled_folder
    assert doc["n_pieces"] == N_TUNES and sum(doc["sources"].values()) == N_TUNES
    assert doc["key.n"] == sum(bool(r["key"]) for r in rows)
    assert doc["skipped.key"] == sum(not r["key"] for r in rows)  # unlabelled pieces skipped and counted
    assert doc["emotion.n_models"] == 2 and doc["emotion.accuracy.std"] == 0.0  # the same model twice
    assert doc["continuation.n"] + doc.get("skipped.continuation", 0) == N_TUNES
    assert len(doc["details"]["key.confusion"]) == 24
    names = {p.name for p in written}
    assert {"results.json", "results.md", "results.key_confusion.png", "results.meter_confusion.png",
            "results.streaming.png", "results.expert_share.png"} <= names
    assert "| continuation.hits@1 |" in (tmp_path / "eval" / "results.md").read_text()


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


def test_prompt_ends_at_a_bar_line(vocab):
    from training.evaluate import EvalConfig, _prompt_cut

    bar = vocab.id("Bar_None")
    pitch = vocab.id("Pitch_60")
    music = np.array(([bar] + [pitch] * 39) * 10)  # bars of 40 tokens
    cfg = EvalConfig(models=[None], data="music21", out="r.json", prompt_tokens=100, min_prompt_tokens=32)
    assert _prompt_cut(music, vocab, cfg, budget=1000) == 80  # the last bar line <= 100
    assert _prompt_cut(music[:90], vocab, cfg, budget=1000) is None  # 90 - 64 < 32: too short


def test_cli_errors(tmp_path, capsys, ckpt):
    assert eval_cli.main(["--model", str(tmp_path / "nope"), "--data", "music21", "--out", str(tmp_path / "r.json")]) == 2
    assert "nope" in capsys.readouterr().err
    assert eval_cli.main(["--model", str(ckpt), "--data", "music21", "--steps", "3",
                          "--out", str(tmp_path / "r.json")]) == 2
    assert "--ablation" in capsys.readouterr().err
    assert eval_cli.main(["--model", str(ckpt), "--data", "folder:" + str(tmp_path / "missing"),
                          "--out", str(tmp_path / "r.json")]) == 2
    assert "missing" in capsys.readouterr().err


def test_no_model_and_no_default_is_a_clear_error(tmp_path, capsys, monkeypatch):
    from training import eval_model

    monkeypatch.setattr(eval_model, "default_model_dir", lambda: tmp_path / "default_model")
    assert eval_cli.main(["--data", "music21", "--out", str(tmp_path / "r.json")]) == 2
    assert "default model" in capsys.readouterr().err


def test_cli_writes_outputs(labelled_folder, ckpt, tmp_path, capsys):
    d, _ = labelled_folder
    out = tmp_path / "cli" / "r.json"
    code = eval_cli.main(["--model", str(ckpt), "--data", f"folder:{d}", "--labels", str(d / "labels.csv"),
                          "--split", "all", "--max-pieces", "3", "--control-pieces", "0", "--no-plots",
                          "--threads", "1", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    doc = json.loads(out.read_text())
    assert doc["n_pieces"] == 3 and math.isnan(doc["control.key_match"] or math.nan)
    assert not list(out.parent.glob("*.png"))


@pytest.mark.slow
def test_ablation_and_label_efficiency(tmp_path, monkeypatch):
    """Every variant trains through training.pretrain for 2 steps and is evaluated; tables and plot appear."""
    from training_fixtures import build_shards

    from training import ablation

    shards = build_shards(tmp_path / "shards", n=24)
    monkeypatch.setattr(ablation, "LABEL_FRACTIONS", (0.5, 1.0))
    train_args = ["--batch-size", "2", "--micro-batch", "2", "--seq-len", "64", "--threads", "1",
                  "--log-every", "1", "--eval-every", "1000", "--ckpt-every", "1000"]
    ev = evaluate.EvalConfig(models=[None], data=str(shards), out=tmp_path / "abl" / "results.json", split="all",
                             max_pieces=3, window=160, prompt_tokens=64, threads=1, plots=False)
    rows = ablation.run_ablation(ablation.AblationConfig(eval=ev, steps=2, train_args=train_args))
    assert set(rows) == {"typemoe", "dense", "switch", "clm"}
    assert rows["dense"]["model.ffn"] == "dense" and rows["switch"]["model.ffn"] == "switch"
    table = (tmp_path / "abl" / "results.md").read_text()
    assert "| switch |" in table and "continuation.hits@1" in table
    again = ablation.run_ablation(ablation.AblationConfig(eval=ev, steps=2, train_args=train_args))
    assert again["typemoe"]["continuation.hits@1"] == rows["typemoe"]["continuation.hits@1"]  # runs reused
    ev2 = evaluate.EvalConfig(models=[None], data=str(shards), out=tmp_path / "le" / "results.json", split="all",
                              max_pieces=3, window=160, threads=1, plots=True)
    rows = ablation.run_label_efficiency(ablation.AblationConfig(eval=ev2, steps=2, train_args=train_args))
    assert set(rows) == {"50%", "100%"}
    assert (tmp_path / "le" / "results.label_efficiency.png").is_file()


def test_baselines_only(labelled_folder, tmp_path, capsys):
    """No model: the baselines alone, on the same pieces and windows a model would read."""
    d, rows = labelled_folder
    out = tmp_path / "b" / "results.json"
    assert eval_cli.main(["--baselines-only", "--data", f"folder:{d}", "--labels", str(d / "labels.csv"),
                          "--split", "all", "--out", str(out)]) == 0, capsys.readouterr().err
    doc = json.loads(out.read_text())
    assert doc["key.n"] == sum(bool(r["key"]) for r in rows) and doc["n_pieces"] == N_TUNES
    for k in ("key.baselines.krumhansl", "key.baselines.temperley", "meter.baselines.autocorrelation",
              "meter.baselines.majority"):
        assert 0.0 <= doc[k] <= 1.0
    assert "key.accuracy" not in doc
    assert (out.parent / "results.meter_baseline_confusion.png").is_file()


def test_max_pieces_is_a_spread_sample():
    from training.eval_data import sample_ids

    ids = [("music21", f"collection{c}/tune{i}") for c in range(3) for i in range(50)]
    picked = sample_ids(ids, 30)
    assert len(picked) == 30 and picked == sample_ids(list(reversed(ids)), 30)  # order-free, stable
    assert {p[1].split("/")[0] for p in picked} == {"collection0", "collection1", "collection2"}


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
        from training.eval_model import HeadOutputs

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
        return piece.tokens[len(music): len(music) + n].tolist()


def test_metric_pipeline_on_an_oracle(labelled_folder, vocab):
    """Known answers through the whole pipeline: an oracle scores 1.0, and heads are read where documented."""
    from training.eval_data import load_eval_data

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
    for k in ("continuation.hits@1", "continuation.hits@5", "continuation.bleu2", "conditional.hits@1",
              "conditional.bleu2", "key.accuracy", "key.mirex", "meter.accuracy", "key.streaming.1",
              "meter.streaming.8"):
        assert r[k] == pytest.approx(1.0), k
    piece = next(p for p in data.pieces if p.key is not None)
    seq = [vocab.bos_id, *piece.tokens[:1023].tolist()]
    bars = [i for i, t in enumerate(seq) if vocab.family_of[t] == 0]
    want = sorted({bars[n] + 1 if len(bars) > n else len(seq) for n in (1, 2, 4, 8)} | {len(seq)})
    assert (len(seq), want) in oracle.reads  # after N bars = through the Bar token that opens bar N + 1
