"""The corpus bundled with music21, converted to labelled MIDI once and cached.

Every corpus file is parsed once (a multi-tune ABC file once, as an Opus, never tune by tune) in a
process pool; each tune becomes a one-track MIDI file built directly with symusic from the flattened
notes (music21's own ``.write('midi')`` costs as much as the parse) plus a JSON record of its labels.
A second run only stats the cache.

Conversion choices (bump CONVERTER_VERSION when one changes, which invalidates the cache):

- Notes are taken in written order: repeats are NOT expanded, so a tune is as long as it is notated.
- Ties are merged; grace notes (zero duration) and unpitched notes are dropped; velocity is 80 unless
  the note carries an explicit MIDI velocity. No time-signature, key-signature or tempo events are
  written: those are labels, kept in the JSON record only.
- Meter label: the time signature covering the most duration (so an anacrusis bar notated 1/4 or a
  short 1/8 bar does not win), as its ratio string ("6/8").
- Key label (never music21's key *analysis*: Krumhansl and friends are our evaluation baselines):
  * ABC tunes with a mode in ``K:`` give a music21 ``Key``: dorian/phrygian/aeolian -> minor,
    mixolydian/lydian/ionian -> major on the same tonic, locrian -> unlabelled. Per the ABC standard a
    bare ``K:G`` means G major.
  * Essen tunes (essenFolksong) are ABC translations of EsAC, whose ``K:`` is the tonic only (minor
    tunes keep the major signature and spell their flats as accidentals: altdeu10 #1 is ``K: G`` with
    B-flats throughout). Their mode is read from the third degree above that tonic: minor if the
    minor third holds >= label_rules.THIRD_SHARE of the notated duration of both thirds, major for
    the major third, unlabelled when neither dominates or neither occurs.
  * Every other format (kern, MusicXML, RomanText) is read as a key *signature* only (MusicXML's
    ``<mode>`` is usually an editor default: the Bach chorale parts disagree with each other): major
    tonic or relative minor, chosen by the finalis (pitch class of the lowest note sounding at the
    end). A finalis that is neither (a modal or half-cadence ending) leaves the key unlabelled.

The rules themselves (third, finalis, longest meter) work on plain note arrays and live in
training/data/label_rules.py, shared with the MIDI sources; this module reads the scores and applies them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import re
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from typemoe.training.data.label_rules import final_bass_pc, finalis_key, key_name, longest_meter, third_mode

log = logging.getLogger(__name__)

CONVERTER_VERSION = 2  # part of the cache path: bump when notes or label rules change
TPQ = 480  # ticks per quarter note in the cached MIDI files
DEFAULT_VELOCITY = 80
EXCLUDED_COLLECTIONS = (
    "demos",
)  # music21's own test fixtures (chord-symbol tests, drum samples), not repertoire
ESAC_COLLECTIONS = ("essenFolksong",)  # ABC translated from EsAC: K: names the tonic, not the mode
MAJOR_MODES = {"major", "ionian", "mixolydian", "lydian"}
MINOR_MODES = {"minor", "aeolian", "dorian", "phrygian"}


def default_cache_dir() -> Path:
    """~/.cache/typemoe (or $XDG_CACHE_HOME/typemoe): outside any repository."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "typemoe"


@dataclass(kw_only=True)
class TuneRecord:
    """One converted tune, as stored in the cache (labels as plain strings, not class indices)."""

    id: str  # corpus-relative path, plus "#<tune number>" for a tune inside a multi-tune file
    midi: str  # MIDI path relative to the cache root
    key: str | None  # "E minor" (analysis.KEYS spelling) or None
    key_rule: str  # how the key was found: abc-mode | esac-third | finalis | none:<why>
    meter: str | None  # time-signature ratio string covering the most duration, "6/8", or None
    n_notes: int
    title: str = ""


@dataclass(kw_only=True)
class FileResult:
    """What a worker returns for one corpus file; also the cache index entry for it."""

    path: str  # corpus-relative
    source_size: int
    source_mtime_ns: int
    version: str
    tunes: list[TuneRecord] = field(default_factory=list)
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (item, reason, detail)


def _cache_root(cache_dir: Path) -> Path:
    import music21

    return cache_dir / f"music21-{music21.__version__}-v{CONVERTER_VERSION}"


def _version_tag() -> str:
    import music21

    return f"{music21.__version__}/v{CONVERTER_VERSION}"


def corpus_files() -> tuple[Path, list[Path]]:
    """The corpus root and its score files (sorted), minus EXCLUDED_COLLECTIONS."""
    from music21 import common, corpus

    root = Path(common.getCorpusFilePath())
    paths = sorted(Path(p) for p in corpus.getCorePaths())
    keep = [p for p in paths if p.relative_to(root).parts[0] not in EXCLUDED_COLLECTIONS]
    return root, keep


