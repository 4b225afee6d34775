"""`typemoe eval`: the command line of training/evaluation/evaluate.py and training/evaluation/ablation.py.

    typemoe eval --model runs/small --data music21 --out eval/results.json --max-pieces 300
    typemoe eval --model exported/ --data folder:my_midi --labels labels.csv --split all --out r.json
    typemoe eval --model ft/seed0 --model ft/seed1 --model ft/seed2 --data shared:emopia --out emo.json
    typemoe eval --ablation --data music21 --steps 500 --out ablation/results.json
    typemoe eval --label-efficiency --data /tmp/shards --steps 500 --out labeleff/results.json
    typemoe eval --baselines-only --data music21 --max-pieces 300 --out baselines/results.json
    typemoe eval --data music21 --perturb all --groups keymeter --out human/results.json
    typemoe eval --source-table --data music21 --data shared:classical_piano --max-pieces 150 --out t/table.json
        (the per-source table; --data repeats, unperturbed and humanized: --table-perturb)

add_parsers(subparsers) registers `eval` (func(args) -> exit code); main(argv, prog) runs it alone.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    from typemoe.training.evaluation.eval_data import EVAL_SPLITS
    from typemoe.training.evaluation.evaluate import GROUPS

    p.add_argument(
        "--model",
        type=Path,
        action="append",
        default=None,
        metavar="DIR",
        help="PyTorch checkpoint (a training --out dir or its latest/) or exported ONNX model dir; "
        "repeat to score several fine-tuned models (mean and spread). Default: the shipped model",
    )
    p.add_argument(
        "--data",
        required=True,
        metavar="SRC",
        action="append",
        help="music21 | shared:NAME | folder:PATH | a shard dir from `typemoe data build` "
        "(repeat only with --source-table)",
    )
    p.add_argument("--labels", type=Path, help="CSV path,key,meter,genre,emotion for a folder: source")
    p.add_argument(
        "--out", type=Path, required=True, help="results JSON; results .md and PNG plots go beside it"
    )
    p.add_argument("--max-pieces", type=int, help="evaluate at most N held-out pieces")
    p.add_argument(
        "--split", choices=EVAL_SPLITS, default="test", help="pieces to score (default: held-out test)"
    )
    p.add_argument("--window", type=int, help="tokens read per piece (default: the model's context)")
    p.add_argument("--prompt-tokens", type=int, default=256, help="continuation prompt length cap")
    p.add_argument(
        "--control-pieces", type=int, default=32, help="pieces used for attribute control (0 = skip)"
    )
    p.add_argument(
        "--control-tokens", type=int, default=256, help="tokens generated per attribute-control run"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument(
        "--cache-dir", type=Path, help="music21 conversions / extracted archives (default: ~/.cache/typemoe)"
    )
    p.add_argument("--shared-dir", type=Path, help="where shared:NAME sets live")
    p.add_argument(
        "--perturb",
        choices=("velocity", "timing", "all"),
        help="score humanized copies of the same pieces (training/evaluation/perturb.py): a velocity curve + "
        "per-note noise, +-1/32-beat onset/duration jitter + legato/staccato, or both",
    )
    p.add_argument(
        "--whole-max-tokens",
        type=int,
        default=16384,
        help="whole-piece (sliding) key/meter reading reads at most N tokens per piece; 0 = off",
    )
    p.add_argument(
        "--whole-quick",
        action="store_true",
        help="the whole-piece key from one hearing, as `typemoe analyze --quick` (12x faster), not from all "
        "12 transpositions",
    )
    p.add_argument("--groups", help=f"comma-separated metric groups (default all: {','.join(GROUPS)})")
    p.add_argument(
        "--source-table",
        action="store_true",
        help="key/meter per source, model beside music21's profiles and the autocorrelation "
        "baseline, unperturbed and humanized; --data repeatable; writes OUT and OUT.md",
    )
    p.add_argument(
        "--table-perturb",
        default="none,all",
        help="perturbations of --source-table, comma-separated from none,velocity,timing,all (humanized) "
        "and vel40,vel110,staccato,legato,melody,phase (one property each, to find shortcuts)",
    )
    g = p.add_argument_group("ablations (train variants, then evaluate each)")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--ablation", action="store_true", help="TypeMoE vs dense vs switch, SS-MTP vs CLM")
    mode.add_argument(
        "--label-efficiency", action="store_true", help="5/10/25/100 %% of the key/meter labels"
    )
    mode.add_argument(
        "--baselines-only",
        action="store_true",
        help="no model: the key/meter baselines on the held-out pieces (music21 profiles, "
        "autocorrelation, majority)",
    )
    g.add_argument("--steps", type=int, help="training steps per variant (required with the two flags above)")
    g.add_argument("--preset", default="tiny", help="training preset of the variants (default: tiny)")
    g.add_argument(
        "--train-arg",
        action="append",
        default=[],
        metavar="FLAG",
        help="extra flag for every training run, e.g. --train-arg=--batch-size=8 (repeatable)",
    )


def _groups(args) -> tuple[str, ...] | None:
    if not args.groups:
        return None
    return tuple(g.strip() for g in args.groups.split(",") if g.strip())


def _config(args, data: str | None = None):
    from typemoe.training.evaluation.evaluate import EvalConfig

    if data is None and len(args.data) != 1:
        raise ValueError(f"--data given {len(args.data)} times; repeat it only with --source-table")
    groups = _groups(args)
    return EvalConfig(
        models=list(args.model) if args.model else [None],
        data=data or args.data[0],
        out=args.out,
        labels_csv=args.labels,
        split=args.split,
        max_pieces=args.max_pieces,
        window=args.window,
        prompt_tokens=args.prompt_tokens,
        control_pieces=args.control_pieces,
        control_tokens=args.control_tokens,
        seed=args.seed,
        plots=not args.no_plots,
        threads=args.threads,
        cache_dir=args.cache_dir,
        shared_dir=args.shared_dir,
        perturb=args.perturb,
        whole_max_tokens=args.whole_max_tokens,
        whole_quick=args.whole_quick,
        **({"groups": groups} if groups else {}),
    )


def _summary(results: dict) -> str:
    keys = (
        "continuation.hits@1",
        "continuation.hits@5",
        "continuation.bleu2",
        "conditional.hits@1",
        "control.key_match",
        "control.meter_match",
        "key.accuracy",
        "key.mirex",
        "key.baselines.krumhansl",
        "key.baselines.aarden",
        "key.baselines.temperley",
        "key.baselines.simple",
        "key.baselines.majority",
        "meter.accuracy",
        "meter.family_accuracy",
        "meter.baselines.autocorrelation",
        "meter.baselines.autocorrelation.family",
        "meter.baselines.majority",
        "genre.accuracy",
        "emotion.accuracy",
        "infill.hits@1",
        "infill.continuation.hits@1",
        "infill.bleu2",
    )
    parts = [
        f"{k} {results[k]:.3f}"
        for k in keys
        if isinstance(results.get(k), float) and results[k] == results[k]
    ]
    return ", ".join(parts)


def run(args: argparse.Namespace) -> int:
    """The `eval` command: 0 ok, 2 bad input (named on stderr), 1 a failed training run."""
    from typemoe.training.evaluation.eval_model import ModelOpenError

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.source_table:
            from typemoe.training.evaluation import eval_table, evaluate

            if args.ablation or args.label_efficiency or args.baselines_only or args.perturb:
                raise ValueError(
                    "--source-table runs its own perturbations (--table-perturb); drop "
                    "--ablation / --label-efficiency / --baselines-only / --perturb"
                )
            perturbs = [x.strip() for x in args.table_perturb.split(",") if x.strip()]
            configs = [_config(args, data=d) for d in args.data]
            written = eval_table.source_table(configs, perturbs, args.out)
            print(written[-1].read_text())
            print("wrote " + ", ".join(str(p) for p in written))
            return 0
        cfg = _config(args)
        if args.ablation or args.label_efficiency:
            from typemoe.training.evaluation import ablation

            if args.steps is None:
                raise ValueError(
                    "--ablation and --label-efficiency need --steps N (training steps per variant)"
                )
            if args.model:
                raise ValueError("--ablation / --label-efficiency train their own models; drop --model")
            acfg = ablation.AblationConfig(
                eval=cfg,
                steps=args.steps,
                preset=args.preset,
                seed=args.seed,
                train_args=list(args.train_arg),
            )
            rows = (ablation.run_ablation if args.ablation else ablation.run_label_efficiency)(acfg)
            print(f"wrote {cfg.out} and {cfg.out.with_suffix('.md')} ({len(rows)} runs)")
            print(cfg.out.with_suffix(".md").read_text())
            return 0
        if args.steps is not None:
            raise ValueError("--steps only applies with --ablation or --label-efficiency")
        from typemoe.training.evaluation.evaluate import evaluate, evaluate_baselines, write_outputs

        if args.baselines_only and args.model:
            raise ValueError("--baselines-only evaluates no model; drop --model")
        report = evaluate_baselines(cfg) if args.baselines_only else evaluate(cfg)
        written = write_outputs(report, cfg.out, plots=cfg.plots)
        print(f"{report.results['n_pieces']} pieces: {_summary(report.results)}")
        print("wrote " + ", ".join(str(p) for p in written))
        return 0
    except (ValueError, ModelOpenError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def add_parsers(subparsers) -> None:
    """Register `eval` on an argparse subparsers object."""
    from typemoe.training.evaluation import evaluate

    p = subparsers.add_parser(
        "eval",
        help="every metric on held-out pieces; ablations",
        description=evaluate.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=run)


def main(argv: list[str] | None = None, prog: str = "typemoe eval") -> int:
    """Run `eval` on its own (also the shape of a typemoe/cli.py COMMANDS row)."""
    p = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
