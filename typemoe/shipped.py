"""Where the shipped default model lives. Torch-free: the bridge imports it.

The model directory (ONNX graph, tokenizer, type table, manifest with a sha256 per file) is committed inside
the package at typemoe/default_model/ with its MODEL_CARD.md; export.runtime verifies every sha256 when it
loads the directory, so a damaged install is refused with the name of the bad file.

Optional sub-models sit in sub-directories of a model directory, each a complete exported model directory
of its own (its own manifest.json with a sha256 per file, verified by export.runtime at load exactly like the
main one; the main manifest does not list them):

    typemoe/default_model/
        manifest.json  model_int8.onnx  tokenizer.json  types.json  MODEL_CARD.md   # generation, key, meter
        emotion/
            manifest.json  model_int8.onnx  tokenizer.json  types.json          # EMOPIA classifier Q1..Q4

`typemoe analyze` reports the emotion of a piece when the model directory it uses (the shipped one, or
--model DIR) has an `emotion/` sub-directory, or when given --emotion-model DIR.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_MODEL_DIRNAME = "default_model"
EMOTION_DIRNAME = "emotion"  # the emotion-classifier sub-model inside a model directory


def default_model_dir() -> Path:
    """typemoe/default_model inside the installed package, whether or not it exists."""
    return Path(__file__).resolve().parent / DEFAULT_MODEL_DIRNAME


def emotion_dir(model_dir: str | Path) -> Path:
    """The emotion sub-model directory of a model directory, whether or not it exists."""
    return Path(model_dir) / EMOTION_DIRNAME


def default_emotion_dir() -> Path:
    """typemoe/default_model/emotion, the shipped EMOPIA emotion classifier, whether or not it exists."""
    return emotion_dir(default_model_dir())