# --------------------------------------------------------------------------- notes


def _notes(flat) -> np.ndarray:
    """(N, 4) float64 rows (onset_ql, duration_ql, pitch, velocity) from a flattened stream, ties merged."""
    from music21 import chord, note

    rows: list[list[float]] = []
    open_ties: dict[int, int] = {}  # midi pitch -> row index of a note whose tie continues
    for el in flat.notes:
        if isinstance(el, note.Note):
            parts = [(el, el.pitch)]
        elif isinstance(el, chord.Chord):  # includes ChordSymbol realisations; unpitched excluded
            parts = [(n, n.pitch) for n in el.notes]
        else:
            continue
        onset = float(el.offset)
        dur = float(el.duration.quarterLength)
        if dur <= 0:  # grace notes
            continue
        vel = DEFAULT_VELOCITY
        if el.hasVolumeInformation() and el.volume.velocity is not None:
            vel = int(el.volume.velocity)
        for n, p in parts:
            midi = int(p.ps)
            if not 0 <= midi <= 127:
                continue
            tie = (n.tie or el.tie) if isinstance(el, chord.Chord) else el.tie
            tie_type = tie.type if tie is not None else None
            prev = open_ties.get(midi)
            if prev is not None and tie_type in ("stop", "continue"):
                r = rows[prev]
                if abs(r[0] + r[1] - onset) < 1e-6:
                    r[1] += dur
                    if tie_type == "stop":
                        del open_ties[midi]
                    continue
            rows.append([onset, dur, midi, vel])
            if tie_type in ("start", "continue"):
                open_ties[midi] = len(rows) - 1
            else:
                open_ties.pop(midi, None)
    arr = np.asarray(rows, dtype=np.float64).reshape(-1, 4)
    return arr[np.lexsort((arr[:, 2], arr[:, 0]))] if len(arr) else arr


def _write_midi(notes: np.ndarray, path: Path) -> None:
    import symusic

    score = symusic.Score(TPQ)
    track = symusic.Track("music21", 0, False)
    onset = np.round(notes[:, 0] * TPQ).astype(np.int32)
    dur = np.maximum(np.round(notes[:, 1] * TPQ).astype(np.int32), 1)
    track.notes = symusic.Note.from_numpy(
        onset, dur, notes[:, 2].astype(np.int8), np.clip(notes[:, 3], 1, 127).astype(np.int8)
    )
    score.tracks.append(track)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    score.dump_midi(tmp)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- one tune


def _first_signature(flat):
    """Majority key signature at the earliest offset (parts may repeat it); None if there is none."""
    from music21 import key

    sigs = list(flat.getElementsByClass(key.KeySignature))
    if not sigs:
        return None
    first = min(float(s.offset) for s in sigs)
    at_start = [s for s in sigs if float(s.offset) == first]
    sharps = Counter(s.sharps for s in at_start).most_common(1)[0][0]
    return next(s for s in at_start if s.sharps == sharps)


def _key_label(score, flat, notes: np.ndarray, rel: str, is_abc: bool) -> tuple[str | None, str]:
    from music21 import key

    sig = _first_signature(flat)
    if sig is None:
        return None, "none:no-signature"
    collection = rel.split("/", 1)[0]
    if is_abc and collection in ESAC_COLLECTIONS:
        if not isinstance(sig, key.Key):
            return None, "none:no-tonic"
        minor = third_mode(sig.tonic.pitchClass, notes[:, 2].astype(int), notes[:, 1])
        if minor is None:
            return None, "none:ambiguous-third"
        return key_name(sig.tonic.pitchClass, minor), "esac-third"
    if is_abc:
        if not isinstance(sig, key.Key) or not sig.mode:
            # music21 reads K:Bloc / K:Hp as a bare (and wrong) signature: the mode was not understood
            return None, "none:abc-mode-not-understood"
        mode = sig.mode.lower()
        if mode in MAJOR_MODES | MINOR_MODES:
            return key_name(sig.tonic.pitchClass, mode in MINOR_MODES), "abc-mode"
        return None, f"none:mode-{mode}"
    onsets, ends = notes[:, 0], notes[:, 0] + notes[:, 1]
    return finalis_key(sig.sharps, final_bass_pc(onsets, ends, notes[:, 2].astype(int)))


def _meter_label(flat) -> str | None:
    from music21 import meter

    spans: dict[float, str] = {}
    for ts in flat.getElementsByClass(meter.TimeSignature):
        spans.setdefault(float(ts.offset), ts.ratioString)  # one per offset: parts repeat it
    return longest_meter(sorted(spans.items()), float(flat.highestTime))


