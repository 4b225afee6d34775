"""A training run made into a model directory that could ship: every head and every fusion, in one command.

    python -m typemoe.training.evaluation.candidate --run runs/gpu --data M21 --data SHIP \
        --emotion-data EMOPIA --out models/candidate

A run's checkpoint (a CPU run, or the GPU recipe's after `gpu_recipe unpack`) holds the trunk and the
next-token, key and meter heads. What `typemoe/default_model` ships on top of it, in the order made here
(the steps of MODEL_CARD.md's "Training", with its settings as defaults):

  emotion     the emotion head, trained alone on the frozen trunk (`typemoe finetune --task emotion
              --head-only`, 400 steps, 1024-token windows, lr 3e-3, seed 1); its checkpoint then holds
              every head, so it is the one exported
  export      the ONNX step graph with its int8-expert twin (`typemoe export --no-fp16`)
  fit_meter   the meter fusion (rhythm features + head), on the run's data (training/evaluation/fit_meter.py)
  fit_family  the meter's family judge (five onset rules weighed; reads no head), on the run's data
              (training/evaluation/fit_meter_family.py)
  fit_key     the key fusion (pitch-class profiles + head), no consistency term unless --key-consistency
              (training/evaluation/fit_key.py)
  fit_emotion the emotion fusion (note features + head) on EMOPIA's splits, VGMIDI scored as unseen
              (left out with --emotion-source none: the head answers alone)
  slim        only model_int8.onnx kept, the manifest written again (export/model_dir.refresh_manifest)

Each step is recorded in OUT/candidate.json when it ends (seconds and arguments); run again, the command
skips the steps already done, so a killed run resumes where it stopped. A step that fails stops the
command with its error; nothing of a finished step is redone.

What it does not do is decide: it prints the commands that score the directory beside the shipped one on
music the model never saw (the per-source table and the invariance suite). A candidate ships only where it
is ahead there (issue 15), and its model card is written from those numbers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

RECORD = "candidate.json"


class StageError(RuntimeError):
    """A step of the pipeline failed; its name and the reason."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m typemoe.training.evaluation.candidate", description=__doc__.split("\n")[0]
    )
    p.add_argument("--run", type=Path, required=True, help="training output or checkpoint directory")
    p.add_argument(
        "--data", type=Path, action="append", required=True, help="the run's token shards (for the fusions)"
    )
    p.add_argument("--emotion-data", type=Path, required=True, help="EMOPIA token shards (the emotion head)")
    p.add_argument(
        "--emotion-source",
        default="shared:emopia",
        help="EMOPIA as a source spec, for the emotion fusion; none = no fusion (the head answers alone)",
    )
    p.add_argument(
        "--ood",
        nargs="*",
        default=["shared:vgmidi"],
        help="emotion sources never trained on, scored by the emotion fit (default shared:vgmidi; bare: none)",
    )
    p.add_argument("--out", type=Path, required=True, help="work directory; the model goes to OUT/model")
    p.add_argument("--emotion-steps", type=int, default=400)
    p.add_argument("--emotion-seq-len", type=int, default=1024)
    p.add_argument("--emotion-lr", type=float, default=3e-3)
    p.add_argument("--emotion-seed", type=int, default=1)
    p.add_argument("--meter-pieces", type=int, default=4000, help="fit_meter --max-pieces")
    p.add_argument("--key-pieces", type=int, default=3000, help="fit_key --max-pieces")
    p.add_argument(
        "--key-consistency",
        type=float,
        nargs="+",
        default=[0.0],
        help="fit_key --consistency: the key fusion's transposition-consistency weights tried, the val split "
        "picks one (default 0, the shipped recipe's; a trunk whose one-hearing key turns too seldom with a "
        "transposition needs the sweep, e.g. 0 0.3 1 3 10)",
    )
    p.add_argument("--val-pieces", type=int, default=1000, help="val pieces of both fusion fits")
    p.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads of the emotion head (0 = default)"
    )
    return p


def _record(out: Path) -> dict:
    path = out / RECORD
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"stages": {}}


