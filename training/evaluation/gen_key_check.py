"""Does generation stay in the prompt's key? A command over held-out pieces.

    python -m typemoe.training.evaluation.gen_key_check --shards DIR [--model MODEL_DIR] [--n 50] [--bars 4]
                                     [--key-control] [--guidance G] [--key-lock]

For `n` held-out pieces with a key label (test split, evenly spread): the first 8 bars are the prompt, the
shipped (or given) ONNX model continues for `bars` bars (temperature 1.0, top-p 0.95, seed = index), and
music21's key analysis (Krumhansl-Schmuckler) of the continuation is compared with the prompt's label and
with music21's key of the prompt itself. The second is the fairer number: it compares one analyser with
itself, while the first is capped by how often music21 agrees with the labels at all. The same two rates
for the piece's own next `bars` bars (what the composer wrote) are the reference: short passages modulate
and music21 misreads them, so no continuation scores 1.0.

--key-control puts the piece's labelled key before the music as a control token; --guidance G mixes the
conditioned and unconditioned logits (typemoe.decoding, 1 = off); --key-lock masks pitches outside the
labelled key's scale. The decoder is the one the bridge and `typemoe generate` use.
"""

from __future__ import annotations

import argparse
import sys

import music21

from typemoe import analysis
from typemoe.export.runtime import OrtModel
from typemoe.shipped import default_model_dir
from typemoe.training.data.shards import ShardSet


def music21_key(vocab, ids) -> int | None:
    """Key class music21 finds in the notes of `ids`, or None when there are none."""
    score = vocab.decode(ids)
    stream = music21.stream.Stream()
    for n in score.tracks[0].notes if score.tracks else []:
        note = music21.note.Note(int(n.pitch))
        note.quarterLength = max(int(n.duration), 1) / 4
        stream.insert(int(n.time) / 4, note)
    return analysis.parse_key(stream.analyze("key")) if len(stream.notes) else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", required=True, help="token shards from `typemoe data build` (test split used)")
    p.add_argument("--model", default=None, help="exported model directory (default: the shipped model)")
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--bars", type=int, default=4)
    p.add_argument("--key-control", action="store_true", help="prefix the labelled key as a control token")
    p.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance weight (1 = off)")
    p.add_argument("--key-lock", action="store_true", help="only pitches of the labelled key's scale")
    args = p.parse_args(argv)
    model = OrtModel(args.model or default_model_dir())
    vocab = model.vocab
    shards = ShardSet(args.shards, vocab=vocab)
    bar = vocab.id("Bar_None")
    pool = [i for i in shards.select(split="test") if shards.labels["key"][i] >= 0]
    if not pool:
        print(f"error: no key-labelled test pieces in {args.shards}", file=sys.stderr)
        return 2
    chosen = pool[:: max(1, len(pool) // args.n)][: args.n]
    n = to_label = to_prompt = ref_n = ref_label = ref_prompt = 0
    for seed, i in enumerate(chosen):
        toks = shards.tokens_of(i).tolist()
        bars = [k for k, t in enumerate(toks) if t == bar]
        prompt = toks[: bars[8] if len(bars) > 8 else len(toks)]
        real = (
            toks[bars[8] : bars[8 + args.bars] if len(bars) > 8 + args.bars else len(toks)]
            if len(bars) > 8
            else []
        )
        prompt_key = music21_key(vocab, prompt)
        if (ref := music21_key(vocab, real)) is not None:
            ref_n += 1
            ref_label += ref == shards.labels["key"][i]
            ref_prompt += ref == prompt_key
        label = analysis.key_name(int(shards.labels["key"][i]))
        session = model.session()
        session.feed([vocab.bos_id, *(vocab.control_ids(key=label) if args.key_control else []), *prompt])
        new = session.generate(
            n_bars=args.bars,
            temperature=1.0,
            top_p=0.95,
            seed=seed,
            guidance=args.guidance,
            key_lock=label if args.key_lock else None,
        )
        key = music21_key(vocab, new)
        if key is None:
            continue
        n += 1
        to_label += key == shards.labels["key"][i]
        to_prompt += key == prompt_key
    print(
        f"{n} continuations of {args.bars} bars: music21 key == prompt's label {to_label}/{n} = "
        f"{to_label / max(n, 1):.2f}; == music21's key of the prompt {to_prompt}/{n} = {to_prompt / max(n, 1):.2f}"
    )
    print(
        f"reference, the pieces' own next {args.bars} bars ({ref_n}): == label {ref_label / max(ref_n, 1):.2f}; "
        f"== music21's key of the prompt {ref_prompt / max(ref_n, 1):.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
