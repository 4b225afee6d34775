"""Best of N (typemoe.candidates): the kept continuation is the best-judged of the candidates, one candidate is
exactly a plain generate, and `typemoe generate --candidates` refuses what it cannot do, by name."""

from __future__ import annotations

import numpy as np
import pytest
import symusic

from typemoe import candidates
from typemoe.commands import tools

pytest.importorskip("onnx")

KW = dict(n_bars=2, meter="3/4", temperature=1.0, top_p=0.95, guidance=2.0, head_guidance=0.0)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from export_fixtures import make_tiny_model_dir

    from typemoe.export.runtime import OrtModel

    return OrtModel(make_tiny_model_dir(tmp_path_factory.mktemp("cand") / "model"))


def _prompted(model, key: str | None):
    session = model.session()
    ctrl = model.vocab.control_ids(key=key, meter="3/4") if key else model.vocab.control_ids(meter="3/4")
    session.feed([model.vocab.bos_id, *ctrl])
    return session


def test_seeds_start_with_the_callers_and_differ():
    s = candidates.candidate_seeds(7, 5)
    assert s[0] == 7 and len(set(s)) == 5 and s == candidates.candidate_seeds(7, 5)
    assert candidates.candidate_seeds(None, 3) == [None, None, None]


@pytest.mark.parametrize("bad", [0, -1, candidates.MAX_CANDIDATES + 1, 2.5, True, "4"])
def test_a_bad_count_is_named(bad):
    with pytest.raises(ValueError, match=repr(bad).replace("(", r"\(").replace(")", r"\)")):
        candidates.check_candidates(bad)


def test_one_candidate_is_a_plain_generate(model):
    plain = _prompted(model, "Eb major").generate(seed=3, **KW)
    session = _prompted(model, "Eb major")
    assert candidates.best_of(session, 1, readers=model, seed=3, **KW) == plain
    assert session.tokens[-len(plain) :] == plain


def test_without_a_key_control_one_continuation_is_written(model):
    plain = _prompted(model, None).generate(seed=3, **KW)
    assert candidates.best_of(_prompted(model, None), 6, readers=model, seed=3, **KW) == plain


def test_the_best_judged_candidate_is_kept_and_fed(model):
    key = 3  # Eb major
    n = 5
    made = [_prompted(model, "Eb major").generate(seed=s, **KW) for s in candidates.candidate_seeds(11, n)]
    assert len({tuple(m) for m in made}) > 1  # the candidates differ, so the choice matters
    probe = _prompted(model, "Eb major")
    scores = [candidates.score(probe, m, key, "3/4", model) for m in made]
    session = _prompted(model, "Eb major")
    before = len(session.tokens)
    got = candidates.best_of(session, n, readers=model, seed=11, **KW)
    assert got == made[int(np.argmax(scores))]
    assert session.tokens[before:] == got  # the session holds the kept continuation, and only it


def test_the_judge_hears_notes_where_their_bars_put_them(model):
    """Notes written in 3-beat bars are read at their true onsets (beats 0 and 3), in REMI's 4-beat bars."""
    from typemoe.remi_notes import RemiNotes

    v = model.vocab
    note = [v.id("Position_0"), v.id("Pitch_60"), v.id("Velocity_63"), v.id("Duration_1.0.4")]
    bar = v.id("Bar_None")
    remi = RemiNotes(v)
    ids = candidates.in_four(model, [bar, *note, bar, *note], "3/4")
    onsets, _ = remi.beats(ids)
    assert onsets.tolist() == [0.0, 3.0]
    assert remi.beats(candidates.in_four(model, [bar, *note, bar, *note], "4/4"))[0].tolist() == [0.0, 4.0]
    assert remi.beats([bar, *note, bar, *note])[0].tolist() == [0.0, 4.0]  # as written, without the move


def test_generate_cli_candidates(tmp_path, capsys):
    from conftest import music21_scores
    from export_fixtures import make_tiny_model_dir

    model_dir = make_tiny_model_dir(tmp_path / "model")
    _, score = music21_scores(1)[0]
    tune = tmp_path / "tune.mid"
    score.dump_midi(str(tune))
    out = tmp_path / "best.mid"
    base = ["generate", str(tune), "--bars", "2", "--model", str(model_dir), "--out", str(out)]
    assert tools.run_cli([*base, "--key", "Eb major", "--candidates", "3", "--seed", "1"]) == 0
    assert len(symusic.Score(str(out)).tracks[-1].notes) > 0
    capsys.readouterr()
    assert tools.run_cli([*base, "--candidates", "3"]) == 2
    assert "--candidates needs --key" in capsys.readouterr().err
    assert tools.run_cli([*base, "--key", "Eb major", "--candidates", "0"]) == 2
    assert "got 0" in capsys.readouterr().err
