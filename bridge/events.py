"""What flows into the engine (events) and what it asks the shell to do (actions).

All are small frozen dataclasses. Times `t` are seconds on the bridge's monotonic clock, stamped where the
event entered the process (the rtmidi or UDP callback), so latency is measured from the wire.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from typemoe.grammar_tables import BarPlan
from typemoe.infill import SUFFIX_WEIGHT

# ---- events (shell -> engine) ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MidiIn:
    """Raw MIDI bytes from the input port."""

    data: tuple[int, ...]
    t: float


@dataclass(frozen=True, slots=True)
class OscIn:
    """One decoded OSC message (a bundle becomes several)."""

    address: str
    args: tuple
    t: float


@dataclass(frozen=True, slots=True)
class BadDatagram:
    """A UDP datagram that is not OSC."""

    reason: str
    t: float


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed (a deadline was reached or the loop woke up)."""

    t: float


@dataclass(frozen=True, slots=True)
class Analysis:
    """Key and meter probabilities after the model read new tokens."""

    key_probs: np.ndarray  # (n_keys,)
    meter_probs: np.ndarray  # (n_meters,)
    cause_t: float  # stamp of the oldest input whose tokens this includes
    t: float
    provisional: bool = False  # from a Probe: held notes counted with their length so far


@dataclass(frozen=True, slots=True)
class Generated:
    """Generated token ids continuing the stream, or the generation's failure.

    A generation arrives in chunks, each ending on a whole note (so the first note can be scheduled while
    the rest is still being sampled); the last chunk has done=True.
    """

    request_id: int
    tokens: tuple[int, ...]
    error: str | None
    t: float
    done: bool = True
    plan: BarPlan | None = None  # where its Bars open (continuation.bar_plan); None: REMI's 4-beat bars


@dataclass(frozen=True, slots=True)
class ModelFailed:
    """A model call other than generation failed (the context was rebuilt)."""

    message: str
    t: float


@dataclass(frozen=True, slots=True)
class Stop:
    """Shut down (signal, or end of a demo)."""

    reason: str
    t: float = 0.0


@dataclass(frozen=True, slots=True)
class Infilled:
    """The notes of an infill (bridge.infill), or why there are none.

    notes: (onset, duration, pitch, velocity), onset and duration in beats from the span's first bar line.
    """

    request_id: int
    notes: tuple[tuple[float, float, int, int], ...]
    error: str | None
    t: float


Event = MidiIn | OscIn | BadDatagram | Tick | Analysis | Generated | ModelFailed | Infilled | Stop

# ---- actions (engine -> shell) -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendMidi:
    data: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class SendOsc:
    address: str
    args: tuple = ()


@dataclass(frozen=True, slots=True)
class Feed:
    """Append token ids to the model's context (KV cache grows; no recomputation)."""

    ids: tuple[int, ...]
    cause_t: float


@dataclass(frozen=True, slots=True)
class Probe:
    """Analyse the context plus these ids on a throwaway fork (held notes with their length so far); the
    context itself is unchanged. Only the newest waiting Probe runs."""

    ids: tuple[int, ...]
    cause_t: float


@dataclass(frozen=True, slots=True)
class Recondition:
    """Replace the control-token prefix; the context is re-prefilled behind it."""

    controls: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ResetModel:
    """Forget the context (keeps the control prefix)."""


@dataclass(frozen=True, slots=True)
class Generate:
    """Sample a continuation of the current context, off the loop."""

    request_id: int
    n_bars: int
    temperature: float
    top_p: float
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class CancelGenerate:
    """Stop the generation for this request (its notes are no longer wanted)."""

    request_id: int


@dataclass(frozen=True, slots=True)
class InfillJob:
    """Fill bars first_bar..last_bar (1-based, bars of `meter`) between the heard notes around them, off
    the loop.

    notes: the heard notes (time, duration, pitch, velocity) in grid ticks (4 a beat) from bar 1's line.
    meter: a meter name with a bar length (decoding.meter_beats); the middle is written in its bars.
    """

    request_id: int
    notes: tuple[tuple[int, int, int, int], ...]
    first_bar: int
    last_bar: int
    controls: tuple[int, ...] = ()
    temperature: float = 1.0
    top_p: float = 0.95
    seed: int | None = None
    guidance: float = 1.0
    key_lock: str | None = None
    suffix_weight: float = SUFFIX_WEIGHT  # typemoe.infill.start_middle's (the bridge passes its setting)
    head_guidance: float = 0.0  # typemoe.key_steering's weight (the bridge passes its setting)
    meter: str = "4/4"


Action = SendMidi | SendOsc | Feed | Probe | Recondition | ResetModel | Generate | CancelGenerate | InfillJob
