"""Feed-forward blocks: experts routed by token type (TypeMoE), and the dense and Switch baselines.

TypeMoE routing is a table lookup (token id -> type id), not a learned gate, so there is no top-k, no
capacity and no balancing loss, and the route of a token is known before the model runs. Per-expert
token counts are still returned, for logging.

Experts hold stacked SwiGLU weights (gpt-fast / mistral-inference style). Three ways to run them, which
tests/test_moe.py proves equal:
  "sparse"  training: tokens grouped by expert, one matmul per expert, one host sync per layer.
  "gather"  export / decode: each token gathers its own expert's weights by index. No data-dependent
            control flow; with one token it costs exactly one dense FFN. Memory O(N * D * F), so for
            decode and short prompts only.
  "onehot"  export / prefill: every expert runs on every token, a one-hot weight keeps the token's own
            output. Static shapes, E times the FLOPs, no weight copies.

Dimensions: B batch, T time, N = B*T tokens, D d_model, F d_expert, E experts, V vocab
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from typemoe.config import ModelConfig

MOE_PATHS = ("sparse", "gather", "onehot")


class SwiGLU(nn.Module):
    """One dense SwiGLU feed-forward: w_down(silu(w_gate x) * w_up x). Shazeer 2020, arXiv:2002.05202."""

    def __init__(self, d_model: int, d_hidden: int):
        super().__init__()
        self.w_gate = nn.Linear(d_model, d_hidden, bias=False)
        self.w_up = nn.Linear(d_model, d_hidden, bias=False)
        self.w_down = nn.Linear(d_hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class TypeRouter(nn.Module):
    """Token id -> type id. A buffer, no parameters: the route is a pure function of the token id."""

    def __init__(self, type_of_id: torch.Tensor):  # (V,) int
        super().__init__()
        assert type_of_id.dim() == 1, f"type table must be (V,), got {tuple(type_of_id.shape)}"
        # persistent on purpose: the table belongs to the checkpoint and becomes a Gather in ONNX
        self.register_buffer("type_of_id", type_of_id.long().clone())

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T)
        return self.type_of_id[idx]


def gathered_experts(
    x: torch.Tensor, expert: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor
) -> torch.Tensor:
    """(B, T, D) tokens through their own SwiGLU expert, (B, T) expert ids, stacked weights w_gate, w_up
    (E, D, F) and w_down (E, F, D): each token's weights gathered. Experts.gather, and the eager reference
    of the exported MoE node (export/graphs.py RoutedExperts), run this."""
    x1 = x.unsqueeze(-2)  # (B, T, 1, D)
    h = F.silu(x1 @ w_gate[expert]) * (x1 @ w_up[expert])  # (B, T, 1, F)
    return (h @ w_down[expert]).squeeze(-2)  # (B, T, D)


class Experts(nn.Module):
    """E SwiGLU experts stored as stacked weights, one slice per expert."""

    def __init__(self, n_experts: int, d_model: int, d_expert: int):
        super().__init__()
        shape_EDF = (n_experts, d_model, d_expert)  # no local named F: F is torch.nn.functional
        self.w_gate = nn.Parameter(torch.empty(shape_EDF))
        self.w_up = nn.Parameter(torch.empty(shape_EDF))
        self.w_down = nn.Parameter(torch.empty(n_experts, d_expert, d_model))
        for w in (self.w_gate, self.w_up, self.w_down):  # TypeMoE._init_weights re-does this model-wide
            nn.init.normal_(w, mean=0.0, std=0.02)

    @property
    def n_experts(self) -> int:
        return self.w_gate.size(0)

    def forward(self, x: torch.Tensor, expert: torch.Tensor, path: str = "sparse") -> torch.Tensor:
        """(B, T, D) tokens, (B, T) expert ids -> (B, T, D), each token through its own expert."""
        if path == "sparse":
            return self.sparse(x, expert)
        if path == "gather":
            return self.gather(x, expert)
        if path == "onehot":
            return self.onehot(x, expert)
        raise ValueError(f"MoE path must be one of {MOE_PATHS}, got {path!r}")

    def sparse(self, x: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
        """Training path: sort tokens by expert, one matmul per expert, unsort.

        The split sizes are data (one host sync per layer), so this path is neither compiled nor exported.
        """
        B, T, D = x.shape
        x_ND, e_N = x.reshape(-1, D), expert.reshape(-1)  # (N, D), (N,)
        order_N = torch.argsort(e_N, stable=True)  # (N,) token rows grouped by expert
        sizes = torch.bincount(e_N, minlength=self.n_experts).tolist()  # the host sync
        chunks = x_ND.index_select(0, order_N).split(sizes)  # E x (n_e, D)
        # unbind, not w[e]: one backward op for all slices instead of E full-size zero-filled grads
        weights = zip(self.w_gate.unbind(0), self.w_up.unbind(0), self.w_down.unbind(0))
        ys = []
        for h, (w_gate, w_up, w_down) in zip(chunks, weights):  # an empty chunk gives a zero grad
            h = F.silu(h @ w_gate) * (h @ w_up)  # (n_e, F)
            ys.append(h @ w_down)  # (n_e, D)
        y_sorted = torch.cat(ys)  # (N, D) grouped by expert; under autocast its dtype may differ from x
        y_ND = y_sorted.new_zeros(x_ND.shape).index_copy(0, order_N, y_sorted)  # (N, D) original order
        return y_ND.view(B, T, D)

    def gather(self, x: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
        """Export path for decode: gather each token's weights (gpt-fast ConditionalFeedForward)."""
        return gathered_experts(x, expert, self.w_gate, self.w_up, self.w_down)

    def onehot(self, x: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
        """Export path for prefill: run all experts, keep each token's own output."""
        g = torch.einsum("btd,edf->btef", x, self.w_gate)  # (B, T, E, F)
        u = torch.einsum("btd,edf->btef", x, self.w_up)  # (B, T, E, F)
        y = torch.einsum("btef,efd->bted", F.silu(g) * u, self.w_down)  # (B, T, E, D)
        keep = F.one_hot(expert, self.n_experts).to(y.dtype)  # (B, T, E)
        return torch.einsum("bted,bte->btd", y, keep)  # (B, T, D)


@dataclass
class FFNOut:
    """What a feed-forward block returns besides its output: routing facts for logging and the aux loss."""

    y: torch.Tensor  # (B, T, D)
    counts: torch.Tensor  # (E,) long, tokens sent to each expert (dense: tokens of each type)
    route: torch.Tensor | None = None  # (B, T) long, switch only: the learned expert of each token
    balance: torch.Tensor | None = None  # () float, switch only: the load-balancing quantity


def _count(expert: torch.Tensor, n: int) -> torch.Tensor:  # (B, T) -> (n,)
    # one_hot + sum rather than bincount: static shapes, so the same code traces for export
    return F.one_hot(expert, n).sum(dim=(0, 1))


class TypeMoEFFN(nn.Module):
    """TypeMoE feed-forward: the token's type picks its expert; optionally plus an always-on shared one."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.experts = Experts(cfg.n_types, cfg.d_model, cfg.d_expert)
        self.shared = SwiGLU(cfg.d_model, cfg.d_expert) if cfg.shared_expert else None

    def forward(self, x: torch.Tensor, types: torch.Tensor, path: str = "sparse") -> FFNOut:
        y = self.experts(x, types, path)
        if self.shared is not None:
            y = y + self.shared(x)
        return FFNOut(y=y, counts=_count(types, self.experts.n_experts))


class DenseFFN(nn.Module):
    """Baseline: one SwiGLU for every token, as wide as one expert (twice with shared_expert)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_types = cfg.n_types
        self.ffn = SwiGLU(cfg.d_model, cfg.d_expert * (2 if cfg.shared_expert else 1))

    def forward(self, x: torch.Tensor, types: torch.Tensor, path: str = "sparse") -> FFNOut:
        return FFNOut(y=self.ffn(x), counts=_count(types, self.n_types))


class SwitchFFN(nn.Module):
    """Baseline: learned top-1 router over n_types experts (Switch Transformer, Fedus et al. 2021).

    Dropless (no capacity factor): every token reaches its expert, so the only difference from TypeMoE is
    who picks the expert. The expert output is scaled by its router probability, which is how the router
    gets gradient. `balance` is the paper's auxiliary loss E * sum_e f_e * P_e (f_e: share of tokens sent
    to e, P_e: mean router probability of e); it is 1.0 when balanced. training/ adds it with its weight.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.router = nn.Linear(cfg.d_model, cfg.n_types, bias=False)
        self.experts = Experts(cfg.n_types, cfg.d_model, cfg.d_expert)
        self.shared = SwiGLU(cfg.d_model, cfg.d_expert) if cfg.shared_expert else None

    def forward(self, x: torch.Tensor, types: torch.Tensor, path: str = "sparse") -> FFNOut:
        E = self.experts.n_experts
        # the router runs in fp32 even under autocast: softmax over few logits is precision-sensitive
        probs = F.softmax(self.router(x).float(), dim=-1)  # (B, T, E)
        gate, route = probs.max(dim=-1)  # (B, T), (B, T)
        y = self.experts(x, route, path) * gate.unsqueeze(-1).to(x.dtype)  # (B, T, D)
        if self.shared is not None:
            y = y + self.shared(x)
        counts = _count(route, E)  # (E,)
        f_E = counts.float() / route.numel()  # (E,) no gradient: argmax
        P_E = probs.mean(dim=(0, 1))  # (E,)
        balance = E * (f_E * P_E).sum()
        return FFNOut(y=y, counts=counts, route=route, balance=balance)


def make_ffn(cfg: ModelConfig) -> nn.Module:
    """The feed-forward block named by cfg.ffn; all take (x, types, path) and return FFNOut."""
    kinds = {"typemoe": TypeMoEFFN, "dense": DenseFFN, "switch": SwitchFFN}
    return kinds[cfg.ffn](cfg)
