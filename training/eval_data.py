"""The held-out pieces `typemoe eval` scores: from a data source or from a built shard directory.

    data = load_eval_data("music21", vocab=model.vocab, max_pieces=300)      # test split of the corpus
    data = load_eval_data("/tmp/shards", vocab=model.vocab)                 # a `typemoe data build` dir
    data = load_eval_data("folder:my_midi", labels_csv="labels.csv", vocab=vocab, split="all")

SRC is a source spec (music21 | shared:NAME | folder:PATH, read by training/sources.py and tokenized
here with the model's vocabulary) or a shard directory (training/shards.py; its vocabulary must be the
model's). The split is the same deterministic by-piece split training uses, so the test pieces were
never trained on. max_pieces takes a deterministic sample spread over the whole split (the pieces whose
sha1(source + id) is smallest), not a prefix: sources list their pieces by collection, so a prefix would
be one collection. Labels come back as typemoe.analysis indices (key, meter) or names (genre, emotion,
composer); the training split's labels are kept too, for the majority-class baselines.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from typemoe import analysis

log = logging.getLogger(__name__)

EVAL_SPLITS = ("test", "val", "train", "all")
TASKS = ("key", "meter", "genre", "emotion", "composer")


@dataclass
class EvalPiece:
    """One held-out piece: its REMI ids (no BOS) and labels (None = unlabelled)."""

    id: str
    source: str
    tokens: np.ndarray  # (T,) int64
    key: int | None = None  # index into analysis.KEYS
    meter: int | None = None  # index into analysis.METERS
    genre: str | None = None
    emotion: str | None = None
    composer: str | None = None


@dataclass
class EvalData:
    pieces: list[EvalPiece]
    train_labels: dict[str, list] = field(default_factory=dict)  # task -> labels of the training split
    skipped: Counter = field(default_factory=Counter)  # reason -> pieces that could not be loaded

    @property
    def sources(self) -> dict[str, int]:
        return dict(Counter(p.source for p in self.pieces))


def is_shard_dir(src: str | Path) -> bool:
    return (Path(src) / "manifest.json").is_file() and (Path(src) / "tokens.bin").is_file()


def _in_split(split: str, want: str) -> bool:
    return want == "all" or split == want


def sample_ids(ids: list[tuple[str, str]], n: int | None) -> set[tuple[str, str]]:
    """The n (source, id) pairs with the smallest sha1 (all of them when n is None): a stable sample."""
    if n is None or n >= len(ids):
        return set(ids)
    return set(sorted(ids, key=lambda si: hashlib.sha1(f"{si[0]}:{si[1]}".encode()).hexdigest())[:n])


def load_eval_data(src: str, *, vocab, labels_csv: Path | None = None, split: str = "test",
                   max_pieces: int | None = None, cache_dir: Path | None = None,
                   shared_dir: Path | None = None) -> EvalData:
    """The pieces of `split` in `src` (at most max_pieces, in the source's order), tokenized with `vocab`.

    Raises:
        ValueError: an unknown split, a bad source spec or labels file, or shards of another vocabulary.
    """
    if split not in EVAL_SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {EVAL_SPLITS}")
    if max_pieces is not None and max_pieces < 1:
        raise ValueError(f"--max-pieces must be >= 1, got {max_pieces}")
    if is_shard_dir(src):
        if labels_csv is not None:
            raise ValueError(f"--labels applies to folder: sources; the shard directory {src} has its labels")
        return _from_shards(Path(src), vocab, split, max_pieces)
    return _from_source(src, vocab, labels_csv, split, max_pieces, cache_dir, shared_dir)


def _from_shards(path: Path, vocab, split: str, max_pieces: int | None) -> EvalData:
    from training.shards import ShardSet

    shards = ShardSet(path, vocab=vocab)
    names = shards.label_names
    data = EvalData(pieces=[], train_labels={t: [] for t in TASKS})

    def label(task: str, i: int):
        v = int(shards.labels[task][i]) if task in shards.labels else -1
        if v < 0:
            return None
        name = names[task][v]
        return {"key": analysis.parse_key, "meter": analysis.parse_meter}.get(task, str)(name)

    splits = [("train", "val", "test")[int(s)] for s in shards.split]
    sources = [shards.sources[int(s)] for s in shards.source]
    chosen = sample_ids([(sources[i], shards.ids[i]) for i in range(len(shards)) if _in_split(splits[i], split)],
                        max_pieces)
    for i in range(len(shards)):
        if splits[i] == "train":
            for t in TASKS:
                data.train_labels[t].append(label(t, i))
        if (sources[i], shards.ids[i]) not in chosen:
            continue
        data.pieces.append(EvalPiece(
            id=shards.ids[i], source=sources[i],
            tokens=np.asarray(shards.tokens_of(i), dtype=np.int64),
            **{t: label(t, i) for t in TASKS},
        ))
    return data


def _from_source(spec: str, vocab, labels_csv, split: str, max_pieces: int | None, cache_dir, shared_dir) -> EvalData:
    from training.prepare import tokenize_piece
    from training.sources import SkipLog, SourceOptions, read_source

    opts = {"labels_csv": labels_csv}
    if cache_dir is not None:
        opts["cache_dir"] = cache_dir
    if shared_dir is not None:
        opts["shared_dir"] = shared_dir
    skips = SkipLog()
    # no limit here: a limit takes a prefix of the whole source, which holds few held-out pieces
    pieces = read_source(spec, SourceOptions(**opts), skips)
    data = EvalData(pieces=[], train_labels={t: [] for t in TASKS})
    for t in TASKS:
        data.train_labels[t] = [getattr(p, t) for p in pieces if p.split == "train"]
    chosen = sample_ids([(p.source, p.id) for p in pieces if _in_split(p.split, split)], max_pieces)
    for p in pieces:
        if (p.source, p.id) not in chosen:
            continue
        ids, reason, detail = tokenize_piece(vocab, p)
        if ids is None:
            skips.add(reason, f"{p.source}/{p.id}", detail)
            continue
        data.pieces.append(EvalPiece(id=p.id, source=p.source, tokens=np.asarray(ids, dtype=np.int64),
                                     key=p.key, meter=p.meter, genre=p.genre, emotion=p.emotion,
                                     composer=p.composer))
    data.skipped.update(skips.counts)
    log.info("%s: %d %s pieces, skipped %s", spec, len(data.pieces), split, skips.summary())
    return data
