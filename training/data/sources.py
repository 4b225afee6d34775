"""Where pieces come from: the music21 corpus, the shared research sets, a user's folder of MIDI.

`read_source(spec, opts, skips)` turns one source spec into labelled `Piece` records:

    music21              the corpus bundled with music21 (training/data/music21_source.py converts and caches it)
    shared:NAME          a set in ../shared/data read through its NAME_labels.csv; the NAME.tar.gz archive
                         is extracted once into the cache dir (never into the project)
    folder:PATH          every .mid/.midi under PATH, labelled by an optional CSV with columns
                         path,key,meter,genre,emotion (any may be empty)

Bad input never stops a build: a missing file, an unknown label value, a labels-CSV row that is not
UTF-8, a tune music21 cannot parse is logged with its name (file:line for a CSV row), counted per reason
in a `SkipLog` (training/data/skip_log.py), and the build goes on. Whether a MIDI file is
corrupt, empty or drums-only is found when it is tokenized (training/data/prepare.py), with the same log.

Splits are by piece, from a hash of its source-relative id (90/5/5), never by window, so no piece is in
two splits; EMOPIA keeps its official (song-disjoint) split.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import shutil
import tarfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import symusic

from typemoe import analysis
from typemoe.training.data import music21_source
from typemoe.training.data.label_rules import final_bass_pc, finalis_key, longest_meter
from typemoe.training.data.music21_source import default_cache_dir
from typemoe.training.data.skip_log import SkipLog

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SPLIT_PERCENT = (90, 5, 5)
MIDI_SUFFIXES = (".mid", ".midi")
SHARED_SETS = ("pop909", "emopia", "vgmidi", "genre_freemidi", "genre_cjnolet", "groove", "classical_piano")


def default_shared_dir() -> Path:
    """$TYPEMOE_SHARED_DATA, else ../shared/data next to the repository (the team's development copy)."""
    env = os.environ.get("TYPEMOE_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "data"


def split_of(piece_id: str) -> str:
    """Deterministic split of a piece from its source-relative id: sha1 -> bucket 0..99 -> 90/5/5."""
    bucket = int(hashlib.sha1(piece_id.encode("utf-8")).hexdigest()[:8], 16) % 100
    train, val, _ = SPLIT_PERCENT
    return "train" if bucket < train else "val" if bucket < train + val else "test"


def location_free(source: str) -> str:
    """A source's name without where it lies: "folder:/any/path/tunes" -> "folder:tunes".

    Piece ids hash to their labelled fraction (learn.data.keep_label_fraction) and to eval's --max-pieces
    sample (evaluation.eval_data.sample_ids), so a folder of MIDI moved, or built in another temporary
    directory, keeps the same pieces in both.
    """
    kind, sep, where = source.partition(":")
    if kind != "folder" or not sep:
        return source
    return f"folder:{Path(where).name}"


@dataclass(kw_only=True)
class Piece:
    """One piece of music with its labels; None means unlabelled for that task."""

    id: str  # source-relative path; "path#n" for tune n of a multi-tune file
    source: str  # "music21", "shared:pop909", "folder:/abs/path"
    midi: Path | None = None  # the MIDI file to tokenize ...
    score: symusic.Score | None = None  # ... or a score already in memory
    key: int | None = None  # index into analysis.KEYS
    meter: int | None = None  # index into analysis.METERS
    genre: str | None = None  # a name in analysis.GENRES
    emotion: str | None = None  # "Q1".."Q4"
    composer: str | None = None  # classical_piano's composer folder, a genre-like label
    split: str = ""  # "" -> split_of(id)

    def __post_init__(self) -> None:
        if (self.midi is None) == (self.score is None):
            raise ValueError(f"piece {self.id!r}: give exactly one of midi= and score=")
        self.split = self.split or split_of(self.id)
        if self.split not in SPLITS:
            raise ValueError(f"piece {self.id!r}: split {self.split!r} not in {SPLITS}")
        if self.key is not None and not 0 <= self.key < len(analysis.KEYS):
            raise ValueError(
                f"piece {self.id!r}: key index {self.key} out of range 0..{len(analysis.KEYS) - 1}"
            )
        if self.meter is not None and not 0 <= self.meter < len(analysis.METERS):
            raise ValueError(f"piece {self.id!r}: meter index {self.meter} out of range")
        if self.genre is not None and self.genre not in analysis.GENRES:
            raise ValueError(f"piece {self.id!r}: genre {self.genre!r} not in {analysis.GENRES}")
        if self.emotion is not None and self.emotion not in analysis.EMOTIONS:
            raise ValueError(f"piece {self.id!r}: emotion {self.emotion!r} not in {analysis.EMOTIONS}")

    @property
    def labelled(self) -> dict[str, bool]:
        """Which label each task has, e.g. {"key": True, "meter": True, "genre": False, ...}."""
        return {name: getattr(self, name) is not None for name in analysis.LABELS}

    def load_score(self) -> symusic.Score:
        return self.score if self.score is not None else symusic.Score(self.midi)


@dataclass(kw_only=True)
class SourceOptions:
    """Run-level settings shared by every source."""

    cache_dir: Path = field(default_factory=default_cache_dir)  # conversions and extracted archives
    shared_dir: Path = field(default_factory=default_shared_dir)  # where the shared:NAME sets live
    labels_csv: Path | None = None  # labels for folder: sources
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    limit: int | None = None  # at most this many pieces per source (a deterministic prefix)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        self.cache_dir, self.shared_dir = Path(self.cache_dir), Path(self.shared_dir)


def normalize_spec(spec: str) -> str:
    """Check a source spec and make a folder's path absolute (its pieces' `source` is this string).

    Raises:
        ValueError: an unknown kind of source or shared set, or a folder that does not exist.
    """
    if spec == "music21":
        return spec
    if spec.startswith("shared:"):
        name = spec.removeprefix("shared:")
        if name not in SHARED_SETS:
            raise ValueError(f"unknown shared set {name!r}; expected one of {', '.join(SHARED_SETS)}")
        return spec
    if spec.startswith("folder:"):
        folder = Path(spec.removeprefix("folder:")).expanduser()
        if not folder.is_dir():
            raise ValueError(f"folder source {str(folder)!r} is not a directory")
        return f"folder:{folder.resolve()}"
    raise ValueError(f"unknown source {spec!r}; expected music21, shared:NAME or folder:PATH")


def read_source(spec: str, opts: SourceOptions, skips: SkipLog) -> list[Piece]:
    """The pieces of one source spec (see the module docstring), at most opts.limit of them.

    Raises:
        ValueError: an unknown spec, shared set name, or a folder/CSV that does not exist.
    """
    spec = normalize_spec(spec)
    if spec == "music21":
        pieces = read_music21(opts, skips)
    elif spec.startswith("shared:"):
        pieces = read_shared(spec.removeprefix("shared:"), opts, skips)
    else:  # folder:
        pieces = read_folder(Path(spec.removeprefix("folder:")), opts.labels_csv, skips)
    return pieces[: opts.limit] if opts.limit is not None else pieces


# --------------------------------------------------------------------------- label parsing


def _undecodable(text: str) -> bool:
    """True if `text` holds bytes that were not UTF-8 (read with errors="surrogateescape")."""
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def csv_rows(csv_path: Path, skips: SkipLog) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """The header and the (line number, row) pairs of a UTF-8 labels CSV, keys and header stripped.

    A row with a byte that is not UTF-8 is skipped and named as file:line, so one mistyped character costs
    one row's labels, never the build. (Refusing the whole CSV would throw away every good row for one
    bad byte; the MIDI files themselves are still found and built, only that row's labels are missing.)

    Raises:
        ValueError: the header line itself is not UTF-8.
    """
    with csv_path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.DictReader(f)
        header = [(c or "").strip() for c in reader.fieldnames or []]
        if any(_undecodable(c) for c in header):
            raise ValueError(f"{csv_path}:1: the header is not UTF-8; save the CSV as UTF-8")
        rows = []
        for raw in reader:
            row = {(k or "").strip(): v or "" for k, v in raw.items() if k is not None}
            if any(_undecodable(v) for v in row.values()):
                text = ",".join(row.values()).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                skips.add(
                    "CSV row not UTF-8",
                    f"{csv_path}:{reader.line_num}",
                    f"{text[:120]!r}; save the CSV as UTF-8",
                )
                continue
            rows.append((reader.line_num, row))
    return header, rows


def _label(parse: Callable, value: str, what: str, item: str, skips: SkipLog):
    """Parse one label cell; "" -> None; a bad value drops that label (counted, named) but keeps the piece."""
    value = (value or "").strip()
    if not value:
        return None
    try:
        return parse(value)
    except ValueError as err:
        skips.add(f"bad {what} label", item, str(err))
        return None


def _meter_or_other(ratio: str | None) -> int | None:
    """Meter class of a time-signature string; a valid but unusual one ("3+2/8", "4/3") is "other"."""
    if not ratio:
        return None
    try:
        return analysis.parse_meter(ratio)
    except ValueError:
        return analysis.METERS.index("other")


# --------------------------------------------------------------------------- music21


def read_music21(opts: SourceOptions, skips: SkipLog) -> list[Piece]:
    cache_root, results = music21_source.convert_corpus(
        cache_dir=opts.cache_dir, workers=opts.workers, limit=opts.limit
    )
    pieces = []
    rules: Counter[str] = Counter()
    for res in results:
        for item, reason, detail in res.failures:
            skips.add(f"music21 {reason}", item, detail)
        for t in res.tunes:
            rules[t.key_rule.split(":")[0]] += 1
            pieces.append(
                Piece(
                    id=t.id,
                    source="music21",
                    midi=cache_root / t.midi,
                    key=analysis.parse_key(t.key) if t.key else None,
                    meter=_meter_or_other(t.meter),
                )
            )
    log.info("music21: %d tunes, key labels by rule %s", len(pieces), dict(rules))
    return pieces


# --------------------------------------------------------------------------- shared sets


def extract_archive(archive: Path, cache_dir: Path) -> Path:
    """Extract NAME.tar.gz once into cache_dir/shared/ and return the NAME/ folder inside.

    A stamp (archive size and mtime) makes a changed archive re-extract; a lock makes concurrent builds
    wait for one extraction instead of racing.
    """
    from filelock import FileLock

    if not archive.is_file():
        raise ValueError(f"shared archive {archive} does not exist")
    name = archive.name.removesuffix(".tar.gz")
    base = cache_dir / "shared"
    base.mkdir(parents=True, exist_ok=True)
    target, stamp = base / name, base / f"{name}.extracted"
    st = archive.stat()
    want = f"{st.st_size}:{st.st_mtime_ns}"
    with FileLock(str(base / f"{name}.lock")):
        if target.is_dir() and stamp.is_file() and stamp.read_text() == want:
            return target
        log.info("extracting %s into %s", archive, base)
        tmp = base / f".{name}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        with tarfile.open(archive) as tf:
            tf.extractall(tmp, filter="data")
        if not (tmp / name).is_dir():
            raise ValueError(f"{archive} does not unpack to a top-level folder {name}/")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp / name, target)
        shutil.rmtree(tmp, ignore_errors=True)
        stamp.write_text(want)
    return target


def _genre_or_none(name: str) -> str | None:
    try:
        return analysis.parse_genre(name)
    except ValueError:
        return None


def _row_pop909(row: dict, item: str, skips: SkipLog) -> dict:
    return {
        "key": _label(analysis.parse_key, row["key_main"], "key", item, skips),
        "meter": _label(analysis.parse_meter, row["time_signature"], "meter", item, skips),
    }


def _row_emopia(row: dict, item: str, skips: SkipLog) -> dict:
    return {
        "emotion": _label(analysis.parse_emotion, row["quadrant"], "emotion", item, skips),
        "split": {"validation": "val"}.get(row["split"], row["split"]),  # official, song-disjoint
    }


def _row_vgmidi(row: dict, item: str, skips: SkipLog) -> dict | None:
    if row["subset"] == "labelled_phrase":
        # 197 of the 200 labelled pieces are one phrase = the whole piece: the phrase files would be
        # near-duplicates of the pieces, and could land in another split than their piece
        skips.add("vgmidi phrase (duplicate of its full piece)", item, expected=True)
        return None
    return {"emotion": _label(analysis.parse_emotion, row["quadrant"], "emotion", item, skips)}


def _row_genre(row: dict, item: str, skips: SkipLog) -> dict:
    return {"genre": _label(analysis.parse_genre, row["genre"], "genre", item, skips)}


def _row_groove(row: dict, item: str, skips: SkipLog) -> dict:
    # drum styles (funk, latin, afrocuban, ...) mostly have no class in analysis.GENRES: kept when they do
    return {
        "genre": _genre_or_none(row["style"]),
        "meter": _label(analysis.parse_meter, row["time_signature"], "meter", item, skips),
    }


def _row_classical_piano(row: dict, item: str, skips: SkipLog, midi: Path) -> dict:
    """Composer from the CSV; meter and key from the MIDI meta (the key only when clearly determinable).

    The files' key-signature events always say major, so a signature alone cannot tell F major from
    D minor: the key is labelled only when the piece keeps one signature throughout and its finalis
    (lowest note sounding at the end) is the signature's major tonic or its relative minor.
    """
    out: dict = {"composer": row["composer"].strip() or None}
    try:
        score = symusic.Score(midi)
    except Exception as err:  # symusic raises RuntimeError/ValueError variants for broken files
        skips.add("unreadable MIDI", item, f"{type(err).__name__}: {err}")
        return out
    end = score.end()
    spans = {}
    for ts in sorted(score.time_signatures, key=lambda t: t.time):
        spans.setdefault(float(ts.time), f"{ts.numerator}/{ts.denominator}")
    out["meter"] = _meter_or_other(longest_meter(sorted(spans.items()), float(end)))
    sharps = {int(ks.key) for ks in score.key_signatures}
    notes = [t.notes.numpy() for t in score.tracks if not t.is_drum]
    if len(sharps) == 1 and notes:
        onset = np.concatenate([n["time"] for n in notes]).astype(np.float64)
        ends = onset + np.concatenate([n["duration"] for n in notes])
        pitch = np.concatenate([n["pitch"] for n in notes]).astype(int)
        name, _ = finalis_key(sharps.pop(), final_bass_pc(onset, ends, pitch))
        out["key"] = analysis.parse_key(name) if name else None
    return out


@dataclass(frozen=True)
class _SharedSet:
    path_column: str
    read_row: Callable  # (row, item, skips[, midi]) -> dict of Piece fields, or None to skip the row
    needs_midi: bool = False  # read_row also gets the MIDI path (labels from the file's meta)


_SHARED: dict[str, _SharedSet] = {
    "pop909": _SharedSet("midi", _row_pop909),
    "emopia": _SharedSet("path", _row_emopia),
    "vgmidi": _SharedSet("path", _row_vgmidi),
    "genre_freemidi": _SharedSet("path", _row_genre),
    "genre_cjnolet": _SharedSet("path", _row_genre),
    "groove": _SharedSet("path", _row_groove),
    "classical_piano": _SharedSet("path", _row_classical_piano, needs_midi=True),
}
assert set(_SHARED) == set(SHARED_SETS), "SHARED_SETS and the reader table disagree"


def read_shared(name: str, opts: SourceOptions, skips: SkipLog) -> list[Piece]:
    """One ../shared/data set through its labels CSV (MANIFEST.md describes the columns)."""
    if name not in _SHARED:
        raise ValueError(f"unknown shared set {name!r}; expected one of {', '.join(SHARED_SETS)}")
    spec = _SHARED[name]
    csv_path = opts.shared_dir / f"{name}_labels.csv"
    if not csv_path.is_file():
        raise ValueError(f"{csv_path} does not exist (is --shared-dir / $TYPEMOE_SHARED_DATA right?)")
    root = extract_archive(opts.shared_dir / f"{name}.tar.gz", opts.cache_dir)
    source = f"shared:{name}"
    pieces = []
    _, rows = csv_rows(csv_path, skips)
    for _, row in rows:
        if opts.limit is not None and len(pieces) >= opts.limit:
            break
        rel = row[spec.path_column]
        midi = root / rel
        if not midi.is_file():
            skips.add("missing file", f"{source}/{rel}", "listed in the labels CSV but not in the archive")
            continue
        fields = spec.read_row(row, rel, skips, midi) if spec.needs_midi else spec.read_row(row, rel, skips)
        if fields is not None:
            pieces.append(Piece(id=rel, source=source, midi=midi, **fields))
    log.info("%s: %d pieces", source, len(pieces))
    return pieces


# --------------------------------------------------------------------------- a user's folder

FOLDER_COLUMNS = ("path", "key", "meter", "genre", "emotion")


def _midi_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in MIDI_SUFFIXES)


