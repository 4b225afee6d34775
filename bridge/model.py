"""What the bridge needs from a model, and how it finds one.

The protocol is the subset of `typemoe.export.runtime.OrtModel` / `OrtSession` (docs/INTERNAL_API.md) the bridge
uses, so the ONNX runtime plugs in unchanged and tests can use the rule-based `ToyModel`.

    model = load_model("path/to/exported_model")   # or "toy", or None for the shipped default
    session = model.session()
    out = session.feed(ids)                          # out.key_probs (24,), out.meter_probs (M,)
    ids = session.fork().generate(n_bars=2, temperature=1.0, top_p=0.95)
    for i in session.fork().generate_steps(n_bars=2): ...   # the same, one id at a time (realtime)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from typemoe.shipped import default_model_dir

log = logging.getLogger(__name__)

TOY = "toy"


class ModelNotFoundError(ValueError):
    """No usable model: the message tells the user what to pass."""


class StepResult(Protocol):
    key_probs: np.ndarray  # (n_keys,)
    meter_probs: np.ndarray  # (n_meters,)


class Session(Protocol):
    n_past: int

    def feed(self, ids: Sequence[int]) -> StepResult: ...

    def fork(self) -> Session: ...

    # keyword arguments: n_tokens, n_bars, temperature, top_p, seed (export.runtime.OrtSession.generate_steps)
    def generate(self, **kwargs) -> list[int]: ...

    def generate_steps(self, **kwargs) -> Iterator[int]: ...


class Model(Protocol):
    vocab: object  # typemoe.vocab.TypedVocab
    context_len: int
    key_names: list[str]
    meter_names: list[str]

    def session(self) -> Session: ...


def load_model(spec: str | Path | None, *, provider: str = "auto") -> Model:
    """Open the model named by --model.

    Args:
        spec: an exported model directory, "toy" (no neural network: key profiles and an arpeggiator, for
            checking MIDI/OSC routing), or None for the shipped default model.
        provider: ONNX Runtime provider, "auto" | "cpu" | "cuda".

    Raises:
        ModelNotFoundError: with a message that says what to pass instead.
    """
    if spec == TOY:
        from typemoe.bridge.toy_model import ToyModel

        log.info("model: toy (rule-based stand-in, no neural network)")
        return ToyModel()
    if spec is None:
        path = default_model_dir()
        if not (path.is_dir() and any(path.glob("*.onnx"))):
            raise ModelNotFoundError(
                f"no shipped model found in {path} (this build has none yet). Pass --model DIR with an exported "
                "TypeMoE model (`python -m typemoe.export CHECKPOINT_DIR OUT_DIR` writes one), or --model toy to check "
                "your MIDI/OSC routing with a rule-based stand-in."
            )
    else:
        path = Path(spec)
        if not path.is_dir():
            raise ModelNotFoundError(
                f"--model {spec}: no such directory; pass an exported model directory or 'toy'"
            )
    try:
        from typemoe.export.runtime import OrtModel
    except ImportError as err:
        raise ModelNotFoundError(
            f"cannot load {path}: the ONNX runtime module export.runtime is unavailable "
            f"({err}); use --model toy meanwhile"
        ) from err
    model = OrtModel(path, provider=provider)
    log.info("model: %s (provider %s, context %d)", path, getattr(model, "provider", "?"), model.context_len)
    return model
