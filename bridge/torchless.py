"""typemoe's torch-free modules, in one place for the bridge.

Importing typemoe.vocab keeps miditok from pulling in torch (see the note there), so every bridge module
gets `analysis`, `StreamingTokenizer` and `TypedVocab` from here and tests/test_layering.py checks that
`import bridge.*` leaves torch out of sys.modules.
"""

from __future__ import annotations

from typemoe import analysis
from typemoe.streaming import StreamingTokenizer
from typemoe.vocab import TypedVocab

__all__ = ["StreamingTokenizer", "TypedVocab", "analysis"]
