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


def _placed(vocab, ids, plan) -> list[tuple[float, float, int, int]]:
    """The notes of ids read by a plan, after checking that every Position lies inside its bar."""
    t = grammar_tables.tables_of(vocab)
    bar_start, bar_end = None, 0.0
    for x in np.asarray(ids).tolist():
        if t.is_bar[x]:
            bar_start = bar_end if bar_start is not None else 0.0
            bar_end = grammar_tables.next_bar_start(bar_start, plan)
        elif t.position_of[x] >= 0:
            assert bar_start + t.position_of[x] / 4 < bar_end - 1e-9, (bar_start, t.position_of[x], bar_end)
    return [
        (n.onset, n.duration, n.pitch) for n in TokenReader(vocab, TokenCursor(-1, 0, 0.0), plan).read(ids)
    ]


def _triple_pieces(src) -> list[int]:
    names = src.label_names["meter"]
    meters = [int(m) for m in src.labels["meter"]]
    return [i for i, m in enumerate(meters) if m >= 0 and rebar.piece_bar_ticks(names[m]) == 12]


def test_a_window_moves_into_its_meters_bars_at_one_of_its_bar_lines(shards, vocab):
    """training's own-bars windows: 4-beat bars until a bar line of the piece's meter, then 3-beat bars,
    as BarPlan reads a continuation; the same notes, every Position inside its bar."""
    from typemoe.training.learn.data import TokenOps, meter_bars

    ops, src = TokenOps(vocab), ShardSet(shards, vocab=vocab)
    switches = set()
    for i in _triple_pieces(src)[:6]:
        ids = np.asarray(src.tokens_of(i), dtype=np.int64)
        bars = np.flatnonzero(ids == ops.bar)
        for bar_index in (0, 1, 2):
            window = ids[bars[bar_index] : bars[bar_index] + 200]
            for seed in range(3):
                out, switch = meter_bars(window, ops, bar_index, 12, np.random.default_rng(seed))
                assert (bar_index * 16 + switch) % 12 == 0  # a bar line of the piece's 3/4
                plan = grammar_tables.BarPlan(switch / 4, 3.0)
                assert _placed(vocab, out, plan) == _placed(vocab, window, None)
                switches.add(switch)
    assert {0, 4, 8} <= switches and max(switches) > 12  # the first bar line, and later ones


def test_own_bars_windows_train_heads_only_on_their_four_beat_bars_and_leave_four_four_pieces_alone(
    shards, vocab
):
    from typemoe.training.learn.data import TokenOps, bar_ticks_of, load_pieces, make_sample

    ops, pieces = TokenOps(vocab), load_pieces([shards], vocab)
    ticks = bar_ticks_of(pieces)
    kw = dict(ops=ops, seq_len=256, transpose=6, phase_shift=True)
    triple = [i for i in range(len(pieces)) if ticks[i] == 12]
    four = [i for i in range(len(pieces)) if ticks[i] == 16]
    assert triple and four
    for i in four[:4]:
        a = make_sample(pieces, i, np.random.default_rng(i), **kw)
        b = make_sample(pieces, i, np.random.default_rng(i), own_bars=1.0, bar_ticks=16, **kw)
        assert np.array_equal(a.ids, b.ids) and a.head_from == b.head_from < len(a.ids)
    more_bars, heads = 0, []
    for i in triple[:12]:
        s = make_sample(pieces, i, np.random.default_rng(i), own_bars=1.0, bar_ticks=12, **kw)
        plain = make_sample(pieces, i, None, ops=ops, seq_len=256)
        more_bars += (s.ids == ops.bar).sum() > (plain.ids == ops.bar).sum()
        # analysis reads 4-beat bars: the heads learn only from what a 4-beat window of the same start holds
        four = make_sample(pieces, i, np.random.default_rng(i), **dict(kw, transpose=0, phase_shift=False))
        own = make_sample(
            pieces, i, np.random.default_rng(i), own_bars=1.0, bar_ticks=12, ops=ops, seq_len=256
        )
        assert own.head_to is not None and np.array_equal(own.ids[: own.head_to], four.ids[: own.head_to])
        assert own.head_to < len(own.ids) and not np.array_equal(own.ids, four.ids[: len(own.ids)])
        heads.append(max(own.head_to - own.head_from, 0))
    assert more_bars >= 8  # 3-beat bars: more of them in the same music
    assert any(heads) and not all(heads)  # switched at the first bar line (no head) and later


def test_own_bars_reaches_the_config_and_is_left_out_of_old_configs(shards, tmp_path, vocab):
    pytest.importorskip("torch")
    from typemoe.training.learn.cli import train_parser
    from typemoe.training.learn.config import TrainConfig
    from typemoe.training.learn.pretrain import build_config

    parse = train_parser("typemoe train").parse_args
    off = build_config(parse(tiny_args(shards, tmp_path / "a")), vocab)
    assert off.own_bars == 0 and "own_bars" not in off.to_dict()  # a run from before it resumes as it was
    on = build_config(parse(tiny_args(shards, tmp_path / "b", extra=("--own-bars", "0.5"))), vocab)
    assert on.own_bars == 0.5 and TrainConfig.from_dict(on.to_dict()).own_bars == 0.5
    with pytest.raises(ValueError, match="own_bars"):
        build_config(parse(tiny_args(shards, tmp_path / "c", extra=("--own-bars", "1.5"))), vocab)


def test_bar_ticks_of_reads_each_pieces_meter_and_tolerates_missing_names():
    from typemoe.training.learn.data import Pieces, bar_ticks_of

    def pieces(names):
        return Pieces(
            ids=["a", "b", "c"],
            tokens=[np.zeros(1, dtype=np.int64)] * 3,
            labels={"meter": np.asarray([0, 1, -1])},
            label_names=names,
            split=np.asarray(["train"] * 3),
        )

    assert bar_ticks_of(pieces({"meter": ("3/4", "4/4")})).tolist() == [12, 16, 16]
    assert bar_ticks_of(pieces({})).tolist() == [16, 16, 16]  # labels without names: REMI's bars
