"""Re-bar token shards: each piece in REMI bars of its own meter instead of REMI's 4 beats.

    python -m typemoe.training.data.rebar SRC_SHARDS DST_SHARDS

A piece whose meter label has a bar length is re-split into REMI bars of remi_bar_beats(meter) (3/4 and
6/8 -> 3 beats, 2/4 -> 2, 3/8 -> 1.5; 4/4 and unlabelled pieces unchanged): the same notes (Pitch,
Velocity, Duration ids untouched), each Position moved into the bar that holds it, so the pieces are in
the bars the decoder writes a continuation of that meter in (typemoe.grammar_tables.BarPlan) and
TokenReader(vocab, plan=BarPlan(0, beats)) reads back the notes the 4-beat ids held.

Train on such shards with `typemoe train --no-phase-shift` (the phase shift re-bars every window in 4-beat
bars) and `--no-humanize` (its re-timing does too). What it did for the shipped model's continuations:
docs/GPU.md, "Meter: train in the music's own bars".
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from typemoe import grammar_tables
from typemoe.training.data.shards import ShardError, ShardSet
from typemoe.vocab import BEATS_PER_BAR, TICKS_PER_BEAT


def resplit_bars(
    ids, *, bar: int, pos_lo: int, n_pos: int, bar_ticks: int, shift: int = 0, switch: int = 0
) -> np.ndarray:
    """Music ids starting at a Bar, in bars of n_pos grid ticks (Position ids pos_lo.., contiguous) -> the
    same notes `shift` ticks later, in bars of bar_ticks ticks: Position p of bar b is absolute tick
    b * n_pos + p + shift, re-split into (bar, position); Bar tokens are re-emitted (empty bars included),
    every other id is kept as it is. The re-barring of rebar_ids and of training's phase shift.

    switch > 0 gives the bars of typemoe.grammar_tables.BarPlan(start=switch): bars of n_pos ticks until
    tick `switch` (the bar that holds it is cut there), then bars of bar_ticks from it: a window whose
    music moves into its meter's bars at a bar line of that meter, as the decoder writes a continuation."""
    head = -(-switch // n_pos)  # n_pos-tick bars before the switch, the last one cut at it

    def place(tick: int) -> tuple[int, int]:
        if tick < switch:
            return divmod(tick, n_pos)
        b, p = divmod(tick - switch, bar_ticks)
        return head + b, p

    out: list[int] = []
    bar_in = bar_out = -1
    for x in np.asarray(ids).tolist():
        if x == bar:
            bar_in += 1
            continue
        if pos_lo <= x < pos_lo + n_pos:
            b, p = place(max(bar_in, 0) * n_pos + (x - pos_lo) + shift)
            while bar_out < b:
                out.append(bar)
                bar_out += 1
            out.append(pos_lo + p)
            continue
        if bar_out < 0:  # events before any position (not valid REMI, but keep the stream well-formed)
            out.append(bar)
            bar_out = 0
        out.append(x)
    return np.asarray(out, dtype=np.int64)


def rebar_ids(ids: np.ndarray, tables, bar_ticks: int) -> np.ndarray:
    """Music ids in REMI's 4-beat bars (starting at a Bar) -> the same notes in bars of bar_ticks grid
    ticks; empty bars are kept as Bar tokens."""
    n_pos = BEATS_PER_BAR * TICKS_PER_BEAT
    bar = int(np.flatnonzero(tables.is_bar)[0])
    pos_lo = int(np.flatnonzero(tables.position_of == 0)[0])  # Position ids are contiguous (vocab)
    return resplit_bars(ids, bar=bar, pos_lo=pos_lo, n_pos=n_pos, bar_ticks=bar_ticks)


def piece_bar_ticks(meter_name: str | None) -> int:
    """Grid ticks of the bars a piece of this meter label is re-split into (REMI's 16 when it has none)."""
    if not meter_name:
        return BEATS_PER_BAR * TICKS_PER_BEAT
    try:
        return int(round(grammar_tables.remi_bar_beats(meter_name) * TICKS_PER_BEAT))
    except ValueError:  # "other": no bar length
        return BEATS_PER_BAR * TICKS_PER_BEAT


def rebar_shards(src: Path, dst: Path, vocab) -> dict[int, int]:
    """Write the re-barred copy of shard set `src` to `dst` (labels, splits and ids as they are); returns
    the number of pieces per bar length in grid ticks."""
    sh = ShardSet(src, vocab=vocab)
    tables = grammar_tables.tables_of(vocab)
    names = sh.label_names["meter"]
    pieces, counts = [], {}
    for i in range(len(sh)):
        m = int(sh.labels["meter"][i])
        ticks = piece_bar_ticks(names[m] if m >= 0 else None)
        counts[ticks] = counts.get(ticks, 0) + 1
        ids = np.asarray(sh.tokens_of(i), dtype=np.int64)
        pieces.append(ids if ticks == BEATS_PER_BAR * TICKS_PER_BEAT else rebar_ids(ids, tables, ticks))
    dst.mkdir(parents=True, exist_ok=True)
    manifest = dict(sh.manifest)
    for f in manifest["files"]:
        if f not in ("tokens.bin", "offsets.npy"):
            shutil.copy(src / f, dst / f)
    offsets = np.zeros(len(pieces) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(p) for p in pieces])
    np.save(dst / "offsets.npy", offsets)
    with (dst / "tokens.bin").open("wb") as f:
        for p in pieces:
            f.write(p.astype(np.uint16).tobytes())
    manifest["fingerprint"] = f"{manifest['fingerprint']}-rebarred"
    manifest["counts"] = dict(manifest["counts"], tokens=int(offsets[-1]))
    manifest["options"] = dict(manifest.get("options", {}), rebarred_from=str(src))
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m typemoe.training.data.rebar", description=__doc__)
    p.add_argument("src", type=Path, help="token shard directory (REMI 4-beat bars)")
    p.add_argument("dst", type=Path, help="where to write the re-barred shards")
    args = p.parse_args(argv)
    from typemoe.vocab import TypedVocab

    try:
        counts = rebar_shards(args.src, args.dst, TypedVocab.default())
    except ShardError as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    per = ", ".join(f"{n} in {t / TICKS_PER_BEAT:g}-beat bars" for t, n in sorted(counts.items()))
    sys.stdout.write(f"wrote {args.dst}: {per}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
