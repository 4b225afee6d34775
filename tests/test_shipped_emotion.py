"""The shipped model's emotion head (one graph with the key, meter and next-token heads) and `typemoe
analyze`'s emotion line.

Runtime only (numpy + onnxruntime) but for the tests that build a tiny model. Each test loads the shipped
int8 graph (~0.5 s).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from export_fixtures import analyze_without_torch, make_tiny_model_dir

from typemoe import analysis
from typemoe.commands import tools
from typemoe.export.runtime import OrtModel, read_manifest
from typemoe.shipped import default_model_dir

REPO = Path(__file__).resolve().parents[1]
TUNE = REPO / "bridge" / "demo_tune.mid"  # the bridge's built-in tune, 549 tokens
SHIPPED_CAP_BYTES = 30_000_000
SHIPPED_FILES = {
    "model_int8.onnx",
    "tokenizer.json",
    "types.json",
    "key_fusion.json",
    "meter_fusion.json",
    "meter_family.json",
    "emotion_fusion.json",
}
# The class head of the PyTorch checkpoint the shipped graph was exported from (2026-12-03, second ship: the
# candidate's emotion run on the frozen trunk of MODEL_CARD.md's Training step 8, seed 1) on TUNE: softmax of
# the mean per-position cls logits over [BOS, *tokens] (fp32).
TORCH_PROBS = {"Q1": 0.52588, "Q2": 0.42836, "Q3": 0.00934, "Q4": 0.03642}


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def _analyze_json(capsys, *args: str) -> dict:
    assert tools.run_cli(["analyze", str(TUNE), *args, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_one_graph_every_head_and_size():
    root = default_model_dir()
    main = read_manifest(root)  # every sha256 checked
    assert set(main["files"]) == SHIPPED_FILES
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == []  # no sub-models: one graph
    assert main["labels"]["classes"] == list(analysis.EMOTIONS) and main["config"]["n_classes"] == 4
    model = OrtModel(root, provider="cpu")
    assert model.class_names == list(analysis.EMOTIONS)
    assert len(model.key_names) == 24 and model.meter_names == list(analysis.METERS)
    total = sum(p.stat().st_size for p in _files(root))
    assert total <= SHIPPED_CAP_BYTES, (
        f"typemoe/default_model holds {total} bytes, over the {SHIPPED_CAP_BYTES} cap"
    )
    parity = main["shipped"]["class_parity"]  # int8 vs fp32 class probabilities on EMOPIA test, at export
    assert parity["top1_agreement"] == 1.0 and parity["max_abs_prob_diff"] < 2e-3


def test_package_data_ships_every_file():
    """pyproject's package-data globs (not recursive) cover every file of typemoe/default_model."""
    tomllib = pytest.importorskip("tomllib")
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())
    pkg = REPO / "typemoe"
    covered = {
        p for pattern in cfg["tool"]["setuptools"]["package-data"]["typemoe"] for p in pkg.glob(pattern)
    }
    missing = [str(p.relative_to(pkg)) for p in _files(default_model_dir()) if p not in covered]
    assert not missing, f"not in the wheel: {missing}"


