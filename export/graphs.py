"""Export-only wrapper: TypeMoE as one ONNX graph with an explicit, preallocated KV cache.

What ONNX sees is `StepGraph`: one call runs T >= 1 new tokens on top of P >= 0 cached ones, so the
same graph does prefill (P = 0, T = prompt) and decode (T = 1), and chunked feeding in between. The
graph contract (names, shapes, dtypes) is in export/DESIGN.md; the constants below are its names.

Why the two ONNX Runtime contrib operators (com.microsoft), emitted with torch.onnx.ops.symbolic:

- GroupQueryAttention: RoPE + causal attention + KV-cache write in one node. Its cache is a buffer of
  fixed length S (= context_len) that the runtime binds as both past and present (IOBinding), so a
  decode step writes one row in place instead of copying the whole cache (with plain ONNX ops a
  Concat copies 8 MB per step at context 1024 for the small preset).
- MoE: the type-routed experts. Routing stays a pure lookup: a Gather of a constant (V, E) one-hot
  table by token id gives the router logits; the op's top-1 then picks exactly the token's type
  expert with weight 1.0 (softmax, then renormalised over the single chosen expert). For one token it
  runs one expert's matmuls on the stacked weights without copying them; a Gather of the expert's
  weight slices (typemoe.moe "gather" path) copies 1.5 MB per layer per step and measured 1.6x
  slower. No data-dependent control flow appears in the graph (no If/Loop).

Outside ONNX export (eager PyTorch) both ops run a reference implementation that is the model's own code:
the attention is typemoe.model.apply_rope and cached_attention (on the same preallocated cache layout), the
experts typemoe.moe.gathered_experts (on the MoE node's weights, their layout undone), so the wrapper itself
can be checked against TypeMoE.forward without ONNX Runtime.

Dimensions: B batch, T new tokens, P cached tokens (past_len), S cache buffer length (>= P + T),
D d_model, H heads, Dh d_head, F d_expert, E experts, V vocab, K keys, M meters, C classes
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from typemoe.model import TypeMoE, apply_rope, cached_attention, rope_tables
from typemoe.moe import DenseFFN, SwitchFFN, TypeMoEFFN, gathered_experts

MS_DOMAIN = "com.microsoft"
INPUT_IDS = "input_ids"  # (B, T) int64
PAST_LEN = "past_len"  # () int64, P: tokens already in the cache, same for every row
LOGITS = "logits"  # (B, T, V) float32
KEY_LOGITS = "key_logits"  # (B, T, K) float32
METER_LOGITS = "meter_logits"  # (B, T, M) float32
CLS_LOGITS = "cls_logits"  # (B, T, C) float32, per position; the piece-level logits are their mean


def past_names(n_layer: int) -> list[str]:
    """Cache inputs in graph order: past_key_0, past_value_0, past_key_1, ... each (B, H, S, Dh)."""
    return [f"past_{kv}_{i}" for i in range(n_layer) for kv in ("key", "value")]


def present_names(n_layer: int) -> list[str]:
    """Cache outputs, same order and shapes as past_names; they may alias the past buffers."""
    return [f"present_{kv}_{i}" for i in range(n_layer) for kv in ("key", "value")]


def head_names(n_classes: int) -> list[str]:
    return [LOGITS, KEY_LOGITS, METER_LOGITS] + ([CLS_LOGITS] if n_classes else [])


def _exporting() -> bool:
    return torch.onnx.is_in_onnx_export()


class CachedAttention(nn.Module):
    """Packed-QKV attention over a fixed-size cache: com.microsoft.GroupQueryAttention when exporting."""

    def __init__(self, n_head: int, d_head: int):
        super().__init__()
        self.n_head, self.d_head = n_head, d_head

    def forward(self, qkv, past_k, past_v, seqlens_k, total_len, cos, sin, past_len):
        B, T, _ = qkv.shape
        if _exporting():
            out, k, v = torch.onnx.ops.symbolic_multi_out(
                f"{MS_DOMAIN}::GroupQueryAttention",
                [qkv, None, None, past_k, past_v, seqlens_k, total_len, cos, sin],
                {
                    "num_heads": self.n_head,
                    "kv_num_heads": self.n_head,
                    "do_rotary": 1,
                    "rotary_interleaved": 0,
                },
                dtypes=[qkv.dtype, past_k.dtype, past_v.dtype],
                shapes=[[B, T, self.n_head * self.d_head], past_k.shape, past_v.shape],
                version=1,
            )
            return out, k, v
        return self._reference(qkv, past_k, past_v, cos, sin, int(past_len))

    def _reference(self, qkv, past_k, past_v, cos, sin, P: int):
        """The model's own attention (typemoe.model.apply_rope, cached_attention) on copies of the buffers."""
        B, T, _ = qkv.shape
        H, Dh = self.n_head, self.d_head
        q, k, v = qkv.view(B, T, 3, H, Dh).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, Dh)
        c, s = cos[P : P + T], sin[P : P + T]  # (T, Dh/2)
        q, k = apply_rope(q, c, s), apply_rope(k, c, s)
        present_k, present_v = past_k.clone(), past_v.clone()  # (B, H, S, Dh): rows P..P+T-1 written
        y = cached_attention(q, k, v, present_k, present_v, P)  # (B, H, T, Dh)
        return y.transpose(1, 2).reshape(B, T, H * Dh), present_k, present_v


