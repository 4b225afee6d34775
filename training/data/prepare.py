"""MIDI sources -> cached token shards: one uint16 token file, per-piece offsets and label arrays.

    python -m typemoe.training.data.prepare build --source music21 --source shared:emopia --out /tmp/shards
    python -m typemoe.training.data.prepare stats /tmp/shards
    typemoe data build ... / typemoe data stats ...          (the same, through the console script)

Output directory (training/data/shards.py reads it):

    tokens.bin      uint16, every piece's REMI ids back to back (no BOS/EOS: the loader adds them)
    offsets.npy     int64 (P+1,), piece i is tokens[offsets[i]:offsets[i+1]]
    key.npy meter.npy genre.npy emotion.npy composer.npy
                    int16 (P,), class index, -1 = no label (names in manifest.json "labels")
    split.npy       int8 (P,), index into ("train", "val", "test")
    source.npy      int16 (P,), index into manifest.json "sources"
    ids.json        the P source-relative piece ids
    manifest.json   tokenizer hash, sources, counts, skip counts, the input fingerprint; written last,
                    so a directory without it is an interrupted build

Tokens come from `TypedVocab.encode_score`, which merges the non-drum tracks and drops time-signature,
key-signature and tempo events: the labels never leak into the input. It also cuts long silences and
refuses a file over the token budget, so no input file can make a build run long or out of memory; a
file that cannot be used is skipped and named, and the build keeps the others. A rebuild whose inputs (piece
list, labels, file sizes and mtimes, tokenizer, options) hash to the stored fingerprint does nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from typemoe import analysis
from typemoe.training.data.music21_source import default_cache_dir
from typemoe.training.data.skip_log import SkipLog
from typemoe.training.data.sources import (
    SPLITS,
    Piece,
    SourceOptions,
    default_shared_dir,
    normalize_spec,
    read_source,
)

log = logging.getLogger(__name__)

FORMAT = "typemoe-shards/1"
MANIFEST = "manifest.json"


@dataclass(kw_only=True)
class BuildConfig:
    """One `data build` run."""

    sources: list[str]  # specs: music21 | shared:NAME | folder:PATH
    out_dir: Path  # the shard directory (keep it outside the repository)
    labels_csv: Path | None = None  # path,key,meter,genre,emotion labels for folder: sources
    cache_dir: Path = field(default_factory=default_cache_dir)  # music21 conversion, extracted archives
    shared_dir: Path = field(default_factory=default_shared_dir)
    vocab_dir: Path | None = None  # a saved TypedVocab; None = TypedVocab.default()
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    limit: int | None = None  # at most this many pieces per source
    force: bool = False  # rebuild even when the fingerprint matches

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("at least one --source is needed (music21, shared:NAME or folder:PATH)")
        self.sources = [normalize_spec(s) for s in self.sources]
        if len(set(self.sources)) != len(self.sources):
            raise ValueError(f"a source is given twice: {self.sources}")
        if self.labels_csv is not None and not any(s.startswith("folder:") for s in self.sources):
            raise ValueError(f"--labels {self.labels_csv} applies to folder: sources, and none is given")
        self.out_dir = Path(self.out_dir)

    def source_options(self) -> SourceOptions:
        return SourceOptions(
            cache_dir=self.cache_dir,
            shared_dir=self.shared_dir,
            labels_csv=self.labels_csv,
            workers=self.workers,
            limit=self.limit,
        )


# --------------------------------------------------------------------------- tokenizing (pool workers)

_WORKER_VOCAB = None  # one TypedVocab per worker process, built by _init_worker


def _load_vocab(vocab_dir: Path | None):
    from typemoe.vocab import TypedVocab

    return TypedVocab.load(vocab_dir) if vocab_dir is not None else TypedVocab.default()


def _init_worker(vocab_dir: Path | None) -> None:
    global _WORKER_VOCAB
    _WORKER_VOCAB = _load_vocab(vocab_dir)


def tokenize_piece(vocab, piece: Piece) -> tuple[np.ndarray | None, str, str]:
    """(uint16 ids, "", "") or (None, skip reason, detail) for a file that cannot be used.

    A corrupt, empty, drums-only or too long file, or one the tokenizer fails on, is a skip reason, never
    an exception: one bad file must not cost a build its good ones. Long silences are cut and a score over
    the token budget is refused by `TypedVocab.prepare_score`, so the work per file is bounded.
    """
    from typemoe.vocab import ScoreError, ScoreTooLong

    try:
        score = piece.load_score()
    except Exception as err:  # symusic raises RuntimeError/ValueError variants for broken files
        return None, "unreadable MIDI", f"{type(err).__name__}: {err}"
    pitched = sum(len(t.notes) for t in score.tracks if not t.is_drum)
    drums = sum(len(t.notes) for t in score.tracks if t.is_drum)
    if pitched == 0:
        if drums:
            return None, "drums-only", f"{drums} drum notes and no pitched track (drum tracks are dropped)"
        return None, "empty MIDI", "no notes"
    try:
        ids = vocab.encode_score(score)
    except ScoreTooLong as err:
        return None, "over the token budget", str(err)
    except ScoreError as err:
        return None, "no usable notes", str(err)
    except Exception as err:  # a tokenizer failure on one file is that file's problem, named in the log
        return None, "tokenizer failed", f"{type(err).__name__}: {err}"
    assert max(ids, default=0) < 2**16, f"token id {max(ids)} does not fit uint16"
    return np.asarray(ids, dtype=np.uint16), "", ""


def _tokenize_job(job: tuple[int, Piece]) -> tuple[int, np.ndarray | None, str, str]:
    i, piece = job
    return (i, *tokenize_piece(_WORKER_VOCAB, piece))


def _tokenize_all(pieces: list[Piece], cfg: BuildConfig, vocab) -> list[tuple[np.ndarray | None, str, str]]:
    out: list = [None] * len(pieces)
    jobs = list(enumerate(pieces))
    bar = tqdm(total=len(jobs), desc="tokenize", unit="piece")
    if cfg.workers == 1:
        for i, piece in jobs:
            out[i] = tokenize_piece(vocab, piece)
            bar.update()
    else:
        ctx = multiprocessing.get_context("spawn")  # workers import only what they need; no forked locks
        with ctx.Pool(cfg.workers, initializer=_init_worker, initargs=(cfg.vocab_dir,)) as pool:
            for i, ids, reason, detail in pool.imap_unordered(_tokenize_job, jobs, chunksize=16):
                out[i] = (ids, reason, detail)
                bar.update()
    bar.close()
    return out


# --------------------------------------------------------------------------- fingerprint + manifest


def _file_signature(piece: Piece) -> list:
    if piece.score is not None:
        return ["score", hashlib.sha1(piece.score.dumps_midi()).hexdigest()]
    try:
        st = piece.midi.stat()
    except OSError:
        return ["missing", str(piece.midi)]
    return [str(piece.midi), st.st_size, st.st_mtime_ns]


def _tokenization() -> list:
    """The encoding rules outside the vocabulary hash: changing them must rebuild the shards."""
    from typemoe import vocab

    return ["collapse_silences", vocab.MAX_EMPTY_BARS, vocab.MAX_SCORE_TOKENS]


def fingerprint(cfg: BuildConfig, vocab_hash: str, pieces: list[Piece]) -> str:
    """sha256 of everything the shards depend on: options, tokenizer, and each piece's file and labels."""
    h = hashlib.sha256()
    h.update(json.dumps([FORMAT, vocab_hash, _tokenization(), cfg.sources, cfg.limit]).encode())
    for p in pieces:
        row = [p.source, p.id, p.split, p.key, p.meter, p.genre, p.emotion, p.composer, _file_signature(p)]
        h.update(json.dumps(row).encode())
    return h.hexdigest()


