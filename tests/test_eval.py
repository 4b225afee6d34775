"""`typemoe eval` end to end on real tunes with a tiny random model: stable keys, skips, outputs, ablations."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

pytest.importorskip("torch")

from typemoe.training import eval_cli, evaluate  # noqa: E402
from typemoe.training.eval_model import open_model  # noqa: E402

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
        rows.append(
            {
                "path": f"tune{i:02d}.mid",
                "key": key,
                "meter": meter,
                "genre": "folk",
                "emotion": f"Q{i % 4 + 1}",
            }
        )
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


def test_prompt_ends_at_a_bar_line(vocab):
    from typemoe.training.evaluate import EvalConfig, _prompt_cut

    bar = vocab.id("Bar_None")
    pitch = vocab.id("Pitch_60")
    music = np.array(([bar] + [pitch] * 39) * 10)  # bars of 40 tokens
    cfg = EvalConfig(models=[None], data="music21", out="r.json", prompt_tokens=100, min_prompt_tokens=32)
    assert _prompt_cut(music, vocab, cfg, budget=1000) == 80  # the last bar line <= 100
    assert _prompt_cut(music[:90], vocab, cfg, budget=1000) is None  # 90 - 64 < 32: too short


def test_cli_errors(tmp_path, capsys, ckpt):
    assert (
        eval_cli.main(
            ["--model", str(tmp_path / "nope"), "--data", "music21", "--out", str(tmp_path / "r.json")]
        )
        == 2
    )
    assert "nope" in capsys.readouterr().err
    assert (
        eval_cli.main(
            ["--model", str(ckpt), "--data", "music21", "--steps", "3", "--out", str(tmp_path / "r.json")]
        )
        == 2
    )
    assert "--ablation" in capsys.readouterr().err
    assert (
        eval_cli.main(
            [
                "--model",
                str(ckpt),
                "--data",
                "folder:" + str(tmp_path / "missing"),
                "--out",
                str(tmp_path / "r.json"),
            ]
        )
        == 2
    )
    assert "missing" in capsys.readouterr().err


def test_no_model_and_no_default_is_a_clear_error(tmp_path, capsys, monkeypatch):
    from typemoe.training import eval_model

    monkeypatch.setattr(eval_model, "default_model_dir", lambda: tmp_path / "default_model")
    assert eval_cli.main(["--data", "music21", "--out", str(tmp_path / "r.json")]) == 2
    assert "default model" in capsys.readouterr().err


def test_cli_writes_outputs(labelled_folder, ckpt, tmp_path, capsys):
    d, _ = labelled_folder
    out = tmp_path / "cli" / "r.json"
    code = eval_cli.main(
        [
            "--model",
            str(ckpt),
            "--data",
            f"folder:{d}",
            "--labels",
            str(d / "labels.csv"),
            "--split",
            "all",
            "--max-pieces",
            "3",
            "--control-pieces",
            "0",
            "--no-plots",
            "--threads",
            "1",
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    doc = json.loads(out.read_text())
    assert doc["n_pieces"] == 3 and math.isnan(doc["control.key_match"] or math.nan)
    assert not list(out.parent.glob("*.png"))


@pytest.mark.slow
def test_ablation_and_label_efficiency(tmp_path, monkeypatch):
    """Every variant trains through training.pretrain for 2 steps and is evaluated; tables and plot appear."""
    from training_fixtures import build_shards

    from typemoe.training import ablation

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


def test_baselines_only(labelled_folder, tmp_path, capsys):
    """No model: the baselines alone, on the same pieces and windows a model would read."""
    d, rows = labelled_folder
    out = tmp_path / "b" / "results.json"
    assert (
        eval_cli.main(
            [
                "--baselines-only",
                "--data",
                f"folder:{d}",
                "--labels",
                str(d / "labels.csv"),
                "--split",
                "all",
                "--out",
                str(out),
            ]
        )
        == 0
    ), capsys.readouterr().err
    doc = json.loads(out.read_text())
    assert doc["key.n"] == sum(bool(r["key"]) for r in rows) and doc["n_pieces"] == N_TUNES
    for k in (
        "key.baselines.krumhansl",
        "key.baselines.temperley",
        "meter.baselines.autocorrelation",
        "meter.baselines.majority",
    ):
        assert 0.0 <= doc[k] <= 1.0
    assert "key.accuracy" not in doc
    assert (out.parent / "results.meter_baseline_confusion.png").is_file()


def test_max_pieces_is_a_spread_sample():
    from typemoe.training.eval_data import sample_ids

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
        from typemoe.training.eval_model import HeadOutputs

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
    from typemoe.training.eval_data import load_eval_data

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


# --------------------------------------------------------------------------- issue 12: whole piece, sources


def _bars_music(vocab, n_bars: int, bar_len: int = 40) -> np.ndarray:
    """Bars of bar_len tokens, each bar's filler a different pitch (so every window is unique)."""
    bar = vocab.id("Bar_None")
    return np.array(
        [t for b in range(n_bars) for t in [bar] + [vocab.id(f"Pitch_{21 + b % 80}")] * (bar_len - 1)]
    )


