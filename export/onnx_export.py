"""torch -> ONNX: turn a TypeMoE checkpoint into a self-contained, checked model directory.

    python -m typemoe.export CHECKPOINT_DIR OUT_DIR          # or: typemoe export --checkpoint CKPT --out OUT

The directory (contract in export/DESIGN.md; export.runtime reads it without torch):
    model.onnx        fp32 step graph (prefill + decode on a KV cache), for CPU
    model_fp16.onnx   the same graph with an fp16 trunk and cache, for CUDA (skip with fp16=False)
    model_int8.onnx   fp32 graph with block-wise int8 experts (QMoE), opt-in on CPU (skip with int8=False;
                      dropped, with a warning, when its predictions drift past validate.int8_quality's bounds)
    tokenizer.json, types.json   the vocabulary (typemoe.vocab)
    manifest.json     format version, sha256 and size of every file, the parity report

Every export runs validate.check_parity (PyTorch vs ONNX Runtime) before the directory appears: the files
are written to a temporary sibling and renamed into place only when parity holds.

Exporter choices, all passed explicitly in export_graph: the dynamo exporter (torch.export; the
TorchScript one is deprecated and cannot emit the com.microsoft ops through torch.onnx.ops.symbolic),
opset 23 (RMSNormalization becomes one node instead of six, which ONNX Runtime's fusions miss), weights
inside the .onnx (no external data: tens of MB, far below the 2 GB protobuf limit), the exporter's
optimizer on (constant folding, dead code), named inputs/outputs and dynamic batch, T and cache length.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from typemoe import analysis
from typemoe.export import graphs
from typemoe.export.runtime import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_FILE,
    META_PREFIX,
    MODEL_FILE,
    MODEL_FP16_FILE,
    MODEL_INT8_FILE,
    sha256_file,
)
from typemoe.model import TypeMoE

log = logging.getLogger(__name__)

OPSET = 23
MS_OPSET = 1  # com.microsoft contrib ops: GroupQueryAttention, MoE
MAX_BATCH = 256


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint directory that `path` names.

    Accepted, in this order: a checkpoint directory itself (it holds config.json); a training output
    directory with a `latest` entry (a symlink or directory, or a text file naming a sub-directory);
    a training output directory with `step_*` sub-directories, of which the highest step that holds a
    complete checkpoint (config.json present) is taken.

    Raises:
        FileNotFoundError: nothing there looks like a checkpoint.
    """
    root = Path(path)
    if (root / "config.json").is_file():
        return root
    latest = root / "latest"
    if latest.is_dir() and (latest / "config.json").is_file():
        log.info("checkpoint: %s -> %s", root, latest.resolve())
        return latest
    if latest.is_file():
        target = root / latest.read_text(encoding="utf-8").strip()
        if (target / "config.json").is_file():
            log.info("checkpoint: %s/latest names %s", root, target)
            return target
    steps = []
    for d in root.glob("step_*") if root.is_dir() else []:
        m = re.fullmatch(r"step_(\d+)", d.name)
        if m and (d / "config.json").is_file():
            steps.append((int(m.group(1)), d))
    if steps:
        chosen = max(steps)[1]
        log.info("checkpoint: newest of %d step_* folders in %s: %s", len(steps), root, chosen.name)
        return chosen
    raise FileNotFoundError(
        f"{root}: no checkpoint (config.json), no `latest` pointer and no complete step_* sub-directory"
    )


def label_sets(cfg: Any, meta: dict[str, Any]) -> dict[str, list[str] | None]:
    """Names of the key, meter and classification classes, in head order.

    Taken from the checkpoint meta when it has them (keys key_names / meter_names / class_names), else
    typemoe.analysis.KEYS / METERS when the head sizes match; otherwise placeholder names, logged.
    """

    def pick(meta_key: str, n: int, default: tuple[str, ...] | None, stem: str) -> list[str]:
        names = meta.get(meta_key) or (meta.get("labels") or {}).get(stem + "s")
        if names is not None and len(names) == n:
            return [str(x) for x in names]
        if default is not None and len(default) == n:
            return list(default)
        log.warning(
            "no names for the %d %s classes in the checkpoint meta (%r); using %s_0..%s_%d",
            n,
            stem,
            meta_key,
            stem,
            stem,
            n - 1,
        )
        return [f"{stem}_{i}" for i in range(n)]

    return {
        "keys": pick("key_names", cfg.n_keys, analysis.KEYS, "key"),
        "meters": pick("meter_names", cfg.n_meters, analysis.METERS, "meter"),
        "classes": pick("class_names", cfg.n_classes, None, "class") if cfg.n_classes else None,
    }


