"""Where the shipped default model lives. Torch-free: the bridge imports it.

The model directory (ONNX graph, tokenizer, type table, manifest with a sha256 per file) is committed inside
the package at typemoe/default_model/ with its MODEL_CARD.md; export.runtime verifies every sha256 when it
loads the directory, so a damaged install is refused with the name of the bad file.

One graph carries every head: next token, key, meter and emotion (EMOPIA quadrants Q1..Q4, a class
head trained on the frozen trunk, so the other heads are exactly the pre-trained ones):

    typemoe/default_model/
        manifest.json  model_int8.onnx  tokenizer.json  types.json  key_fusion.json  meter_fusion.json
        meter_family.json  emotion_fusion.json  MODEL_CARD.md

`typemoe analyze` reports the emotion of a piece when its model has an emotion head (the shipped one
does), or from a separate classifier given with --emotion-model DIR.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL_DIRNAME = "default_model"


def default_model_dir() -> Path:
    """typemoe/default_model inside the installed package, whether or not it exists."""
    return Path(__file__).resolve().parent / DEFAULT_MODEL_DIRNAME
