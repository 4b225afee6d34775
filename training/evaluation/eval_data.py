"""The held-out pieces `typemoe eval` scores: from a data source or from a built shard directory.

    data = load_eval_data("music21", vocab=model.vocab, max_pieces=300)      # test split of the corpus
    data = load_eval_data("/tmp/shards", vocab=model.vocab)                 # a `typemoe data build` dir
    data = load_eval_data("folder:my_midi", labels_csv="labels.csv", vocab=vocab, split="all")

SRC is a source spec (music21 | shared:NAME | folder:PATH, read by training/data/sources.py and tokenized
here with the model's vocabulary) or a shard directory (training/data/shards.py; its vocabulary must be the
model's). The split is the same deterministic by-piece split training uses, so the test pieces were
never trained on. max_pieces takes a deterministic sample spread over the whole split (the pieces whose
sha1(source + id) is smallest), not a prefix: sources list their pieces by collection, so a prefix would
be one collection. Labels come back as typemoe.analysis indices (key, meter) or names (genre, emotion,
composer); the training split's labels are kept too, for the majority-class baselines.

Key signatures, for sources whose only key information is the file's own meta (META_KEY_SOURCES:
classical_piano from piano-midi.de, VGMIDI): `signature` is the tonic pitch class of the MAJOR key of the
file's first key-signature event (its relative minor shares it). Those files always encode mode = major,
so the signature cannot tell F major from D minor: eval scores "key signature agreement", the predicted
key's signature against the file's, beside exact key (which classical_piano has only where the finalis
rule of training/data/sources.py could determine the mode). Their meter becomes the FIRST time signature of
the meta (VGMIDI's are sequencer-entered: a weak label). Neither set was used to train the shipped model.

perturb="velocity" | "timing" | "all" humanizes every piece (training/evaluation/perturb.py humanize, seeded per
piece) before it is tokenized: the score as read from its file for a source spec, the decoded tokens
(sixteenth grid, binned velocities) for a shard directory.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from typemoe import analysis
from typemoe.training.data.skip_log import SkipLog

log = logging.getLogger(__name__)

EVAL_SPLITS = ("test", "val", "train", "all")
META_KEY_SOURCES = ("shared:classical_piano", "shared:vgmidi")  # key signature + first meter from the meta


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
    signature: int | None = None  # tonic pc of the major key of the file's key signature (META_KEY_SOURCES)


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
    from typemoe.training.data.sources import location_free

    def rank(si: tuple[str, str]) -> str:
        return hashlib.sha1(f"{location_free(si[0])}:{si[1]}".encode()).hexdigest()

    return set(sorted(ids, key=rank)[:n])


def signature_of_key(key: int) -> int:
    """Tonic pitch class of the major key that shares `key`'s signature (C major and A minor -> 0)."""
    key = analysis.parse_key(key)
    return (key % 12 + (3 if key >= 12 else 0)) % 12


def meta_labels(score) -> tuple[int | None, int | None]:
    """(signature, meter) from a score's FIRST key-signature and time-signature events (None when absent)."""
    sig = meter = None
    if len(score.key_signatures):
        first = min(score.key_signatures, key=lambda k: k.time)
        sig = (7 * int(first.key)) % 12
    if len(score.time_signatures):
        first = min(score.time_signatures, key=lambda t: t.time)
        try:
            meter = analysis.parse_meter(f"{first.numerator}/{first.denominator}")
        except ValueError:
            meter = None
    return sig, meter


def _seed_of(piece_id: str, seed: int) -> int:
    return int(hashlib.sha1(f"{seed}:{piece_id}".encode()).hexdigest()[:8], 16)


def _perturbed_ids(vocab, score, kind: str, piece_id: str, seed: int):
    from typemoe.training.evaluation.perturb import humanize

    return vocab.encode_score(humanize(score, kind, seed=_seed_of(piece_id, seed)))


def load_eval_data(
    src: str,
    *,
    vocab,
    labels_csv: Path | None = None,
    split: str = "test",
    max_pieces: int | None = None,
    cache_dir: Path | None = None,
    shared_dir: Path | None = None,
    perturb: str | None = None,
    seed: int = 0,
) -> EvalData:
    """The pieces of `split` in `src` (at most max_pieces, in the source's order), tokenized with `vocab`.

    Raises:
        ValueError: an unknown split, a bad source spec or labels file, or shards of another vocabulary.
    """
    from typemoe.training.evaluation.perturb import PERTURB_KINDS, PROBE_KINDS

    if perturb is not None and perturb not in (*PERTURB_KINDS, *PROBE_KINDS):
        raise ValueError(
            f"unknown --perturb {perturb!r}; expected one of {', '.join((*PERTURB_KINDS, *PROBE_KINDS))}"
        )
    if split not in EVAL_SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {EVAL_SPLITS}")
    if max_pieces is not None and max_pieces < 1:
        raise ValueError(f"--max-pieces must be >= 1, got {max_pieces}")
    if is_shard_dir(src):
        if labels_csv is not None:
            raise ValueError(f"--labels applies to folder: sources; the shard directory {src} has its labels")
        return _from_shards(Path(src), vocab, split, max_pieces, perturb, seed)
    return _from_source(src, vocab, labels_csv, split, max_pieces, cache_dir, shared_dir, perturb, seed)