def read_labels_csv(csv_path: Path, folder: Path, skips: SkipLog) -> dict[str, dict]:
    """Rows of a path,key,meter,genre,emotion CSV as {folder-relative id: Piece label fields}.

    Paths are relative to the folder (absolute ones are accepted). A row whose file does not exist is
    skipped; a bad label value drops only that label. Both are named and counted.

    Raises:
        ValueError: the CSV does not exist or has no `path` column.
    """
    if not csv_path.is_file():
        raise ValueError(f"labels CSV {csv_path} does not exist")
    out: dict[str, dict] = {}
    cols, rows = csv_rows(csv_path, skips)
    if "path" not in cols:
        raise ValueError(
            f"{csv_path}: no 'path' column; expected columns {','.join(FOLDER_COLUMNS)}, got {cols}"
        )
    for line, row in rows:
        path = Path(row["path"].strip())
        item = f"{csv_path.name}:{line} {row['path']!r}"
        full = path if path.is_absolute() else folder / path
        if not row["path"].strip() or not full.is_file():
            skips.add("missing file", item, f"{full} does not exist")
            continue
        rel = (
            full.resolve().relative_to(folder.resolve()).as_posix()
            if full.resolve().is_relative_to(folder.resolve())
            else full.as_posix()
        )
        if rel in out:
            log.warning("%s: %s is labelled twice; the later row wins", item, rel)
        out[rel] = {
            "midi": full,
            "key": _label(analysis.parse_key, row.get("key", ""), "key", item, skips),
            "meter": _label(analysis.parse_meter, row.get("meter", ""), "meter", item, skips),
            "genre": _label(analysis.parse_genre, row.get("genre", ""), "genre", item, skips),
            "emotion": _label(analysis.parse_emotion, row.get("emotion", ""), "emotion", item, skips),
        }
    return out


def read_folder(folder: Path, labels_csv: Path | None, skips: SkipLog) -> list[Piece]:
    """Every MIDI file under `folder` (unlabelled unless `labels_csv` labels it), plus CSV rows outside it."""
    if not folder.is_dir():
        raise ValueError(f"folder source {folder} is not a directory")
    folder = folder.resolve()
    source = f"folder:{folder}"
    labels = read_labels_csv(Path(labels_csv), folder, skips) if labels_csv is not None else {}
    found = {p.relative_to(folder).as_posix(): p for p in _midi_files(folder)}
    pieces = []
    for rel in sorted(set(found) | set(labels)):
        fields = labels.get(rel, {"midi": found.get(rel)})
        pieces.append(Piece(id=rel, source=source, **fields))
    n_labelled = sum(any(p.labelled.values()) for p in pieces)
    log.info("%s: %d pieces, %d with a label", source, len(pieces), n_labelled)
    return pieces