def _save_record(out: Path, record: dict) -> None:
    tmp = out / (RECORD + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    tmp.replace(out / RECORD)


def _check(name: str, rc: int | None) -> None:
    if rc not in (0, None):
        raise StageError(f"step {name} failed (exit status {rc}); fix the cause and run the command again")


def stages(args: argparse.Namespace) -> dict[str, tuple[list[str], Callable[[], None]]]:
    """Every step: (its arguments as recorded, the call that runs it)."""
    from typemoe.training.evaluation import fit_emotion, fit_key, fit_meter, fit_meter_family
    from typemoe.training.learn import finetune

    out, model = args.out, args.out / "model"
    emotion_run = out / "work" / "emotion"
    data = [a for d in args.data for a in ("--data", str(d))]
    emotion = [
        "--task", "emotion", "--head-only", "--from", str(args.run), "--data", str(args.emotion_data),
        "--out", str(emotion_run), "--max-steps", str(args.emotion_steps),
        "--seq-len", str(args.emotion_seq_len), "--lr", str(args.emotion_lr), "--seed", str(args.emotion_seed),
        "--threads", str(args.threads),
    ]  # fmt: skip
    fit_common = ["--model", str(model), *data, "--val-pieces", str(args.val_pieces)]
    meter = [*fit_common, "--max-pieces", str(args.meter_pieces)]
    family = ["--model", str(model), *data, "--val-pieces", str(args.val_pieces)]
    consistency = [f"{c:g}" for c in args.key_consistency]
    key = [*fit_common, "--max-pieces", str(args.key_pieces), "--consistency", *consistency]
    emo_fit = [
        "--model",
        str(model),
        "--data",
        args.emotion_source,
        *(a for o in args.ood for a in ("--ood", o)),
    ]

    export_args = ["--checkpoint", str(emotion_run), "--out", str(model), "--no-fp16"]

    def export() -> None:
        # `typemoe export` in a process of its own: training never imports export's torch side
        # (tests/test_import_contract.py); the command is what the card documents anyway.
        if model.exists():  # a step killed half-way: its partial directory goes
            shutil.rmtree(model)
        cmd = [sys.executable, "-m", "typemoe.cli", "export", *export_args]
        _check("export", subprocess.run(cmd).returncode)

    def slim() -> None:
        from typemoe.export.model_dir import refresh_manifest

        refresh_manifest(model, keep_graphs=["model_int8.onnx"], note=f"candidate from {args.run}")

    def head() -> None:
        if emotion_run.exists():  # a step killed half-way: its head is trained again from the start
            shutil.rmtree(emotion_run)
        _check("emotion", finetune.main(emotion))

    steps = {
        "emotion": (emotion, head),
        "export": (export_args, export),
        "fit_meter": (meter, lambda: _check("fit_meter", fit_meter.main(meter))),
        "fit_family": (family, lambda: _check("fit_family", fit_meter_family.main(family))),
        "fit_key": (key, lambda: _check("fit_key", fit_key.main(key))),
        "fit_emotion": (emo_fit, lambda: _check("fit_emotion", fit_emotion.main(emo_fit))),
        "slim": (["--keep", "model_int8.onnx"], slim),
    }
    if args.emotion_source == "none":
        del steps["fit_emotion"]
    return steps


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.run.exists():
        print(f"error: --run {args.run} does not exist", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    record, run = _record(args.out), str(args.run.resolve())
    if record.get("run") not in (None, run):
        print(
            f"error: {args.out} holds a candidate of {record['run']}, not of {run}; pick another --out",
            file=sys.stderr,
        )
        return 2
    record["run"] = run
    for name, (stage_args, call) in stages(args).items():
        if name in record["stages"]:
            print(f"[candidate] {name}: done before ({record['stages'][name]['seconds']:.0f} s), skipped")
            continue
        print(f"[candidate] {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            call()
        except (Exception, SystemExit) as err:  # any step's failure, named; the record keeps what was done
            print(f"error: step {name}: {type(err).__name__}: {err}", file=sys.stderr)
            return 2
        record["stages"][name] = {"seconds": round(time.perf_counter() - t0, 1), "args": stage_args}
        _save_record(args.out, record)
    model = args.out / "model"
    print(f"[candidate] {model} holds every head and fusion. Score it beside the shipped model:")
    print(
        f"  typemoe eval --model {model} --source-table --data shared:classical_piano --data shared:vgmidi "
        f"--data music21 --max-pieces 400 --table-perturb none,all --out {args.out}/table.json"
    )
    print(f"  TYPEMOE_INVARIANCE_MODEL={model} python -m pytest tests/test_invariance.py")
    print(
        f"  typemoe eval --model {model} --data {args.data[0]} --split test --groups infill,control --out {args.out}/gen.json"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
