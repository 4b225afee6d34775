"""Training checkpoints: the run directory IS the checkpoint.

Layout of a run directory (`--out DIR`):

    DIR/metrics.jsonl        one JSON object per logged step (training/learn/loop.py lists the keys)
    DIR/tb/                  TensorBoard scalars
    DIR/latest/              the newest complete checkpoint:
        config.json          ModelConfig + type table + meta (typemoe/checkpoint.py), meta holds
                             step, task, objective, vocab_hash, key_names, meter_names and, for a
                             classification head, class_names (the fine-tuning label set)
        model.safetensors    the model weights
        tokenizer.json, types.json   the vocabulary (TypedVocab.load reads them)
        ema.safetensors      the EMA teacher (SS-MTP runs only)
        optimizer.pt         AdamW state (torch.save of tensors/primitives; read with weights_only=True)
        train_state.json     step, sampler state and the full TrainConfig, for --resume

So `typemoe.checkpoint.load(DIR / "latest")` gives the trained model, and every command that takes a
checkpoint (finetune --from, eval --model, export --checkpoint) accepts either DIR or DIR/latest:
`resolve(path)` is the rule (path itself if it holds config.json, else path/latest).

Atomicity: a checkpoint is written whole into DIR/latest.tmp, then swapped in with two renames
(latest -> latest.old, latest.tmp -> latest) and latest.old is removed. A crash at any moment leaves a
complete checkpoint under latest or, in the instant between the renames, under latest.old, which
resolve() moves back. Resumption never sees half a checkpoint. The RNG needs no saving: every random
draw is seeded from (seed, step, rank) or (seed, sample index), so the step number is the RNG state.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from typemoe import checkpoint

LATEST = "latest"
EMA = "ema.safetensors"
OPTIMIZER = "optimizer.pt"
STATE = "train_state.json"


def resolve(path: str | os.PathLike) -> Path:
    """The checkpoint directory meant by `path`: itself, or its latest/ (a run directory).

    Raises:
        checkpoint.CheckpointError: neither holds a checkpoint.
    """
    p = Path(path)
    if (p / checkpoint.CONFIG).is_file():
        return p
    latest, old = p / LATEST, p / (LATEST + ".old")
    if not (latest / checkpoint.CONFIG).is_file() and (old / checkpoint.CONFIG).is_file():
        if latest.exists():
            shutil.rmtree(latest)
        os.replace(old, latest)  # a crash between the two renames of save(): finish the swap backwards
    if (latest / checkpoint.CONFIG).is_file():
        return latest
    raise checkpoint.CheckpointError(
        f"{p} is not a checkpoint: neither {p / checkpoint.CONFIG} nor {latest / checkpoint.CONFIG} exists"
    )


def has_checkpoint(run_dir: str | os.PathLike) -> bool:
    try:
        resolve(Path(run_dir))
        return True
    except checkpoint.CheckpointError:
        return False


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(
    run_dir: str | os.PathLike,
    *,
    model,
    vocab,
    meta: dict[str, Any],
    ema=None,
    optimizer=None,
    state: dict[str, Any] | None = None,
) -> Path:
    """Write a complete checkpoint to run_dir/latest atomically (see the module docstring)."""
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    tmp, latest, old = run / (LATEST + ".tmp"), run / LATEST, run / (LATEST + ".old")
    if tmp.exists():
        shutil.rmtree(tmp)
    checkpoint.save(model, tmp, vocab=vocab, extra_meta=meta)
    if ema is not None:
        save_model(ema, str(tmp / EMA))
    if optimizer is not None:
        torch.save(optimizer.state_dict(), tmp / OPTIMIZER)
    (tmp / STATE).write_text(json.dumps(state or {}, indent=2, sort_keys=True) + "\n")
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(tmp)
    if latest.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(latest, old)
    os.replace(tmp, latest)
    _fsync_dir(run)
    if old.exists():
        shutil.rmtree(old)
    return latest


def read_state(ckpt_dir: Path) -> dict[str, Any]:
    path = Path(ckpt_dir) / STATE
    if not path.is_file():
        raise checkpoint.CheckpointError(f"{path} not found: {ckpt_dir} holds a model but no training state")
    return json.loads(path.read_text())


def load_training(ckpt_dir: Path, *, model, ema=None, optimizer=None, device="cpu") -> dict[str, Any]:
    """Load weights, EMA and optimizer state in place; returns the training state dict."""
    ckpt_dir = Path(ckpt_dir)
    load_model(model, str(ckpt_dir / checkpoint.WEIGHTS), strict=True, device=str(device))
    if ema is not None:
        if not (ckpt_dir / EMA).is_file():
            raise checkpoint.CheckpointError(f"{ckpt_dir / EMA} not found; cannot resume the EMA teacher")
        load_model(ema, str(ckpt_dir / EMA), strict=True, device=str(device))
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(ckpt_dir / OPTIMIZER, map_location=device, weights_only=True))
    return read_state(ckpt_dir)
