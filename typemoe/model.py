"""TypeMoE: a decoder-only transformer over REMI tokens whose feed-forward blocks are routed by token type.

Pre-norm (RMSNorm), rotary positions, F.scaled_dot_product_attention, an LM head tied to the embedding,
key and meter heads on every position (so they work while music streams) and an optional pooled
sequence-classification head. forward returns logits only: losses live in training/.

KV cache, preallocated (KVCache): one (B, H, S, Dh) buffer pair per layer, of which the first P rows hold
the stream; a forward writes its T new rows in place at P .. P+T-1 (no copy of the cache per step) and
attends over rows 0 .. P+T-1 (`cached_attention`, which the exported graph's reference path runs too).
P = 0 is allowed. Keys are cached after RoPE. The ONNX graph keeps the same layout (export/graphs.py).

Dimensions: B batch, T new tokens, P cached tokens, S cache rows (capacity), D d_model, H heads, Dh d_head,
V vocab, E experts, L layers, K keys, M meters, C classes
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from typemoe.config import ModelConfig
from typemoe.moe import Experts, FFNOut, SwiGLU, TypeRouter, make_ffn

log = logging.getLogger(__name__)

KVPair = tuple[torch.Tensor, torch.Tensor]  # (B, H, P, Dh) keys (after RoPE), values


@dataclass
class KVCache:
    """Preallocated keys (after RoPE) and values: k[i], v[i] are layer i's (B, H, S, Dh) buffers, the first
    `length` rows the stream so far. A forward writes in place and advances `length`; setting `length`
    back rewinds (the rows past it are overwritten by the next forward). cache[i] is layer i's (k, v) rows
    in use, as views."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    length: int = 0

    @property
    def capacity(self) -> int:
        return self.k[0].size(2)

    def __len__(self) -> int:
        return len(self.k)

    def __getitem__(self, i: int) -> KVPair:
        return self.k[i][:, :, : self.length], self.v[i][:, :, : self.length]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def clone(self, length: int | None = None) -> KVCache:
        """An independent copy of the first `length` rows (default: all in use), same capacity."""
        n = self.length if length is None else int(length)
        k, v = [torch.zeros_like(t) for t in self.k], [torch.zeros_like(t) for t in self.v]
        for dst, src in zip(k + v, self.k + self.v):
            dst[:, :, :n] = src[:, :, :n]
        return KVCache(k, v, n)


def cached_attention(q, k, v, cache_k: torch.Tensor, cache_v: torch.Tensor, P: int) -> torch.Tensor:
    """Write the new keys/values k, v (B, H, T, Dh) into rows P..P+T-1 of the buffers cache_k, cache_v
    (B, H, S, Dh), in place, and attend the new queries q (B, H, T, Dh) over rows 0..P+T-1: new token i
    (absolute position P+i) sees keys j <= P+i. Returns (B, H, T, Dh)."""
    T = q.size(2)
    if cache_k.size(2) < P + T:
        raise ValueError(f"a cache of {cache_k.size(2)} rows cannot hold {P} + {T} tokens")
    cache_k[:, :, P : P + T], cache_v[:, :, P : P + T] = k, v
    q_pos = torch.arange(T, device=q.device).unsqueeze(1) + P  # (T, 1)
    mask = torch.arange(P + T, device=q.device).unsqueeze(0) <= q_pos  # (T, P+T) bool
    # is_causal aligns the mask top-left, wrong when P > 0: an explicit mask
    return F.scaled_dot_product_attention(q, cache_k[:, :, : P + T], cache_v[:, :, : P + T], attn_mask=mask)


@dataclass
class SwitchAux:
    """Router facts of the switch baseline, for its load-balancing loss and for plots."""

    balance: torch.Tensor  # () mean over layers of E * sum_e f_e * P_e; 1.0 when balanced
    route: torch.Tensor  # (L, B, T) long, the expert each token went to in each layer


