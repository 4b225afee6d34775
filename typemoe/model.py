"""TypeMoE: a decoder-only transformer over REMI tokens whose feed-forward blocks are routed by token type.

Pre-norm (RMSNorm), rotary positions, F.scaled_dot_product_attention, an LM head tied to the embedding,
key and meter heads on every position (so they work while music streams) and an optional pooled
sequence-classification head. forward returns logits only: losses live in training/.

KV cache, done one way so ONNX can reproduce it: past keys/values come in as plain tensors, one (k, v)
pair per layer of shape (B, H, P, Dh), and the layer returns them with the new ones appended (present,
(B, H, P + T, Dh)). New tokens sit at positions P .. P+T-1. P = 0 is allowed. Keys are cached after RoPE.

Dimensions: B batch, T new tokens, P cached tokens, S = P + T, D d_model, H heads, Dh d_head,
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
    present: list[KVPair]  # L x ((B, H, S, Dh), (B, H, S, Dh)): feed back as past
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

    def forward(self, x, cos, sin, past: KVPair | None) -> tuple[torch.Tensor, KVPair]:
        B, T, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=2)  # 3 x (B, T, D)
        q = q.view(B, T, self.n_head, self.d_head).transpose(1, 2)  # (B, H, T, Dh)
        k = k.view(B, T, self.n_head, self.d_head).transpose(1, 2)  # (B, H, T, Dh)
        v = v.view(B, T, self.n_head, self.d_head).transpose(1, 2)  # (B, H, T, Dh)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        dropout_p = self.dropout if self.training else 0.0
        if past is None:  # training / plain forward: the fused causal kernel
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:
            k = torch.cat((past[0], k), dim=2)  # (B, H, S, Dh)
            v = torch.cat((past[1], v), dim=2)  # (B, H, S, Dh)
            # is_causal aligns the mask top-left, wrong when P > 0; new token i (absolute P+i) sees keys j <= P+i
            P = k.size(2) - T
            q_pos = torch.arange(T, device=x.device).unsqueeze(1) + P  # (T, 1)
            mask = torch.arange(k.size(2), device=x.device).unsqueeze(0) <= q_pos  # (T, S) bool
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).reshape(B, T, D)  # (B, T, D)
        return self.proj(y), (k, v)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm_attn = RMSNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.norm_ffn = RMSNorm(cfg.d_model)
        self.ffn = make_ffn(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, types, cos, sin, past, moe_path) -> tuple[torch.Tensor, KVPair, FFNOut]:
        a, present = self.attn(self.norm_attn(x), cos, sin, past)
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

    def empty_past(self, batch: int = 1) -> list[KVPair]:
        """An empty cache (P = 0) on the model's device and dtype, for the first call of a decode loop."""
        w = self.wte.weight
        shape = (batch, self.cfg.n_head, 0, self.cfg.d_head)
        return [(w.new_zeros(shape), w.new_zeros(shape)) for _ in range(self.cfg.n_layer)]

    def forward(
        self,
        idx: torch.Tensor,
        *,
        past: Sequence[KVPair] | None = None,
        valid_mask: torch.Tensor | None = None,
        moe_path: str = "sparse",
    ) -> Outputs:
        """Run T new tokens on top of an optional cache.

        Args:
            idx: (B, T) long token ids.
            past: None (no cache: fused causal attention), or one (k, v) per layer, each (B, H, P, Dh).
            valid_mask: (B, T) bool, True on real tokens; only the classification pooling reads it. Pads go
                on the right: attention is causal, so they never change a real position's output.
            moe_path: "sparse" (training), "gather" (export decode) or "onehot" (export prefill).
        Returns:
            Outputs; its present is the cache to pass as past next time.
        """
        B, T = idx.shape
        cfg = self.cfg
        assert past is None or len(past) == cfg.n_layer, f"past has {len(past)} layers, model {cfg.n_layer}"
        P = 0 if past is None else past[0][0].size(2)
        positions = torch.arange(P, P + T, device=idx.device)  # (T,)
        cos, sin = rope_tables(positions, self.inv_freq)  # (T, Dh/2) each
        types = self.router(idx)  # (B, T) expert of each token
        x = self.drop(self.wte(idx))  # (B, T, D)
        present, counts, balances, routes = [], [], [], []
        for i, block in enumerate(self.blocks):
            x, kv, f = block(x, types, cos, sin, None if past is None else past[i], moe_path)
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
