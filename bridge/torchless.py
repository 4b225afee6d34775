"""typemoe's torch-free modules, imported so that nothing drags torch in.

miditok imports its PyTorch dataset helpers (and so torch, ~1 s and 2 GB of wheels) whenever torch happens
to be installed, inside a `try: from miditok import pytorch_data / except ImportError`. The bridge never
uses them, so while miditok is first imported we mark that submodule as unavailable; the entry is removed
again afterwards, so a later explicit `import miditok.pytorch_data` (training code) still works.
Every bridge module gets `analysis`, `StreamingTokenizer` and `TypedVocab` from here.
"""

from __future__ import annotations

import sys

if "miditok" not in sys.modules:
    sys.modules["miditok.pytorch_data"] = None  # makes `from miditok import pytorch_data` raise ImportError
    try:
        import miditok  # noqa: F401
    finally:
        if "miditok.pytorch_data" in sys.modules and sys.modules["miditok.pytorch_data"] is None:
            del sys.modules["miditok.pytorch_data"]

from typemoe import analysis  # noqa: E402
from typemoe.streaming import StreamingTokenizer  # noqa: E402
from typemoe.vocab import TypedVocab  # noqa: E402

__all__ = ["StreamingTokenizer", "TypedVocab", "analysis"]
