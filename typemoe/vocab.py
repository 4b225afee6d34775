"""The vocabulary: MidiTok REMI tokens, control tokens, and the id -> type table that routes experts.

Torch-free (miditok, symusic, numpy): the bridge and the ONNX runtime import it.

Layout of the ids:
    [0, n_base)               MidiTok REMI: PAD/BOS/EOS, Bar, Position_p, Pitch_p, Velocity_v, Duration_d
    [n_base, size)            control tokens, appended by us: Key_<tonic>_<mode> (24), Meter_<n>/<d>,
                              Genre_<name>, Emotion_<Q>, then the infilling tokens Infill_* (last, so a
                              vocabulary without them is a prefix of one with them: same ids)
The control tokens live in our own table rather than miditok's `add_to_vocab`, so that saving and loading
never depends on how a miditok version persists added tokens: load rebuilds REMI from its saved config and
checks that the base vocabulary is identical.

Input stream: all non-drum tracks merged into one, time-signature / key-signature / tempo meta events
stripped, a grid of 4 positions per beat and Bar tokens every 4 beats (miditok falls back to 4/4 when
`use_time_signatures` is off, which is exactly the performer's 4-beat grid).

Bounded work for any file: a silence longer than MAX_EMPTY_BARS empty bars (before the first note too) is
cut to MAX_EMPTY_BARS, by whole bars, so at most MAX_EMPTY_BARS + 1 Bar tokens ever follow each other;
a score that would still give more than MAX_SCORE_TOKENS tokens is refused with `ScoreTooLong`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import symusic

# miditok's __init__ imports its optional `pytorch_data` submodule, and with it torch, whenever torch is
# installed. We never use it, and the bridge must stay torch-free, so while miditok is
# first imported we mark that submodule unavailable (miditok catches the ImportError), then remove the mark
# so that an explicit `import miditok.pytorch_data` later still works.
if "miditok" not in sys.modules and "torch" not in sys.modules:
    sys.modules["miditok.pytorch_data"] = None  # type: ignore[assignment]
    try:
        import miditok  # noqa: F401
    finally:
        if sys.modules.get("miditok.pytorch_data", 0) is None:
            del sys.modules["miditok.pytorch_data"]
from miditok import REMI, TokenizerConfig  # noqa: E402

from typemoe import analysis

log = logging.getLogger(__name__)

TICKS_PER_BEAT = 4  # onset grid: 16th notes
BEATS_PER_BAR = 4
TICKS_PER_BAR = TICKS_PER_BEAT * BEATS_PER_BAR
MAX_EMPTY_BARS = 4  # a longer silence is cut to this many empty bars (whole bars, so positions keep)
MAX_SCORE_TOKENS = 1_000_000  # a score above this after the cut is refused (about 250,000 notes)
_LONGEST_DURATION_BEATS = 16  # durations are clipped here before quantizing; the longest token is 12 beats
TYPE_NAMES = ("structure", "pitch", "velocity", "duration", "control")
# Expert groups: type name -> token-type prefixes (the part of "Type_Value" before the first "_").
DEFAULT_GROUPS: dict[str, tuple[str, ...]] = {
    "structure": ("Bar", "Position"),
    "pitch": ("Pitch",),
    "velocity": ("Velocity",),
    "duration": ("Duration",),
    "control": ("PAD", "BOS", "EOS", "MASK", "Key", "Meter", "Genre", "Emotion", "Infill"),
}
# Fill-in-the-middle (typemoe/infill.py): [prefix] Infill_Suffix [suffix] Infill_Middle Infill_Bars_<n>
# [middle: n whole bars, each opening with Bar] Infill_End. Control type, so the routing stays static.
INFILL_PREFIX = "Infill"
MAX_INFILL_BARS = 8  # Infill_Bars_1..8; a longer span is announced as Infill_Bars_8
INFILL_TOKENS = ("Infill_Suffix", "Infill_Middle", "Infill_End") + tuple(
    f"Infill_Bars_{n}" for n in range(1, MAX_INFILL_BARS + 1)
)
# Grammar families for valid REMI generation (finer than the expert types: Bar and Position differ).
FAMILIES = ("Bar", "Position", "Pitch", "Velocity", "Duration", "control")
_NEXT_FAMILIES = {
    "Bar": ("Bar", "Position"),
    "Position": ("Pitch",),
    "Pitch": ("Velocity",),
    "Velocity": ("Duration",),
    "Duration": ("Pitch", "Position", "Bar"),
    "control": ("Bar",),
}
TOKENIZER_FILE = "tokenizer.json"
TYPES_FILE = "types.json"


class VocabError(ValueError):
    """A tokenizer or vocabulary directory that cannot serve as TypeMoE's vocabulary."""