def library_versions() -> dict[str, str]:
    """Installed versions of what made and checked the graphs (importlib.metadata: no imports needed)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in ("typemoe", "torch", "onnx", "onnxscript", "onnx-ir", "onnxruntime", "miditok", "numpy"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


def graph_metadata(
    model: TypeMoE, vocab: Any, *, labels: dict, precision: str, source: dict[str, Any]
) -> dict[str, str]:
    """metadata_props of a step graph: everything a runtime needs to use it without the checkpoint."""
    cfg = model.cfg
    contract = {
        "inputs": [graphs.INPUT_IDS, graphs.PAST_LEN, *graphs.past_names(cfg.n_layer)],
        "outputs": [*graphs.head_names(cfg.n_classes), *graphs.present_names(cfg.n_layer)],
        "cache_shape": ["batch", cfg.n_head, "cache", cfg.d_head],
        "cache_dtype": precision,
        "cache_aliasing": "present_* may be bound to the past_* buffer; rows past_len..past_len+T-1 are written",
        "cls_logits": "per position; the piece-level logits are their mean",
        "opset": OPSET,
    }
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "config": json.dumps(cfg.to_dict(), sort_keys=True),
        "vocab_hash": vocab.hash,
        "type_names": json.dumps(list(vocab.type_names)),
        "type_of_id": json.dumps(model.router.type_of_id.tolist()),
        "labels": json.dumps(labels),
        "versions": json.dumps(library_versions(), sort_keys=True),
        "graph": json.dumps(contract),
        "precision": precision,
        "source": json.dumps(source, sort_keys=True, default=str),
    }
    return {META_PREFIX + k: v for k, v in meta.items()}


def export_graph(
    model: TypeMoE, path: Path, *, dtype: torch.dtype, metadata: dict[str, str], int8_experts: bool = False
) -> None:
    """Export StepGraph(model) to `path` with every exporter option spelled out."""
    cfg = model.cfg
    graph = graphs.StepGraph(model, dtype=dtype, int8_experts=int8_experts).eval()
    n_layer = cfg.n_layer
    # example sizes differ from each other and from every model dim, so torch.export infers no equalities
    example_ids = torch.zeros((2, 5), dtype=torch.long)
    example = (example_ids, torch.tensor(0, dtype=torch.long), graph.empty_cache(batch=2))
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    seq = torch.export.Dim("seq", min=1, max=cfg.context_len)
    cache = torch.export.Dim("cache", min=1, max=cfg.context_len)
    dynamic_shapes = {
        "input_ids": {0: batch, 1: seq},
        "past_len": None,
        "past": [{0: batch, 2: cache} for _ in range(2 * n_layer)],
    }
    with tempfile.TemporaryDirectory() as artifacts, torch.no_grad(), warnings.catch_warnings():
        # known noise: the shared batch/cache Dims are reported as "will not be used" (they are, once),
        # and torch's pytree deprecation inside the exporter
        warnings.filterwarnings("ignore", message=r".*axis name.*will not be used.*")
        warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
        program = torch.onnx.export(
            graph,
            example,
            None,  # f: save below, after the metadata is attached
            kwargs=None,
            verbose=False,
            input_names=[graphs.INPUT_IDS, graphs.PAST_LEN, *graphs.past_names(n_layer)],
            output_names=[*graphs.head_names(cfg.n_classes), *graphs.present_names(n_layer)],
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            dynamic_shapes=dynamic_shapes,
            dynamic_axes=None,  # TorchScript-exporter option; dynamic_shapes above is the dynamo form
            custom_translation_table=None,  # the contrib ops come from torch.onnx.ops.symbolic in graphs.py
            report=False,
            optimize=True,
            verify=False,  # validate.check_parity is the (stricter) check
            profile=False,
            dump_exported_program=False,
            artifacts_dir=artifacts,
            export_params=True,
            keep_initializers_as_inputs=False,
        )
    assert program is not None, "the dynamo exporter returns an ONNXProgram"
    model_ir = program.model
    opsets = dict(model_ir.opset_imports)
    assert opsets.get(graphs.MS_DOMAIN) == MS_OPSET, f"expected com.microsoft opset {MS_OPSET}, got {opsets}"
    model_ir.producer_name = "typemoe.export"
    model_ir.doc_string = (
        "TypeMoE step graph: prefill and decode on a preallocated KV cache (export/DESIGN.md)"
    )
    model_ir.metadata_props.update(metadata)
    program.save(path, include_initializers=True, keep_initializers_as_inputs=False, external_data=False)
    log.info("wrote %s (%.1f MB)", path, path.stat().st_size / 1e6)


def write_manifest(model_dir: Path, extra: dict[str, Any]) -> dict[str, Any]:
    """manifest.json: format, sha256 and size of every other file in the directory, plus `extra`."""
    files = {}
    for f in sorted(model_dir.iterdir()):
        if f.is_file() and f.name != MANIFEST_FILE:
            files[f.name] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "files": files, **extra}
    tmp = model_dir / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(model_dir / MANIFEST_FILE)
    return manifest


def export_model(
    model: TypeMoE,
    vocab: Any,
    out_dir: str | os.PathLike,
    *,
    labels: dict | None = None,
    source: dict[str, Any] | None = None,
    fp16: bool = True,
    int8: bool = True,
    overwrite: bool = False,
    seed: int = 0,
) -> Path:
    """Write and check a model directory for an in-memory model.

    Args:
        model: the model (any device; exported from a CPU fp32 copy).
        vocab: its typemoe.vocab.TypedVocab (the type table must match the model's).
        out_dir: target; must not exist, be empty, or (with overwrite) be an earlier model directory.
        labels: class names {"keys", "meters", "classes"}; default from label_sets(cfg, {}).
        source: free-form facts about the checkpoint, kept in the metadata (step, path, ...).
        fp16: also write model_fp16.onnx for CUDA.
        int8: also write model_int8.onnx (int8 experts), kept only if it passes validate.int8_quality.
        overwrite: replace an existing model directory.
        seed: seeds the parity prompts.
    Returns:
        out_dir as a Path.
    Raises:
        ExportMismatchError: ONNX Runtime disagrees with PyTorch; lists every mismatch. The unchecked
            files stay in a temporary directory named in the message.
        FileExistsError: out_dir holds something else.
    """
    from typemoe.export import validate  # validate imports the runtime and torch; keep module import light

    out = Path(out_dir)
    _check_target(out, overwrite)
    model = _cpu_fp32_copy(model)
    if not torch.equal(model.router.type_of_id, torch.as_tensor(vocab.type_of)):
        raise ValueError(
            "vocab.type_of differs from the model's type table; export with the model's own vocab"
        )
    labels = labels or label_sets(model.cfg, {})
    source = source or {}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    variants = {MODEL_FILE: (torch.float32, False, "float32")}
    if fp16:
        variants[MODEL_FP16_FILE] = (torch.float16, False, "float16")
    if int8:
        variants[MODEL_INT8_FILE] = (torch.float32, True, "int8-experts")
    for name, (dtype, int8_experts, precision) in variants.items():
        meta = graph_metadata(model, vocab, labels=labels, precision=precision, source=source)
        export_graph(model, tmp / name, dtype=dtype, metadata=meta, int8_experts=int8_experts)
    vocab.save(tmp)
    extra = {"config": model.cfg.to_dict(), "labels": labels, "source": source}
    write_manifest(tmp, extra)
    report = validate.check_parity(model, tmp, seed=seed)  # raises ExportMismatchError, naming tmp
    extra["parity"] = report.to_json()
    if int8:
        cases = validate.default_cases(vocab, model.cfg.context_len, seed=seed)
        quality = extra["int8_quality"] = validate.int8_quality(model, tmp / MODEL_INT8_FILE, cases)
        if not quality["ok"]:
            log.warning(
                "int8 experts change the predictions too much (%s); dropping %s", quality, MODEL_INT8_FILE
            )
            (tmp / MODEL_INT8_FILE).unlink()
    write_manifest(tmp, extra)
    if out.exists():
        shutil.rmtree(out) if any(out.iterdir()) else out.rmdir()
    tmp.replace(out)
    log.info("exported %s: parity ok (%s)", out, report.summary())
    return out


def export_checkpoint(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    fp16: bool = True,
    int8: bool = True,
    overwrite: bool = False,
) -> Path:
    """Export a checkpoint directory (see resolve_checkpoint) into a model directory.

    The vocabulary comes from the checkpoint (tokenizer.json + types.json), else the project default
    (typemoe.vocab.TypedVocab.default()) when its type table matches the checkpoint's.
    """
    from typemoe import checkpoint as ckpt
    from typemoe.vocab import TypedVocab, VocabError

    src = resolve_checkpoint(checkpoint)
    cfg, table, meta = ckpt.read_config(src)
    try:
        vocab = TypedVocab.load(src)
    except VocabError:
        vocab = TypedVocab.default()
        log.info("%s holds no vocabulary; using the project default (hash %s)", src, vocab.hash[:12])
    if meta.get("vocab_hash") not in (None, vocab.hash):
        raise ValueError(
            f"{src}: checkpoint was trained with vocabulary {meta['vocab_hash'][:12]}, "
            f"found {vocab.hash[:12]}"
        )
    model = ckpt.load(src)
    dropped = {"vocab_hash", "key_names", "meter_names", "class_names"}  # stored as typemoe.labels instead
    source = {"checkpoint": str(src.resolve()), **{k: v for k, v in meta.items() if k not in dropped}}
    return export_model(
        model,
        vocab,
        out_dir,
        labels=label_sets(cfg, meta),
        source=source,
        fp16=fp16,
        int8=int8,
        overwrite=overwrite,
    )


def _check_target(out: Path, overwrite: bool) -> None:
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if overwrite and (out / MANIFEST_FILE).is_file():
        return
    hint = (
        "pass --force to replace it"
        if (out / MANIFEST_FILE).is_file()
        else "choose an empty or new directory"
    )
    raise FileExistsError(f"{out} exists and is not empty; {hint}")


def _cpu_fp32_copy(model: TypeMoE) -> TypeMoE:
    import copy

    return copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()
