"""`typemoe analyze` / `typemoe generate` end to end on a real tune with a tiny random model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import symusic
from export_fixtures import analyze_without_torch

from typemoe import analysis, key_steering, listening
from typemoe.commands import tools

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
    # the tiny model's class head names the emotion quadrants: analyze reads it from the same graph
    assert set(res) == {"key", "key_confidence", "meter", "meter_confidence", "at_end", "after_bars"} | {
        "key_transpositions",
        "emotion",
        "emotion_confidence",
        "emotion_probs",
    }
    assert set(res["at_end"]) == {"key", "key_confidence", "meter", "meter_confidence"}
    assert res["key"] in analysis.KEYS and res["meter"] in analysis.METERS
    assert 0.0 < res["key_confidence"] <= 1.0 and 0.0 < res["meter_confidence"] <= 1.0
    assert list(res["after_bars"]) == ["1", "2", "4", "8"]  # the tune has more than 8 bars
    assert set(res["after_bars"]["4"]) == {"key", "key_confidence", "meter", "meter_confidence"}
    assert res["key_transpositions"] == 12
    assert tools.run_cli(["analyze", str(tune), "--model", str(model_dir), "--json", "--quick"]) == 0
    quick = json.loads(capsys.readouterr().out)
    assert quick["key_transpositions"] == 1 and quick["meter"] == res["meter"]


def test_analyze_reads_the_whole_piece(model_dir, tmp_path):
    """A piece longer than the context: the answer (--quick, one hearing) is the heads' mean over every bar
    line as the sliding context heard it, and "at_end" the estimate at its end, after the context slid."""
    from conftest import music21_scores

    from typemoe.export.runtime import OrtModel

    model = OrtModel(model_dir, provider="cpu")
    tune_score = music21_scores(1)[0][1]
    long_score = tune_score.copy()
    span = tune_score.end()
    for k in (1, 2):  # the tune three times over
        for n in tune_score.tracks[0].notes:
            long_score.tracks[0].notes.append(
                symusic.Note(n.time + k * span, n.duration, n.pitch, n.velocity)
            )
    path = tmp_path / "long.mid"
    long_score.dump_midi(str(path))
    ids = model.vocab.encode_score(long_score)
    assert len(ids) > 2 * model.context_len, "pick a longer tune"
    res = tools.analyze(model, path, quick=True)
    first = model.session().feed([model.vocab.bos_id, *ids][: model.context_len])
    end = model.session()
    end.feed([model.vocab.bos_id])
    bar, seen, at_bars = model.vocab.id("Bar_None"), 0, []
    for chunk in listening.bar_chunks(model.vocab, ids, model.context_len // 4):
        if chunk[0] == bar:
            seen += 1
            if seen > 1:
                at_bars.append(end.last.key_probs)  # bar seen-1 complete
        out = end.feed(chunk)
    at_bars.append(out.key_probs)
    mean = np.mean(at_bars, axis=0)
    assert len(at_bars) == int(np.sum(np.asarray(ids) == bar)) > 20  # every bar once (the last at the end)
    heard = listening.listen(model, ids)
    assert len(heard.at_bars) == len(at_bars) and np.allclose(heard.at_bars[-1].key_probs, out.key_probs)
    assert res["key_confidence"] == round(float(mean.max()), 4)  # the whole piece: the mean over bar lines
    assert res["at_end"]["key_confidence"] == round(float(out.key_probs.max()), 4)  # after the slides
    assert res["key_confidence"] != round(float(first.key_probs.max()), 4)
    assert res["at_end"]["key_confidence"] != res["key_confidence"]


def test_analyze_fuses_at_every_bar_line_as_the_bridge_does(tmp_path):
    """With the shipped directory's fusions: the whole-piece key (--quick) is the mean over bar lines of the
    key head fused with the notes of the context it read (what the bridge reports there), raised for the
    tonic of the last chord's bass, "at_end" the last of those answers, and the meter the meter head's
    mean fused with the rhythm of every note."""
    from conftest import music21_scores

    from typemoe.export.runtime import OrtModel
    from typemoe.key_fusion import with_ending
    from typemoe.shipped import default_model_dir

    model = OrtModel(default_model_dir(), provider="cpu")
    assert model.key.fusion is not None and model.meter.fusion is not None
    tune = music21_scores(3)[2][1]
    long_score = tune.copy()
    repeats = 3 * model.context_len // len(model.vocab.encode_score(tune)) + 1
    for k in range(1, repeats):  # the tune over and over, well past two contexts
        for n in tune.tracks[0].notes:
            long_score.tracks[0].notes.append(symusic.Note(n.time + k * tune.end(), n.duration, n.pitch, 70))
    path = tmp_path / "long.mid"
    long_score.dump_midi(str(path))
    ids = model.vocab.encode_score(long_score)
    assert len(ids) > 2 * model.context_len, "pick a longer tune"
    res = tools.analyze(model, path, quick=True)
    session, bar, seen = model.session(), model.vocab.id("Bar_None"), 0
    session.feed([model.vocab.bos_id])
    keys, meter_heads = [], []

    def answer_here():
        keys.append(model.answer(session.tokens, session.last.key_probs, session.last.meter_probs)[0])
        meter_heads.append(session.last.meter_probs)

    for chunk in listening.bar_chunks(model.vocab, ids, model.context_len // 4):
        if chunk[0] == bar:
            seen += 1
            if seen > 1:
                answer_here()
        session.feed(chunk)
    answer_here()
    key = with_ending(np.mean(keys, axis=0), model.key.ending(ids))
    meter = model.meter.probs(ids, np.mean(meter_heads, axis=0))
    assert res["key"] == model.key_names[int(np.argmax(key))]
    assert res["key_confidence"] == round(float(key.max()), 4)
    assert res["meter_confidence"] == round(float(meter.max()), 4)
    assert res["at_end"]["key_confidence"] == round(float(keys[-1].max()), 4)
    pooled = model.key.probs(ids, session.last.key_probs)  # the end head with every note: not the bridge
    assert res["at_end"]["key_confidence"] != round(float(pooled.max()), 4)


def test_turn_back_moves_a_transposed_pieces_keys_home():
    def one_hot(name):
        p = np.zeros(24)
        p[analysis.KEYS.index(name)] = 1.0
        return p

    for home, shift in (("C major", 2), ("A minor", 3), ("F# major", -6), ("Bb minor", 5)):
        moved = analysis.KEYS[analysis.transpose_key(analysis.KEYS.index(home), shift)]
        turned = listening.turn_back(one_hot(moved), shift)
        assert analysis.KEYS[int(np.argmax(turned))] == home, (home, shift, moved)


def test_analyze_hears_the_key_in_twelve_transpositions(model_dir, tune):
    """The whole-piece key head is the mean of the piece's hearings in the 12 transpositions that put its
    mean pitch into the register, each turned back to the piece's keys, at every bar line (the tiny model
    has no key fusion: the heads answer)."""
    from typemoe.export.runtime import OrtModel
    from typemoe.transpose import Transposer

    model = OrtModel(model_dir, provider="cpu")
    assert model.key.fusion is None
    ids = model.vocab.encode_score(symusic.Score(str(tune)))
    tr = Transposer(model.vocab)
    per_shift = []
    shifts = listening.register_shifts(tr.pitch_of[np.asarray(ids)][tr.pitch_of[np.asarray(ids)] >= 0])
    assert 0 not in shifts  # the tune sits above A4: every hearing is a transposition
    for s in shifts:
        moved = tr.transpose(np.asarray(ids), s)[0].tolist()
        assert len(moved) == len(ids)  # a folk tune: every note stays in range
        bars = listening.listen(model, moved).at_bars
        per_shift.append(np.mean([listening.turn_back(o.key_probs, s) for o in bars], axis=0))
    key = np.mean(per_shift, axis=0)
    res = tools.analyze(model, tune)
    assert res["key"] == model.key_names[int(np.argmax(key))]
    assert res["key_confidence"] == round(float(key.max()), 4)
    assert res["key_confidence"] != tools.analyze(model, tune, quick=True)["key_confidence"]


def test_register_shifts_hear_a_piece_and_its_transpositions_alike():
    pitches = np.array([60, 64, 67, 72, 71, 62])
    shifts = listening.register_shifts(pitches)
    assert len(shifts) == 12 and shifts == tuple(range(shifts[0], shifts[0] + 12))
    means = [(pitches + s).mean() for s in shifts]
    assert all(listening.REGISTER[0] <= m < listening.REGISTER[1] for m in means)
    for k in (-7, -1, 1, 5, 12):
        assert listening.register_shifts(pitches + k) == tuple(s - k for s in shifts)
    assert listening.register_shifts(np.array([], dtype=int)) == (0,)
    edge = np.array([57, 57])  # the mean exactly on the register's low edge is inside it
    assert listening.register_shifts(edge)[0] == 0
    with pytest.raises(ValueError, match="one octave"):
        listening.register_shifts(pitches, (50, 70))


def test_analyze_key_turns_with_a_transposition(tmp_path):
    """The shipped model on a real tune whose key the one hearing does not turn (Kriegers Abschied, E
    minor: `--quick` answers 3 of 12 transpositions with another key): the whole-piece key of every
    transposition is the tune's key moved by the same interval. Twelve hearings of each are the same
    twelve sequences."""
    from conftest import music21_tune

    from typemoe.export.runtime import OrtModel
    from typemoe.shipped import default_model_dir

    model = OrtModel(default_model_dir(), provider="cpu")
    tune = music21_tune("essenFolksong/zuccal0", 457)
    home = tmp_path / "home.mid"
    tune.dump_midi(str(home))
    key = analysis.parse_key(tools.analyze(model, home)["key"])
    quick_key = analysis.parse_key(tools.analyze(model, home, quick=True)["key"])
    turned, quick_turned = [], []
    for shift in [s for s in range(-6, 7) if s]:
        moved = tmp_path / f"moved{shift}.mid"
        tune.shift_pitch(shift).dump_midi(str(moved))
        turned.append(analysis.KEYS[analysis.transpose_key(key, shift)] == tools.analyze(model, moved)["key"])
        quick = tools.analyze(model, moved, quick=True)["key"]
        quick_turned.append(analysis.KEYS[analysis.transpose_key(quick_key, shift)] == quick)
    assert all(turned), turned
    assert not all(quick_turned)  # the piece is one that needs it: one hearing does not turn


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
    code = tools.run_cli(
        [
            "generate",
            str(tune),
            "--bars",
            "4",
            "--model",
            str(model),
            "--key",
            "G major",
            "--meter",
            "2/4",
            "--temperature",
            "0.9",
            "--seed",
            "3",
            "--out",
            str(out),
        ]
    )
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
        assert (
            tools.run_cli(
                [
                    "generate",
                    str(tune),
                    "--bars",
                    "2",
                    "--model",
                    str(model_dir),
                    "--seed",
                    "7",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
    assert _notes(symusic.Score(str(a)).tracks[-1]) == _notes(symusic.Score(str(b)).tracks[-1])
    capsys.readouterr()
    assert (
        tools.run_cli(
            [
                "generate",
                str(tune),
                "--bars",
                "2",
                "--model",
                str(model_dir),
                "--key",
                "H major",
                "--out",
                str(tmp_path / "c.mid"),
            ]
        )
        == 2
    )
    assert "H major" in capsys.readouterr().err
    assert (
        tools.run_cli(
            [
                "generate",
                str(tune),
                "--bars",
                "0",
                "--model",
                str(model_dir),
                "--out",
                str(tmp_path / "c.mid"),
            ]
        )
        == 2
    )
    assert "--bars" in capsys.readouterr().err


def test_bad_model_dir_is_named(tune, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert tools.run_cli(["analyze", str(tune), "--model", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "empty" in err and "manifest.json" in err
    assert "typemoe export --checkpoint CKPT --out DIR" in err and "python -m typemoe.export" not in err


def test_tools_run_without_torch(model_dir, tune):
    """With torch unimportable, analyze on an exported model still works (the DAW-user install)."""
    proc = analyze_without_torch(str(tune), "--model", str(model_dir), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["key"] in analysis.KEYS


def _waltz(path: Path, n_bars: int = 7, tpq: int = 480) -> Path:
    """A 3/4 tune of quarter notes (and a held chord tone), n_bars bars, no tempo event."""
    score = symusic.Score(tpq)
    track = symusic.Track("waltz", 0, False)
    for bar in range(n_bars):
        for beat, pitch in enumerate((60, 64, 67)):
            track.notes.append(symusic.Note((3 * bar + beat) * tpq, tpq, pitch + (bar % 2) * 2, 80))
        track.notes.append(symusic.Note(3 * bar * tpq, 3 * tpq, 48, 70))
    score.tracks.append(track)
    score.time_signatures.append(symusic.TimeSignature(0, 3, 4))
    score.dump_midi(str(path))
    return path


@pytest.mark.parametrize("which", ["onnx", "torch"])
def test_a_waltz_continues_on_its_own_bar_line(which, model_dir, ckpt_dir, tmp_path):
    """7 bars of 3/4 end at beat 21, which is no 4-beat bar line: the continuation starts there, on the
    downbeat, and lasts 3 bars of 3 beats; its notes are clean and the file carries a tempo."""
    prompt = _waltz(tmp_path / "waltz.mid")
    model = tools.open_model(model_dir if which == "onnx" else ckpt_dir)
    for seed in range(3):
        res = tools.continuation_score(
            model, prompt, bars=3, controls={"meter": "3/4"}, temperature=1.0, top_p=0.95, seed=seed
        )
        tpq = res.score.ticks_per_quarter
        beats = [n.time / tpq for n in res.score.tracks[-1].notes]
        assert res.meter == "3/4" and res.start_beat == 21
        assert res.n_notes == len(beats) > 0 and min(beats) == 21 and max(beats) < 21 + 3 * 3, beats
        _assert_clean(res.score.tracks[-1])
        assert len(res.score.tempos) == 1


def test_without_meter_a_waltz_is_continued_in_its_time_signature(model_dir, tmp_path):
    """No --meter: the file's own 3/4 counts the bars (not the model's estimate, which may say 6/4 and
    double every bar); a file whose meter changes, or without one, falls back to the estimate."""
    model = tools.open_model(model_dir)
    prompt = _waltz(tmp_path / "waltz.mid")
    res = tools.continuation_score(model, prompt, bars=3, controls={}, temperature=1.0, top_p=0.95, seed=0)
    beats = [n.time / res.score.ticks_per_quarter for n in res.score.tracks[-1].notes]
    assert (res.meter, res.meter_source, res.start_beat) == ("3/4", "time signature", 21)
    assert beats and min(beats) == 21 and max(beats) < 21 + 3 * 3, beats
    score = symusic.Score(str(prompt))
    score.time_signatures.append(symusic.TimeSignature(6 * 480, 4, 4))
    assert tools.file_meter(score) is None
    score.time_signatures.clear()
    assert tools.file_meter(score) is None
    score.time_signatures.append(symusic.TimeSignature(0, 5, 4))
    assert tools.file_meter(score) is None  # no class for it: the estimate decides
    score.time_signatures[0] = symusic.TimeSignature(0, 6, 8)
    assert tools.file_meter(score) == "6/8"


def _assert_clean(track) -> None:
    notes = sorted((n.pitch, n.time, n.duration) for n in track.notes)
    for (p, t, d), (q, u, _) in zip(notes, notes[1:]):
        assert p != q or t + d <= u, f"pitch {p}: a note at {t} (+{d}) overlaps the one at {u}"


def test_generated_file_is_clean_and_keeps_the_prompts_tempo(model_dir, tune, tmp_path, capsys):
    """Without --meter the meter comes from the file's time signature (else the model's estimate); the
    output carries the prompt's tempo."""
    score = symusic.Score(str(tune))
    score.tempos.append(symusic.Tempo(0, 96.0))
    prompt = tmp_path / "with_tempo.mid"
    score.dump_midi(str(prompt))
    out = tmp_path / "out.mid"
    assert (
        tools.run_cli(
            [
                "generate",
                str(prompt),
                "--bars",
                "4",
                "--model",
                str(model_dir),
                "--seed",
                "2",
                "--temperature",
                "1.5",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    line = capsys.readouterr().out
    assert any(f"({how})" in line for how in ("time signature", "estimate", "default")), line
    result = symusic.Score(str(out))
    assert [round(t.qpm) for t in result.tempos] == [96]
    _assert_clean(result.tracks[-1])
    tpq = result.ticks_per_quarter
    assert all(n.time % (tpq // 4) == 0 for n in result.tracks[-1].notes)  # exactly on the 16th grid


def test_key_lock_and_guidance_options(model_dir, tune, tmp_path, capsys):
    out = tmp_path / "locked.mid"
    assert (
        tools.run_cli(
            [
                "generate",
                str(tune),
                "--bars",
                "4",
                "--model",
                str(model_dir),
                "--key",
                "Eb major",
                "--key-lock",
                "--guidance",
                "2",
                "--temperature",
                "1.5",
                "--seed",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    from typemoe.decoding import scale_pitch_classes

    scale = scale_pitch_classes("Eb major")
    notes = symusic.Score(str(out)).tracks[-1].notes
    assert len(notes) > 0 and all(scale[n.pitch % 12] for n in notes)
    capsys.readouterr()
    assert (
        tools.run_cli(
            ["generate", str(tune), "--bars", "2", "--model", str(model_dir), "--key-lock", "--out", str(out)]
        )
        == 2
    )
    assert "--key-lock needs --key" in capsys.readouterr().err
    assert (
        tools.run_cli(
            [
                "generate",
                str(tune),
                "--bars",
                "2",
                "--model",
                str(model_dir),
                "--guidance",
                "-1",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "guidance" in capsys.readouterr().err


def test_head_guidance_option_reaches_the_decoder_and_a_bad_one_is_refused(
    model_dir, tune, tmp_path, capsys, monkeypatch
):
    from typemoe import decoding

    seen = []
    real = decoding.Session.generate
    monkeypatch.setattr(decoding.Session, "generate", lambda self, **kw: seen.append(kw) or real(self, **kw))
    out = tmp_path / "steered.mid"
    base = ["generate", str(tune), "--bars", "2", "--model", str(model_dir), "--key", "Eb major"]
    base += ["--out", str(out)]
    assert tools.run_cli(base) == 0 and tools.run_cli([*base, "--head-guidance", "0"]) == 0
    assert [kw["head_guidance"] for kw in seen] == [key_steering.DEFAULT_HEAD_GUIDANCE, 0.0]
    capsys.readouterr()
    assert tools.run_cli([*base, "--head-guidance", "-2"]) == 2
    err = capsys.readouterr().err
    assert "--head-guidance" in err and "-2" in err


def test_console_script_wiring(model_dir, tune, monkeypatch, capsys):
    """The rows the lead adds to typemoe/cli.py COMMANDS dispatch to add_parsers / main correctly."""
    from typemoe import cli

    monkeypatch.setitem(cli.COMMANDS, "analyze", ("typemoe.commands.tools", "key and meter of a MIDI file"))
    monkeypatch.setitem(
        cli.COMMANDS, "eval", ("typemoe.training.evaluation.eval_cli", "metrics on held-out pieces")
    )
    assert cli.main(["analyze", str(tune), "--model", str(model_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["meter"] in analysis.METERS
    with pytest.raises(SystemExit):
        cli.main(["eval", "--help"])
    assert "--ablation" in capsys.readouterr().out