class ScoreError(ValueError):
    """A score that yields no tokens (empty, drums only, nothing in the pitch range), or too many."""


class ScoreTooLong(ScoreError):
    """A score that would still give more than MAX_SCORE_TOKENS tokens once its silences are cut."""


def collapse_silences(time: np.ndarray, bar_ticks: int, max_empty: int = MAX_EMPTY_BARS) -> np.ndarray:
    """Onset times (int64) with every run of more than `max_empty` empty bars cut to `max_empty` bars.

    The bars before the first onset count as a run too. Notes move by whole bars, so each keeps its
    position in the bar and the order of all notes is unchanged.
    """
    time = np.asarray(time, dtype=np.int64)
    bars = time // bar_ticks
    occupied = np.unique(bars)  # sorted
    empty_before = np.diff(occupied, prepend=-1) - 1
    cut = np.cumsum(np.maximum(empty_before - max_empty, 0))  # bars removed up to each occupied bar
    return time - cut[np.searchsorted(occupied, bars)] * bar_ticks


def _check_budget(n_notes: int, last_bar: int) -> None:
    """Refuse a score whose token count can exceed MAX_SCORE_TOKENS (4 tokens a note, 1 a bar at most)."""
    bound = 4 * n_notes + last_bar + 1
    if bound > MAX_SCORE_TOKENS:
        raise ScoreTooLong(
            f"score has {n_notes} notes over {last_bar + 1} bars (after cutting silences to "
            f"{MAX_EMPTY_BARS} bars): up to {bound:,} tokens, over the limit of {MAX_SCORE_TOKENS:,}"
        )


def tokenizer_config() -> TokenizerConfig:
    """The project's REMI configuration: one merged track of notes only (no tempo, time-signature, program
    or chord tokens), 16th-note onsets, 16 velocity bins, durations up to 12 beats."""
    return TokenizerConfig(
        pitch_range=(21, 109),
        beat_res={(0, 4): TICKS_PER_BEAT, (4, 12): 2},
        num_velocities=16,
        special_tokens=["PAD", "BOS", "EOS"],
        use_velocities=True,
        use_note_duration_programs=list(range(-1, 128)),
        use_chords=False,
        use_rests=False,
        use_tempos=False,
        use_time_signatures=False,
        use_sustain_pedals=False,
        use_pitch_bends=False,
        use_programs=False,
        remove_duplicated_notes=False,
        use_pitchdrum_tokens=False,
    )


def _track(name: str, notes: Mapping[str, np.ndarray]) -> symusic.Track:
    track = symusic.Track(name, 0, False)
    track.notes = symusic.Note.from_numpy(
        time=notes["time"].astype(np.int32),
        duration=notes["duration"].astype(np.int32),
        pitch=notes["pitch"].astype(np.int8),
        velocity=notes["velocity"].astype(np.int8),
    )
    return track


def _resample(notes: Mapping[str, np.ndarray], tpq: int) -> dict[str, np.ndarray]:
    """Notes quantized from `tpq` ticks per beat to the grid, with symusic's rounding (what miditok uses)."""
    score = symusic.Score(tpq)
    score.tracks.append(_track("merged", notes))
    q = score.resample(TICKS_PER_BEAT, min_dur=1).tracks[0].notes.numpy()
    return {k: q[k].astype(np.int64) for k in ("time", "duration", "pitch", "velocity")}


def control_tokens() -> list[str]:
    """The control kinds' tokens (analysis.CONTROLS, in its order), then the infilling tokens."""
    return [t for kind in analysis.CONTROLS for t in kind.tokens()] + list(INFILL_TOKENS)


def _prefix(token: str) -> str:
    return token.split("_", 1)[0]


def _hash(tokens: Sequence[str], groups: Mapping[str, Sequence[str]]) -> str:
    h = hashlib.sha256()
    groups = {k: list(v) for k, v in groups.items()}
    h.update(json.dumps({"tokens": list(tokens), "groups": groups}, sort_keys=True).encode())
    return h.hexdigest()


