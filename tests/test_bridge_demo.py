"""`typemoe-bridge --demo`: the shipped tune through the realtime path (no ports), continuation written to MIDI."""

from __future__ import annotations

import symusic
from bridge_fixtures import toy_vocab

from typemoe.bridge.config import BridgeConfig
from typemoe.bridge.demo import DEMO_TUNE, load_tune, run_demo
from typemoe.bridge.toy_model import ToyModel


def test_shipped_tune_is_small_and_readable():
    assert DEMO_TUNE.stat().st_size < 10_000
    notes = load_tune()
    assert len(notes) > 100 and notes[0].onset >= 0


def test_demo_reports_key_and_writes_the_continuation(tmp_path):
    lines: list[str] = []
    out = tmp_path / "demo.mid"
    code = run_demo(
        BridgeConfig(model="toy"),
        ToyModel(toy_vocab()),
        out_path=out,
        tempo=400.0,
        bars=1.0,
        emit=lines.append,
    )
    assert code == 0, lines
    assert any(" key " in line for line in lines) and any("meter" in line for line in lines)
    score = symusic.Score(str(out))
    tune, cont = score.tracks
    assert len(tune.notes) == len(load_tune()) and len(cont.notes) >= 4
    assert min(n.time for n in cont.notes) >= max(n.time for n in tune.notes)  # after the tune
