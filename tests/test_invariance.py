"""The shipped model's key and meter heads read music, not a performer's touch (issue 12).

On real held-out pieces (music21 corpus test-split tunes, plus POP909 and EMOPIA test pieces when
../shared/data is present), the shipped default model (typemoe/default_model, run by the torch-free
export.runtime.OrtModel) must give the same key and meter

- under any constant velocity in 30..120 (30, 120 and one seeded draw per piece),
- under per-note velocity noise (sd 10),
- under +-1/32-beat onset and duration jitter,

and a key that turns with a transposition (a seeded shift in -5..+6 that keeps the notes in range).
Each is an agreement rate with the prediction on the unperturbed piece, over every (piece, variant),
and must be >= AGREEMENT. The heads are read at the last token of the piece's first WINDOW tokens
(BOS + music), as a freshly started bridge reads them (one hearing). The key's turn is checked again as
`typemoe analyze` answers for those WINDOW tokens: the whole-piece key, from twelve hearings
(typemoe.listening.key_heads_transposed).

Held out means the pieces' ids fall in the test split that training never sees (training/data/sources.py
split_of; EMOPIA's official split). For music21, only test-split tunes of a few multi-tune ABC files
are parsed (the id is "path#X"), so this needs no corpus conversion.
"""

from __future__ import annotations

import csv
import functools
import re
from pathlib import Path

import numpy as np
import pytest
import symusic

from typemoe.training.evaluation import perturb

AGREEMENT = 0.95
WINDOW = 512  # tokens read per piece, BOS included
MUSIC21_FILES = (  # Essen (German, Italian, Luxembourg songs) and Aird's airs (reels, jigs, strathspeys)
    "essenFolksong/zuccal0.abc",
    "essenFolksong/erk30.abc",
    "essenFolksong/lux.abc",
    "airdsAirs/book5.abc",
    "airdsAirs/book6.abc",
    "airdsAirs/book4.abc",
)
N_MUSIC21 = 60
N_SHARED = 15  # per shared set (POP909, EMOPIA), when present
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


# --------------------------------------------------------------------------- held-out pieces


def _m21_to_score(stream) -> symusic.Score:
    """Notes of a music21 score as a one-track symusic score (tpq 480), every velocity 80 (as training's
    conversion writes them)."""
    score = symusic.Score(480)
    track = symusic.Track("melody", 0, False)
    for el in stream.stripTies().flatten().notes:
        for p in el.pitches:
            track.notes.append(
                symusic.Note(
                    int(round(float(el.offset) * 480)),
                    max(1, int(round(float(el.quarterLength) * 480))),
                    int(p.midi),
                    80,
                )
            )
    score.tracks.append(track)
    return score


def _abc_tunes(text: str) -> list[tuple[str, str]]:
    """(X number, tune text) of every tune in an ABC file."""
    parts = re.split(r"(?m)^(?=X:)", text)
    out = []
    for part in parts:
        m = re.match(r"X:\s*(\d+)", part)
        if m:
            out.append((m.group(1), part))
    return out


@functools.lru_cache(maxsize=1)
def music21_test_pieces() -> tuple[tuple[str, symusic.Score], ...]:
    import warnings

    from music21 import common, converter

    from typemoe.training.data.sources import split_of

    root = Path(common.getCorpusFilePath())
    out = []
    for rel in MUSIC21_FILES:
        text = (root / rel).read_text(encoding="utf-8", errors="replace")
        for x, tune in _abc_tunes(text):
            if split_of(f"{rel}#{x}") != "test":
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    score = _m21_to_score(converter.parse(tune, format="abc"))
                except Exception:  # a broken encoding: training skips these tunes too
                    continue
            if len(score.tracks[0].notes) >= 16:
                out.append((f"music21:{rel}#{x}", score))
            if len(out) >= N_MUSIC21:
                return tuple(out)
    return tuple(out)