INT8_BLOCK = 32  # quantization block along K (the input features) for int8 experts


def quantize_int8_blocks(w_ENK: torch.Tensor, block: int = INT8_BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric block-wise int8 of (E, N, K) weights in QMoE's layout: uint8 codes (E, N, K) with
    zero point 128 and fp32 scales (E, N, K / block), dequantized as (q - 128) * scale."""
    E, N, K = w_ENK.shape
    if K % block:
        raise ValueError(f"int8 experts need every expert width divisible by {block}, got {K}")
    w = w_ENK.float().reshape(E, N, K // block, block)  # (E, N, K/b, b)
    scale = (w.abs().amax(dim=-1) / 127.0).clamp(min=1e-12)  # (E, N, K/b)
    q = torch.round(w / scale.unsqueeze(-1)).clamp(-127, 127) + 128  # (E, N, K/b, b)
    return q.to(torch.uint8).reshape(E, N, K), scale


class RoutedExperts(nn.Module):
    """Top-1 mixture of SwiGLU experts from router logits: com.microsoft.MoE (or QMoE) when exporting.

    fc1 holds gate and up rows interleaved, (E, 2F, D) = [g_0, u_0, g_1, u_1, ...] (swiglu_fusion=1, the
    only SwiGLU layout the CPU kernel takes); fc2 is (E, D, F). The gate weight is softmax(router)[top]
    renormalised over the top-1 when `normalize` (TypeMoE: exactly 1.0), or the raw top probability
    (Switch). With int8, the weights are stored as block-wise int8 codes (quantize_int8_blocks) and run
    by QMoE, which also quantizes activations to int8; the eager reference dequantizes the weights only.
    """

    def __init__(
        self,
        w_gate: torch.Tensor,
        w_up: torch.Tensor,
        w_down: torch.Tensor,
        *,
        normalize: bool,
        int8: bool = False,
    ):
        super().__init__()
        E, D, Fh = w_gate.shape
        fc1 = torch.stack((w_gate.transpose(1, 2), w_up.transpose(1, 2)), dim=2).reshape(
            E, 2 * Fh, D
        )  # (E, 2F, D)
        fc2 = w_down.transpose(1, 2).contiguous()  # (E, D, F)
        self.normalize, self.int8 = normalize, int8
        if int8:
            q1, s1 = quantize_int8_blocks(fc1)
            q2, s2 = quantize_int8_blocks(fc2)
            self.register_buffer("q1", q1)
            self.register_buffer("s1", s1)
            self.register_buffer("q2", q2)
            self.register_buffer("s2", s2)
        else:
            self.register_buffer("fc1", fc1.contiguous())
            self.register_buffer("fc2", fc2)

    def _attrs(self) -> dict:
        return {
            "k": 1,
            "activation_type": "swiglu",
            "swiglu_fusion": 1,
            "activation_alpha": 1.0,
            "activation_beta": 0.0,
            "normalize_routing_weights": int(self.normalize),
        }

    def forward(self, x: torch.Tensor, router_NE: torch.Tensor) -> torch.Tensor:
        if _exporting() and self.int8:
            return torch.onnx.ops.symbolic(
                f"{MS_DOMAIN}::QMoE",
                [x, router_NE, self.q1, self.s1.to(x.dtype), None, self.q2, self.s2.to(x.dtype)],
                {**self._attrs(), "expert_weight_bits": 8, "block_size": INT8_BLOCK},
                dtype=x.dtype,
                shape=x.shape,
                version=1,
            )
        if _exporting():
            return torch.onnx.ops.symbolic(
                f"{MS_DOMAIN}::MoE",
                [x, router_NE, self.fc1, None, self.fc2],
                self._attrs(),
                dtype=x.dtype,
                shape=x.shape,
                version=1,
            )
        fc1, fc2 = (
            (self._dequant(self.q1, self.s1), self._dequant(self.q2, self.s2))
            if self.int8
            else (self.fc1, self.fc2)
        )
        B, T, D = x.shape
        probs_NE = torch.softmax(router_NE.float(), dim=-1)  # (N, E)
        p_N, e_N = probs_NE.max(dim=-1)  # (N,), (N,)
        weight_N = torch.ones_like(p_N) if self.normalize else p_N
        # The model's own expert math (typemoe.moe.gathered_experts) on the node's weight layout, undone:
        # fc1 rows interleave gate and up, fc2 is w_down transposed.
        w_gate, w_up = (fc1[:, i::2, :].transpose(1, 2).to(x.dtype) for i in (0, 1))  # (E, D, F) each
        w_down = fc2.transpose(1, 2).to(x.dtype)  # (E, F, D)
        y = gathered_experts(x.reshape(1, -1, D), e_N.view(1, -1), w_gate, w_up, w_down)  # (1, N, D)
        return (y[0] * weight_N.unsqueeze(-1).to(y.dtype)).view(B, T, D)

    @staticmethod
    def _dequant(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        E, N, K = q.shape
        w = (q.float() - 128.0).view(E, N, K // INT8_BLOCK, INT8_BLOCK) * scale.unsqueeze(-1)
        return w.reshape(E, N, K)


class FeedForward(nn.Module):
    """The export form of one block's FFN (typemoe, dense or switch, optional shared expert).

    With int8, every routed FFN runs as QMoE; the dense FFN too (as one expert, router all ones) so that
    a dense-vs-TypeMoE comparison runs the same kernel on the same quantization.
    """

    def __init__(self, ffn: nn.Module, *, int8: bool = False):
        super().__init__()
        self.kind = {TypeMoEFFN: "typemoe", DenseFFN: "dense", SwitchFFN: "switch"}[type(ffn)]
        self.shared = getattr(ffn, "shared", None)
        self.router = ffn.router if isinstance(ffn, SwitchFFN) else None
        self.dense = ffn.ffn if isinstance(ffn, DenseFFN) and not int8 else None
        self.experts = None
        if isinstance(ffn, DenseFFN) and int8:
            d = ffn.ffn  # one SwiGLU as one expert: (1, D, F) weights
            self.experts = RoutedExperts(
                d.w_gate.weight.data.t()[None],
                d.w_up.weight.data.t()[None],
                d.w_down.weight.data.t()[None],
                normalize=True,
                int8=True,
            )
        elif self.dense is None:
            ex = ffn.experts
            self.experts = RoutedExperts(
                ex.w_gate.data, ex.w_up.data, ex.w_down.data, normalize=self.kind == "typemoe", int8=int8
            )

    def forward(self, x: torch.Tensor, type_router_NE: torch.Tensor) -> torch.Tensor:
        if self.dense is not None:
            return self.dense(x)
        if self.kind == "dense":
            router_NE = x.new_ones(type_router_NE.size(0), 1)  # (N, 1): the single expert
        elif self.router is None:
            router_NE = type_router_NE
        else:
            router_NE = self.router(x).reshape(-1, type_router_NE.size(1))
        y = self.experts(x, router_NE)  # (B, T, D)
        if self.shared is not None:
            y = y + self.shared(x)
        return y


def _add_norm(x: torch.Tensor, y: torch.Tensor, norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + y, rms_norm(x + y)): one com.microsoft.SkipSimplifiedLayerNormalization node when exporting,
    instead of an Add and an RMSNormalization (ONNX Runtime does not fuse those two)."""
    if _exporting():
        B, T, D = x.shape
        out, _, _, s = torch.onnx.ops.symbolic_multi_out(
            f"{MS_DOMAIN}::SkipSimplifiedLayerNormalization",
            [y, x, norm.weight],
            {"epsilon": float(norm.eps)},
            dtypes=[x.dtype, torch.float32, torch.float32, x.dtype],
            shapes=[[B, T, D], [B, T, 1], [B, T, 1], [B, T, D]],
            version=1,
        )
        return s, out
    s = x + y
    return s, norm(s)


class StepGraph(nn.Module):
    """TypeMoE.forward on a preallocated KV cache, with the cache as plain tensors in and out.

    Inputs:  input_ids (B, T) int64; past_len () int64 = P;
             past_key_i, past_value_i (B, H, S, Dh) for each layer i, rows >= P unused, S >= P + T
    Outputs: logits (B, T, V), key_logits (B, T, K), meter_logits (B, T, M)[, cls_logits (B, T, C)],
             all float32 whatever the cache dtype; present_key_i, present_value_i (B, H, S, Dh): the past
             with rows P .. P+T-1 written (ONNX Runtime writes them in place when bound to the same buffer).

    cls_logits are per position: TypeMoE pools the final hidden states by their mean before the linear
    classification head, and a mean commutes with a linear map, so their mean over the first n positions
    equals the model's cls_logits for those n tokens, and a stream can keep a running mean.

    Args:
        model: the trained model (eval mode is set here).
        dtype: compute dtype of the trunk and the cache (float32 for CPU, float16 for CUDA); the heads
            always run in float32 so that the logits compare at fp32 tolerance.
    """

    def __init__(self, model: TypeMoE, *, dtype: torch.dtype = torch.float32, int8_experts: bool = False):
        super().__init__()
        model = copy.deepcopy(model).eval()  # a private copy: casting to dtype must not touch the caller's
        cfg = self.cfg = model.cfg
        self.dtype = dtype
        cos, sin = rope_tables(torch.arange(cfg.context_len), model.inv_freq.float())  # (S_max, Dh/2) each
        self.register_buffer("cos", cos.to(dtype))
        self.register_buffer("sin", sin.to(dtype))
        onehot = F.one_hot(model.router.type_of_id, cfg.n_types).to(dtype)  # (V, E)
        self.register_buffer("type_router", onehot)
        self.wte = model.wte
        self.blocks = nn.ModuleList()
        for block in model.blocks:
            m = nn.Module()
            m.norm_attn, m.qkv, m.proj = block.norm_attn, block.attn.qkv, block.attn.proj
            m.attn = CachedAttention(cfg.n_head, cfg.d_head)
            m.norm_ffn, m.ffn = block.norm_ffn, FeedForward(block.ffn, int8=int8_experts)
            self.blocks.append(m)
        self.norm_f = model.norm_f
        # every head in one matmul: [lm (tied to wte); key; meter; cls] rows, fp32 even in a fp16 graph
        heads = [model.lm_head, model.key_head, model.meter_head] + (
            [model.cls_head] if cfg.n_classes else []
        )
        self.head_sizes = [h.out_features for h in heads]
        w = torch.cat([h.weight.data.float() for h in heads])  # (V+K+M+C, D)
        b = torch.cat([torch.zeros(h.out_features) if h.bias is None else h.bias.data.float() for h in heads])
        self.heads = nn.Linear(cfg.d_model, w.size(0))
        self.heads.weight.data, self.heads.bias.data = w, b
        self.to(dtype)
        self.heads.float()

    def forward(self, input_ids: torch.Tensor, past_len: torch.Tensor, past: list[torch.Tensor]):
        B, T = input_ids.shape
        total = past_len + T  # () P + T
        seqlens_k = (total - 1).to(torch.int32).expand(B)  # (B,) GQA: index of each row's last key
        total_len = total.to(torch.int32)  # ()
        router_NE = F.embedding(input_ids, self.type_router).reshape(
            B * T, -1
        )  # (N, E) one-hot by token type
        x = self.wte(input_ids)  # (B, T, D) residual stream
        h = self.blocks[0].norm_attn(x)  # (B, T, D) normed input of the next sublayer
        norms = [n for blk in self.blocks for n in (blk.norm_attn, blk.norm_ffn)][1:] + [
            self.norm_f
        ]  # after each sublayer
        present = []
        for i, blk in enumerate(self.blocks):
            qkv = blk.qkv(h)  # (B, T, 3D)
            a, k, v = blk.attn(
                qkv, past[2 * i], past[2 * i + 1], seqlens_k, total_len, self.cos, self.sin, past_len
            )
            x, h = _add_norm(x, blk.proj(a), norms[2 * i])  # x += attention; h = norm_ffn(x)
            x, h = _add_norm(x, blk.ffn(h, router_NE), norms[2 * i + 1])  # x += ffn; h = next norm(x)
            present += [k, v]
        h = h.float()  # (B, T, D) = norm_f(x)
        outs = self.heads(h).split(self.head_sizes, dim=-1)  # (B, T, V), (B, T, K), (B, T, M)[, (B, T, C)]
        return (*outs, *present)

    def empty_cache(self, batch: int = 1, length: int | None = None) -> list[torch.Tensor]:
        """Zeroed past buffers (B, H, S, Dh), S = context_len by default."""
        cfg = self.cfg
        shape = (batch, cfg.n_head, length or cfg.context_len, cfg.d_head)
        return [torch.zeros(shape, dtype=self.dtype) for _ in range(2 * cfg.n_layer)]