@pytest.mark.parametrize("n_bars", [3, 25, 100])
def test_slide_reads_hear_every_bar_once_and_the_end(vocab, n_bars):
    music = _bars_music(vocab, n_bars)
    window = 1024
    w = window - 1
    plan = evaluate._slide_reads(music, vocab, window)
    reads = [i for _, r in plan for i in r]
    bars = [int(i) for i in np.flatnonzero(vocab.family_of[music] == 0)]
    assert reads == sorted(set(reads)), "a bar read twice or out of order"
    assert set(reads) == set(bars) | {len(music) - 1}
    for j, (start, r) in enumerate(plan):
        assert all(start <= i < start + w for i in r), "a read outside its window"
        if j:
            assert vocab.family_of[music[start]] == 0, "a window that does not start at a bar line"
            assert all(i >= start + w // 4 for i in r), "a read with less than a quarter window heard"
    assert len(plan) == (1 if len(music) <= w else len(plan))


class _Recorder:
    """Fake model: records each window it is given; its key head says how many tokens the window holds."""

    def __init__(self, vocab):
        self.vocab, self.calls = vocab, []
        self.key_names = [str(i) for i in range(24)]

    def outputs_at(self, seq, at):
        from typemoe.training.eval_model import HeadOutputs

        self.calls.append((list(seq), list(at)))
        keys = np.zeros((len(at), 24))
        keys[np.arange(len(at)), np.asarray(at) % 24] = 1
        return HeadOutputs(np.zeros((len(at), 4)), keys, np.ones((len(at), 12)) / 12)


def test_read_whole_piece_slides_contiguous_windows_to_the_end(vocab):
    music = _bars_music(vocab, 60)
    rec = _Recorder(vocab)
    k_end, _, k_mean, _ = evaluate.read_whole_piece(rec, music, 512)
    assert len(rec.calls) > 1
    covered = set()
    for seq, at in rec.calls:
        assert seq[0] == vocab.bos_id and len(seq) <= 512 and max(at) <= len(seq)
        body = seq[1:]
        start = next(s for s in range(len(music)) if music[s : s + len(body)].tolist() == body)
        covered |= set(range(start, start + len(body)))
    assert max(covered) == len(music) - 1  # the last window reaches the end of the piece
    last_seq, last_at = rec.calls[-1]
    assert int(np.argmax(k_end)) == last_at[-1] % 24 and last_at[-1] == len(last_seq)
    n_reads = sum(len(a) for _, a in rec.calls)
    assert k_mean.sum() == pytest.approx(1.0) and n_reads == 60 + 1  # every bar, and the end


def test_signature_and_meta_labels():
    import symusic

    from typemoe import analysis
    from typemoe.training.eval_data import meta_labels, signature_of_key

    assert (
        signature_of_key(analysis.parse_key("C major"))
        == signature_of_key(analysis.parse_key("A minor"))
        == 0
    )
    assert (
        signature_of_key(analysis.parse_key("D minor"))
        == signature_of_key(analysis.parse_key("F major"))
        == 5
    )
    assert (
        signature_of_key(analysis.parse_key("F# major"))
        == signature_of_key(analysis.parse_key("Eb minor"))
        == 6
    )
    s = symusic.Score(480)
    assert meta_labels(s) == (None, None)
    s.key_signatures.append(symusic.KeySignature(960, 2, 0))  # D major later
    s.key_signatures.append(symusic.KeySignature(0, -1, 0))  # F major first
    s.time_signatures.append(symusic.TimeSignature(0, 3, 4))
    s.time_signatures.append(symusic.TimeSignature(960, 6, 8))
    assert meta_labels(s) == (5, analysis.parse_meter("3/4"))  # the FIRST events


def test_perturbed_pieces_keep_their_notes(labelled_folder, vocab):
    from typemoe.training.eval_data import load_eval_data

    d, _ = labelled_folder
    plain = load_eval_data(f"folder:{d}", vocab=vocab, labels_csv=d / "labels.csv", split="all", max_pieces=4)
    loud = load_eval_data(
        f"folder:{d}",
        vocab=vocab,
        labels_csv=d / "labels.csv",
        split="all",
        max_pieces=4,
        perturb="velocity",
        seed=1,
    )
    again = load_eval_data(
        f"folder:{d}",
        vocab=vocab,
        labels_csv=d / "labels.csv",
        split="all",
        max_pieces=4,
        perturb="velocity",
        seed=1,
    )
    vel = vocab.type_names.index("velocity")
    for a, b, c in zip(plain.pieces, loud.pieces, again.pieces):
        assert a.id == b.id and np.array_equal(b.tokens, c.tokens)  # seeded
        assert not np.array_equal(a.tokens, b.tokens)
        not_vel = lambda t: t[vocab.type_of[t] != vel]  # noqa: E731
        np.testing.assert_array_equal(not_vel(a.tokens), not_vel(b.tokens))  # only the velocities changed
    with pytest.raises(ValueError, match="tempo"):
        load_eval_data(f"folder:{d}", vocab=vocab, labels_csv=d / "labels.csv", split="all", perturb="tempo")


def test_missing_music21_fails_before_any_work(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "music21" else real(name, *a)
    )
    # the model path does not exist either: the music21 error must come first, before anything is opened
    assert (
        eval_cli.main(
            ["--model", str(tmp_path / "nope"), "--data", "music21", "--out", str(tmp_path / "r.json")]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "music21 is not installed" in err and "nope" not in err
    cfg = evaluate.EvalConfig(models=[None], data="folder:x", out="r.json", groups=("continuation",))
    evaluate.require_music21(cfg)  # no music21 needed: no error