def shared_test_pieces() -> list[tuple[str, symusic.Score]]:
    """Up to N_SHARED test-split pieces of POP909 and of EMOPIA, when ../shared/data holds them."""
    from typemoe.training.data.music21_source import default_cache_dir
    from typemoe.training.data.sources import extract_archive, split_of

    out = []
    for name, path_col, is_test in (
        ("pop909", "midi", lambda row: split_of(row["midi"]) == "test"),
        ("emopia", "path", lambda row: row["split"] == "test"),
    ):
        csv_path, archive = SHARED_DATA / f"{name}_labels.csv", SHARED_DATA / f"{name}.tar.gz"
        if not (csv_path.is_file() and archive.is_file()):
            continue
        root = extract_archive(archive, default_cache_dir())
        with csv_path.open(newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if is_test(r)][:N_SHARED]
        out += [(f"{name}:{r[path_col]}", symusic.Score(root / r[path_col])) for r in rows]
    return out


# --------------------------------------------------------------------------- the model


# The model shipped before issue 12 failed all but meter-under-jitter (key const velocity 0.922, meter 0.637;
# velocity noise 0.944 / 0.600; jitter key 0.933; transposition 0.900). The shipped model passes every
# velocity and timing check since its meter fusion was refitted with a consistency term (MeterFusion.fit: the
# same window played with another touch must get the same answer; meter 0.948 -> 0.970 under constant
# velocity, 0.922 -> 0.956 under jitter). The graph shipped on 2026-12-02 turned its key with a transposition
# only 0.933 over these pieces (one hearing: the bridge's running key), and this test was a strict xfail. The
# model shipped on 2026-12-03 (1000 more SS-MTP steps of the whole model, MODEL_CARD.md Training step
# 7) turns it 0.956 and passes; `typemoe analyze` hears a piece in twelve transpositions and its key turns on
# every piece (1.000, test_analyze_key_turns_with_transposition).


@pytest.fixture(scope="module")
def model():
    """The shipped model, or the exported directory in $TYPEMOE_INVARIANCE_MODEL (to check a candidate before
    shipping it)."""
    import os

    from typemoe.export.runtime import OrtModel
    from typemoe.shipped import default_model_dir

    return OrtModel(os.environ.get("TYPEMOE_INVARIANCE_MODEL") or default_model_dir())


def _predict(model, score: symusic.Score) -> tuple[int, int]:
    """(key, meter) as typemoe.analysis indices, at the last token of the first WINDOW tokens. The meter is
    the model's whole answer (OrtModel.meter, OrtModel.key: its fusions of rhythm / pitch classes with the
    heads, when it has them), as `typemoe analyze` gives it."""
    from typemoe import analysis

    ids = [model.vocab.bos_id, *model.vocab.encode_score(score)[: WINDOW - 1]]
    out = model.session().feed(ids)
    key_probs, meter_probs = model.answer(ids, out.key_probs, out.meter_probs)
    key = analysis.parse_key(model.key_names[int(np.argmax(key_probs))])
    meter = analysis.parse_meter(model.meter_names[int(np.argmax(meter_probs))])
    return key, meter


def _analyze_key(model, score: symusic.Score) -> int:
    """The key `typemoe analyze` answers for the first WINDOW tokens: the whole-piece key, its key head heard
    in twelve transpositions (typemoe.listening)."""
    from typemoe import analysis, listening

    heard = listening.listen(model, model.vocab.encode_score(score)[: WINDOW - 1])
    whole = listening.whole_piece(heard, model, listening.key_heads_transposed(model, heard))
    return analysis.parse_key(model.key_names[int(np.argmax(whole.key_probs))])


