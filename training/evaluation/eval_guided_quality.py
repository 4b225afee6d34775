"""Does guidance cost quality? Hits@1 / Hits@5 and BLEU-2 on the pieces' true controls, per guidance weight.

    python -m typemoe.training.evaluation.eval_guided_quality --model MODEL_DIR --data SHARDS --n 200 \
        --guidance 1 1.5 2 3 --out quality.json

Each of `n` held-out pieces with a key and a meter label (test split, seeded) is read as `typemoe eval`'s
continuation reads it (training/evaluation/evaluate.py: a prompt of whole bars, up to 256 tokens, then 64
target tokens), with its true Key and Meter controls after BOS. At each target the guided logits are
u + g * (c - u) (typemoe.sampling.guide): c read after [BOS, controls, music so far], u after [BOS, music so
far], the stream the decoder's guidance runs beside (typemoe.decoding.Session.unconditioned). Hits@k and
the mean negative log-likelihood of the targets (nll, nats) pool every target of every piece. BLEU-2 is corpus BLEU-2 of the decoder's greedy 64-token continuation at that
guidance against the targets, with head and meter guidance off: those steer toward the asked key and
meter, they are not the model's guess of the next token. The row `none` is the music alone, without
control tokens. Guidance 1 is the conditioned model itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from typemoe import analysis
from typemoe.sampling import guide, log_softmax
from typemoe.training.evaluation import metrics
from typemoe.training.evaluation.evaluate import EvalConfig, _prompt_cut
from typemoe.training.learn.data import load_pieces


def guided_quality(model, pieces, *, n: int, guidances: list[float], seed: int = 0) -> dict:
    """{"g<weight>.hits@1", ".hits@5", ".nll", ".bleu2"} per weight, the same for "none", and "n" (pieces
    read)."""
    vocab = model.vocab
    cfg = EvalConfig(models=[None], data="", out=Path("unused.json"))
    keys, meters = pieces.label("key"), pieces.label("meter")
    labelled = np.flatnonzero((keys >= 0) & (meters >= 0))
    order = np.random.default_rng(seed).permutation(labelled)
    rows: dict[str, dict[str, list]] = {
        r: {"logits": [], "pairs": []} for r in ["none", *map(_row, guidances)]
    }
    targets, used = [], 0
    for i in order:
        if used == n:
            break
        music = np.asarray(pieces.tokens[int(i)])
        cut = _prompt_cut(music, vocab, cfg, model.context_len - 1 - 2)
        if cut is None:
            continue
        used += 1
        controls = vocab.control_ids(
            key=analysis.key_name(int(keys[i])), meter=analysis.meter_name(int(meters[i]))
        )
        tail = music[: cut + cfg.target_tokens].tolist()
        plain, asked = [vocab.bos_id, *tail], [vocab.bos_id, *controls, *tail]
        u = model.outputs_at(plain, range(1 + cut, 1 + cut + cfg.target_tokens)).logits
        c = model.outputs_at(asked, range(1 + len(controls) + cut, len(asked))).logits
        target = music[cut : cut + cfg.target_tokens]
        targets.append(target)
        truth = [vocab.token(int(t)) for t in target]
        none = model.generate(plain[: 1 + cut], cfg.target_tokens, temperature=0.0)
        rows["none"]["logits"].append(u)
        rows["none"]["pairs"].append(([vocab.token(t) for t in none], truth))
        for g in guidances:
            greedy = model.generate(
                asked[: 1 + len(controls) + cut],
                cfg.target_tokens,
                temperature=0.0,
                guidance=g,
                head_guidance=0.0,
                meter_guidance=0.0,
            )
            rows[_row(g)]["logits"].append(guide(c, u, g))
            rows[_row(g)]["pairs"].append(([vocab.token(t) for t in greedy], truth))
    out: dict = {"n": used, "target_tokens": cfg.target_tokens, "seed": seed}
    if not used:
        return out
    y = np.concatenate(targets)
    for r, got in rows.items():
        logits = np.concatenate(got["logits"])
        out[f"{r}.hits@1"] = round(metrics.hits_at_k(logits, y, 1), 4)
        out[f"{r}.hits@5"] = round(metrics.hits_at_k(logits, y, 5), 4)
        out[f"{r}.nll"] = round(nll(logits, y), 4)
        out[f"{r}.bleu2"] = round(metrics.corpus_bleu2(got["pairs"]), 4)
    return out


def nll(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean negative log-likelihood (nats) of the targets under softmax(logits) (N, V); the guided
    distribution is the one the decoder samples from."""
    logp = log_softmax(logits.astype(np.float64))
    return float(-logp[np.arange(len(targets)), targets].mean())


def _row(g: float) -> str:
    return f"g{g:g}"


def main(argv: list[str] | None = None) -> int:
    from typemoe.training.evaluation.eval_model import open_model

    p = argparse.ArgumentParser(
        prog="python -m typemoe.training.evaluation.eval_guided_quality", description=__doc__.split("\n")[0]
    )
    p.add_argument("--model", type=Path, required=True, help="exported model directory")
    p.add_argument("--data", type=Path, action="append", required=True, help="token shard directory")
    p.add_argument("--split", choices=("test", "val", "all"), default="test")
    p.add_argument("--n", type=int, default=200, help="pieces with a key and a meter label")
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0, 1.5, 2.0, 3.0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = p.parse_args(argv)
    try:
        for g in args.guidance:
            if not g >= 1.0:
                raise ValueError(f"guidance must be >= 1 (1 = off), got {g}")
        model = open_model(args.model)
        pieces = load_pieces(args.data, model.vocab)
        if args.split != "all":
            pieces = pieces.with_split(args.split)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    res = guided_quality(model, pieces, n=args.n, guidances=args.guidance, seed=args.seed)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
