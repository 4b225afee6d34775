"""Label spaces for the analysis heads and the control tokens: keys, meters, genres, emotions.

Torch-free: the bridge imports this to name the heads' outputs.

- Key: 24 classes, index = tonic pitch class + 12 * is_minor. Enharmonics are merged (F# major == Gb major).
  Church modes fold onto the quality of their third: dorian/phrygian/aeolian -> minor, ionian/lydian/
  mixolydian -> major, with the same tonic (the usual practice for folk-tune key labels).
- Meter: the time-signature classes that the music21 corpus supports with 100+ pieces, plus "other".
  Families: "duple" (numerator 2 or 4), "triple" (3, and the compound 6/9/12, felt in threes), "other".
- Emotion: EMOPIA's valence/arousal quadrants Q1..Q4 (EMOTION_GLOSS says what each means).
- MIREX weighted key score: same 1.0, fifth 0.5, relative 0.3, parallel 0.2, else 0.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

TONICS = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
MODES = ("major", "minor")
KEYS: tuple[str, ...] = tuple(f"{t} {m}" for m in MODES for t in TONICS)  # index = pc + 12 * minor

# Ordered by frequency in the music21 corpus (dominant time signature per piece).
METERS: tuple[str, ...] = (
    "4/4",
    "2/4",
    "3/4",
    "6/8",
    "2/2",
    "4/2",
    "3/8",
    "3/2",
    "9/8",
    "6/4",
    "12/8",
    "other",
)

GENRES: tuple[str, ...] = ("classical", "country", "folk", "jazz", "pop", "rap", "rnb", "rock")
EMOTIONS: tuple[str, ...] = ("Q1", "Q2", "Q3", "Q4")
LABELS: tuple[str, ...] = (
    "key",
    "meter",
    "genre",
    "emotion",
    "composer",
)  # what a piece may be labelled with
# Russell's valence-arousal quadrants, as EMOPIA labels them
EMOTION_GLOSS: dict[str, str] = {
    "Q1": "high valence, high arousal (happy, excited)",
    "Q2": "low valence, high arousal (tense, angry)",
    "Q3": "low valence, low arousal (sad)",
    "Q4": "high valence, low arousal (calm, relaxed)",
}

_LETTER_PC = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_MODE_MINOR = {
    "major": False,
    "maj": False,
    "ionian": False,
    "lydian": False,
    "mixolydian": False,
    "": False,
    "minor": True,
    "min": True,
    "m": True,
    "aeolian": True,
    "dorian": True,
    "phrygian": True,
}
_KEY_RE = re.compile(r"^\s*([A-Ga-g])\s*([#b♯♭s-]*)\s*(?:[_\s]*([A-Za-z]*))\s*$")


def _tonic_pc(letter: str, accidentals: str) -> int:
    pc = _LETTER_PC[letter.upper()]
    for a in accidentals:
        pc += 1 if a in "#♯s" else -1  # 's' as in music21's "f#" -> "fs" spellings; '-' is music21's flat
    return pc % 12


def parse_key(x: object) -> int:
    """Return the key class of `x`.

    Accepts a name ("Gb major", "f# minor", "E- minor" as music21 spells flats, "Am", "C"; a lone
    lowercase letter means minor, as in music21), a music21 Key (anything with `.tonic.pitchClass` and
    `.mode`), or an int already in range.

    Raises:
        ValueError: naming the value when it is not a key (including locrian, which has no major/minor).
    """
    if isinstance(x, bool):
        raise ValueError(f"not a key: {x!r}")
    if isinstance(x, int):
        if not 0 <= x < len(KEYS):
            raise ValueError(f"key index {x} out of range 0..{len(KEYS) - 1}")
        return x
    tonic = getattr(x, "tonic", None)
    if tonic is not None and hasattr(x, "mode"):  # music21 Key / Scale
        mode = str(x.mode).lower()
        if mode not in _MODE_MINOR:
            raise ValueError(f"key {x!r} has mode {mode!r}, which is neither major- nor minor-like")
        return int(tonic.pitchClass) + 12 * _MODE_MINOR[mode]
    if not isinstance(x, str):
        raise ValueError(f"not a key: {x!r}")
    m = _KEY_RE.match(x)
    if m is None:
        raise ValueError(f"unknown key name {x!r}; expected e.g. 'G major', 'f# minor', 'Bb', 'Em'")
    letter, acc, mode = m.group(1), m.group(2), m.group(3).lower()
    if mode == "" and letter.islower():
        mode = "minor"
    if mode not in _MODE_MINOR:
        raise ValueError(
            f"unknown mode {mode!r} in key {x!r}; expected major/minor or a church mode but locrian"
        )
    return _tonic_pc(letter, acc) + 12 * _MODE_MINOR[mode]


def key_name(i: int) -> str:
    return KEYS[parse_key(i)]


def key_from_signature(sharps: int, minor: bool) -> int:
    """Key class from a key signature (count of sharps, negative = flats) and a mode."""
    major_pc = (7 * sharps) % 12
    return (major_pc + 9) % 12 + 12 if minor else major_pc


def transpose_key(i: int, k: int) -> int:
    """The key `i` moved up by `k` semitones (mode kept)."""
    i = parse_key(i)
    return (i % 12 + k) % 12 + 12 * (i // 12)


def mirex_score(pred: int, true: int) -> float:
    """MIREX key-detection weight of `pred` against `true`: 1, 0.5 fifth, 0.3 relative, 0.2 parallel, 0."""
    pred, true = parse_key(pred), parse_key(true)
    (pp, pm), (tp, tm) = divmod(pred, 12)[::-1], divmod(true, 12)[::-1]
    if pred == true:
        return 1.0
    if pm == tm and (pp - tp) % 12 in (5, 7):
        return 0.5
    if pm != tm and (pp - tp) % 12 == (9 if not tm else 3):  # C major -> A minor; A minor -> C major
        return 0.3
    if pm != tm and pp == tp:
        return 0.2
    return 0.0


def parse_meter(x: object) -> int:
    """Return the meter class of a time signature: "6/8", "C" (4/4), "C|" (2/2), (num, den), or an int.

    Valid signatures outside the class list map to "other". Raises ValueError naming the value when `x`
    is not a time signature at all.
    """
    if isinstance(x, int) and not isinstance(x, bool):
        if not 0 <= x < len(METERS):
            raise ValueError(f"meter index {x} out of range 0..{len(METERS) - 1}")
        return x
    if isinstance(x, tuple) and len(x) == 2:
        x = f"{x[0]}/{x[1]}"
    if not isinstance(x, str):
        raise ValueError(f"not a time signature: {x!r}")
    s = x.strip()
    s = {"C": "4/4", "c": "4/4", "C|": "2/2", "c|": "2/2", "¢": "2/2"}.get(s, s)
    m = re.fullmatch(r"(\d+)\s*/\s*(\d+)", s)
    if m is None:
        if s == "other":
            return METERS.index("other")
        raise ValueError(f"unknown time signature {x!r}; expected e.g. '6/8', '3/4', 'C', 'C|'")
    num, den = int(m.group(1)), int(m.group(2))
    if num <= 0 or den <= 0 or den & (den - 1):
        raise ValueError(f"invalid time signature {x!r}: numerator > 0 and a power-of-two denominator")
    name = f"{num}/{den}"
    return METERS.index(name) if name in METERS else METERS.index("other")


def meter_name(i: int) -> str:
    return METERS[parse_meter(i)]


def meter_family(i: int | str) -> str:
    """'duple' (2/x, 4/x), 'triple' (3/x and compound 6/9/12), or 'other'."""
    name = METERS[parse_meter(i)]
    if name == "other":
        return "other"
    num = int(name.split("/")[0])
    return "duple" if num in (2, 4) else "triple"


def parse_genre(x: str) -> str:
    """Normalise a genre name onto GENRES (case-insensitive, common aliases)."""
    aliases = {
        "classic": "classical",
        "rap_hip_hop": "rap",
        "hiphop": "rap",
        "hip-hop": "rap",
        "rnb_soul": "rnb",
        "rhythm_and_blues": "rnb",
        "r&b": "rnb",
        "soul": "rnb",
    }
    g = aliases.get(x.strip().lower(), x.strip().lower())
    if g not in GENRES:
        raise ValueError(f"unknown genre {x!r}; expected one of {', '.join(GENRES)}")
    return g


def parse_emotion(x: str) -> str:
    q = x.strip().upper()
    if q not in EMOTIONS:
        raise ValueError(f"unknown emotion {x!r}; expected one of {', '.join(EMOTIONS)}")
    return q


# --------------------------------------------------------------------------- control tokens


@dataclass(frozen=True)
class ControlKind:
    """One kind of control token. Its name is the keyword everywhere (TypedVocab.control_ids, the CLI's
    --flag, the data's label task); its tokens are prefix + class (spaces as _), in `classes` order."""

    name: str
    prefix: str
    classes: tuple[str, ...]
    canonical: Callable[[object], str]  # a user's value -> its class name; ValueError names a bad one
    help: str  # for a --flag

    def token(self, value: object) -> str:
        return self.prefix + self.canonical(value).replace(" ", "_")

    def tokens(self) -> list[str]:
        return [self.prefix + c.replace(" ", "_") for c in self.classes]


# The registry, in the canonical order of a control prefix (the vocabulary's order; changing it changes
# every model's token ids).
CONTROLS: tuple[ControlKind, ...] = (
    ControlKind("key", "Key_", KEYS, lambda x: key_name(parse_key(x)), 'control token, e.g. "E minor"'),
    ControlKind("meter", "Meter_", METERS, lambda x: meter_name(parse_meter(x)), 'control token, e.g. "6/8"'),
    ControlKind("genre", "Genre_", GENRES, parse_genre, f"control token: {', '.join(GENRES)}"),
    ControlKind("emotion", "Emotion_", EMOTIONS, parse_emotion, "control token: Q1..Q4"),
)
