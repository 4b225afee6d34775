"""The GPU recipe: pack the shards here, train on a borrowed GPU for a few minutes, unpack the checkpoint here.

The GPU machine has torch, numpy and safetensors, no network and no miditok/symusic; it takes at most
64 MiB of input (the working tree + carried paths) and gives back at most 8 files of <= 16 MiB each,
64 MiB together; one command runs at most ~9 minutes. So (docs/GPU.md says more):

    # 1. here: the corpus as one compact bundle (~6 MiB: uint16 tokens, compressed) + the vocabulary
    python -m typemoe.training.learn.gpu_recipe pack --data /work/data/M21 --data /work/data/SHIP --out gpu_pack
    echo /gpu_pack/ >> .git/info/exclude            # carried, not committed

    # 2. there (run tool: carry ["gpu_pack"], timeout_s 600): SS-MTP on CUDA with bf16 autocast until the
    #    wall-clock budget, then the checkpoint as bf16 safetensors files of <= 16 MiB in $OUT
    PYTHONUNBUFFERED=1 python3 -m typemoe.training.learn.gpu_recipe run --pack gpu_pack --out $OUT --minutes 8

    # 3. here: a normal checkpoint directory again
    python -m typemoe.training.learn.gpu_recipe unpack /work/.device/.../files/* --out runs/gpu
    typemoe export --checkpoint runs/gpu --out models/gpu
    typemoe train --preset medium ... --resume --max-steps N       # unpack prints the exact line

`run` takes `typemoe train`'s flags (default --preset medium; without --max-steps the budget decides) and
imports only this repository, torch, numpy and safetensors: training/learn/gpu_vocab.py stands in for miditok and
symusic where they are missing. It trains with training/learn/loop.py itself: the same SS-MTP losses, EMA
teacher, augmentation and checkpoint format as `typemoe train`; loop.train(deadline=...) times the first
steps and fits max_steps (so the cosine schedule ends at the budget), and worker processes build the next
steps' windows (training/learn/prefetch.py). The returned files hold, in this order of priority and as far as
the 64 MiB allow: the model weights (required), the EMA teacher, the AdamW moments. unpack fills in what
did not fit (EMA := the model, moments := empty, so Adam restarts its averages on --resume) and says so
in config.json's meta["gpu"]. All weights travel as bf16 (training kept fp32 master weights).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from typemoe import analysis

PACK_FORMAT, BUNDLE_FORMAT, VERSION = "typemoe-gpu-pack", "typemoe-gpu-bundle", 1
MIB = 2**20
SPLITS = ("train", "val", "test")  # = training/data/sources.py's (which imports symusic)
META, LOG = "gpu_meta.json", "run.log"
FILE_LIMIT = 16 * MIB  # the run tool's limits on what comes back
RETURN_FILES, RETURN_TOTAL = 8, 64 * MIB
DEFAULT_PRESET = "medium"
HEADER_ROOM = 256 * 1024  # a safetensors header per file (names, shapes, offsets as JSON)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------ pack


def pack(data_dirs: list[Path], out: Path, *, max_mib: float = 50.0) -> dict[str, Any]:
    """Write the pieces of data_dirs and the vocabulary into out (made here, with the full environment).

    Raises:
        ValueError: shards from another vocabulary, ids that do not fit uint16, or a pack over max_mib.
    """
    from typemoe.training.learn.data import load_pieces
    from typemoe.vocab import TypedVocab

    vocab = TypedVocab.default()
    pieces = load_pieces(data_dirs, vocab)
    if vocab.size > 2**16:
        raise ValueError(f"vocabulary of {vocab.size} ids does not fit uint16")
    out.mkdir(parents=True, exist_ok=True)
    vocab.save(out / "vocab")
    lengths = np.array([len(t) for t in pieces.tokens], dtype=np.int64)  # (P,)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)  # (P+1,)
    tokens = np.concatenate(pieces.tokens).astype(np.uint16) if len(pieces) else np.zeros(0, np.uint16)
    split = np.array([SPLITS.index(s) for s in pieces.split], dtype=np.int8)  # (P,)
    labels = {f"label_{t}": pieces.label(t).astype(np.int16) for t in analysis.LABELS}
    np.savez_compressed(out / "pieces.npz", tokens=tokens, offsets=offsets, split=split, **labels)
    (out / "pieces.json").write_text(json.dumps({"ids": pieces.ids, "label_names": pieces.label_names}))
    files = [
        out / "pieces.npz",
        out / "pieces.json",
        out / "vocab" / "tokenizer.json",
        out / "vocab" / "types.json",
    ]
    doc = {
        "format": PACK_FORMAT,
        "version": VERSION,
        "vocab_hash": vocab.hash,
        "data": [str(d) for d in data_dirs],
        "n_pieces": len(pieces),
        "n_tokens": int(offsets[-1]),
        "files": {str(f.relative_to(out)): {"bytes": f.stat().st_size, "sha256": _sha256(f)} for f in files},
    }
    total = sum(v["bytes"] for v in doc["files"].values())
    if total > max_mib * MIB:
        raise ValueError(
            f"pack is {total / MIB:.1f} MiB, over --max-mib {max_mib}; pack fewer --data directories"
        )
    (out / "pack.json").write_text(json.dumps(doc, indent=2) + "\n")
    return {**doc, "mib": total / MIB}


def load_pack(pack_dir: Path):
    """(PackedVocab, Pieces) of a pack; checks every file's sha256 first."""
    from typemoe.training.learn.data import Pieces
    from typemoe.training.learn.gpu_vocab import PackedVocab

    doc = json.loads((pack_dir / "pack.json").read_text())
    if doc.get("format") != PACK_FORMAT or doc.get("version") != VERSION:
        raise ValueError(f"{pack_dir}/pack.json: not a {PACK_FORMAT} v{VERSION}")
    for name, f in doc["files"].items():
        if _sha256(pack_dir / name) != f["sha256"]:
            raise ValueError(f"{pack_dir / name}: sha256 differs from pack.json (copied partly?)")
    vocab = PackedVocab(pack_dir / "vocab")
    if vocab.hash != doc["vocab_hash"]:
        raise ValueError(f"{pack_dir}/vocab hash {vocab.hash[:12]} != pack.json's {doc['vocab_hash'][:12]}")
    z = np.load(pack_dir / "pieces.npz")
    meta = json.loads((pack_dir / "pieces.json").read_text())
    off, tok = z["offsets"], z["tokens"].astype(np.int64)
    pieces = Pieces(
        ids=meta["ids"],
        tokens=[tok[off[i] : off[i + 1]] for i in range(len(off) - 1)],
        labels={t: z[f"label_{t}"].astype(np.int64) for t in analysis.LABELS},
        label_names={k: tuple(v) for k, v in meta["label_names"].items()},
        split=np.asarray([SPLITS[s] for s in z["split"]], dtype=object),
        vocab_hash=vocab.hash,
    )
    return vocab, pieces


