"""typemoe bench: writes every promised key (on the tiny model, few repetitions); clear error without a model."""

from __future__ import annotations

import argparse
import json

import pytest

pytestmark = pytest.mark.onnx


def test_bench_writes_all_keys(tmp_path, capsys):
    pytest.importorskip("torch")
    from export_fixtures import make_tiny_model_dir

    from typemoe.export.bench import add_arguments, run

    model_dir = make_tiny_model_dir(tmp_path / "model")
    p = argparse.ArgumentParser()
    add_arguments(p)
    out = tmp_path / "bench.json"
    args = p.parse_args(["--model", str(model_dir), "--out", str(out), "--reps", "30", "--warmup", "5"])
    assert run(args) == 0
    res = json.loads(out.read_text())
    assert res["provider"] == "cpu"
    for c in ("256", "1024"):
        assert {"p50", "p95", "p99"} <= set(res["decode_ms"][c])
    assert res["decode_ms"]["1024"]["context"] == 256  # the tiny model's maximum, and a note says so
    assert any("1024" in n for n in res["notes"])
    assert res["prefill_ms"]["512"] > 0 and res["tokens_per_s"] > 0
    assert res["ort_vs_torch"] > 0 and res["typemoe_vs_dense"] > 0
    assert res["int8"]["typemoe_vs_dense"] > 0 and res["int8"]["quality"]["ok"]
    assert {"p50", "p95", "p99"} <= set(res["int8"]["decode_ms"]["256"])
    assert "load_avg" in res
    assert "decode ms @ 256" in capsys.readouterr().out


def test_bench_without_a_model_says_what_to_pass(tmp_path, capsys, monkeypatch):
    from typemoe.export import bench

    monkeypatch.setattr(bench, "default_model_dir", lambda: tmp_path / "default_model")
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    assert bench.run(p.parse_args(["--out", str(tmp_path / "b.json")])) == 2
    msg = capsys.readouterr().out
    assert "--model MODEL_DIR" in msg and "--preset small" in msg


def test_analyze_bench_rows(tmp_path):
    """typemoe bench's analyze rows (the CLI registers them): both readings timed on a piece longer than the
    tiny model's context; the table prints the ratio."""
    from export_fixtures import make_tiny_model_dir

    from typemoe.commands.analyze_bench import progression, run_analyze_bench
    from typemoe.export.model_dir import refresh_manifest
    from typemoe.export.runtime import OrtModel
    from typemoe.meter_family import FamilyJudge
    from typemoe.shipped import default_model_dir

    model_dir = make_tiny_model_dir(tmp_path / "model")
    assert run_analyze_bench(model_dir, reps=1)["analyze"]["family"] is None  # no judge: no family row
    FamilyJudge.load(default_model_dir()).save(model_dir)  # the shipped judge, listed in the manifest
    refresh_manifest(model_dir)
    row = run_analyze_bench(model_dir, reps=1)["analyze"]
    assert row["quick_s"] > 0 and row["twelve_s"] > 0 and row["ratio"] == row["twelve_s"] / row["quick_s"]
    assert row["tokens"] > 2 * OrtModel(model_dir).context_len and row["bars"] == 64
    assert len(progression().tracks[0].notes) == 64 * 9
    fam = row["family"]
    assert fam["judge_ms"] > 0 and fam["rule_ms"] > 0 and fam["ratio"] == fam["judge_ms"] / fam["rule_ms"]
    assert 0 < fam["notes"] < 64 * 9  # one window's notes, not the piece's
    table = _table_with(analyze=row)
    assert "analyze, twelve hearings vs one" in table and "meter family, judge vs onset rule" in table


def test_infill_bench_rows(tmp_path):
    """typemoe bench's infill rows: the mixed readings and the infilling reading alone, timed on the same
    span; the table prints the ratio."""
    from export_fixtures import make_tiny_model_dir

    from typemoe.commands.infill_bench import run_infill_bench

    row = run_infill_bench(make_tiny_model_dir(tmp_path / "model"), reps=1)["infill"]
    assert row["mixed_s"] > 0 and row["alone_s"] > 0 and row["ratio"] == row["mixed_s"] / row["alone_s"]
    assert row["tokens"]["mixed"] > 0 and row["span"] == [9, 10] and row["suffix_weight"] == 0.5
    assert "infill, mixed readings vs the infilling one alone" in _table_with(infill=row)


def test_candidates_bench_rows(tmp_path):
    """typemoe bench's candidates row: best of N and one continuation timed on the same bare prompt; the
    table prints the ratio."""
    from export_fixtures import make_tiny_model_dir

    from typemoe.commands.candidates_bench import run_candidates_bench

    row = run_candidates_bench(make_tiny_model_dir(tmp_path / "model"), reps=1, n=3)["candidates"]
    assert row["best_s"] > 0 and row["one_s"] > 0 and row["ratio"] == row["best_s"] / row["one_s"]
    assert row["n"] == 3 and row["bars"] == 4
    assert "generate, best of 3 vs one" in _table_with(candidates=row)


def _table_with(**rows) -> str:
    """format_table of a minimal bench result with `rows` added."""
    from typemoe.export.bench import format_table

    base = {
        "provider": "cpu",
        "graph": "g",
        "threads": 1,
        "decode_ms": {},
        "prefill_ms": {},
        "tokens_per_s": 1.0,
    }
    return format_table(base | {"load_avg": {"before": [0.0], "after": [0.0]}} | rows)
