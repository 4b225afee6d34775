"""Where the shipped default model lives (DESIGN.md section 10). Torch-free: the bridge imports it.

The model directory (ONNX graph, tokenizer, type table, manifest with a sha256 per file) is committed inside
the package at typemoe/default_model/ with its MODEL_CARD.md; export.runtime verifies every sha256 when it
loads the directory, so a damaged install is refused with the name of the bad file.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL_DIRNAME = "default_model"


def default_model_dir() -> Path:
    """typemoe/default_model inside the installed package, whether or not it exists."""
    return Path(__file__).resolve().parent / DEFAULT_MODEL_DIRNAME
