"""`typemoe infill`: new notes for bars in the middle of a MIDI file, leading from what comes before them
into what comes after them.

    typemoe infill song.mid --bars 5-6 --out new.mid
    typemoe infill song.mid --bars 5-6 --key "E minor" --guidance 2 --key-lock --seed 1 --out new.mid
    typemoe infill song.mid --bars 9 --model runs/infill --out new.mid      # one bar; a training checkpoint
    typemoe infill song.mid --bars 5-6 --suffix-weight 1 --out new.mid      # the infilling reading alone

Bars are the file's own, numbered from 1 by its time signatures (4/4 when it has none), and the new
notes are written in them: a 3/4 or 6/8 span in 3-beat bars, one per file bar (typemoe.infill). The
output is the file itself, edited: the pitched notes that start in those bars are replaced by the
model's, which start and end inside them; every other note (ticks, pitch, velocity, track), tempo, time and key signature and
controller is the file's own. The new notes go to the track that held most of the old ones.

The model must know the infilling tokens (the shipped model does since 2026-12-02; a model of your own
trained or fine-tuned with --infill-p; one from before infilling is refused by name). --model: an exported
model directory or a training checkpoint, as for `typemoe generate`; the decoder is typemoe.decoding's,
with typemoe.infill's span grammar and its mix of the infilling and continuation readings
(--suffix-weight).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from typemoe import analysis, key_steering, sampling
from typemoe.commands import tools
from typemoe.commands.tools import ToolError, open_model, read_midi
from typemoe.infill import SUFFIX_WEIGHT, InfillError, infill_score, meter_at


def parse_bars(text: str) -> tuple[int, int]:
    """'5-6' -> (5, 6); '7' -> (7, 7). Raises argparse.ArgumentTypeError."""
    try:
        a, _, b = text.partition("-")
        first, last = int(a), int(b or a)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--bars takes FIRST-LAST or one bar, e.g. 5-6, got {text!r}"
        ) from None
    if not 1 <= first <= last:
        raise argparse.ArgumentTypeError(f"--bars needs 1 <= FIRST <= LAST, got {text!r}")
    return first, last


def run(args: argparse.Namespace) -> int:

    first, last = args.bars
    controls = {kind.name: getattr(args, kind.name) for kind in analysis.CONTROLS}
    try:
        if args.key_lock and not args.key:
            raise ToolError("--key-lock needs --key (the key whose scale to keep)")
        try:
            sampling.check_sampling(args.temperature, args.top_p, args.guidance)
            key_steering.check_head_guidance(args.head_guidance)
        except ValueError as err:
            raise ToolError(f"--temperature/--top-p/--guidance/--head-guidance: {err}") from err
        model = open_model(args.model)
        try:
            ctrl = model.vocab.control_ids(**controls)
        except (ValueError, KeyError) as err:
            raise ToolError(f"bad control: {err}") from err
        score = read_midi(args.file)
        new, mid, split = infill_score(
            model,
            score,
            first,
            last,
            controls=ctrl,
            temperature=args.temperature,
            top_p=args.top_p,
            seed=args.seed,
            guidance=args.guidance,
            key_lock=args.key if args.key_lock else None,
            suffix_weight=args.suffix_weight,
            head_guidance=args.head_guidance,
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        new.dump_midi(str(args.out))
    except (ToolError, InfillError) as err:
        sys.stderr.write(f"error: {err}\n")
        return 2
    except OSError as err:
        sys.stderr.write(f"error: cannot write {args.out}: {err}\n")
        return 2
    how = "closed by the model" if mid.ended else "span full"
    meter = meter_at(score, split.t0)
    sys.stdout.write(
        f"wrote {args.out}: bars {first}-{last} of {meter} (ticks {split.t0}-{split.t1}) refilled with "
        f"{len(mid.notes)} notes in {split.n_bars} bar(s) of {split.bar_beats:g} beats ({how}); every other "
        "note unchanged\n"
    )
    return 0


def add_parsers(subparsers) -> None:
    p = subparsers.add_parser(
        "infill",
        help="rewrite bars in the middle of a MIDI file, between what comes before and after",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("file", type=Path, help="a MIDI file")
    p.add_argument("--bars", type=parse_bars, required=True, help="FIRST-LAST (or one bar), numbered from 1")
    p.add_argument("--out", type=Path, required=True, help="output MIDI: the file with those bars rewritten")
    p.add_argument("--model", type=Path, help="exported model dir or checkpoint (default: the shipped model)")
    tools.add_generation_flags(p)
    p.add_argument(
        "--suffix-weight",
        type=float,
        default=SUFFIX_WEIGHT,
        metavar="W",
        help="how far the middle leans from continuing the bars before it toward reading the bars after it "
        f"too: 0 = continuation, 1 = the infilling reading alone (default: {SUFFIX_WEIGHT:g}, "
        "the best on held-out pieces)",
    )
    p.set_defaults(func=run)