@dataclass
class Outputs:
    logits: torch.Tensor  # (B, T, V) next-token logits
    key_logits: torch.Tensor  # (B, T, K) key estimate at every position
    meter_logits: torch.Tensor  # (B, T, M) meter estimate at every position
    cls_logits: torch.Tensor | None  # (B, C) pooled over valid positions; None when n_classes == 0
    hidden: torch.Tensor  # (B, T, D) final-norm hidden states
    present: KVCache | list[KVPair]  # the past given, advanced by T; without one, L x (k, v) (B, H, T, Dh)
    expert_counts: torch.Tensor  # (L, E) long, tokens per expert per layer (dense: tokens per type)
    aux: SwitchAux | None  # switch only


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # written out, not F.rms_norm: every ONNX exporter emits these ops, and ORT fuses them
        # (SimplifiedLayerNormalization); fp32 statistics under autocast
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def rope_tables(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (T, Dh/2) for absolute positions (T,). Computed in fp32 from positions, so the
    cached and the full forward see bit-identical tables."""
    angles = positions.float().unsqueeze(1) * inv_freq.unsqueeze(0)  # (T, Dh/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, Dh) by position; half-split pairing (GPT-NeoX), which exports as plain ops."""
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]  # (B, H, T, Dh/2) each
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)  # (B, H, T, Dh)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.d_head, self.dropout = cfg.n_head, cfg.d_head, cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x, cos, sin, cache: tuple[torch.Tensor, torch.Tensor, int] | None):
        """cache: None (training / plain forward: the fused causal kernel), or (k buffer, v buffer, P) of a
        KVCache layer, written in place. Returns (B, T, D) and, without a cache, this call's (k, v)."""
        B, T, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=2)  # 3 x (B, T, D)
        q = q.view(B, T, self.n_head, self.d_head).transpose(1, 2)  # (B, H, T, Dh)
        k = k.view(B, T, self.n_head, self.d_head).transpose(1, 2)  # (B, H, T, Dh)
        v = v.view(B, T, self.n_head, self.d_head).transpose(1, 2)  # (B, H, T, Dh)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is None:
            dropout_p = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
            kv = (k, v)
        else:
            y, kv = cached_attention(q, k, v, *cache), None
        y = y.transpose(1, 2).reshape(B, T, D)  # (B, T, D)
        return self.proj(y), kv


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm_attn = RMSNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.norm_ffn = RMSNorm(cfg.d_model)
        self.ffn = make_ffn(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, types, cos, sin, cache, moe_path) -> tuple[torch.Tensor, KVPair | None, FFNOut]:
        a, present = self.attn(self.norm_attn(x), cos, sin, cache)
        x = x + self.drop(a)
        f = self.ffn(self.norm_ffn(x), types, moe_path)
        x = x + self.drop(f.y)
        return x, present, f


