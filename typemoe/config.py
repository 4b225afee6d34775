"""Model hyper-parameters and the tiny / small / base presets.

Counts are n_*, widths are d_*. The config is frozen and keyword-only so a checkpoint's
JSON is the whole truth about its shapes; derive variants with dataclasses.replace:

    cfg = small(vocab_size=vocab.size, n_types=vocab.n_types, n_meters=len(METERS))
    dense = replace(cfg, ffn="dense")          # the equal-active-parameter baseline

stdlib only: export, training and the CLI read configs without building a model.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

FFN_KINDS = ("typemoe", "dense", "switch")


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Shapes and options of a TypeMoE model."""

    vocab_size: int
    """Token ids V, taken from the tokenizer (TypedVocab.size), never typed by hand."""
    n_types: int
    """Token types = experts per MoE layer (TypedVocab.n_types). The switch baseline uses as many experts."""
    context_len: int = 1024
    """Longest sequence (prompt + cache) the model is meant for. RoPE has no learned table, so this
    costs no parameters; it bounds training windows, export shapes and sampling."""
    n_layer: int = 4
    """Transformer blocks."""
    n_head: int = 4
    """Attention heads; d_model must divide by it."""
    d_model: int = 256
    """Residual stream width D."""
    d_expert: int = 512
    """Hidden width F of one SwiGLU expert (and of the dense baseline's single FFN)."""
    ffn: str = "typemoe"
    """Feed-forward kind: "typemoe" (routed by token type), "dense" (one FFN, the same active
    parameters per token) or "switch" (learned top-1 router over n_types experts)."""
    shared_expert: bool = False
    """Add an always-on SwiGLU of width d_expert beside the routed experts. With ffn="dense" the single
    FFN becomes 2 * d_expert wide instead, so replace(cfg, ffn="dense") stays an equal-active baseline."""
    n_keys: int = 24
    """Key head classes: 12 tonics x {major, minor} (typemoe.analysis.KEYS)."""
    n_meters: int = 8
    """Meter head classes; pass len(typemoe.analysis.METERS)."""
    n_classes: int = 0
    """Sequence-classification head classes (genre, emotion, ...); 0 = no head."""
    dropout: float = 0.0
    """Dropout on attention weights and residual branches while training."""
    rope_base: float = 10_000.0
    """RoPE base frequency theta."""

    def __post_init__(self) -> None:
        positive = (
            "vocab_size",
            "context_len",
            "n_layer",
            "n_head",
            "d_model",
            "d_expert",
            "n_keys",
            "n_meters",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not isinstance(self.n_types, int) or not 1 <= self.n_types <= 32:
            raise ValueError(f"n_types must be an int in 1..32, got {self.n_types!r}")
        if self.ffn not in FFN_KINDS:
            raise ValueError(f"ffn must be one of {FFN_KINDS}, got {self.ffn!r}")
        if not isinstance(self.shared_expert, bool):
            raise ValueError(f"shared_expert must be a bool, got {self.shared_expert!r}")
        if not isinstance(self.n_classes, int) or self.n_classes < 0:
            raise ValueError(f"n_classes must be an int >= 0 (0 = no head), got {self.n_classes!r}")
        if self.d_model % self.n_head != 0:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_head={self.n_head}")
        if self.d_head % 2 != 0:
            raise ValueError(
                f"d_model / n_head = {self.d_model} / {self.n_head} = {self.d_head} must be even (RoPE)"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not (
            isinstance(self.rope_base, (int, float)) and math.isfinite(self.rope_base) and self.rope_base > 1
        ):
            raise ValueError(f"rope_base must be a finite number > 1, got {self.rope_base!r}")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_head

    @property
    def n_experts(self) -> int:
        """Routed experts per layer: n_types for typemoe and switch, 1 for dense."""
        return 1 if self.ffn == "dense" else self.n_types

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of to_dict. Unknown keys are an error: they mean a config from another version.

        Raises:
            ValueError: on unknown or missing keys, or on invalid values.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown ModelConfig keys {unknown}; known: {sorted(names)}")
        try:
            return cls(**d)
        except TypeError as err:  # a missing required field
            raise ValueError(f"bad ModelConfig dict: {err}") from err


def tiny(vocab_size: int, n_types: int, **overrides: Any) -> ModelConfig:
    """Tests and smoke runs: 0.3M parameters (0.1M active per token), a forward pass in milliseconds on CPU."""
    kw: dict[str, Any] = dict(context_len=256, n_layer=2, n_head=2, d_model=64, d_expert=128)
    return ModelConfig(vocab_size=vocab_size, n_types=n_types, **{**kw, **overrides})


def small(vocab_size: int, n_types: int, **overrides: Any) -> ModelConfig:
    """The shipped default: trains on 2 CPU cores in about 2 hours, decodes in <= 1 ms with ONNX Runtime.

    Why these numbers: a decode step on a CPU is bound by per-operator overhead (about 50 ONNX nodes a
    block), not by FLOPs, so depth costs latency and width is nearly free up to the cache sizes: 4 blocks
    keep the step near 200 nodes. d_model 256 / 4 heads (d_head 64) and d_expert 512 give ~2.7M active
    parameters, ~16 MFLOP per training token, i.e. roughly 1-2k tokens/s on 2 cores, about one pass over the
    music21 corpus in 2 hours. context_len 1024 because the bench measures decode at 1024; it costs no
    parameters (RoPE), and training may use shorter windows. At V ~ 200-300 and 5 types: 9.0M parameters
    in all (36 MB in fp32, so a package capped at 30 MB stores them in fp16), 2.7M active per token.
    """
    kw: dict[str, Any] = dict(context_len=1024, n_layer=4, n_head=4, d_model=256, d_expert=512)
    return ModelConfig(vocab_size=vocab_size, n_types=n_types, **{**kw, **overrides})


def base(vocab_size: int, n_types: int, **overrides: Any) -> ModelConfig:
    """For a GPU: 103M parameters, 27M active per token, trained with bf16 autocast; too slow for 1 ms on CPU."""
    kw: dict[str, Any] = dict(context_len=1024, n_layer=8, n_head=8, d_model=512, d_expert=1536, dropout=0.1)
    return ModelConfig(vocab_size=vocab_size, n_types=n_types, **{**kw, **overrides})


PRESETS = {"tiny": tiny, "small": small, "base": base}
