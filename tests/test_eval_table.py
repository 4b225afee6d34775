"""The per-source table (training/evaluation/eval_table.py): its command line and its markdown."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from typemoe.training.evaluation import eval_cli, eval_table  # noqa: E402


def test_cli_data_repeats_only_with_the_source_table(tmp_path, capsys):
    assert (
        eval_cli.main(["--data", "music21", "--data", "shared:vgmidi", "--out", str(tmp_path / "r.json")])
        == 2
    )
    assert "--source-table" in capsys.readouterr().err
    assert (
        eval_cli.main(
            ["--source-table", "--perturb", "all", "--data", "music21", "--out", str(tmp_path / "r.json")]
        )
        == 2
    )
    assert "--table-perturb" in capsys.readouterr().err


def test_source_table_markdown_picks_the_best_profile_and_labels_distribution():
    r = {
        "model": "m",
        "key.n": 10,
        "key.accuracy": 0.5,
        "key.whole.accuracy": 0.6,
        "key.whole_mean.accuracy": 0.7,
        "key.baselines.krumhansl": 0.4,
        "key.baselines.aarden": 0.8,
        "key.baselines.temperley": None,
        "key.baselines.simple": 0.3,
        "key.baselines.simple.whole": 0.9,
        "meter.n": 9,
        "meter.whole.family_accuracy": 0.25,
        "meter.baselines.autocorrelation.whole.family": 0.75,
    }
    runs = [
        {
            "source": "shared:classical_piano",
            "split": "all",
            "perturb": "all",
            "in_distribution_for_shipped": False,
            "results": r,
        },
        {
            "source": "music21",
            "split": "test",
            "perturb": "none",
            "in_distribution_for_shipped": True,
            "results": r,
        },
    ]
    md = eval_table.source_table_markdown(runs)
    row = next(
        line for line in md.splitlines() if line.startswith("| shared:classical_piano | no | all | all")
    )
    assert "| 0.800 (aarden) | 0.900 (simple) |" in row and "| 0.500 | 0.600 | 0.700 |" in row
    assert "| music21 | yes (in-distribution) | test | none |" in md
    meter_row = [
        line for line in md.splitlines() if line.startswith("| shared:classical_piano | no | all | 9")
    ]
    assert meter_row and "| 0.250 |" in meter_row[0] and "| 0.750 |" in meter_row[0]