@pytest.fixture(scope="module")
def readings(model) -> dict:
    """Predictions on every piece and every variant: {variant: [(piece_id, (key, meter)), ...]}, plus the
    transposition shifts."""
    pieces = list(music21_test_pieces()) + shared_test_pieces()
    assert len(pieces) >= 50, f"only {len(pieces)} held-out pieces; the invariance suite needs >= 50"
    out: dict = {
        "base": [],
        "vel30": [],
        "vel120": [],
        "velrand": [],
        "noise": [],
        "jitter": [],
        "transposed": [],
        "shift": [],
        "analyze": [],  # (key of the piece, key of its transposition) as analyze answers
    }
    for i, (pid, score) in enumerate(pieces):
        rng = np.random.default_rng(1000 + i)
        variants = {
            "base": score,
            "vel30": perturb.constant_velocity(score, 30),
            "vel120": perturb.constant_velocity(score, 120),
            "velrand": perturb.constant_velocity(score, int(rng.integers(30, 121))),
            "noise": perturb.velocity_noise(score, 10.0, seed=rng),
            "jitter": perturb.onset_jitter(score, 1 / 32, seed=rng),
        }
        shift = perturb.random_transposition(score, seed=rng)
        variants["transposed"] = perturb.transpose(score, shift)
        for name, s in variants.items():
            out[name].append((pid, _predict(model, s)))
        out["shift"].append(shift)
        out["analyze"].append((_analyze_key(model, score), _analyze_key(model, variants["transposed"])))
    return out


def _agreement(readings: dict, variants: tuple[str, ...], task: int) -> tuple[float, int, list[str]]:
    """Share of (piece, variant) whose prediction (task 0 key, 1 meter) equals the unperturbed one."""
    same, misses = [], []
    for v in variants:
        for (pid, base), (_, pred) in zip(readings["base"], readings[v]):
            same.append(base[task] == pred[task])
            if base[task] != pred[task]:
                misses.append(f"{pid} [{v}]")
    return float(np.mean(same)), len(same), misses


def _check(readings: dict, variants: tuple[str, ...], task: int, what: str) -> None:
    rate, n, misses = _agreement(readings, variants, task)
    print(f"{what}: agreement {rate:.3f} over {n} (piece, variant) pairs")
    assert rate >= AGREEMENT, (
        f"{what}: agreement {rate:.3f} < {AGREEMENT} over {n} (piece, variant) pairs; "
        f"{len(misses)} changed, e.g. {misses[:5]}"
    )


@pytest.mark.slow
@pytest.mark.parametrize("task,what", [(0, "key"), (1, "meter")])
def test_constant_velocity_30_to_120(readings, task, what):
    _check(readings, ("vel30", "vel120", "velrand"), task, f"{what} under constant velocity 30..120")


@pytest.mark.slow
@pytest.mark.parametrize("task,what", [(0, "key"), (1, "meter")])
def test_velocity_noise(readings, task, what):
    _check(readings, ("noise",), task, f"{what} under per-note velocity noise (sd 10)")


@pytest.mark.slow
@pytest.mark.parametrize("task,what", [(0, "key"), (1, "meter")])
def test_onset_jitter(readings, task, what):
    _check(readings, ("jitter",), task, f"{what} under +-1/32-beat onset jitter")


def _check_turns(pairs: list[tuple[str, int, int, int]], what: str) -> None:
    """pairs: (piece id, key, key of the piece moved k semitones, k) for k != 0."""
    from typemoe import analysis

    ok = [analysis.transpose_key(b, k) == m for _, b, m, k in pairs]
    rate = float(np.mean(ok))
    print(f"{what}: equivariance {rate:.3f} over {len(ok)} pieces")
    misses = [f"{pid} ({k:+d})" for (pid, _, _, k), good in zip(pairs, ok) if not good]
    assert len(ok) >= 50, f"only {len(ok)} pieces could be transposed"
    assert rate >= AGREEMENT, (
        f"{what}: {rate:.3f} < {AGREEMENT} over {len(ok)} pieces; "
        f"{len(misses)} did not turn with the notes, e.g. {misses[:5]}"
    )


@pytest.mark.slow
def test_key_turns_with_transposition(readings):
    pairs = [
        (pid, base[0], moved[0], k)
        for (pid, base), (_, moved), k in zip(readings["base"], readings["transposed"], readings["shift"])
        if k != 0
    ]
    _check_turns(pairs, "key under transposition, one hearing (the bridge)")


@pytest.mark.slow
def test_analyze_key_turns_with_transposition(readings):
    pairs = [
        (pid, base, moved, k)
        for (pid, _), (base, moved), k in zip(readings["base"], readings["analyze"], readings["shift"])
        if k != 0
    ]
    _check_turns(pairs, "key under transposition, as analyze answers (twelve hearings)")