def _to_sounding(score) -> None:
    """Transposing instruments are stored at written pitch in MusicXML; the labels need sounding pitch."""
    from music21 import instrument

    for inst in score.recurse().getElementsByClass(instrument.Instrument):
        if inst.transposition is not None and inst.transposition.semitones % 12 != 0:
            score.toSoundingPitch(inPlace=True)
            return


def _convert_tune(score, tune_id: str, rel: str, is_abc: bool, cache_root: Path) -> TuneRecord:
    _to_sounding(score)
    flat = score.flatten()
    notes = _notes(flat)
    if len(notes) == 0:
        raise _TuneSkip("empty", "no pitched notes")
    key_label, rule = _key_label(score, flat, notes, rel, is_abc)
    midi_rel = "midi/" + re.sub(r"[^\w.\-/#]", "_", tune_id).replace("#", "__") + ".mid"
    _write_midi(notes, cache_root / midi_rel)
    title = score.metadata.title if score.metadata is not None and score.metadata.title else ""
    return TuneRecord(
        id=tune_id,
        midi=midi_rel,
        key=key_label,
        key_rule=rule,
        meter=_meter_label(flat),
        n_notes=len(notes),
        title=str(title),
    )


class _TuneSkip(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


# --------------------------------------------------------------------------- one file (worker)


def _split_abc(text: str) -> list[str]:
    """A multi-tune ABC file as one text per tune (file header prepended): the fallback path."""
    chunks = re.split(r"(?m)^(?=X:)", text)
    header, tunes = (chunks[0], chunks[1:]) if chunks and not chunks[0].startswith("X:") else ("", chunks)
    return [header + t for t in tunes]


@contextlib.contextmanager
def _notation_off():
    """Turn off two engraving passes of music21's ABC import for the duration of one parse.

    - Stream.makeBeams beams every measure and sets stem directions;
    - abcFormat.translate.reBar splits overfull measures into new ones, deep-copying notes.
    Neither changes a note's offset, pitch or (tie-merged) duration, so neither reaches MIDI, and
    together they are 75-85 % of an ABC file's parse time (cProfile: oneills1850/0101-0200.abc
    makeBeams 21.8 of 29.6 s; essenFolksong/han1.abc reBar 71 of 93 s). Restored on exit, so other
    music21 users in the process are unaffected.
    """
    from music21 import stream
    from music21.abcFormat import translate

    make_beams, re_bar = stream.Stream.makeBeams, translate.reBar
    stream.Stream.makeBeams = lambda self, *args, **kwargs: None if kwargs.get("inPlace") else self
    translate.reBar = lambda part, *, inPlace=False: None if inPlace else part
    try:
        yield
    finally:
        stream.Stream.makeBeams, translate.reBar = make_beams, re_bar


def _parse(source: Path | str, fmt: str | None = None):
    from music21 import converter

    with _notation_off():
        if fmt is None:
            return converter.parse(source, forceSource=True, storePickle=False)
        return converter.parse(source, format=fmt, forceSource=True, storePickle=False)


def _tunes_of(parsed, rel: str) -> list[tuple[str, object]]:
    from music21 import stream

    if not isinstance(parsed, stream.Opus):
        return [(rel, parsed)]
    out = []
    for i, score in enumerate(parsed.scores, start=1):
        number = score.metadata.number if score.metadata is not None and score.metadata.number else i
        out.append((f"{rel}#{number}", score))
    return out


def convert_file(path: str, rel: str, cache_root: str) -> FileResult:
    """Convert one corpus file; never raises for bad music (failures are returned, named)."""
    with warnings.catch_warnings():
        # music21 warns on every oddity of old encodings; the per-tune outcome is what we report
        warnings.simplefilter("ignore")
        return _convert_file(path, rel, cache_root)


def _convert_file(path: str, rel: str, cache_root: str) -> FileResult:
    src = Path(path)
    st = src.stat()
    res = FileResult(path=rel, source_size=st.st_size, source_mtime_ns=st.st_mtime_ns, version=_version_tag())
    is_abc = src.suffix.lower() == ".abc"
    try:
        tunes = _tunes_of(_parse(src), rel)
    except Exception as err:  # music21 raises many unrelated types for bad encodings
        if not is_abc:
            res.failures.append((rel, "parse error", f"{type(err).__name__}: {err}"))
            return res
        # one bad tune sinks the whole Opus parse: retry tune by tune so only that tune is lost
        tunes = []
        for i, text in enumerate(_split_abc(src.read_text(encoding="utf-8", errors="replace")), start=1):
            m = re.search(r"(?m)^X:\s*(\d+)", text)
            tune_id = f"{rel}#{m.group(1) if m else i}"
            try:
                tunes += [(tune_id, s) for _, s in _tunes_of(_parse(text, "abc"), rel)][:1]
            except Exception as tune_err:  # same as above: the tune's encoding is broken
                res.failures.append((tune_id, "parse error", f"{type(tune_err).__name__}: {tune_err}"))
    seen: Counter[str] = Counter()
    for tune_id, score in tunes:
        seen[tune_id] += 1
        if seen[tune_id] > 1:  # duplicated X: numbers inside one file
            tune_id = f"{tune_id}.{seen[tune_id]}"
        try:
            res.tunes.append(_convert_tune(score, tune_id, rel, is_abc, Path(cache_root)))
        except _TuneSkip as skip:
            res.failures.append((tune_id, skip.reason, str(skip)))
        except Exception as err:  # a malformed stream (bad repeats, duplicated signatures, ...)
            res.failures.append((tune_id, "conversion error", f"{type(err).__name__}: {err}"))
    return res


def _worker(job: tuple[str, str, str]) -> FileResult:
    return convert_file(*job)


# --------------------------------------------------------------------------- cache + pool


def _index_path(cache_root: Path, rel: str) -> Path:
    return cache_root / "index" / (rel + ".json")


def _load_cached(cache_root: Path, src: Path, rel: str) -> FileResult | None:
    path = _index_path(cache_root, rel)
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    st = src.stat()
    if (data["source_size"], data["source_mtime_ns"], data["version"]) != (
        st.st_size,
        st.st_mtime_ns,
        _version_tag(),
    ):
        return None
    tunes = [TuneRecord(**t) for t in data["tunes"]]
    if not all((cache_root / t.midi).exists() for t in tunes):
        return None
    return FileResult(
        **{k: v for k, v in data.items() if k not in ("tunes", "failures")},
        tunes=tunes,
        failures=[tuple(f) for f in data["failures"]],
    )


def _store(cache_root: Path, res: FileResult) -> None:
    path = _index_path(cache_root, res.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(asdict(res)))
    os.replace(tmp, path)


def convert_corpus(
    *, cache_dir: Path | None = None, workers: int | None = None, limit: int | None = None
) -> tuple[Path, list[FileResult]]:
    """Convert (or load from cache) the whole corpus, or its first files until `limit` tunes.

    Args:
        cache_dir: cache base (default ~/.cache/typemoe); the conversion lives in a versioned subfolder.
        workers: processes (default: all cores).
        limit: stop after this many tunes, taking files in sorted path order (a deterministic sample).

    Returns:
        (cache root holding the MIDI files, per-file results sorted by path).
    """
    from filelock import FileLock

    root, files = corpus_files()
    cache_root = _cache_root(Path(cache_dir) if cache_dir is not None else default_cache_dir())
    cache_root.mkdir(parents=True, exist_ok=True)
    workers = workers or os.cpu_count() or 1
    with FileLock(str(cache_root / ".lock")):
        results: dict[str, FileResult] = {}
        todo: list[Path] = []
        n_tunes = 0
        for p in files:
            if limit is not None and n_tunes >= limit:
                break
            cached = _load_cached(cache_root, p, str(p.relative_to(root)))
            if cached is None:
                todo.append(p)
                if limit is not None:  # unknown tune count: convert now to know when to stop
                    cached = convert_file(str(p), str(p.relative_to(root)), str(cache_root))
                    _store(cache_root, cached)
                    todo.pop()
            if cached is not None:
                results[cached.path] = cached
                n_tunes += len(cached.tunes)
        if todo:
            log.info(
                "music21: converting %d of %d corpus files with %d workers", len(todo), len(files), workers
            )
            todo.sort(key=lambda p: -p.stat().st_size)  # largest first: the pool drains evenly
            jobs = [(str(p), str(p.relative_to(root)), str(cache_root)) for p in todo]
            ctx = multiprocessing.get_context("spawn")  # no fork of a parent holding locks/threads
            with ctx.Pool(workers, maxtasksperchild=200) as pool:
                for res in tqdm(
                    pool.imap_unordered(_worker, jobs), total=len(jobs), desc="music21", unit="file"
                ):
                    _store(cache_root, res)
                    results[res.path] = res
        else:
            log.info("music21: all %d corpus files found in cache %s", len(results), cache_root)
    ordered = [results[k] for k in sorted(results)]
    if limit is not None:
        kept, out = 0, []
        for res in ordered:
            take = res.tunes[: max(limit - kept, 0)]
            kept += len(take)
            out.append(FileResult(**{**asdict(res), "tunes": take, "failures": res.failures}))
        ordered = out
    return cache_root, ordered