def _up_to_date(out_dir: Path, fp: str) -> dict | None:
    path = out_dir / MANIFEST
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    if manifest.get("fingerprint") != fp or manifest.get("format") != FORMAT:
        return None
    if not all((out_dir / f).is_file() for f in manifest.get("files", [])):
        return None
    return manifest


def _label_index(names: tuple[str, ...] | list[str], value) -> int:
    return -1 if value is None else (value if isinstance(value, int) else names.index(value))


def _counts(kept: list[tuple[Piece, np.ndarray]], sources: list[str]) -> dict:
    per: dict = {}
    for spec in sources:
        rows = [(p, ids) for p, ids in kept if p.source == spec]
        per[spec] = {
            "pieces": len(rows),
            "tokens": int(sum(len(ids) for _, ids in rows)),
            "per_split": {
                s: {
                    "pieces": sum(p.split == s for p, _ in rows),
                    "tokens": int(sum(len(i) for p, i in rows if p.split == s)),
                }
                for s in SPLITS
            },
            "labelled": {
                name: sum(getattr(p, name) is not None for p, _ in rows) for name in analysis.LABELS
            },
        }
    return per


# --------------------------------------------------------------------------- build


def build(cfg: BuildConfig) -> dict:
    """Read every source, tokenize, and write the shard directory; a no-op when inputs are unchanged.

    Returns:
        The manifest (also written to out_dir/manifest.json). manifest["rebuilt"] is False for a no-op.
    """
    from filelock import FileLock

    t0 = time.time()
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cfg.out_dir / ".build.lock")):
        vocab = _load_vocab(cfg.vocab_dir)
        opts = cfg.source_options()
        skips: dict[str, SkipLog] = {}
        pieces: list[Piece] = []
        for spec in cfg.sources:
            skips[spec] = SkipLog()
            got = read_source(spec, opts, skips[spec])
            assert all(p.source == spec for p in got), f"{spec}: pieces name another source"
            pieces += got
            log.info("%s: %d pieces read, skipped %s", spec, len(got), skips[spec].summary())
        fp = fingerprint(cfg, vocab.hash, pieces)
        if not cfg.force and (manifest := _up_to_date(cfg.out_dir, fp)) is not None:
            log.info("%s is up to date (input fingerprint %s unchanged): nothing to do", cfg.out_dir, fp[:12])
            return {**manifest, "rebuilt": False}

        results = _tokenize_all(pieces, cfg, vocab)
        kept: list[tuple[Piece, np.ndarray]] = []
        for p, (ids, reason, detail) in zip(pieces, results):
            if ids is None:
                skips[p.source].add(reason, f"{p.source}/{p.id}", detail)
            else:
                kept.append((p, ids))
        manifest = _write(cfg, vocab, kept, skips, fp)
    total = SkipLog()
    for s in skips.values():
        total.merge(s)
    log.info(
        "wrote %s: %d pieces, %d tokens in %.1f s; skipped %d (%s)",
        cfg.out_dir,
        manifest["counts"]["pieces"],
        manifest["counts"]["tokens"],
        time.time() - t0,
        len(total),
        total.summary(),
    )
    return {**manifest, "rebuilt": True}