def _from_shards(
    path: Path, vocab, split: str, max_pieces: int | None, perturb: str | None, seed: int
) -> EvalData:
    from typemoe.training.data.shards import ShardSet

    shards = ShardSet(path, vocab=vocab)
    names = shards.label_names
    data = EvalData(pieces=[], train_labels={t: [] for t in analysis.LABELS})

    def label(task: str, i: int):
        v = int(shards.labels[task][i]) if task in shards.labels else -1
        if v < 0:
            return None
        name = names[task][v]
        return {"key": analysis.parse_key, "meter": analysis.parse_meter}.get(task, str)(name)

    splits = [("train", "val", "test")[int(s)] for s in shards.split]
    sources = [shards.sources[int(s)] for s in shards.source]
    chosen = sample_ids(
        [(sources[i], shards.ids[i]) for i in range(len(shards)) if _in_split(splits[i], split)], max_pieces
    )
    for i in range(len(shards)):
        if splits[i] == "train":
            for t in analysis.LABELS:
                data.train_labels[t].append(label(t, i))
        if (sources[i], shards.ids[i]) not in chosen:
            continue
        tokens = np.asarray(shards.tokens_of(i), dtype=np.int64)
        if perturb is not None:
            tokens = np.asarray(
                _perturbed_ids(vocab, vocab.decode(tokens), perturb, shards.ids[i], seed), dtype=np.int64
            )
        data.pieces.append(
            EvalPiece(
                id=shards.ids[i],
                source=sources[i],
                tokens=tokens,
                **{t: label(t, i) for t in analysis.LABELS},
            )
        )
    return data


def _from_source(
    spec: str,
    vocab,
    labels_csv,
    split: str,
    max_pieces: int | None,
    cache_dir,
    shared_dir,
    perturb: str | None,
    seed: int,
) -> EvalData:
    import dataclasses

    from typemoe.training.data.prepare import tokenize_piece
    from typemoe.training.data.sources import SourceOptions, read_source

    opts = {"labels_csv": labels_csv}
    if cache_dir is not None:
        opts["cache_dir"] = cache_dir
    if shared_dir is not None:
        opts["shared_dir"] = shared_dir
    skips = SkipLog()
    # no limit here: a limit takes a prefix of the whole source, which holds few held-out pieces
    pieces = read_source(spec, SourceOptions(**opts), skips)
    data = EvalData(pieces=[], train_labels={t: [] for t in analysis.LABELS})
    for t in analysis.LABELS:
        data.train_labels[t] = [getattr(p, t) for p in pieces if p.split == "train"]
    chosen = sample_ids([(p.source, p.id) for p in pieces if _in_split(p.split, split)], max_pieces)
    for p in pieces:
        if (p.source, p.id) not in chosen:
            continue
        signature, meter = None, p.meter
        if p.source in META_KEY_SOURCES or perturb is not None:
            try:
                score = p.load_score()
            except Exception as err:  # symusic raises RuntimeError/ValueError variants for broken files
                skips.add("unreadable MIDI", f"{p.source}/{p.id}", f"{type(err).__name__}: {err}")
                continue
            if p.source in META_KEY_SOURCES:
                signature, meter = meta_labels(score)
            if perturb is not None:
                from typemoe.training.evaluation.perturb import humanize

                score = humanize(score, perturb, seed=_seed_of(p.id, seed))
            p = dataclasses.replace(p, midi=None, score=score)
        ids, reason, detail = tokenize_piece(vocab, p)
        if ids is None:
            skips.add(reason, f"{p.source}/{p.id}", detail)
            continue
        data.pieces.append(
            EvalPiece(
                id=p.id,
                source=p.source,
                tokens=np.asarray(ids, dtype=np.int64),
                key=p.key,
                meter=meter,
                genre=p.genre,
                emotion=p.emotion,
                composer=p.composer,
                signature=signature,
            )
        )
    data.skipped.update(skips.counts)
    log.info(
        "%s: %d %s pieces%s, skipped %s",
        spec,
        len(data.pieces),
        split,
        f" (perturbed: {perturb})" if perturb else "",
        skips.summary(),
    )
    return data
