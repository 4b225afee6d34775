"""An exported model directory's manifest: the format it declares and the sha256 of every file.

numpy-free and torch-free; export.onnx_export writes the manifest, export.runtime reads it through here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MODEL_FILE = "model.onnx"
MODEL_FP16_FILE = "model_fp16.onnx"
MODEL_INT8_FILE = "model_int8.onnx"
PRECISIONS = {"fp32": MODEL_FILE, "fp16": MODEL_FP16_FILE, "int8": MODEL_INT8_FILE}
MANIFEST_FILE = "manifest.json"
FORMAT = "typemoe-onnx"
FORMAT_VERSION = 1
META_PREFIX = "typemoe."  # every metadata_props key starts with it
EXPORT_COMMAND = "typemoe export --checkpoint CKPT --out DIR"


class ModelDirError(ValueError):
    """A model directory that is missing, incomplete, corrupt or from another format version."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(model_dir: Path, *, verify: bool = True) -> dict[str, Any]:
    """Load manifest.json and (by default) check every listed file's size and sha256.

    Raises:
        ModelDirError: naming the missing or corrupt file.
    """
    if not model_dir.is_dir():
        raise ModelDirError(f"{model_dir} is not a directory; pass an exported TypeMoE model directory")
    path = model_dir / MANIFEST_FILE
    if not path.is_file():
        raise ModelDirError(
            f"{path} is missing: {model_dir} is not an exported TypeMoE model directory (or an incomplete "
            "one); "
            f"`{EXPORT_COMMAND}` writes one"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise ModelDirError(f"{path} is corrupt: {err!r}") from err
    if not isinstance(files, dict) or not all(
        isinstance(v, dict) and {"bytes", "sha256"} <= set(v) for v in files.values()
    ):
        raise ModelDirError(f"{path} is corrupt: 'files' must map names to {{bytes, sha256}}")
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ModelDirError(
            f"{path}: format {manifest.get('format')!r} v{manifest.get('format_version')!r}, "
            f"this runtime reads {FORMAT!r} v{FORMAT_VERSION}"
        )
    for name in ("tokenizer.json", "types.json"):
        if name not in files:
            raise ModelDirError(f"{path} does not list {name}, which every model directory needs")
    if not any(graph in files for graph in PRECISIONS.values()):
        raise ModelDirError(
            f"{path} lists no ONNX graph; a model directory holds one of {sorted(PRECISIONS.values())}"
        )
    if verify:
        for name, info in files.items():
            f = model_dir / name
            if not f.is_file():
                raise ModelDirError(f"{f} is missing (listed in {MANIFEST_FILE})")
            if f.stat().st_size != info["bytes"] or sha256_file(f) != info["sha256"]:
                raise ModelDirError(
                    f"{f} is corrupt: its size or sha256 differs from {MANIFEST_FILE} "
                    "(re-copy or re-export the model directory)"
                )
    return manifest


def refresh_manifest(
    model_dir: Path, *, keep_graphs: Sequence[str] | None = None, note: str = ""
) -> dict[str, Any]:
    """Re-list every file of a model directory in its manifest (after adding meter_fusion.json, say),
    first deleting the ONNX graphs not in keep_graphs (a slim shipped directory). Everything else in the
    manifest is kept; `note` goes under "shipped". Markdown files (a model card) are documentation, edited
    by hand: they are not listed, so editing one never breaks the directory's check at load."""
    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir, verify=False)
    if keep_graphs is not None:
        unknown = set(keep_graphs) - set(PRECISIONS.values())
        if unknown or not keep_graphs:
            raise ModelDirError(
                f"keep_graphs must name some of {sorted(PRECISIONS.values())}, got {keep_graphs}"
            )
        for graph in PRECISIONS.values():
            if graph not in keep_graphs and (model_dir / graph).is_file():
                (model_dir / graph).unlink()
        manifest["shipped"] = {"graphs": list(keep_graphs), "why": note}
    manifest["files"] = {
        f.name: {"sha256": sha256_file(f), "bytes": f.stat().st_size}
        for f in sorted(model_dir.iterdir())
        if f.is_file() and f.name != MANIFEST_FILE and f.suffix != ".md"
    }
    tmp = model_dir / (MANIFEST_FILE + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(model_dir / MANIFEST_FILE)
    return manifest
