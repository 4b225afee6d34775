"""training/data/rebar.py: shards re-barred in each piece's own meter hold the same notes, read back by the
decoder's BarPlan; training on them keeps each window's bars (--no-phase-shift)."""

from __future__ import annotations

import numpy as np
import pytest
from training_fixtures import build_shards, tiny_args

from typemoe import grammar_tables
from typemoe.streaming import TokenCursor, TokenReader
from typemoe.training.data import rebar
from typemoe.training.data.shards import ShardSet

pytest.importorskip("music21")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return build_shards(tmp_path_factory.mktemp("rebar") / "m21")


def _notes(vocab, ids, beats: float) -> list[tuple[float, float, int, int]]:
    plan = None if beats == 4 else grammar_tables.BarPlan(0.0, beats)
    return [
        (n.onset, n.duration, n.pitch, n.velocity)
        for n in TokenReader(vocab, TokenCursor(-1, 0, 0.0), plan).read(ids)
    ]


def test_rebarred_shards_hold_the_same_notes_in_bars_of_the_meter(shards, tmp_path, vocab):
    src = ShardSet(shards, vocab=vocab)
    counts = rebar.rebar_shards(shards, tmp_path / "real", vocab)
    dst = ShardSet(tmp_path / "real", vocab=vocab)
    assert len(dst) == len(src) == sum(counts.values()) and 12 in counts  # triple tunes among them
    t = grammar_tables.tables_of(vocab)
    names = src.label_names["meter"]
    seen = set()
    for i in range(len(src)):
        m = int(src.labels["meter"][i])
        ticks = rebar.piece_bar_ticks(names[m] if m >= 0 else None)
        a, b = np.asarray(src.tokens_of(i)).tolist(), np.asarray(dst.tokens_of(i)).tolist()
        assert _notes(vocab, a, 4) == _notes(vocab, b, ticks / 4), i  # the same notes, placed by the plan
        assert all(t.position_of[x] < ticks for x in b)  # every Position inside its bar
        assert sum(t.is_bar[x] for x in b) >= sum(t.is_bar[x] for x in a) * 16 // ticks - 1
        seen.add(ticks)
        for name in ("key", "meter", "split"):
            got = dst.labels[name][i] if name != "split" else dst.split[i]
            want = src.labels[name][i] if name != "split" else src.split[i]
            assert got == want
    assert {12, 16} <= seen


def test_rebar_ids_keeps_empty_bars_and_puts_each_position_in_its_bar(vocab):
    t = grammar_tables.tables_of(vocab)
    ids = [vocab.id(x) for x in ("Bar_None", "Position_0", "Pitch_60", "Velocity_79", "Duration_1.0.4")]
    ids += [vocab.id("Bar_None"), vocab.id("Bar_None")]  # an empty 4-beat bar, then bar 3
    ids += [vocab.id(x) for x in ("Position_14", "Pitch_62", "Velocity_79", "Duration_0.2.4")]
    out = rebar.rebar_ids(np.asarray(ids), t, 12).tolist()
    # tick 0 -> bar 0 pos 0; tick 2 * 16 + 14 = 46 -> bar 3 (46 // 12) pos 10
    assert [vocab.token(x) for x in out] == [
        "Bar_None",
        "Position_0",
        "Pitch_60",
        "Velocity_79",
        "Duration_1.0.4",
        "Bar_None",
        "Bar_None",
        "Bar_None",
        "Position_10",
        "Pitch_62",
        "Velocity_79",
        "Duration_0.2.4",
    ]


def test_no_phase_shift_reaches_the_training_config(shards, tmp_path, vocab):
    pytest.importorskip("torch")
    from typemoe.training.learn.cli import train_parser
    from typemoe.training.learn.pretrain import build_config

    parse = train_parser("typemoe train").parse_args
    assert build_config(parse(tiny_args(shards, tmp_path / "a")), vocab).phase_shift
    off = parse(tiny_args(shards, tmp_path / "b", extra=("--no-phase-shift",)))
    assert not build_config(off, vocab).phase_shift


def test_the_cli_writes_the_rebarred_set_and_refuses_a_bad_one(shards, tmp_path, capsys):
    assert rebar.main([str(shards), str(tmp_path / "out")]) == 0
    assert "3-beat bars" in capsys.readouterr().out
    assert rebar.main([str(tmp_path / "nothing"), str(tmp_path / "out2")]) == 2
    assert "no manifest.json" in capsys.readouterr().err
