"""`typemoe analyze` / `typemoe generate` end to end on a real tune with a tiny random model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import symusic
from export_fixtures import analyze_without_torch

from export import tools
from typemoe import analysis

pytest.importorskip("onnx")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from export_fixtures import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("tools") / "model")


@pytest.fixture(scope="module")
def ckpt_dir():
    from export_fixtures import tiny_checkpoint_dir

    return tiny_checkpoint_dir()


@pytest.fixture(scope="module")
def tune(tmp_path_factory) -> Path:
    from conftest import music21_scores

    _, score = music21_scores(1)[0]  # essenFolksong/altdeu10 #1, a real 60-note tune, tpq 480
    path = tmp_path_factory.mktemp("tune") / "tune.mid"
    score.dump_midi(str(path))
    return path


def test_analyze_json(model_dir, tune, capsys):
    assert tools.run_cli(["analyze", str(tune), "--model", str(model_dir), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res) == {"key", "key_confidence", "meter", "meter_confidence"}
    assert res["key"] in analysis.KEYS and res["meter"] in analysis.METERS
    assert 0.0 < res["key_confidence"] <= 1.0 and 0.0 < res["meter_confidence"] <= 1.0


def test_analyze_text_and_torch_fallback_agree(model_dir, ckpt_dir, tune, capsys):
    assert tools.run_cli(["analyze", str(tune), "--model", str(model_dir)]) == 0
    onnx_text = capsys.readouterr().out
    assert onnx_text.startswith("key: ") and "\nmeter: " in onnx_text
    assert tools.run_cli(["analyze", str(tune), "--model", str(ckpt_dir)]) == 0
    assert capsys.readouterr().out == onnx_text  # same weights, same answer and confidences (2 digits)


def test_analyze_corrupt_midi_names_the_file(model_dir, tmp_path, capsys):
    bad = tmp_path / "broken.mid"
    bad.write_bytes(b"MThd\x00\x00\x00\x06garbage")
    assert tools.run_cli(["analyze", str(bad), "--model", str(model_dir)]) == 2
    err = capsys.readouterr().err
    assert "broken.mid" in err and "not a readable MIDI" in err
    assert tools.run_cli(["analyze", str(tmp_path / "absent.mid"), "--model", str(model_dir)]) == 2
    assert "absent.mid" in capsys.readouterr().err


def _notes(track) -> list[tuple[int, int, int]]:
    return sorted((n.time, n.pitch, n.duration) for n in track.notes)


@pytest.mark.parametrize("which", ["onnx", "torch"])
def test_generate_writes_prompt_then_continuation(which, model_dir, ckpt_dir, tune, tmp_path, capsys):
    model = model_dir if which == "onnx" else ckpt_dir
    out = tmp_path / "out.mid"
    code = tools.run_cli(["generate", str(tune), "--bars", "4", "--model", str(model), "--key", "G major",
                       "--meter", "2/4", "--temperature", "0.9", "--seed", "3", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    prompt, result = symusic.Score(str(tune)), symusic.Score(str(out))  # parses as MIDI
    assert result.ticks_per_quarter == prompt.ticks_per_quarter
    assert _notes(result.tracks[0]) == _notes(prompt.tracks[0])  # the prompt, unchanged
    cont = result.tracks[-1]
    assert cont.name == tools.CONTINUATION_TRACK and len(cont.notes) > 0
    last_prompt_onset = max(n.time for n in prompt.tracks[0].notes)
    assert min(n.time for n in cont.notes) > last_prompt_onset  # the prompt's notes come first
    tpq = prompt.ticks_per_quarter
    span_beats = (max(n.time for n in cont.notes) - min(n.time for n in cont.notes)) / tpq
    assert span_beats < 4 * 4  # within the 4 requested bars


def test_generate_is_reproducible_and_checks_options(model_dir, tune, tmp_path, capsys):
    a, b = tmp_path / "a.mid", tmp_path / "b.mid"
    for out in (a, b):
        assert tools.run_cli(["generate", str(tune), "--bars", "2", "--model", str(model_dir), "--seed", "7",
                           "--out", str(out)]) == 0
    assert _notes(symusic.Score(str(a)).tracks[-1]) == _notes(symusic.Score(str(b)).tracks[-1])
    capsys.readouterr()
    assert tools.run_cli(["generate", str(tune), "--bars", "2", "--model", str(model_dir), "--key", "H major",
                       "--out", str(tmp_path / "c.mid")]) == 2
    assert "H major" in capsys.readouterr().err
    assert tools.run_cli(["generate", str(tune), "--bars", "0", "--model", str(model_dir),
                       "--out", str(tmp_path / "c.mid")]) == 2
    assert "--bars" in capsys.readouterr().err


def test_bad_model_dir_is_named(tune, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert tools.run_cli(["analyze", str(tune), "--model", str(tmp_path / "empty")]) == 2
    assert "empty" in capsys.readouterr().err


def test_tools_run_without_torch(model_dir, tune):
    """With torch unimportable, analyze on an exported model still works (the DAW-user install)."""
    proc = analyze_without_torch(str(tune), "--model", str(model_dir), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["key"] in analysis.KEYS


def test_continuation_bars_are_whole(model_dir, tune):
    """The new notes start at the bar line after the prompt (4-beat bars from the prompt's time 0)."""
    model = tools.open_model(model_dir)
    score, n_new = tools.continuation_score(model, tune, bars=3, controls={}, temperature=1.0, top_p=0.95, seed=0)
    tpq = score.ticks_per_quarter
    last_onset_beats = max(n.time for n in score.tracks[0].notes) / tpq
    first_bar = int(np.floor(last_onset_beats / 4)) + 1
    new_beats = [n.time / tpq for n in score.tracks[-1].notes]
    assert n_new == len(new_beats) > 0
    assert min(new_beats) >= 4 * first_bar - 1e-9 and max(new_beats) < 4 * (first_bar + 3)


def test_console_script_wiring(model_dir, tune, monkeypatch, capsys):
    """The rows the lead adds to typemoe/cli.py COMMANDS dispatch to add_parsers / main correctly."""
    from typemoe import cli

    monkeypatch.setitem(cli.COMMANDS, "analyze", ("export.tools", "key and meter of a MIDI file"))
    monkeypatch.setitem(cli.COMMANDS, "eval", ("training.eval_cli", "metrics on held-out pieces"))
    assert cli.main(["analyze", str(tune), "--model", str(model_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["meter"] in analysis.METERS
    with pytest.raises(SystemExit):
        cli.main(["eval", "--help"])
    assert "--ablation" in capsys.readouterr().out