class TypedVocab:
    """REMI tokenizer + control tokens + the static id -> type table (one id, exactly one type)."""

    def __init__(
        self,
        tokenizer: REMI,
        *,
        groups: Mapping[str, Sequence[str]] | None = None,
        controls: Sequence[str] | None = None,
    ) -> None:
        if getattr(tokenizer, "is_trained", False):
            raise VocabError(
                "a BPE/Unigram-trained tokenizer merges several events into one id, so an id has no "
                "single type; use an untrained REMI tokenizer"
            )
        if getattr(tokenizer, "is_multi_voc", False):
            raise VocabError(
                f"{type(tokenizer).__name__} has several vocabularies (one id per embedding "
                "pooling); TypeMoE needs one flat vocabulary"
            )
        groups = {k: tuple(v) for k, v in (groups or DEFAULT_GROUPS).items()}
        if controls is None and not any(INFILL_PREFIX in v for v in groups.values()):
            # a grouping from before infilling: the Infill_* tokens join the group of the specials
            groups = {k: (*v, INFILL_PREFIX) if "BOS" in v else v for k, v in groups.items()}
        owner: dict[str, str] = {}
        for name, prefixes in groups.items():
            for p in prefixes:
                if p in owner:
                    raise VocabError(f"token type {p!r} is in two groups: {owner[p]!r} and {name!r}")
                owner[p] = name
        self.tokenizer = tokenizer
        self.groups = groups
        self.type_names = tuple(groups)
        base = sorted(tokenizer.vocab.items(), key=lambda kv: kv[1])
        if [i for _, i in base] != list(range(len(base))):
            raise VocabError("tokenizer ids are not contiguous from 0")
        self.n_base = len(base)
        self._tokens = [t for t, _ in base] + list(control_tokens() if controls is None else controls)
        if len(set(self._tokens)) != len(self._tokens):
            raise VocabError("duplicate token strings in the vocabulary")
        self._ids = {t: i for i, t in enumerate(self._tokens)}
        type_of = []
        for t in self._tokens:
            if _prefix(t) not in owner:
                raise VocabError(
                    f"token {t!r} has type {_prefix(t)!r}, which no expert group claims (groups: {groups})"
                )
            type_of.append(self.type_names.index(owner[_prefix(t)]))
        self.type_of = np.asarray(type_of, dtype=np.int64)  # (V,)
        fam = [
            FAMILIES.index(_prefix(t)) if _prefix(t) in FAMILIES else FAMILIES.index("control")
            for t in self._tokens
        ]
        self.family_of = np.asarray(fam, dtype=np.int64)  # (V,)
        self.next_allowed = np.zeros((len(FAMILIES), self.size), dtype=bool)  # (6, V)
        for f, nxt in _NEXT_FAMILIES.items():
            for g in nxt:
                self.next_allowed[FAMILIES.index(f)] |= self.family_of == FAMILIES.index(g)
        specials = {_prefix(t) for t in self._tokens if t.endswith("_None")}
        self.next_allowed[:, self.family_of == FAMILIES.index("control")] = False  # never sample controls
        assert {"PAD", "BOS", "EOS"} <= specials, f"missing special tokens: {specials}"
        self.pad_id, self.bos_id, self.eos_id = (
            self._ids["PAD_None"],
            self._ids["BOS_None"],
            self._ids["EOS_None"],
        )
        self._calibrate()

    # ---- construction and persistence -------------------------------------------------------------
    @classmethod
    def default(cls) -> TypedVocab:
        return cls(REMI(tokenizer_config()))

    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(d / TOKENIZER_FILE)
        meta = {
            "tokens": self._tokens,
            "groups": self.groups,
            "type_of": self.type_of.tolist(),
            "n_base": self.n_base,
            "hash": self.hash,
        }
        tmp = d / (TYPES_FILE + ".tmp")
        tmp.write_text(json.dumps(meta, indent=1))
        tmp.replace(d / TYPES_FILE)

    @classmethod
    def load(cls, directory: str | Path) -> TypedVocab:
        d = Path(directory)
        for f in (TOKENIZER_FILE, TYPES_FILE):
            if not (d / f).is_file():
                raise VocabError(
                    f"{d / f} is missing; a vocabulary directory holds {TOKENIZER_FILE} and {TYPES_FILE}"
                )
        try:
            meta = json.loads((d / TYPES_FILE).read_text())
            tokenizer = REMI(params=d / TOKENIZER_FILE)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise VocabError(f"cannot read the vocabulary in {d}: {err}") from err
        vocab = cls(tokenizer, groups=meta["groups"], controls=meta["tokens"][meta["n_base"] :])
        if vocab._tokens != meta["tokens"] or vocab.hash != meta["hash"]:
            raise VocabError(
                f"{d / TOKENIZER_FILE} does not rebuild the saved vocabulary (hash {meta['hash'][:12]} "
                f"!= {vocab.hash[:12]}); was it written by another miditok or TypeMoE version?"
            )
        return vocab

    @property
    def hash(self) -> str:
        return _hash(self._tokens, self.groups)

    def reads(self, other_hash: str) -> bool:
        """Whether ids written under the vocabulary `other_hash` mean the same here: the same vocabulary,
        or this one without its infilling tokens (they were appended last, so every older id is unchanged;
        token shards and checkpoints from before infilling stay usable)."""
        if other_hash == self.hash:
            return True
        tokens = [t for t in self._tokens if _prefix(t) != INFILL_PREFIX]
        groups = {k: tuple(p for p in v if p != INFILL_PREFIX) for k, v in self.groups.items()}
        return len(tokens) < len(self._tokens) and other_hash == _hash(tokens, groups)

    @property
    def has_infill(self) -> bool:
        return all(t in self._ids for t in INFILL_TOKENS)

    # ---- lookups ---------------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return len(self._tokens)

    @property
    def n_types(self) -> int:
        return len(self.type_names)

    def __len__(self) -> int:
        return self.size

    def id(self, token: str) -> int:
        try:
            return self._ids[token]
        except KeyError:
            raise KeyError(f"token {token!r} is not in the vocabulary") from None

    def token(self, i: int) -> str:
        if not 0 <= i < self.size:
            raise IndexError(f"token id {i} out of range 0..{self.size - 1}")
        return self._tokens[i]

    @property
    def tokens(self) -> list[str]:
        return list(self._tokens)

    def control_ids(self, **values) -> list[int]:
        """Control-token ids in the registry's order (analysis.CONTROLS: key=, meter=, genre=, emotion=);
        None or "" skips one. Raises ValueError for a bad value, TypeError for an unknown kind."""
        unknown = set(values) - {kind.name for kind in analysis.CONTROLS}
        if unknown:
            raise TypeError(
                f"unknown control kind(s) {sorted(unknown)}; known: {[k.name for k in analysis.CONTROLS]}"
            )
        return [
            self.id(kind.token(values[kind.name]))
            for kind in analysis.CONTROLS
            if values.get(kind.name) not in (None, "")
        ]

    # ---- scores <-> ids -----------------------------------------------------------------------------
    def prepare_score(self, score: symusic.Score) -> symusic.Score:
        """Merge non-drum tracks, drop meta events, cut long silences, quantize, sort notes canonically.

        The canonical order is (onset, duration, pitch, velocity) on the quantized grid; the streaming
        tokenizer uses the same order, which is what makes streaming == offline exact. Silences longer
        than MAX_EMPTY_BARS bars on the grid are cut to MAX_EMPTY_BARS (`collapse_silences`); a first,
        looser cut before quantizing keeps every tick count within int32.

        Raises:
            ScoreError: no non-drum notes in the tokenizer's pitch range, or note times that overflowed.
            ScoreTooLong: more than MAX_SCORE_TOKENS tokens even after the silences are cut.
        """
        lo, hi = self.tokenizer.config.pitch_range
        tracks = [t for t in score.tracks if not t.is_drum]
        if not tracks:
            kind = "drums only" if len(score.tracks) else "no tracks"
            raise ScoreError(f"score has no pitched notes ({kind})")
        arrays = [t.notes.numpy() for t in tracks]
        notes = {
            k: np.concatenate([a[k] for a in arrays]).astype(np.int64)
            for k in ("time", "duration", "pitch", "velocity")
        }
        keep = (notes["pitch"] >= lo) & (notes["pitch"] <= hi) & (notes["velocity"] > 0)  # miditok: inclusive
        notes = {k: v[keep] for k, v in notes.items()}
        if len(notes["time"]) == 0:
            raise ScoreError(f"score has no notes in the pitch range {lo}..{hi} (drums only or empty)")
        if notes["time"].min() < 0:
            raise ScoreError(
                "score has notes at negative times (its MIDI events lie more than 2^31 ticks "
                "apart, which the MIDI reader cannot represent)"
            )
        tpq = score.ticks_per_quarter
        if tpq != TICKS_PER_BEAT:
            # one bar more than the cap: rounding moves a note by at most one bar, so the exact cut after
            # quantizing gives the same notes as quantizing first (which could overflow int32 ticks)
            notes["time"] = collapse_silences(notes["time"], tpq * BEATS_PER_BAR, MAX_EMPTY_BARS + 1)
            notes["duration"] = np.clip(notes["duration"], 0, _LONGEST_DURATION_BEATS * tpq)
            # + 1: rounding can move the last note into the next bar
            _check_budget(len(notes["time"]), int(notes["time"].max()) // (tpq * BEATS_PER_BAR) + 1)
            notes = _resample(notes, tpq)
        notes["time"] = collapse_silences(notes["time"], TICKS_PER_BAR)
        _check_budget(len(notes["time"]), int(notes["time"].max()) // TICKS_PER_BAR)
        notes["duration"] = np.maximum(notes["duration"], 1)
        order = np.lexsort((notes["velocity"], notes["pitch"], notes["duration"], notes["time"]))
        out = symusic.Score(TICKS_PER_BEAT)
        out.tracks.append(_track("merged", {k: v[order] for k, v in notes.items()}))
        return out

    def encode_score(self, score: symusic.Score) -> list[int]:
        """REMI ids of a score's pitched notes (no BOS, no controls), silences cut as `prepare_score` does.

        Raises:
            ScoreError: no notes to encode; ScoreTooLong: more than MAX_SCORE_TOKENS tokens.
        """
        seqs = self.tokenizer.encode(self.prepare_score(score))
        seq = seqs[0] if isinstance(seqs, list) else seqs
        return list(seq.ids)

    def decode(self, ids: Iterable[int]) -> symusic.Score:
        """Score (tpq = 4) of the music ids in `ids`; specials and control tokens are ignored."""
        music = [
            int(i)
            for i in ids
            if 0 <= int(i) < self.n_base and self.family_of[int(i)] != FAMILIES.index("control")
        ]
        if not music:
            return symusic.Score(TICKS_PER_BEAT)
        return self.tokenizer.decode([music])

    # ---- per-note token lookup, shared with the streaming tokenizer ------------------------------------
    def _calibrate(self) -> None:
        """Learn from miditok itself which Velocity/Duration token each raw value maps to.

        One probe score holds a note per velocity 1..127 and per duration 1..max ticks; encoding it once
        gives the exact tables miditok uses (nearest bin, its tie-breaking), whatever its version.
        """
        max_dur = TICKS_PER_BEAT * 12 + 4
        n_vel, n_dur = 127, max_dur
        times = np.arange(n_vel + n_dur, dtype=np.int32) * (BEATS_PER_BAR * TICKS_PER_BEAT * 4)
        vel = np.concatenate([np.arange(1, 128), np.full(n_dur, 100)]).astype(np.int8)
        dur = np.concatenate([np.ones(n_vel), np.arange(1, max_dur + 1)]).astype(np.int32)
        probe = symusic.Score(TICKS_PER_BEAT)
        track = symusic.Track("probe", 0, False)
        track.notes = symusic.Note.from_numpy(
            time=times, duration=dur, pitch=np.full(len(times), 60, np.int8), velocity=vel
        )
        probe.tracks.append(track)
        seqs = self.tokenizer.encode(probe)
        toks = [self._tokens[i] for i in (seqs[0] if isinstance(seqs, list) else seqs).ids]
        vel_ids = [self._ids[t] for t in toks if t.startswith("Velocity_")]
        dur_ids = [self._ids[t] for t in toks if t.startswith("Duration_")]
        assert len(vel_ids) == len(dur_ids) == n_vel + n_dur, "probe did not give one token per note"
        self.velocity_id = np.asarray(
            [vel_ids[0]] + vel_ids[:n_vel], dtype=np.int64
        )  # index = velocity 0..127
        self.duration_id = np.asarray([dur_ids[n_vel]] + dur_ids[n_vel:], dtype=np.int64)  # index = ticks
        self.max_duration_ticks = max_dur

    def duration_token_id(self, ticks: int) -> int:
        return int(self.duration_id[min(max(ticks, 1), self.max_duration_ticks)])
