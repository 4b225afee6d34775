"""Batched generation on torch tensors: a thin face over the one decoder, typemoe.decoding.

Every row runs through a decoding.Session on the PyTorch backend (typemoe.torch_session), so the grammar,
the context slide (control prefix kept) and the sampling rule are the ones the ONNX runtime and the bridge
use. This module only converts tensors and a torch.Generator; it decides nothing.

Dimensions: B batch, T prompt length, N new tokens, V vocab, G grammar families
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from typemoe import decoding, sampling
from typemoe.model import TypeMoE
from typemoe.torch_session import session_for


@dataclass(frozen=True)
class Grammar:
    """Which ids may follow a token, by the token's grammar family."""

    next_allowed: np.ndarray  # (G, V) bool
    family_of: np.ndarray  # (V,) int64, in [0, G)

    def tables(self) -> decoding.Tables:
        return decoding.Tables(self.next_allowed, self.family_of)

    @classmethod
    def from_arrays(cls, next_allowed: Any, family_of: Any) -> Grammar:
        """From numpy arrays or tensors (a TypedVocab's, or synthetic ones in tests). Raises ValueError."""
        g = cls(np.asarray(next_allowed, dtype=bool), np.asarray(family_of, dtype=np.int64))
        g.tables()  # validates the shapes and family ids
        return g

    @classmethod
    def from_vocab(cls, vocab: Any) -> Grammar:
        return cls.from_arrays(vocab.next_allowed, vocab.family_of)


def _rng(generator: torch.Generator | None) -> np.random.Generator:
    """A numpy generator drawn from a torch one (advancing it), so seeded torch callers stay repeatable."""
    if generator is None:
        return np.random.default_rng()
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    allowed: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one id per row of (B, V) logits with typemoe.sampling.sample_next; returns (B,) long."""
    sampling.check_sampling(temperature, top_p)
    rows = logits.float().cpu().numpy()  # (B, V)
    ok = np.ones(rows.shape, dtype=bool) if allowed is None else allowed.cpu().numpy()  # (B, V)
    rng = _rng(generator)
    picks = [
        sampling.sample_next(r, a, temperature=temperature, top_p=top_p, rng=rng) for r, a in zip(rows, ok)
    ]
    return torch.as_tensor(picks, dtype=torch.long, device=logits.device)


def generate(
    model: TypeMoE,
    prompt: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    grammar: Grammar | None = None,
    seed: int | None = None,
    stop_id: int | None = None,
    moe_path: str = "sparse",
) -> torch.Tensor:
    """Continue each prompt row by up to max_new_tokens ids (decoding.Session per row).

    Args:
        model: the model; run in eval mode, its training flag is restored afterwards.
        prompt: (B, T) long, T >= 1 (start with BOS or control tokens).
        max_new_tokens: tokens to add.
        temperature, top_p: see typemoe.sampling.sample_next.
        grammar: optional REMI grammar mask (family rows only: synthetic vocabularies have no time grid).
        seed: seeds the draws (None = nondeterministic); rows draw from one generator in turn.
        stop_id: a row stops once it has produced it; finished rows are padded with it.
        moe_path: MoE execution path, see typemoe.moe.
    Returns:
        (B, N) long new ids, N <= max_new_tokens.
    """
    if prompt.dim() != 2 or prompt.size(1) < 1:
        raise ValueError(f"prompt must be (B, T) with T >= 1, got shape {tuple(prompt.shape)}")
    V = model.cfg.vocab_size
    tables = grammar.tables() if grammar is not None else decoding.Tables.unconstrained(V)
    rng = np.random.default_rng(seed)
    rows = []
    for row in prompt.tolist():
        session = session_for(model, tables, moe_path=moe_path)
        session.feed(row)
        new = []
        for nxt in session.generate_steps(
            n_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=rng
        ):
            new.append(nxt)
            if nxt == stop_id:
                break
        rows.append(new)
    n = max(map(len, rows), default=0)
    pad = 0 if stop_id is None else stop_id
    out = [r + [pad] * (n - len(r)) for r in rows]
    return torch.as_tensor(out, dtype=torch.long, device=prompt.device).reshape(len(rows), n)