def test_analyze_reports_shipped_emotion(capsys):
    res = _analyze_json(capsys)  # no --model: the shipped model, every head from its one graph
    assert res["emotion"] in analysis.EMOTIONS and res["key"] in analysis.KEYS
    probs = res["emotion_probs"]
    assert list(probs) == list(analysis.EMOTIONS)
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-3)
    assert res["emotion"] == max(probs, key=probs.get) and res["emotion_confidence"] == probs[res["emotion"]]
    assert tools.run_cli(["analyze", str(TUNE)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == (
        f"emotion: {res['emotion']} ({res['emotion_confidence']:.2f}) "
        f"{analysis.EMOTION_GLOSS[res['emotion']]}"
    ), lines


def test_runtime_class_probs_match_analyze(capsys):
    """analyze reads the class head pooled over every token its bar-by-bar session heard (for a tune
    within one context, one feed of [BOS, *tokens]), fused with the tune's notes by the directory's
    emotion_fusion.json (OrtModel.class_answer)."""
    import symusic

    model = OrtModel(default_model_dir(), provider="cpu")
    ids = model.vocab.encode_score(symusic.Score(str(TUNE)))
    assert len(ids) + 1 <= model.context_len
    probs = model.session().feed([model.vocab.bos_id, *ids]).class_probs
    assert probs.shape == (4,) and probs.sum() == pytest.approx(1.0, abs=1e-5)
    # the int8 graph's head gives the checkpoint's answer (int8 vs fp32 on EMOPIA test: see the manifest)
    assert np.allclose(probs, [TORCH_PROBS[q] for q in analysis.EMOTIONS], atol=2e-3), probs
    assert model.emotion.fusion is not None
    fused = model.class_answer(ids, probs)
    assert not np.allclose(fused, probs, atol=1e-3)  # the fusion is read, not the head alone
    got = _analyze_json(capsys)["emotion_probs"]
    assert np.allclose(list(got.values()), fused, atol=1e-4)
    # --emotion-model with the same directory reads the same head through its own pass
    again = _analyze_json(capsys, "--emotion-model", str(default_model_dir()))["emotion_probs"]
    assert again == got


@pytest.fixture()
def model_copy(tmp_path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(default_model_dir(), dst)
    return dst


def test_corrupt_emotion_model_is_refused_by_name(model_copy, capsys):
    graph = model_copy / "model_int8.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size, different sha256
    graph.write_bytes(bytes(data))
    assert tools.run_cli(["analyze", str(TUNE), "--emotion-model", str(model_copy)]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert "emotion model" in out.err and str(graph) in out.err and "corrupt" in out.err, out.err


@pytest.fixture(scope="module")
def genre_model(tmp_path_factory) -> Path:
    """A tiny exported model whose class head is not an emotion head (genres)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from typemoe import checkpoint
    from typemoe.config import tiny
    from typemoe.export.onnx_export import export_checkpoint
    from typemoe.model import TypeMoE
    from typemoe.vocab import TypedVocab

    vocab = TypedVocab.default()
    cfg = tiny(vocab.size, vocab.n_types, n_meters=len(analysis.METERS), n_classes=2)
    torch.manual_seed(0)
    meta = {"step": 0, "class_names": ["classical", "folk"], "task": "genre"}
    root = tmp_path_factory.mktemp("genre")
    ckpt = checkpoint.save(TypeMoE(cfg, vocab.type_of).eval(), root / "ckpt", vocab=vocab, extra_meta=meta)
    return export_checkpoint(ckpt, root / "model", fp16=False, int8=False)


def test_model_without_emotion_head_has_no_emotion_line(genre_model, capsys):
    res = _analyze_json(capsys, "--model", str(genre_model))
    assert set(res) == {"key", "key_confidence", "meter", "meter_confidence", "at_end", "after_bars"} | {
        "key_transpositions"
    }
    assert tools.run_cli(["analyze", str(TUNE), "--model", str(genre_model)]) == 0
    out = capsys.readouterr()
    assert len(out.out.splitlines()) == 2 and "emotion" not in out.out + out.err
    # a separate classifier given by --emotion-model adds the line to that model's key and meter
    emo = make_tiny_model_dir(genre_model.parent / "emo")  # the tiny fixture's head is Q1..Q4
    res = _analyze_json(capsys, "--model", str(genre_model), "--emotion-model", str(emo))
    assert res["emotion"] in analysis.EMOTIONS


def test_emotion_model_without_emotion_head_is_refused(genre_model, capsys):
    assert tools.run_cli(["analyze", str(TUNE), "--emotion-model", str(genre_model)]) == 2
    assert "no emotion head" in capsys.readouterr().err


def test_analyze_with_emotion_runs_without_torch():
    """The DAW-user install (pip install -e ., no torch) gets the emotion line from the shipped model."""
    proc = analyze_without_torch(str(TUNE), "--json", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["emotion"] in analysis.EMOTIONS
