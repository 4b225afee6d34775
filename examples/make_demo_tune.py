"""Regenerate bridge/demo_tune.mid (the tune `typemoe-bridge --demo` plays) from the music21 corpus.

    python examples/make_demo_tune.py        # needs music21 (the `train` extra); run once, commit the file

Bach's chorale BWV 66.6 "Christ unser Herr zum Jordan kam" (F# minor, 4/4, public domain), all four voices,
key and time signatures kept in the file for reference (the bridge reads only the notes).
"""

from __future__ import annotations

import sys
from pathlib import Path

CORPUS_PIECE = "bach/bwv66.6"
OUT = Path(__file__).resolve().parent.parent / "bridge" / "demo_tune.mid"


def main() -> int:
    from music21 import corpus

    score = corpus.parse(CORPUS_PIECE)
    score.write("midi", fp=str(OUT))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes) from {CORPUS_PIECE}")  # noqa: T201 - a script
    return 0


if __name__ == "__main__":
    sys.exit(main())
