"""Read a shard directory written by training/data/prepare.py: memmapped tokens, labels, per split and source.

    shards = ShardSet("/tmp/typemoe_m21", vocab=vocab)      # checks the tokenizer hash
    train = shards.select(split="train", labelled="key")     # piece indices
    rec = shards[train[0]]                                   # PieceRecord: tokens (memmap view) + labels
    ids = shards.tokens_of(i)                                # (T_i,) uint16, no copy

Labels are int arrays with -1 for "no label"; class names are in `shards.label_names[name]`.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from typemoe.analysis import LABELS
from typemoe.training.data.sources import SPLITS


class ShardError(ValueError):
    """Not a (complete) shard directory, or shards made with another tokenizer."""


@dataclass(frozen=True)
class PieceRecord:
    index: int
    id: str  # source-relative piece id
    source: str  # source spec, e.g. "music21", "shared:emopia"
    split: str  # "train" | "val" | "test"
    tokens: np.ndarray  # (T,) uint16, a view into the memmap
    key: int  # class index or -1, same for the rest
    meter: int
    genre: int
    emotion: int
    composer: int


class ShardSet:
    """One shard directory. Cheap to open: tokens stay on disk (np.memmap), small arrays are loaded."""

    def __init__(self, directory: str | Path, *, vocab=None) -> None:
        """Open `directory`; with `vocab`, refuse shards tokenized by a different vocabulary.

        Raises:
            ShardError: no manifest (not a shard directory, or an interrupted build), a missing file,
                or a tokenizer-hash mismatch.
        """
        self.dir = Path(directory)
        path = self.dir / "manifest.json"
        if not path.is_file():
            raise ShardError(
                f"{self.dir} has no manifest.json: not a shard directory, or its build was interrupted"
            )
        self.manifest: dict = json.loads(path.read_text())
        missing = [f for f in self.manifest["files"] if not (self.dir / f).is_file()]
        if missing:
            raise ShardError(f"{self.dir} is missing {missing}; rebuild it with `typemoe data build`")
        if vocab is not None and not vocab.reads(self.manifest["vocab_hash"]):  # same ids (vocab.reads)
            raise ShardError(
                f"{self.dir} was tokenized with vocabulary {self.manifest['vocab_hash'][:12]}, "
                f"not {vocab.hash[:12]}; rebuild the shards with this vocabulary"
            )
        self.offsets = np.load(self.dir / "offsets.npy")  # (P+1,) int64
        n_tokens = int(self.offsets[-1])
        self.tokens = (
            np.memmap(self.dir / "tokens.bin", dtype=np.uint16, mode="r", shape=(n_tokens,))
            if n_tokens
            else np.zeros(0, dtype=np.uint16)
        )
        self.labels = {name: np.load(self.dir / f"{name}.npy") for name in LABELS}  # each (P,) int16
        self.split = np.load(self.dir / "split.npy")  # (P,) int8 index into SPLITS
        self.source = np.load(self.dir / "source.npy")  # (P,) int16 index into self.sources
        self.ids: list[str] = json.loads((self.dir / "ids.json").read_text())
        self.sources: list[str] = self.manifest["sources"]
        self.label_names: dict[str, list[str]] = self.manifest["labels"]
        assert len(self.ids) == len(self.split) == len(self.offsets) - 1, (
            f"{self.dir}: array lengths disagree"
        )

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)  # (P,)

    def tokens_of(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    def __getitem__(self, i: int) -> PieceRecord:
        if not -len(self) <= i < len(self):
            raise IndexError(f"piece {i} out of range 0..{len(self) - 1}")
        i = i % len(self)
        return PieceRecord(
            index=i,
            id=self.ids[i],
            source=self.sources[self.source[i]],
            split=SPLITS[self.split[i]],
            tokens=self.tokens_of(i),
            **{name: int(self.labels[name][i]) for name in LABELS},
        )

    def select(
        self, *, split: str | None = None, source: str | None = None, labelled: str | None = None
    ) -> np.ndarray:
        """Indices of the pieces in `split`, from `source`, having label `labelled` (each optional).

        Raises:
            ValueError: an unknown split, source or label name (the message lists the valid ones).
        """
        mask = np.ones(len(self), dtype=bool)
        if split is not None:
            if split not in SPLITS:
                raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
            mask &= self.split == SPLITS.index(split)
        if source is not None:
            if source not in self.sources:
                raise ValueError(f"unknown source {source!r}; this shard set has {self.sources}")
            mask &= self.source == self.sources.index(source)
        if labelled is not None:
            if labelled not in LABELS:
                raise ValueError(f"unknown label {labelled!r}; expected one of {LABELS}")
            mask &= self.labels[labelled] >= 0
        return np.flatnonzero(mask)

    def stats(self) -> dict:
        """{source: {split: {"pieces", "tokens", "labels": {name: {class: count}}}}} from the arrays."""
        out: dict = {}
        lengths = self.lengths
        for src in self.sources:
            out[src] = {}
            for split in SPLITS:
                idx = self.select(split=split, source=src)
                labels = {}
                for name in LABELS:
                    vals = self.labels[name][idx]
                    if (vals >= 0).any():
                        counts = Counter(int(v) for v in vals[vals >= 0])
                        labels[name] = {self.label_names[name][c]: n for c, n in sorted(counts.items())}
                out[src][split] = {"pieces": len(idx), "tokens": int(lengths[idx].sum()), "labels": labels}
        return out


def format_stats(shards: ShardSet) -> str:
    """A plain-text report: totals per source and split, then each label's class counts per split."""
    st = shards.stats()
    m = shards.manifest
    lines = [
        f"{shards.dir}: {len(shards):,} pieces, {int(shards.offsets[-1]):,} tokens, "
        f"vocab {m['vocab_hash'][:12]} ({m['vocab_size']} ids), built {m.get('created', '?')}",
        "",
        f"{'source':<28} {'split':<6} {'pieces':>8} {'tokens':>12} " + " ".join(f"{n:>8}" for n in LABELS),
    ]
    for src, per in st.items():
        for split in (*SPLITS, "all"):
            rows = list(per.values()) if split == "all" else [per[split]]
            pieces, tokens = sum(r["pieces"] for r in rows), sum(r["tokens"] for r in rows)
            n_lab = [sum(sum(r["labels"].get(n, {}).values()) for r in rows) for n in LABELS]
            lines.append(
                f"{src:<28} {split:<6} {pieces:>8,} {tokens:>12,} " + " ".join(f"{n:>8,}" for n in n_lab)
            )
        skipped = m.get("skipped", {}).get(src, {}).get("counts", {})
        if skipped:
            lines.append(f"{'':<28} skipped: " + ", ".join(f"{n} {r}" for r, n in skipped.items()))
    for src, per in st.items():
        for name in LABELS:
            classes = sorted(
                {c for r in per.values() for c in r["labels"].get(name, {})},
                key=lambda c: shards.label_names[name].index(c),
            )
            if not classes:
                continue
            total = sum(sum(r["labels"][name].values()) for r in per.values() if name in r["labels"])
            n_src = sum(r["pieces"] for r in per.values())
            lines += [
                "",
                f"{src} / {name}: {total:,} of {n_src:,} pieces labelled ({100 * total / max(n_src, 1):.0f}%)",
                f"  {'class':<16}" + "".join(f"{s:>8}" for s in (*SPLITS, "all")) + "   share",
            ]
            for c in classes:
                counts = [per[s]["labels"].get(name, {}).get(c, 0) for s in SPLITS]
                lines.append(
                    f"  {c:<16}"
                    + "".join(f"{n:>8,}" for n in (*counts, sum(counts)))
                    + f"  {100 * sum(counts) / max(total, 1):5.1f}%"
                )
    return "\n".join(lines)
