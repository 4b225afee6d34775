"""Model checkpoints: a directory of model.safetensors + config.json (+ the tokenizer). No pickle.

    save(model, "ckpt/", vocab=vocab, extra_meta={"step": 1200})
    model = load("ckpt/")

config.json holds the ModelConfig, the type table (so torch-free readers such as export.runtime see the
routing) and free-form metadata. Every file is written to a temporary name and moved into place with
os.replace, so a crash leaves the old file or the new one, never half of one. config.json is written last:
its presence marks a complete checkpoint. Optimizer state and resumption belong to training/.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from typemoe.config import ModelConfig
from typemoe.model import TypeMoE

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FORMAT = "typemoe-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint directory that is missing, incomplete, corrupt or from another format version."""


def _replace_atomically(path: Path, write) -> None:
    """Call write(tmp_path), fsync, then os.replace(tmp_path, path); the tmp file never outlives a failure."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save(
    model: TypeMoE,
    directory: str | os.PathLike,
    *,
    vocab: Any = None,
    extra_meta: dict[str, Any] | None = None,
) -> Path:
    """Write the model (and optionally its vocabulary) into directory, creating it if needed.

    Args:
        model: the model; its weights are saved as they are (dtype and all), tied weights once.
        directory: target folder.
        vocab: a typemoe.vocab.TypedVocab; saved with vocab.save(directory), its hash goes into the meta.
        extra_meta: JSON-serialisable facts to keep beside the config (step, label sets, data, ...).
    Returns:
        The directory as a Path.
    Raises:
        ValueError: if the vocab's type table differs from the model's, or extra_meta is not JSON.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    table = model.router.type_of_id.cpu().numpy()
    meta = dict(extra_meta or {})
    if vocab is not None:
        if not np.array_equal(np.asarray(vocab.type_of), table):
            raise ValueError(
                "vocab.type_of differs from the model's type table; was it built with another vocab?"
            )
        meta.setdefault("vocab_hash", vocab.hash)
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model.cfg.to_dict(),
        "type_of_id": table.tolist(),
        "meta": meta,
    }
    try:
        text = json.dumps(doc, indent=2, sort_keys=True)
    except TypeError as err:
        raise ValueError(f"extra_meta must be JSON-serialisable: {err}") from err

    def write_json(tmp: str) -> None:
        Path(tmp).write_text(text + "\n", encoding="utf-8")

    _replace_atomically(out / WEIGHTS, lambda tmp: save_model(model, tmp, metadata={"format": FORMAT}))
    if vocab is not None:
        vocab.save(out)
    _replace_atomically(out / CONFIG, write_json)
    log.info("saved %s checkpoint to %s", model.cfg.ffn, out)
    return out


def read_config(directory: str | os.PathLike) -> tuple[ModelConfig, np.ndarray, dict[str, Any]]:
    """The config, type table (V,) and meta of a checkpoint, without touching the weights.

    Raises:
        CheckpointError: missing or unreadable config.json, or another format version.
    """
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{path} not found: not a TypeMoE checkpoint directory (or an incomplete one)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("format") != FORMAT or doc.get("format_version") != FORMAT_VERSION:
            raise CheckpointError(
                f"{path}: format {doc.get('format')!r} v{doc.get('format_version')!r}, "
                f"this code reads {FORMAT!r} v{FORMAT_VERSION}"
            )
        cfg = ModelConfig.from_dict(doc["model"])
        table = np.asarray(doc["type_of_id"], dtype=np.int64)
        meta = dict(doc.get("meta", {}))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"{path} is corrupt: {err}") from err
    return cfg, table, meta


def load(directory: str | os.PathLike, *, device: str | torch.device = "cpu") -> TypeMoE:
    """Rebuild the model of a checkpoint directory, in eval mode.

    Raises:
        CheckpointError: missing or corrupt files, or weights that do not fit the config.
    """
    cfg, table, _ = read_config(directory)
    weights = Path(directory) / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{weights} not found")
    try:
        model = TypeMoE(cfg, table)
    except ValueError as err:
        raise CheckpointError(f"{Path(directory) / CONFIG}: {err}") from err
    try:
        load_model(model, weights, strict=True, device=str(device))
    except (SafetensorError, RuntimeError, OSError) as err:
        raise CheckpointError(f"{weights} does not fit {CONFIG}: {err}") from err
    if not torch.equal(model.router.type_of_id.cpu(), torch.as_tensor(table)):
        raise CheckpointError(f"{weights}: type table differs from the one in {CONFIG}")
    return model.to(device).eval()