class TypeMoE(nn.Module):
    """The model. Built from a config plus the vocabulary's type table (token id -> type id).

    Args:
        cfg: shapes and options.
        type_of_id: (V,) ints in [0, n_types): TypedVocab.type_of, or any synthetic table.
    Raises:
        ValueError: if the table does not fit the config.
    """

    def __init__(self, cfg: ModelConfig, type_of_id: torch.Tensor | np.ndarray | Sequence[int]):
        super().__init__()
        if isinstance(type_of_id, torch.Tensor):
            type_of_id = type_of_id.cpu()
        table = np.asarray(type_of_id, dtype=np.int64)  # checked in numpy: works under torch.device("meta")
        if table.shape != (cfg.vocab_size,):
            raise ValueError(f"type table shape {table.shape} != (vocab_size,) = ({cfg.vocab_size},)")
        if table.min() < 0 or table.max() >= cfg.n_types:
            raise ValueError(f"type ids span {table.min()}..{table.max()}, need 0..{cfg.n_types - 1}")
        self.cfg = cfg
        self.router = TypeRouter(torch.from_numpy(table))
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = RMSNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied (Press & Wolf 2017, arXiv:1608.05859)
        self.key_head = nn.Linear(cfg.d_model, cfg.n_keys)
        self.meter_head = nn.Linear(cfg.d_model, cfg.n_meters)
        self.cls_head = nn.Linear(cfg.d_model, cfg.n_classes) if cfg.n_classes else None
        inv_freq = 1.0 / cfg.rope_base ** (torch.arange(0, cfg.d_head, 2).float() / cfg.d_head)  # (Dh/2,)
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # derived from cfg, not saved
        self.apply(self._init_weights)
        log.debug("TypeMoE %s: %s", cfg.ffn, count_params(self))

    def _init_weights(self, module: nn.Module) -> None:
        """nanoGPT init: N(0, 0.02), zero biases; residual output projections scaled by 1/sqrt(2L) (GPT-2)."""
        std_out = 0.02 / math.sqrt(2 * self.cfg.n_layer)
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        elif isinstance(module, Experts):
            nn.init.normal_(module.w_gate, mean=0.0, std=0.02)
            nn.init.normal_(module.w_up, mean=0.0, std=0.02)
            nn.init.normal_(module.w_down, mean=0.0, std=std_out)
        if isinstance(module, Attention):
            nn.init.normal_(module.proj.weight, mean=0.0, std=std_out)
        elif isinstance(module, SwiGLU):
            nn.init.normal_(module.w_down.weight, mean=0.0, std=std_out)

    def empty_past(self, batch: int = 1, capacity: int | None = None) -> KVCache:
        """An empty cache (P = 0) of `capacity` rows (default: the context) on the model's device and dtype,
        for the first call of a decode loop."""
        w = self.wte.weight
        shape = (batch, self.cfg.n_head, capacity or self.cfg.context_len, self.cfg.d_head)
        L = self.cfg.n_layer
        return KVCache([w.new_zeros(shape) for _ in range(L)], [w.new_zeros(shape) for _ in range(L)])

    def forward(
        self,
        idx: torch.Tensor,
        *,
        past: KVCache | None = None,
        valid_mask: torch.Tensor | None = None,
        moe_path: str = "sparse",
    ) -> Outputs:
        """Run T new tokens on top of an optional cache.

        Args:
            idx: (B, T) long token ids.
            past: None (no cache: fused causal attention), or a KVCache holding P tokens, written in place.
            valid_mask: (B, T) bool, True on real tokens; only the classification pooling reads it. Pads go
                on the right: attention is causal, so they never change a real position's output.
            moe_path: "sparse" (training), "gather" (export decode) or "onehot" (export prefill).
        Returns:
            Outputs; its present is `past` itself, now holding P + T tokens (pass it again next time).
        """
        B, T = idx.shape
        cfg = self.cfg
        assert past is None or len(past) == cfg.n_layer, f"past has {len(past)} layers, model {cfg.n_layer}"
        P = 0 if past is None else past.length
        positions = torch.arange(P, P + T, device=idx.device)  # (T,)
        cos, sin = rope_tables(positions, self.inv_freq)  # (T, Dh/2) each
        types = self.router(idx)  # (B, T) expert of each token
        x = self.drop(self.wte(idx))  # (B, T, D)
        present, counts, balances, routes = [], [], [], []
        for i, block in enumerate(self.blocks):
            x, kv, f = block(
                x, types, cos, sin, None if past is None else (past.k[i], past.v[i], P), moe_path
            )
            present.append(kv)
            counts.append(f.counts)
            if f.balance is not None:
                balances.append(f.balance)
                routes.append(f.route)
        h = self.norm_f(x)  # (B, T, D)
        cls_logits = None
        if self.cls_head is not None:
            # mean pooling commutes with the linear head, so a stream can average per-position cls logits
            if valid_mask is None:
                valid_mask = torch.ones_like(idx, dtype=torch.bool)
            m = valid_mask.to(h.dtype)  # (B, T)
            pooled = (h * m.unsqueeze(-1)).sum(1) / m.sum(1, keepdim=True).clamp(min=1.0)  # (B, D)
            cls_logits = self.cls_head(pooled)  # (B, C)
        if past is not None:
            past.length = P + T
            present = past
        aux = None
        if balances:
            aux = SwitchAux(balance=torch.stack(balances).mean(), route=torch.stack(routes))  # (), (L, B, T)
        return Outputs(
            logits=self.lm_head(h),
            key_logits=self.key_head(h),
            meter_logits=self.meter_head(h),
            cls_logits=cls_logits,
            hidden=h,
            present=present,
            expert_counts=torch.stack(counts),  # (L, E)
            aux=aux,
        )

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: decay on weight matrices (and stacked experts) only; norms, biases and the
        (tied) embedding get none."""
        no_decay_ids = {id(self.wte.weight)}
        decay, no_decay = [], []
        for p in self.parameters():  # parameters() yields the tied weight once
            if not p.requires_grad:
                continue
            (decay if p.dim() >= 2 and id(p) not in no_decay_ids else no_decay).append(p)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]


def count_params(model: TypeMoE) -> dict[str, int]:
    """Total parameters, and those active for one token (a routed layer runs 1 of its E experts).

    The tied embedding counts once; buffers (the type table) are not parameters.
    """
    total = sum(p.numel() for p in model.parameters())
    inactive = 0
    for module in model.modules():
        if isinstance(module, Experts):
            per_expert = sum(w[0].numel() for w in (module.w_gate, module.w_up, module.w_down))
            inactive += (module.n_experts - 1) * per_expert
    return {"total": total, "active": total - inactive}