def _write(
    cfg: BuildConfig, vocab, kept: list[tuple[Piece, np.ndarray]], skips: dict[str, SkipLog], fp: str
) -> dict:
    composers = sorted({p.composer for p, _ in kept if p.composer is not None})
    names = {
        "key": analysis.KEYS,
        "meter": analysis.METERS,
        "genre": analysis.GENRES,
        "emotion": analysis.EMOTIONS,
        "composer": tuple(composers),
    }
    lengths = np.asarray([len(ids) for _, ids in kept], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # (P+1,)
    arrays = {
        "offsets.npy": offsets,
        "split.npy": np.asarray([SPLITS.index(p.split) for p, _ in kept], dtype=np.int8),
        "source.npy": np.asarray([cfg.sources.index(p.source) for p, _ in kept], dtype=np.int16),
    }
    for name in analysis.LABELS:
        arrays[f"{name}.npy"] = np.asarray(
            [_label_index(names[name], getattr(p, name)) for p, _ in kept], dtype=np.int16
        )
    manifest = {
        "format": FORMAT,
        "fingerprint": fp,
        "vocab_hash": vocab.hash,
        "vocab_size": vocab.size,
        "sources": cfg.sources,
        "labels": {k: list(v) for k, v in names.items()},
        "splits": list(SPLITS),
        "counts": {"pieces": len(kept), "tokens": int(offsets[-1]), "per_source": _counts(kept, cfg.sources)},
        "skipped": {spec: s.as_dict() for spec, s in skips.items()},
        "options": {"limit": cfg.limit, "labels_csv": str(cfg.labels_csv) if cfg.labels_csv else None},
        "files": ["tokens.bin", *arrays, "ids.json"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    tmp = cfg.out_dir / f".tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    with (tmp / "tokens.bin").open("wb") as f:
        for _, ids in kept:
            f.write(ids.tobytes())
    for fname, arr in arrays.items():
        np.save(tmp / fname, arr)
    (tmp / "ids.json").write_text(json.dumps([p.id for p, _ in kept]))
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    (cfg.out_dir / MANIFEST).unlink(missing_ok=True)  # readers see "incomplete" while files change
    for fname in manifest["files"]:
        os.replace(tmp / fname, cfg.out_dir / fname)
    os.replace(tmp / MANIFEST, cfg.out_dir / MANIFEST)
    shutil.rmtree(tmp, ignore_errors=True)
    return manifest


# --------------------------------------------------------------------------- CLI (typemoe data ...)


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Build and inspect TypeMoE token shards.")
    sub = parser.add_subparsers(dest="action", required=True)
    b = sub.add_parser("build", help="sources -> token shards (a no-op when inputs are unchanged)")
    b.add_argument(
        "--source",
        action="append",
        required=True,
        metavar="SRC",
        help="music21 | shared:NAME | folder:PATH (repeatable)",
    )
    b.add_argument("--out", type=Path, required=True, help="output shard directory (outside the repository)")
    b.add_argument("--labels", type=Path, help="CSV path,key,meter,genre,emotion for folder: sources")
    b.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    b.add_argument("--limit", type=int, help="at most N pieces per source (quick runs)")
    b.add_argument(
        "--cache-dir",
        type=Path,
        default=default_cache_dir(),
        help="music21 conversions and extracted archives (default: %(default)s)",
    )
    b.add_argument(
        "--shared-dir",
        type=Path,
        default=default_shared_dir(),
        help="where shared:NAME sets live (default: $TYPEMOE_SHARED_DATA or ../shared/data)",
    )
    b.add_argument("--vocab", type=Path, help="a saved vocabulary directory (default: the project tokenizer)")
    b.add_argument("--force", action="store_true", help="rebuild even if the inputs are unchanged")
    s = sub.add_parser("stats", help="pieces, tokens and label distributions per source and split")
    s.add_argument("dir", type=Path)
    return parser


def main(argv: list[str] | None = None, prog: str = "python -m typemoe.training.data.prepare") -> int:
    args = _parser(prog).parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from typemoe.training.data.shards import ShardError, ShardSet, format_stats

    try:
        if args.action == "stats":
            print(format_stats(ShardSet(args.dir)))
            return 0
        cfg = BuildConfig(
            sources=args.source,
            out_dir=args.out,
            labels_csv=args.labels,
            cache_dir=args.cache_dir,
            shared_dir=args.shared_dir,
            vocab_dir=args.vocab,
            workers=args.workers,
            limit=args.limit,
            force=args.force,
        )
        manifest = build(cfg)
    except (ValueError, ShardError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    c = manifest["counts"]
    state = "rebuilt" if manifest["rebuilt"] else "up to date, nothing rebuilt"
    print(f"{cfg.out_dir}: {c['pieces']} pieces, {c['tokens']} tokens ({state})")
    for spec, n in c["per_source"].items():
        skipped = manifest["skipped"][spec]["counts"]
        print(
            f"  {spec}: {n['pieces']} pieces, {n['tokens']} tokens; skipped {sum(skipped.values())} {skipped or ''}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
