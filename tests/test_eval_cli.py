"""`typemoe eval`'s command line (training.eval_cli): usage errors, a missing default model or music21
caught before any work, the written outputs, and the model-free --baselines-only run.

The labelled tune folder (`labelled_folder`, N_TUNES tunes) and the tiny checkpoint (`ckpt`) are conftest's.
"""

from __future__ import annotations

import json
import math

import pytest
from conftest import N_TUNES

pytest.importorskip("torch")

from typemoe.training.evaluation import eval_cli, evaluate  # noqa: E402


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
    from typemoe.training.evaluation import eval_model

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
