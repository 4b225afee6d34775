"""Generation with PyTorch: prefill the prompt, then decode one token at a time on the KV cache.

Sampling is temperature + nucleus (top-p), greedy at temperature 0, seeded through a torch.Generator so a
run repeats exactly. An optional REMI grammar mask keeps the stream valid: the family of the last token
picks the row of `next_allowed` that says which ids may follow (see TypedVocab.family_of / next_allowed in
docs/INTERNAL_API.md). export.runtime implements the same loop with numpy for ONNX Runtime.

Dimensions: B batch, T prompt length, N new tokens, V vocab, G grammar families
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from typemoe.model import TypeMoE


@dataclass(frozen=True)
class Grammar:
    """Which ids may follow a token, by the token's grammar family."""

    next_allowed: torch.Tensor  # (G, V) bool
    family_of: torch.Tensor  # (V,) long, in [0, G)

    def __post_init__(self) -> None:
        if self.next_allowed.dim() != 2 or self.family_of.shape != (self.next_allowed.size(1),):
            raise ValueError(
                f"grammar shapes: next_allowed {tuple(self.next_allowed.shape)} must be (G, V) and "
                f"family_of {tuple(self.family_of.shape)} must be (V,)"
            )
        lo, hi, n = int(self.family_of.min()), int(self.family_of.max()), self.next_allowed.size(0)
        if lo < 0 or hi >= n:
            raise ValueError(f"family ids span {lo}..{hi}, but next_allowed has {n} rows")

    @classmethod
    def from_arrays(cls, next_allowed: Any, family_of: Any) -> Grammar:
        """From numpy arrays or tensors (a TypedVocab's, or synthetic ones in tests)."""
        return cls(
            next_allowed=torch.as_tensor(np.asarray(next_allowed), dtype=torch.bool),
            family_of=torch.as_tensor(np.asarray(family_of), dtype=torch.long),
        )

    @classmethod
    def from_vocab(cls, vocab: Any) -> Grammar:
        return cls.from_arrays(vocab.next_allowed, vocab.family_of)

    def allowed_after(self, last: torch.Tensor) -> torch.Tensor:  # (B,) ids -> (B, V) bool
        fam = self.family_of.to(last.device)[last]  # (B,)
        return self.next_allowed.to(last.device)[fam]  # (B, V)


def sample_next(
    logits: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    allowed: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one id per row from (B, V) logits; returns (B,) long.

    Args:
        temperature: 0 = greedy (argmax), else logits / temperature.
        top_p: keep the smallest set of most likely ids whose probability reaches top_p (1.0 = all).
        allowed: (B, V) bool; other ids are never picked.
        generator: torch.Generator for reproducible draws.
    """
    if temperature < 0 or not 0.0 < top_p <= 1.0:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    logits = logits.float()
    if allowed is not None:
        assert bool(allowed.any(dim=-1).all()), "grammar mask allows no token for some row"
        logits = logits.masked_fill(~allowed, float("-inf"))
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)  # (B, V)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)  # (B, V) each
        # drop an id when the ids more likely than it already reach top_p; the most likely always stays
        drop = (sorted_p.cumsum(dim=-1) - sorted_p) >= top_p  # (B, V)
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)  # (B, V) back in id order
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)


@torch.inference_mode()
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
    """Continue each prompt row by up to max_new_tokens ids.

    When the context is full the cache is rebuilt by prefilling the last 3/4 of context_len tokens: cached
    keys carry absolute RoPE positions, so they cannot simply be shifted.

    Args:
        model: the model; run in eval mode, its training flag is restored afterwards.
        prompt: (B, T) long, T >= 1 (start with BOS or control tokens).
        max_new_tokens: tokens to add.
        temperature, top_p: see sample_next.
        grammar: optional REMI grammar mask.
        seed: seeds a private torch.Generator (None = nondeterministic).
        stop_id: stop once every row has produced it; finished rows are padded with it.
        moe_path: MoE execution path, see typemoe.moe.
    Returns:
        (B, N) long new ids, N <= max_new_tokens.
    """
    if prompt.dim() != 2 or prompt.size(1) < 1:
        raise ValueError(f"prompt must be (B, T) with T >= 1, got shape {tuple(prompt.shape)}")
    ctx = model.cfg.context_len
    device = model.wte.weight.device
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        seq = prompt.to(device)[:, -ctx:]  # (B, T') all tokens so far, within the context
        out = model(seq, past=model.empty_past(seq.size(0)), moe_path=moe_path)  # prefill
        done = torch.zeros(seq.size(0), dtype=torch.bool, device=device)  # (B,)
        new = []
        for _ in range(max_new_tokens):
            allowed = None if grammar is None else grammar.allowed_after(seq[:, -1])  # (B, V)
            nxt = sample_next(
                out.logits[:, -1], temperature=temperature, top_p=top_p, allowed=allowed, generator=gen
            )
            if stop_id is not None:
                nxt = nxt.masked_fill(done, stop_id)
                done |= nxt == stop_id
            new.append(nxt)
            seq = torch.cat((seq, nxt.unsqueeze(1)), dim=1)  # (B, T' + 1)
            if stop_id is not None and bool(done.all()):
                break
            if out.present[0][0].size(2) + 1 > ctx:  # full: rebuild from the most recent tokens
                seq = seq[:, -(3 * ctx // 4) :]
                out = model(seq, past=model.empty_past(seq.size(0)), moe_path=moe_path)
            else:
                out = model(nxt.unsqueeze(1), past=out.present, moe_path=moe_path)  # decode one step
        return torch.stack(new, dim=1) if new else prompt.new_zeros((prompt.size(0), 0))
    finally:
        model.train(was_training)
