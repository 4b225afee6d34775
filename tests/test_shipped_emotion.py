"""The shipped emotion classifier (typemoe/default_model/emotion/) and `typemoe analyze`'s emotion line.

Runtime only (numpy + onnxruntime): no torch, no onnx. Each test loads the shipped int8 graphs (~0.5 s).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from export_fixtures import analyze_without_torch

from typemoe import analysis
from typemoe.commands import tools
from typemoe.export.runtime import MANIFEST_FILE, OrtModel, read_manifest
from typemoe.shipped import EMOTION_DIRNAME, default_emotion_dir, default_model_dir

REPO = Path(__file__).resolve().parents[1]
TUNE = REPO / "bridge" / "demo_tune.mid"  # the bridge's built-in tune, 549 tokens
SHIPPED_CAP_BYTES = 30_000_000
# The class head of the PyTorch checkpoint the sub-model was exported from (/work/runs/emotion, step 360) on
# TUNE: softmax of the mean per-position cls logits over [BOS, *tokens]; fp32 ONNX equal to 1e-7.
TORCH_PROBS = {"Q1": 0.37719, "Q2": 0.61296, "Q3": 0.00394, "Q4": 0.00591}

pytestmark = pytest.mark.skipif(
    not (default_emotion_dir() / MANIFEST_FILE).is_file(), reason="no shipped emotion model in this install"
)


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def _analyze_json(capsys, *args: str) -> dict:
    assert tools.run_cli(["analyze", str(TUNE), *args, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_layout_manifests_and_size():
    root = default_model_dir()
    assert default_emotion_dir() == root / EMOTION_DIRNAME
    emo = read_manifest(default_emotion_dir())  # its own manifest, every sha256 checked
    assert emo["labels"]["classes"] == list(analysis.EMOTIONS)
    assert emo["config"]["n_classes"] == 4 and emo["source"]["task"] == "emotion"
    assert set(emo["files"]) == {"model_int8.onnx", "tokenizer.json", "types.json"}
    main = read_manifest(root)
    assert not any(name.startswith(EMOTION_DIRNAME) for name in main["files"])  # the sub-model is separate
    total = sum(p.stat().st_size for p in _files(root))
    assert total <= SHIPPED_CAP_BYTES, (
        f"typemoe/default_model holds {total} bytes, over the {SHIPPED_CAP_BYTES} cap"
    )
    parity = emo["shipped"]["class_parity"]  # int8 vs fp32 class probabilities on EMOPIA test, at export
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
    res = _analyze_json(capsys)  # no --model: the shipped model and its emotion/ sub-model
    assert res["emotion"] in analysis.EMOTIONS and res["key"] in analysis.KEYS
    probs = res["emotion_probs"]
    assert list(probs) == list(analysis.EMOTIONS)
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-3)
    assert res["emotion"] == max(probs, key=probs.get) and res["emotion_confidence"] == probs[res["emotion"]]
    # the int8 graph gives the checkpoint's answer (int8 vs fp32: < 5e-4 on EMOPIA test, see the manifest)
    assert np.allclose(
        [probs[q] for q in analysis.EMOTIONS], [TORCH_PROBS[q] for q in analysis.EMOTIONS], atol=2e-3
    ), probs
    assert tools.run_cli(["analyze", str(TUNE)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == (
        f"emotion: {res['emotion']} ({res['emotion_confidence']:.2f}) "
        f"{analysis.EMOTION_GLOSS[res['emotion']]}"
    ), lines


def test_runtime_class_probs_match_analyze(capsys):
    """analyze reads the same pooled head as export.runtime over [BOS, *tokens][:context_len]."""
    import symusic

    emo = OrtModel(default_emotion_dir(), provider="cpu")
    ids = emo.vocab.encode_score(symusic.Score(str(TUNE)))
    probs = emo.session().feed([emo.vocab.bos_id, *ids][: emo.context_len]).class_probs
    assert probs.shape == (4,) and probs.sum() == pytest.approx(1.0, abs=1e-5)
    got = _analyze_json(capsys, "--emotion-model", str(default_emotion_dir()))["emotion_probs"]
    assert np.allclose(list(got.values()), probs, atol=1e-4)


@pytest.fixture()
def model_copy(tmp_path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(default_model_dir(), dst)
    return dst


def test_model_dir_with_emotion_subdir_and_without(model_copy, capsys):
    assert "emotion" in _analyze_json(capsys, "--model", str(model_copy))  # --model DIR uses DIR/emotion
    shutil.rmtree(model_copy / EMOTION_DIRNAME)
    res = _analyze_json(capsys, "--model", str(model_copy))  # none: output as before, no error
    assert set(res) == {"key", "key_confidence", "meter", "meter_confidence", "at_end", "after_bars"}
    assert tools.run_cli(["analyze", str(TUNE), "--model", str(model_copy)]) == 0
    out = capsys.readouterr()
    assert len(out.out.splitlines()) == 2 and "emotion" not in out.out + out.err


def test_corrupt_emotion_submodel_is_refused_by_name(model_copy, capsys):
    graph = model_copy / EMOTION_DIRNAME / "model_int8.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size, different sha256
    graph.write_bytes(bytes(data))
    for args in (["--model", str(model_copy)], ["--emotion-model", str(graph.parent)]):
        assert tools.run_cli(["analyze", str(TUNE), *args]) == 2
        out = capsys.readouterr()
        assert out.out == ""
        assert "emotion model" in out.err and str(graph) in out.err and "corrupt" in out.err, out.err


def test_emotion_model_without_emotion_head_is_refused(capsys):
    assert tools.run_cli(["analyze", str(TUNE), "--emotion-model", str(default_model_dir())]) == 2
    assert "no emotion head" in capsys.readouterr().err


def test_analyze_with_emotion_runs_without_torch():
    """The DAW-user install (pip install -e ., no torch) gets the emotion line from the shipped model."""
    proc = analyze_without_torch(str(TUNE), "--json", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["emotion"] in analysis.EMOTIONS
