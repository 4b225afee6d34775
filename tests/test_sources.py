"""Sources -> labelled pieces: music21 conversion and labels, shared sets, folders + CSV, splits."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import symusic

from tests.conftest import SHARED_DATA, score_from_notes
from typemoe import analysis
from typemoe.training.data import label_rules, music21_source
from typemoe.training.data.skip_log import SkipLog
from typemoe.training.data.sources import (
    SHARED_SETS,
    Piece,
    SourceOptions,
    read_folder,
    read_shared,
    read_source,
    split_of,
)

pytest.importorskip("music21")

# Two EsAC-style tunes (K: names the tonic only) and ABC-standard ones with modes and pickups.
ABC = """%abc
X:1
T:minor tune, tonic G, major signature
M:3/4
L:1/4
K:G
G _B c | d2 _B | A G F | G3 |

X:2
T:dorian, tied notes
M:6/8
L:1/8
K:Ddor
A | d2 e f2 e- | e d c d3- | d6 |

X:3
T:locrian
M:4/4
L:1/4
K:Bloc
B c d e | f e d c | B4 |
"""


def _convert_abc(tmp_path: Path, rel: str) -> music21_source.FileResult:
    src = tmp_path / "tunes.abc"
    src.write_text(ABC)
    return music21_source.convert_file(str(src), rel, str(tmp_path / "cache"))


def test_abc_opus_labels_follow_the_mode_rules(tmp_path):
    res = _convert_abc(tmp_path, "miscFolk/tunes.abc")
    by_id = {t.id: t for t in res.tunes}
    assert sorted(by_id) == ["miscFolk/tunes.abc#1", "miscFolk/tunes.abc#2", "miscFolk/tunes.abc#3"]
    assert by_id["miscFolk/tunes.abc#1"].key == "G major"  # ABC standard: bare K:G is G major
    assert by_id["miscFolk/tunes.abc#2"].key == "D minor"  # dorian folds onto minor
    assert by_id["miscFolk/tunes.abc#1"].meter == "3/4" and by_id["miscFolk/tunes.abc#2"].meter == "6/8"
    assert by_id["miscFolk/tunes.abc#3"].key is None and by_id["miscFolk/tunes.abc#3"].key_rule.startswith(
        "none:"
    )


def test_essen_key_is_tonic_plus_third(tmp_path):
    res = _convert_abc(tmp_path, "essenFolksong/tunes.abc")
    tune = next(t for t in res.tunes if t.id.endswith("#1"))
    assert (tune.key, tune.key_rule) == ("G minor", "esac-third")


def test_converted_midi_has_notes_and_no_meta(tmp_path):
    res = _convert_abc(tmp_path, "miscFolk/tunes.abc")
    score = symusic.Score(tmp_path / "cache" / res.tunes[1].midi)
    assert score.note_num() == 8  # ties merged, pickup included
    assert score.tracks[0].notes[-1].duration == 9 * 240  # d3- | d6 merged: 9 eighths at 480 tpq
    assert len(score.time_signatures) == 0 and len(score.key_signatures) == 0


def test_signature_only_formats_use_the_finalis(tmp_path):
    root, _ = music21_source.corpus_files()
    res = music21_source.convert_file(str(root / "bach/bwv381.mxl"), "bach/bwv381.mxl", str(tmp_path))
    (tune,) = res.tunes
    assert (tune.key, tune.key_rule, tune.meter) == ("E minor", "finalis", "4/4")


def test_meter_is_the_signature_covering_most_time():
    # a 1/4 pickup bar, then 3/4 for 12 beats, a 2/4 bar at the end
    assert label_rules.longest_meter([(0.0, "1/4"), (1.0, "3/4"), (13.0, "2/4")], 15.0) == "3/4"
    assert label_rules.longest_meter([], 10.0) is None


def test_finalis_rule():
    assert label_rules.finalis_key(-1, 5) == ("F major", "finalis")
    assert label_rules.finalis_key(-1, 2) == ("D minor", "finalis")
    assert label_rules.finalis_key(0, 2)[0] is None  # D dorian on a white-key signature: unlabelled


def test_unparseable_file_is_counted_not_raised(tmp_path):
    bad = tmp_path / "broken.xml"
    bad.write_text("<score-partwise><part id='P1'><measure><note>")
    res = music21_source.convert_file(str(bad), "x/broken.xml", str(tmp_path / "cache"))
    assert res.tunes == [] and [f[1] for f in res.failures] == ["parse error"]


def test_corpus_conversion_is_cached(tmp_path, monkeypatch):
    root, _ = music21_source.corpus_files()
    monkeypatch.setattr(music21_source, "corpus_files", lambda: (root, [root / "bach/bwv381.mxl"]))
    cache_root, first = music21_source.convert_corpus(cache_dir=tmp_path, workers=1, limit=5)
    assert [t.id for r in first for t in r.tunes] == ["bach/bwv381.mxl"]

    def fail(*args):
        raise AssertionError("a cached file was converted again")

    monkeypatch.setattr(music21_source, "convert_file", fail)
    _, again = music21_source.convert_corpus(cache_dir=tmp_path, workers=1, limit=5)
    assert again[0].tunes == first[0].tunes
    skips = SkipLog()
    (piece,) = read_source("music21", SourceOptions(cache_dir=tmp_path, limit=5), skips)
    assert piece.key == analysis.parse_key("E minor") and piece.meter == analysis.parse_meter("4/4")
    assert piece.midi.is_file() and piece.labelled["key"] and not piece.labelled["genre"]


# --------------------------------------------------------------------------- splits


def test_split_is_deterministic_and_90_5_5():
    assert split_of("essenFolksong/han1.abc#12") == split_of("essenFolksong/han1.abc#12")
    # pinned: changing the hash would move pieces between splits under trained models
    assert [split_of(f"bach/bwv{i}.mxl") for i in range(3)] == ["train", "test", "train"]
    counts = Counter(split_of(f"piece{i}.mid") for i in range(20_000))
    assert abs(counts["train"] / 20_000 - 0.90) < 0.01
    assert abs(counts["val"] / 20_000 - 0.05) < 0.01 and abs(counts["test"] / 20_000 - 0.05) < 0.01


def test_piece_validates_labels():
    with pytest.raises(ValueError, match="genre 'polka'"):
        Piece(id="a.mid", source="folder:/x", midi=Path("a.mid"), genre="polka")
    with pytest.raises(ValueError, match="split 'dev'"):
        Piece(id="a.mid", source="folder:/x", midi=Path("a.mid"), split="dev")


# --------------------------------------------------------------------------- folder + CSV


def _write_midi(path: Path, notes=((0, 4, 60, 80), (4, 4, 64, 80))) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    score_from_notes(list(notes)).dump_midi(path)


def test_folder_with_labels_csv_names_every_bad_row(tmp_path, caplog):
    folder = tmp_path / "midi"
    _write_midi(folder / "a.mid")
    _write_midi(folder / "sub" / "b.MIDI")
    _write_midi(folder / "c.mid")
    csv = tmp_path / "labels.csv"
    csv.write_text(
        "path,key,meter,genre,emotion\n"
        "a.mid,G major,6/8,folk,Q1\n"
        "sub/b.MIDI,H major,,,\n"  # unknown key name: the label goes, the piece stays
        "gone.mid,C major,,,\n"  # no such file: the row goes
    )
    skips = SkipLog()
    with caplog.at_level(logging.WARNING):
        pieces = read_folder(folder, csv, skips)
    by_id = {p.id: p for p in pieces}
    assert sorted(by_id) == ["a.mid", "c.mid", "sub/b.MIDI"]
    a = by_id["a.mid"]
    assert (a.key, a.meter, a.genre, a.emotion) == (
        analysis.parse_key("G major"),
        analysis.parse_meter("6/8"),
        "folk",
        "Q1",
    )
    assert by_id["sub/b.MIDI"].key is None and not any(by_id["c.mid"].labelled.values())
    assert skips.counts == {"bad key label": 1, "missing file": 1}
    assert "'H major'" in caplog.text and "gone.mid" in caplog.text


def test_folder_csv_without_path_column_is_an_error(tmp_path):
    (tmp_path / "labels.csv").write_text("file,key\na.mid,C major\n")
    with pytest.raises(ValueError, match="no 'path' column"):
        read_folder(tmp_path, tmp_path / "labels.csv", SkipLog())


def test_unknown_sources_are_errors(tmp_path):
    opts = SourceOptions(cache_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown source 'midi:x'"):
        read_source("midi:x", opts, SkipLog())
    with pytest.raises(ValueError, match="unknown shared set 'lakh'"):
        read_source("shared:lakh", opts, SkipLog())
    with pytest.raises(ValueError, match="not a directory"):
        read_source(f"folder:{tmp_path / 'nope'}", opts, SkipLog())


# --------------------------------------------------------------------------- shared sets

needs_shared = pytest.mark.skipif(not (SHARED_DATA / "MANIFEST.md").is_file(), reason="../shared/data absent")


@pytest.fixture(scope="module")
def shared_opts(tmp_path_factory):
    return SourceOptions(cache_dir=tmp_path_factory.mktemp("cache"), shared_dir=SHARED_DATA)


@needs_shared
@pytest.mark.parametrize("name", SHARED_SETS)
def test_shared_set_reads_a_few_labelled_pieces(name, shared_opts):
    skips = SkipLog()
    pieces = read_shared(name, SourceOptions(**{**vars(shared_opts), "limit": 4}), skips)
    assert len(pieces) == 4 and all(p.midi.is_file() and p.source == f"shared:{name}" for p in pieces)
    assert not str(pieces[0].midi.resolve()).startswith(str(Path(__file__).resolve().parents[1]))
    task = {
        "pop909": "key",
        "emopia": "emotion",
        "vgmidi": "emotion",
        "genre_freemidi": "genre",
        "genre_cjnolet": "genre",
        "groove": "meter",
        "classical_piano": "composer",
    }[name]
    assert all(p.labelled[task] for p in pieces), [p.id for p in pieces]


@needs_shared
def test_emopia_keeps_its_official_split(shared_opts):
    pieces = read_shared("emopia", shared_opts, SkipLog())
    assert Counter(p.split for p in pieces) == {"train": 876, "val": 114, "test": 88}


@needs_shared
def test_vgmidi_phrases_are_skipped_as_duplicates(shared_opts):
    skips = SkipLog()
    pieces = read_shared("vgmidi", shared_opts, skips)
    assert skips.counts == {"vgmidi phrase (duplicate of its full piece)": 204}
    assert sum(p.emotion is not None for p in pieces) == 200 and len(pieces) == 867


@needs_shared
def test_classical_piano_key_only_when_clear(shared_opts):
    pieces = {p.id: p for p in read_shared("classical_piano", shared_opts, SkipLog())}
    # Op. 10 No. 1 finale: three flats in the file, ends on C in the bass -> C minor, not Eb major
    assert pieces["midis/Beethoven/beethoven_opus10_3.mid"].key == analysis.parse_key("C minor")
    labelled = np.mean([p.key is not None for p in pieces.values()])
    assert 0.3 < labelled < 0.9  # many pieces change signature or end modally: left unlabelled


def test_csv_rows_skip_a_non_utf8_row_by_file_and_line(tmp_path, caplog):
    from typemoe.training.data.sources import csv_rows

    path = tmp_path / "labels.csv"
    path.write_bytes(
        b'\xef\xbb\xbfpath,key\na.mid,"C\nmajor"\nb.mid,\xe9\nc.mid,D major\n'
    )  # BOM, a 2-line cell
    skips = SkipLog()
    with caplog.at_level(logging.WARNING):
        header, rows = csv_rows(path, skips)
    assert header == ["path", "key"]
    assert [(line, row["path"]) for line, row in rows] == [(3, "a.mid"), (5, "c.mid")]
    assert skips.counts == {"CSV row not UTF-8": 1} and f"{path}:4" in caplog.text


def test_the_default_shared_dir_is_beside_the_repository(monkeypatch):
    """Without $TYPEMOE_SHARED_DATA, shared:NAME sets are read from ../shared/data next to the checkout."""
    from pathlib import Path

    from typemoe.training.data.sources import default_shared_dir

    monkeypatch.delenv("TYPEMOE_SHARED_DATA", raising=False)
    assert default_shared_dir() == Path(__file__).resolve().parents[2] / "shared" / "data"
    monkeypatch.setenv("TYPEMOE_SHARED_DATA", "/somewhere/else")
    assert default_shared_dir() == Path("/somewhere/else")
