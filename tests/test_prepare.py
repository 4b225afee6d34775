"""Pieces -> shards: bad input counted and named, no-op rebuilds, no label leakage, reader, augmentation, CLI."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import symusic

from tests.conftest import SHARED_DATA, music21_scores, score_from_notes
from typemoe import analysis, cli
from typemoe.training.data.prepare import BuildConfig, build, tokenize_piece
from typemoe.training.data.shards import ShardError, ShardSet
from typemoe.training.data.sources import Piece
from typemoe.training.learn.augment import Transposer, shift_phase

NOTES = [(0, 4, 60, 80), (4, 2, 64, 90), (6, 2, 67, 70), (8, 8, 72, 100), (16, 4, 48, 60)]


def _with_meta(score: symusic.Score) -> symusic.Score:
    """The same notes, plus time-signature, key-signature and tempo events that must not reach the tokens."""
    s = score.copy()
    s.time_signatures.append(symusic.TimeSignature(0, 6, 8))
    s.time_signatures.append(symusic.TimeSignature(8, 3, 4))
    s.key_signatures.append(symusic.KeySignature(0, -3, 1))
    s.tempos.append(symusic.Tempo(0, 90.0))
    return s


@pytest.fixture
def folder(tmp_path) -> Path:
    """A folder with good files and one of each kind of bad input, plus a labels CSV."""
    d = tmp_path / "midi"
    d.mkdir()
    score_from_notes(NOTES).dump_midi(d / "plain.mid")
    _with_meta(score_from_notes(NOTES)).dump_midi(d / "meta.mid")
    score_from_notes([(0, 4, 57, 80), (4, 4, 60, 80)]).dump_midi(d / "tune.mid")
    (d / "corrupt.mid").write_bytes(b"MThd\x00\x00\x00\x06garbage that is not a MIDI file")
    (d / "zero.mid").write_bytes(b"")
    symusic.Score(4).dump_midi(d / "no_notes.mid")
    drums = score_from_notes([(0, 1, 36, 100), (2, 1, 38, 100)])
    drums.tracks[0].is_drum = True
    drums.dump_midi(d / "drums.mid")
    (tmp_path / "labels.csv").write_text(
        "path,key,meter,genre,emotion\n"
        "plain.mid,A minor,3/4,jazz,Q3\n"
        "tune.mid,Zb major,,,\n"
        "absent.mid,C major,,,\n"
    )
    return d


def _cfg(folder: Path, out: Path, **kw) -> BuildConfig:
    return BuildConfig(
        sources=[f"folder:{folder}"],
        out_dir=out,
        labels_csv=folder.parent / "labels.csv",
        cache_dir=folder.parent / "cache",
        workers=1,
        **kw,
    )


def test_build_counts_and_names_every_bad_input(folder, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        manifest = build(_cfg(folder, tmp_path / "out"))
    spec = f"folder:{folder.resolve()}"
    assert manifest["skipped"][spec]["counts"] == {
        "bad key label": 1,
        "drums-only": 1,
        "empty MIDI": 1,
        "missing file": 1,
        "unreadable MIDI": 2,
    }
    for name in ("corrupt.mid", "zero.mid", "no_notes.mid", "drums.mid", "absent.mid", "'Zb major'"):
        assert name in caplog.text, name
    shards = ShardSet(tmp_path / "out")
    assert sorted(shards.ids) == ["meta.mid", "plain.mid", "tune.mid"]
    rec = shards[shards.ids.index("plain.mid")]
    assert (rec.key, rec.meter, rec.emotion) == (
        analysis.parse_key("A minor"),
        analysis.parse_meter("3/4"),
        2,
    )
    assert analysis.GENRES[rec.genre] == "jazz" and rec.composer == -1
    assert shards[shards.ids.index("tune.mid")].key == -1  # the bad label went, the piece stayed


def test_time_and_key_signatures_never_reach_the_tokens(folder, tmp_path, vocab):
    build(_cfg(folder, tmp_path / "out"))
    shards = ShardSet(tmp_path / "out", vocab=vocab)
    plain = shards.tokens_of(shards.ids.index("plain.mid"))
    meta = shards.tokens_of(shards.ids.index("meta.mid"))
    np.testing.assert_array_equal(plain, meta)
    used = {vocab.token(int(i)).split("_")[0] for i in np.unique(shards.tokens)}
    assert used <= {"Bar", "Position", "Pitch", "Velocity", "Duration"}, used
    assert not any(t.startswith(("TimeSig", "Tempo")) for t in vocab.tokens)


def test_real_tunes_tokenize_the_same_with_and_without_meta(vocab):
    for name, tune in music21_scores(5):
        score = _with_meta(tune)  # the tune's own signatures plus conflicting ones and a tempo
        bare = score.copy()
        bare.time_signatures = symusic.core.TimeSignatureTickList()
        bare.key_signatures = symusic.core.KeySignatureTickList()
        bare.tempos = symusic.core.TempoTickList()
        with_meta = tokenize_piece(vocab, Piece(id=name, source="music21", score=score))[0]
        without = tokenize_piece(vocab, Piece(id=name, source="music21", score=bare))[0]
        np.testing.assert_array_equal(with_meta, without)


def test_rebuild_with_unchanged_inputs_is_a_no_op(folder, tmp_path, caplog):
    out = tmp_path / "out"
    assert build(_cfg(folder, out))["rebuilt"]
    stamp = (out / "tokens.bin").stat().st_mtime_ns
    with caplog.at_level(logging.INFO):
        again = build(_cfg(folder, out))
    assert not again["rebuilt"] and "nothing to do" in caplog.text
    assert (out / "tokens.bin").stat().st_mtime_ns == stamp
    score_from_notes(NOTES[:2]).dump_midi(folder / "plain.mid")  # an input changed: rebuild
    assert build(_cfg(folder, out))["rebuilt"]


def test_shard_reader_selects_by_split_source_and_label(folder, tmp_path):
    build(_cfg(folder, tmp_path / "out"))
    shards = ShardSet(tmp_path / "out")
    spec = shards.sources[0]
    assert len(shards.select(source=spec)) == 3
    assert list(shards.select(labelled="key")) == [shards.ids.index("plain.mid")]
    per_split = sum(len(shards.select(split=s)) for s in ("train", "val", "test"))
    assert per_split == len(shards) == 3
    assert sum(shards.lengths) == len(shards.tokens)
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        shards.select(split="dev")
    with pytest.raises(ShardError, match="no manifest.json"):
        ShardSet(tmp_path)


def test_shards_refuse_another_vocabulary(folder, tmp_path, vocab):
    build(_cfg(folder, tmp_path / "out"))
    manifest = tmp_path / "out" / "manifest.json"
    data = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**data, "vocab_hash": "0" * 64}))
    with pytest.raises(ShardError, match="rebuild the shards"):
        ShardSet(tmp_path / "out", vocab=vocab)


def test_labels_without_a_folder_source_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="applies to folder: sources"):
        BuildConfig(sources=["music21"], out_dir=tmp_path, labels_csv=tmp_path / "x.csv")


@pytest.mark.skipif(not (SHARED_DATA / "groove.tar.gz").is_file(), reason="../shared/data absent")
def test_groove_is_skipped_as_drums_only(tmp_path):
    cfg = BuildConfig(
        sources=["shared:groove"],
        out_dir=tmp_path / "out",
        cache_dir=tmp_path / "cache",
        shared_dir=SHARED_DATA,
        workers=1,
        limit=3,
    )
    manifest = build(cfg)
    assert manifest["counts"]["pieces"] == 0
    assert manifest["skipped"]["shared:groove"]["counts"] == {"drums-only": 3}


# --------------------------------------------------------------------------- bounded work, bad input among good


def _long_silence_midi(path: Path) -> None:
    """The 48-byte file of the studio report: ticks_per_beat 1, two notes 2^27 beats apart."""
    import mido

    mid = mido.MidiFile(ticks_per_beat=1)
    track = mido.MidiTrack()
    mid.tracks.append(track)
    track.append(mido.Message("note_on", note=60, velocity=100, time=0))
    track.append(mido.Message("note_off", note=60, velocity=0, time=1))
    track.append(mido.Message("note_on", note=64, velocity=100, time=2**27))
    track.append(mido.Message("note_off", note=64, velocity=0, time=1))
    mid.save(path)


def test_long_silence_and_over_budget_files_among_good_ones(folder, tmp_path, caplog, monkeypatch):
    from typemoe import vocab as vocab_module

    _long_silence_midi(folder / "long_silence.mid")
    score_from_notes([(i * 2, 2, 60 + i % 24, 80) for i in range(300)]).dump_midi(folder / "huge.mid")
    monkeypatch.setattr(vocab_module, "MAX_SCORE_TOKENS", 1000)  # huge.mid: 300 notes, up to 1,238 tokens
    with caplog.at_level(logging.WARNING):
        manifest = build(_cfg(folder, tmp_path / "out"))
    spec = f"folder:{folder.resolve()}"
    assert manifest["skipped"][spec]["counts"]["over the token budget"] == 1
    assert "huge.mid" in caplog.text and "over the limit of 1,000" in caplog.text
    shards = ShardSet(tmp_path / "out")
    assert sorted(shards.ids) == ["long_silence.mid", "meta.mid", "plain.mid", "tune.mid"]
    assert len(shards.tokens_of(shards.ids.index("long_silence.mid"))) == 14  # 2 notes, 6 bars, 2 positions


def test_a_tokenizer_failure_names_the_file_and_the_build_goes_on(folder, tmp_path, caplog, monkeypatch):
    from typemoe.vocab import TypedVocab

    real = TypedVocab.encode_score

    def flaky(self, score):
        if score.note_num() == 5:  # plain.mid and meta.mid
            raise MemoryError("simulated")
        return real(self, score)

    monkeypatch.setattr(TypedVocab, "encode_score", flaky)
    with caplog.at_level(logging.WARNING):
        manifest = build(_cfg(folder, tmp_path / "out"))
    spec = f"folder:{folder.resolve()}"
    assert manifest["skipped"][spec]["counts"]["tokenizer failed"] == 2
    assert "plain.mid: MemoryError: simulated" in caplog.text
    assert ShardSet(tmp_path / "out").ids == ["tune.mid"]


def test_a_non_utf8_csv_row_is_named_and_the_build_keeps_the_rest(folder, tmp_path, caplog):
    csv_path = folder.parent / "labels.csv"
    csv_path.write_bytes(
        b"path,key,meter,genre,emotion\n"
        b"plain.mid,A minor,3/4,jazz,Q3\n"
        b"tune.mid,C major,,caf\xe9,\n"  # Latin-1, not UTF-8
        b"meta.mid,D major,,,\n"
    )
    with caplog.at_level(logging.WARNING):
        manifest = build(_cfg(folder, tmp_path / "out"))
    spec = f"folder:{folder.resolve()}"
    assert manifest["skipped"][spec]["counts"]["CSV row not UTF-8"] == 1
    assert f"{csv_path}:3" in caplog.text and "save the CSV as UTF-8" in caplog.text
    shards = ShardSet(tmp_path / "out")
    assert sorted(shards.ids) == ["meta.mid", "plain.mid", "tune.mid"]  # the row's file is kept, unlabelled
    assert shards[shards.ids.index("meta.mid")].key == analysis.parse_key("D major")  # rows after it too
    assert shards[shards.ids.index("tune.mid")].key == -1


def test_a_non_utf8_csv_header_is_refused_by_file_and_line(folder, tmp_path, capsys):
    csv_path = folder.parent / "labels.csv"
    csv_path.write_bytes(b"path,cl\xe9,meter\nplain.mid,A minor,3/4\n")
    rc = cli.main(
        [
            "data",
            "build",
            "--source",
            f"folder:{folder}",
            "--labels",
            str(csv_path),
            "--out",
            str(tmp_path / "out"),
            "--workers",
            "1",
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and f"{csv_path}:1: the header is not UTF-8" in err and "Traceback" not in err


# --------------------------------------------------------------------------- augmentation


def test_transposition_moves_the_key_label_and_matches_retokenizing(vocab):
    tr = Transposer(vocab)
    for name, score in music21_scores(10):
        ids = np.asarray(vocab.encode_score(score))
        key = analysis.parse_key("E minor")
        for k in (-7, -1, 2, 5):
            moved, new_key, dropped = tr.transpose(ids, k, key)
            assert new_key == analysis.transpose_key(key, k)
            shifted = score.copy()
            for t in shifted.tracks:
                for n in t.notes:
                    n.pitch += k
            assert dropped == 0 and moved.tolist() == vocab.encode_score(shifted), (name, k)
    assert tr.transpose(ids, 5, key)[1] == analysis.parse_key("A minor")
    assert tr.transpose(ids, -7, key)[1] == analysis.parse_key("A minor")
    assert tr.transpose(ids, 3, -1)[1] == -1  # unlabelled stays unlabelled


def test_transposition_drops_notes_out_of_range_and_moves_key_controls(vocab):
    tr = Transposer(vocab)
    score = score_from_notes([(0, 4, 60, 80), (0, 4, 107, 80), (40, 4, 108, 80)])
    prefix = vocab.control_ids(key="C major", meter="4/4")
    ids = np.asarray(prefix + vocab.encode_score(score))
    moved, key, dropped = tr.transpose(ids, 3, analysis.parse_key("C major"))
    assert dropped == 2 and key == analysis.parse_key("Eb major")
    assert moved[:2].tolist() == vocab.control_ids(key="Eb major", meter="4/4")
    assert moved[2:].tolist() == vocab.encode_score(score_from_notes([(0, 4, 63, 80)]))


def test_phase_shift_delays_onsets_by_whole_beats(vocab):
    score = score_from_notes(NOTES)
    ids = np.asarray(vocab.encode_score(score))
    assert shift_phase(vocab, ids, 0).tolist() == ids.tolist()
    for beats in (1, 2, 3):
        assert shift_phase(vocab, ids, beats).tolist() == vocab.encode_score(score.shift_time(4 * beats))
    with pytest.raises(ValueError, match="beats must be in 0..3"):
        shift_phase(vocab, ids, 4)


# --------------------------------------------------------------------------- CLI


def test_cli_data_build_and_stats(folder, tmp_path, capsys):
    out = tmp_path / "out"
    rc = cli.main(
        [
            "data",
            "build",
            "--source",
            f"folder:{folder}",
            "--labels",
            str(folder.parent / "labels.csv"),
            "--out",
            str(out),
            "--workers",
            "1",
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
    )
    assert rc == 0 and "3 pieces" in capsys.readouterr().out
    assert cli.main(["data", "stats", str(out)]) == 0
    text = capsys.readouterr().out
    assert "A minor" in text and "skipped:" in text
    assert cli.main(["data", "stats", str(tmp_path)]) == 2
    assert "no manifest.json" in capsys.readouterr().err
