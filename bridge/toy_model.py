"""A rule-based stand-in for the ONNX model (`--model toy`): no neural network, same protocol.

It lets a user check MIDI/OSC routing before a model is installed, and lets tests run the whole bridge
fast and deterministically. Key: Krumhansl-Kessler profiles against a duration-weighted pitch-class
histogram. Meter: onset autocorrelation (3 vs 2/4 beats). Continuation: an arpeggio on the estimated key's
tonic triad in 8th notes, one Bar token per bar.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from typemoe import analysis
from typemoe.streaming import TokenReader
from typemoe.vocab import TICKS_PER_BEAT, TypedVocab

_MAJOR = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
_MINOR = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
_GRID = TICKS_PER_BEAT


@dataclass
class ToyStep:
    key_probs: np.ndarray  # (24,)
    meter_probs: np.ndarray  # (M,)
    logits: np.ndarray | None = None


class ToySession:
    def __init__(self, model: ToyModel) -> None:
        self._model = model
        self._reader = TokenReader(model.vocab)
        self._pc = np.zeros(12)  # duration-weighted pitch classes
        self._onsets: dict[int, float] = {}  # tick -> strength
        self.n_past = 0

    def feed(self, ids: Sequence[int]) -> ToyStep:
        for note in self._reader.read(ids):
            self._pc[note.pitch % 12] += note.duration
            tick = round(note.onset * _GRID)
            self._onsets[tick] = self._onsets.get(tick, 0.0) + 1.0
        self.n_past += len(ids)
        return ToyStep(self._key_probs(), self._meter_probs())

    def fork(self) -> ToySession:
        twin = ToySession(self._model)
        twin._reader.cursor = self._reader.cursor.copy()
        twin._pc, twin._onsets, twin.n_past = self._pc.copy(), dict(self._onsets), self.n_past
        return twin

    def generate(
        self,
        *,
        n_tokens: int | None = None,
        n_bars: int | None = None,
        temperature: float = 1.0,
        top_p: float = 0.95,
        seed: int | None = None,
    ) -> list[int]:
        v = self._model.vocab
        rng = np.random.default_rng(seed)
        key = int(np.argmax(self._key_probs()))
        tonic, minor = key % 12, key >= 12
        triad = [tonic, tonic + (3 if minor else 4), tonic + 7]
        bars = n_bars if n_bars is not None else 2
        out: list[int] = []
        for _ in range(bars):
            out.append(v.id("Bar_None"))
            for k in range(8):
                step = int(rng.integers(0, 3)) if temperature > 0 else k % 3
                pitch = 60 + triad[step] + (12 if k % 4 == 3 else 0)
                out += [
                    v.id(f"Position_{2 * k}"),
                    v.id(f"Pitch_{pitch}"),
                    int(v.velocity_id[88]),
                    v.duration_token_id(2),
                ]
        if n_tokens is not None:
            out = out[:n_tokens]
        self.feed(out)
        return out

    def generate_steps(self, **kwargs) -> Iterator[int]:
        """generate()'s ids one at a time (the toy makes them all at once)."""
        yield from self.generate(**kwargs)

    def _key_probs(self) -> np.ndarray:
        if self._pc.sum() == 0:
            return np.full(24, 1 / 24)
        with np.errstate(invalid="ignore", divide="ignore"):  # one pitch class: no correlation (nan -> 0)
            scores = [np.corrcoef(self._pc, np.roll(p, k))[0, 1] for p in (_MAJOR, _MINOR) for k in range(12)]
        z = np.exp(8.0 * np.nan_to_num(np.asarray(scores)))
        return z / z.sum()

    def _meter_probs(self) -> np.ndarray:
        names = self._model.meter_names
        probs = np.full(len(names), 0.01)
        if self._onsets:
            end = max(self._onsets) + 1
            s = np.zeros(end)
            for tick, w in self._onsets.items():
                s[tick] = w
            s -= s.mean()

            def ac(lag: int) -> float:
                return float(np.dot(s[:-lag], s[lag:])) if lag < end else 0.0

            triple = ac(3 * _GRID) + ac(6 * _GRID)
            duple = ac(2 * _GRID) + ac(4 * _GRID)
            probs[names.index("3/4" if triple > duple else "4/4")] += 1.0
        else:
            probs[names.index("4/4")] += 1.0
        return probs / probs.sum()


class ToyModel:
    """Model protocol of bridge.model, without ONNX."""

    def __init__(self, vocab: TypedVocab | None = None, *, context_len: int = 1024) -> None:
        self.vocab = vocab if vocab is not None else TypedVocab.default()
        self.context_len = context_len
        self.key_names = list(analysis.KEYS)
        self.meter_names = list(analysis.METERS)
        self.provider = "toy"

    def session(self) -> ToySession:
        return ToySession(self)