# ------------------------------------------------------------------------------------------------- run


def _flat_state(ckpt_dir: Path) -> tuple[list[tuple[str, dict]], dict[str, Any]]:
    """The checkpoint's tensors as (group, {name: tensor}) in priority order, and the optimizer's groups."""
    import torch
    from safetensors.torch import load_file

    groups = [("model", load_file(ckpt_dir / "model.safetensors"))]
    if (ckpt_dir / "ema.safetensors").is_file():
        groups.append(("ema", load_file(ckpt_dir / "ema.safetensors")))
    opt = torch.load(ckpt_dir / "optimizer.pt", map_location="cpu", weights_only=True)
    moments = {f"{i}/{k}": v for i, st in opt["state"].items() for k, v in st.items() if torch.is_tensor(v)}
    groups.append(("optimizer", moments))
    return groups, {"param_groups": opt["param_groups"]}


def _pieces_of(name: str, t, limit: int) -> list[tuple[str, Any]]:
    """A tensor as one or more parts of <= limit bytes, cut along dim 0: [(part name, tensor)]."""
    if t.numel() * t.element_size() <= limit or t.dim() == 0:
        return [(name, t)]
    rows = max(1, limit // max(t[0].numel() * t.element_size(), 1))
    return [(f"{name}@{j}", t[j * rows : (j + 1) * rows]) for j in range((t.size(0) + rows - 1) // rows)]


def write_bundle(
    ckpt_dir: Path,
    out: Path,
    *,
    log_text: str = "",
    metrics: list | None = None,
    file_limit: int = FILE_LIMIT,
    max_files: int = RETURN_FILES,
    total: int = RETURN_TOTAL,
) -> dict:
    """The checkpoint in ckpt_dir as bf16 safetensors files of <= file_limit bytes + META (+ LOG) in out.

    Groups go in whole or not at all (model, then ema, then optimizer) while the files stay within
    max_files and total; the model must fit.
    """
    import torch
    from safetensors.torch import save_file

    groups, opt_meta = _flat_state(ckpt_dir)
    limit = file_limit - HEADER_ROOM
    budget_files = max_files - 2  # META and LOG
    budget_bytes = total - 2 * MIB  # META and LOG are small; keep room for them
    files: list[dict[str, Any]] = [{}]
    used, kept, dropped, parts = 0, [], [], {}
    for gname, tensors in groups:
        trial, trial_parts = [dict(f) for f in files], {}
        size = used
        for name, t in tensors.items():
            t = (
                t.to(torch.bfloat16) if t.is_floating_point() else t
            )  # weights and moments; the type table stays int
            cut = _pieces_of(f"{gname}/{name}", t.contiguous(), limit)
            if len(cut) > 1:
                trial_parts[f"{gname}/{name}"] = [p for p, _ in cut]
            for pname, p in cut:
                nbytes = p.numel() * p.element_size()
                if sum(x.numel() * x.element_size() for x in trial[-1].values()) + nbytes > limit:
                    trial.append({})
                trial[-1][pname] = p.contiguous()
                size += nbytes
        if len(trial) <= budget_files and size <= budget_bytes:
            files, used = trial, size
            parts.update(trial_parts)
            kept.append(gname)
        elif gname == "model":
            raise ValueError(
                f"the model's weights need {size / MIB:.1f} MiB in {len(trial)} files; the run tool "
                f"returns {budget_files} files, {budget_bytes / MIB:.0f} MiB: pick a smaller preset"
            )
        else:
            dropped.append(gname)
    out.mkdir(parents=True, exist_ok=True)
    index = {}
    for k, f in enumerate(files):
        name = f"weights-{k + 1:02d}-of-{len(files):02d}.safetensors"
        save_file(f, str(out / name))
        index[name] = {
            "tensors": sorted(f),
            "sha256": _sha256(out / name),
            "bytes": (out / name).stat().st_size,
        }
    read = {
        n: (ckpt_dir / n).read_text()
        for n in ("config.json", "train_state.json", "tokenizer.json", "types.json")
    }
    doc = {
        "format": BUNDLE_FORMAT,
        "version": VERSION,
        "kept": kept,
        "dropped": dropped,
        "parts": parts,
        "files": index,
        "optimizer": opt_meta,
        "text": read,
        "metrics": metrics or [],
    }
    (out / META).write_text(json.dumps(doc) + "\n")
    if log_text:
        (out / LOG).write_text(log_text)
    return doc


def _data_workers(asked: int | None, device_type: str) -> int:
    if asked is not None:
        return asked
    return max(1, min(8, (os.cpu_count() or 2) - 2)) if device_type == "cuda" else 0


def run(args: argparse.Namespace, train_flags: list[str]) -> int:
    """Train on the pack until the budget, then write the bundle into args.out.

    train_flags are `typemoe train`'s own (--preset, --max-steps, --batch-size, ...), read by its parser and
    turned into a TrainConfig by training/learn/pretrain.py, so `typemoe train --resume` with the same flags
    continues the run. Without --max-steps the budget decides the length.
    """
    t0 = time.time()
    from typemoe.training.learn import (
        gpu_vocab,  # first: stand-ins for miditok/symusic where they are missing
    )

    stand_ins = gpu_vocab.STUBBED
    from dataclasses import replace

    import torch

    from typemoe.training.learn import ckpt, cli, dist, loop, pretrain
    from typemoe.training.learn.data import keep_label_fraction

    lines: list[str] = []

    def echo(s: str) -> None:
        print(s, flush=True)
        lines.append(s)

    if "--preset" not in train_flags:
        train_flags = ["--preset", DEFAULT_PRESET, *train_flags]
    work = Path(args.work)
    targs = cli.train_parser("gpu_recipe run").parse_args(
        ["--data", str(args.pack), "--out", str(work), *train_flags]
    )
    vocab, pieces = load_pack(args.pack)
    cfg = pretrain.build_config(targs, vocab)
    if targs.max_steps is None:
        cfg = replace(cfg, max_steps=1_000_000)  # the budget fits it after the first steps
    d = dist.setup(cfg.device, cfg.threads)
    cfg.check_world(d.world)
    train, val = pieces.with_split("train"), pieces.with_split("val")
    train = keep_label_fraction(train, cfg.labelled_fraction)
    gpu = torch.cuda.get_device_name(d.device) if d.device.type == "cuda" else "cpu (fp32, dry run)"
    echo(
        f"gpu_recipe: {len(train)} train / {len(val)} val pieces | preset {targs.preset} d{cfg.model.d_model} "
        f"L{cfg.model.n_layer} | {gpu} | torch {torch.__version__} | stand-ins: {stand_ins or 'none'}"
    )
    if work.exists():
        shutil.rmtree(work)
    deadline = t0 + args.minutes * 60 - args.reserve_s
    if deadline <= time.time():
        raise ValueError(
            f"--minutes {args.minutes} leaves no time after loading and --reserve-s {args.reserve_s}"
        )
    records = loop.train(
        cfg,
        vocab=vocab,
        train_pieces=train,
        val_pieces=val,
        out_dir=work,
        d=d,
        echo=echo,
        meta={
            "data": [f"gpu_pack:{p}" for p in json.loads((args.pack / "pack.json").read_text())["data"]],
            "labelled_fraction": cfg.labelled_fraction,
            "gpu": {"device": gpu, "train_flags": train_flags},
        },
        deadline=deadline,
        data_workers=_data_workers(args.data_workers, d.device.type),
    )
    ck = ckpt.resolve(work)
    echo(
        f"trained {records[-1]['step'] if records else 0} steps in {time.time() - t0:.0f} s; writing the bundle"
    )
    doc = write_bundle(ck, Path(args.out), log_text="\n".join(lines) + "\n", metrics=records)
    echo(f"bundle: {', '.join(doc['files'])} + {META} | kept {doc['kept']} dropped {doc['dropped']}")
    (Path(args.out) / LOG).write_text("\n".join(lines) + "\n")
    return 0


# ---------------------------------------------------------------------------------------------- unpack


def _bundle_files(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        out += sorted(q for q in p.iterdir() if q.is_file()) if p.is_dir() else [p]
    return out


def unpack(paths: list[Path], out: Path, *, force: bool = False) -> Path:
    """Rebuild a checkpoint directory (out/latest, as `typemoe train` writes it) from a bundle's files.

    Raises:
        ValueError: no META among the files, a weights file missing or changed, or out already a run
            (without force).
    """
    import torch
    from safetensors.torch import load_file, save_file

    from typemoe import checkpoint
    from typemoe.training.learn import ckpt

    files = {p.name: p for p in _bundle_files(paths)}
    if META not in files:
        raise ValueError(f"no {META} among {sorted(files)}")
    doc = json.loads(files[META].read_text())
    if doc.get("format") != BUNDLE_FORMAT or doc.get("version") != VERSION:
        raise ValueError(f"{files[META]}: not a {BUNDLE_FORMAT} v{VERSION}")
    flat: dict[str, torch.Tensor] = {}
    for name, f in doc["files"].items():
        if name not in files:
            raise ValueError(f"{name} is missing (the bundle has {len(doc['files'])} weight files)")
        if _sha256(files[name]) != f["sha256"]:
            raise ValueError(f"{files[name]}: sha256 differs from {META}")
        flat.update(load_file(str(files[name])))
    for full, part_names in doc["parts"].items():
        flat[full] = torch.cat([flat.pop(p) for p in part_names])  # parts were cut along dim 0
    group = {
        g: {k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith(g + "/")} for g in doc["kept"]
    }

    def fp32(d: dict) -> dict:
        return {k: v.float() if v.is_floating_point() else v for k, v in d.items()}

    model = fp32(group["model"])
    ema = fp32(group.get("ema", model))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in group.get("optimizer", {}).items():
        i, name = k.split("/", 1)
        state.setdefault(int(i), {})[name] = v.float()
    optimizer = {"state": state, "param_groups": doc["optimizer"]["param_groups"]}
    out = Path(out)
    if ckpt.has_checkpoint(out) and not force:
        raise ValueError(f"{out} already holds a checkpoint; pass --force to replace it")
    tmp, latest = out / "latest.tmp", out / "latest"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    text = doc["text"]
    config = json.loads(text["config.json"])
    config["meta"].setdefault("gpu", {}).update(
        transfer="bf16", kept=doc["kept"], dropped=doc["dropped"],
        note="ema := model weights where dropped; AdamW moments empty where dropped (Adam restarts its averages)",
    )  # fmt: skip
    save_file(model, str(tmp / checkpoint.WEIGHTS), metadata={"format": checkpoint.FORMAT})
    save_file(ema, str(tmp / ckpt.EMA))
    torch.save(optimizer, tmp / ckpt.OPTIMIZER)
    for name in ("train_state.json", "tokenizer.json", "types.json"):
        (tmp / name).write_text(text[name])
    (tmp / checkpoint.CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if latest.exists():
        shutil.rmtree(latest)
    os.replace(tmp, latest)
    if doc["metrics"]:
        (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in doc["metrics"]))
    checkpoint.load(latest)  # raises CheckpointError if the weights do not fit the config
    return latest


def resume_command(latest: Path, meta: dict[str, Any]) -> str:
    """The `typemoe train --resume` line that continues an unpacked run (the GPU run's flags, its length)."""
    step_cfg = json.loads((latest / "train_state.json").read_text())["config"]
    flags = list(meta.get("gpu", {}).get("train_flags", []))
    if "--max-steps" in flags:
        del flags[flags.index("--max-steps") : flags.index("--max-steps") + 2]
    data = " ".join(f"--data {d.removeprefix('gpu_pack:')}" for d in meta.get("data", []))
    return (
        f"typemoe train {' '.join(flags)} {data} --out {latest.parent} --resume "
        f"--max-steps {step_cfg['max_steps']}  # raise --max-steps to train on; the LR schedule follows"
    )


# ------------------------------------------------------------------------------------------------- cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m typemoe.training.learn.gpu_recipe",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack", help="shards + vocabulary -> a compact input bundle (here)")
    a.add_argument("--data", type=Path, action="append", required=True, metavar="DIR")
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--max-mib", type=float, default=50.0, help="refuse a pack larger than this (default 50)")
    r = sub.add_parser(
        "run",
        help="train on the pack until the budget; write the bundle to --out (there)",
        description="Any other flag is `typemoe train`'s (--preset, default medium; --max-steps, --seed, ...).",
    )
    r.add_argument("--pack", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True, help="$OUT: what comes back")
    r.add_argument("--minutes", type=float, default=8.0, help="wall-clock budget of the whole command")
    r.add_argument(
        "--reserve-s", type=float, default=45.0, help="seconds kept for the final eval and the bundle"
    )
    r.add_argument(
        "--work", type=Path, default=Path("/tmp/typemoe_gpu_run"), help="run directory (not returned)"
    )
    r.add_argument(
        "--data-workers",
        type=int,
        default=None,
        help="processes building windows ahead (default: on CUDA cores - 2, at most 8; on CPU none)",
    )
    u = sub.add_parser("unpack", help="bundle files -> a checkpoint directory (here)")
    u.add_argument("files", type=Path, nargs="+", help="the returned files, or their folder")
    u.add_argument("--out", type=Path, required=True, help="run directory; the checkpoint goes to OUT/latest")
    u.add_argument("--force", action="store_true", help="replace a checkpoint already in --out")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.cmd != "run":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        if args.cmd == "pack":
            doc = pack(args.data, args.out, max_mib=args.max_mib)
            print(
                f"pack: {doc['n_pieces']} pieces, {doc['n_tokens']:,} tokens, {doc['mib']:.1f} MiB in {args.out}"
            )
        elif args.cmd == "run":
            return run(args, rest)
        else:
            latest = unpack(args.files, args.out, force=args.force)
            meta = json.loads((latest / "config.json").read_text())["meta"]
            print(
                f"checkpoint: {latest} (step {meta.get('step')}; dropped from the transfer: "
                f"{meta['gpu']['dropped'] or 'nothing'})"
            )
            print(f"export: typemoe export --checkpoint {latest.parent} --out models/gpu")
            print("resume: " + resume_command(latest, meta))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
