"""Rebuild a trainable checkpoint from an exported TypeMoE ONNX graph (fp32 or int8 experts).

    python -m typemoe.training.learn.from_onnx typemoe/default_model --out runs/recovered

The shipped model directory holds only its ONNX graph, so a fresh clone has no torch weights to
fine-tune or resume. Every weight of a TypeMoE is in the graph: the embedding (tied to the LM head),
the RMSNorm gains, the packed QKV and output projections (MatMul initializers, stored as W^T), the
experts (fc1 = gate/up rows interleaved, fc2 = down; int8 graphs hold block-wise codes and scales,
dequantized here exactly as the runtime's eager reference does) and the fused heads [lm; key; meter;
cls] (W^T plus one bias). The int8 round trip costs what export measured (next-token KL ~1e-5), so a
checkpoint recovered from model_int8.onnx is a sound starting point for fine-tuning, not a bit-exact
copy of the training weights.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from typemoe import checkpoint
from typemoe.config import ModelConfig
from typemoe.model import TypeMoE
from typemoe.vocab import TypedVocab

INT8_BLOCK = 32  # export.graphs.INT8_BLOCK: the block the int8 expert codes were quantized in


class RecoverError(ValueError):
    """An ONNX file that is not a TypeMoE graph this code can read back."""


def _dequant(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    E, N, K = q.shape
    w = (q.astype(np.float32) - 128.0).reshape(E, N, K // INT8_BLOCK, INT8_BLOCK) * scale[..., None]
    return w.reshape(E, N, K)


def _matmul_weights(graph: onnx.GraphProto, inits: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The constant right-hand sides of the graph's MatMul nodes, in graph order."""
    return [inits[n.input[1]] for n in graph.node if n.op_type == "MatMul" and n.input[1] in inits]


def recover(onnx_path: str | Path) -> tuple[TypeMoE, dict]:
    """(model, metadata) from an exported graph; raises RecoverError on anything unexpected."""
    proto = onnx.load(str(onnx_path))
    meta = {p.key: p.value for p in proto.metadata_props}
    if meta.get("typemoe.format") != "typemoe-onnx":
        raise RecoverError(f"{onnx_path}: not a TypeMoE ONNX graph (no typemoe.format metadata)")
    cfg = ModelConfig.from_dict(json.loads(meta["typemoe.config"]))
    if cfg.ffn != "typemoe" or cfg.shared_expert:
        raise RecoverError(f"{onnx_path}: only routed TypeMoE graphs without a shared expert are supported")
    table = np.asarray(json.loads(meta["typemoe.type_of_id"]), dtype=np.int64)
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    model = TypeMoE(cfg, table)
    D = cfg.d_model
    mats = _matmul_weights(proto.graph, inits)  # [qkv_0, proj_0, ..., qkv_L-1, proj_L-1, heads]
    if len(mats) != 2 * cfg.n_layer + 1:
        raise RecoverError(f"{onnx_path}: expected {2 * cfg.n_layer + 1} MatMul weights, found {len(mats)}")
    sd = {"wte.weight": inits["wte.weight"], "norm_f.weight": inits["norm_f.weight"]}
    for i in range(cfg.n_layer):
        p = f"blocks.{i}"
        sd[f"{p}.norm_attn.weight"] = inits[f"{p}.norm_attn.weight"]
        sd[f"{p}.norm_ffn.weight"] = inits[f"{p}.norm_ffn.weight"]
        sd[f"{p}.attn.qkv.weight"] = mats[2 * i].T  # (3D, D)
        sd[f"{p}.attn.proj.weight"] = mats[2 * i + 1].T  # (D, D)
        e = f"{p}.ffn.experts"
        if f"{e}.q1" in inits:
            fc1 = _dequant(inits[f"{e}.q1"], inits[f"{e}.s1"])  # (E, 2F, D)
            fc2 = _dequant(inits[f"{e}.q2"], inits[f"{e}.s2"])  # (E, D, F)
        else:
            fc1, fc2 = inits[f"{e}.fc1"], inits[f"{e}.fc2"]
        E, F2, _ = fc1.shape
        gu = fc1.reshape(E, F2 // 2, 2, D)  # rows interleaved [g_0, u_0, g_1, u_1, ...]
        sd[f"{e}.w_gate"] = gu[:, :, 0, :].transpose(0, 2, 1)  # (E, D, F)
        sd[f"{e}.w_up"] = gu[:, :, 1, :].transpose(0, 2, 1)  # (E, D, F)
        sd[f"{e}.w_down"] = fc2.transpose(0, 2, 1)  # (E, F, D)
    heads_w, heads_b = mats[-1].T, inits["heads.bias"]  # (V+K+M[+C], D), (V+K+M[+C],)
    V, K, M = cfg.vocab_size, cfg.n_keys, cfg.n_meters
    sd["key_head.weight"], sd["key_head.bias"] = heads_w[V : V + K], heads_b[V : V + K]
    sd["meter_head.weight"], sd["meter_head.bias"] = heads_w[V + K : V + K + M], heads_b[V + K : V + K + M]
    if cfg.n_classes:
        sd["cls_head.weight"], sd["cls_head.bias"] = heads_w[V + K + M :], heads_b[V + K + M :]
    state = {k: torch.tensor(np.asarray(v, dtype=np.float32)) for k, v in sd.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in state and k != "lm_head.weight" and not k.startswith("router.")]
    if missing:
        raise RecoverError(f"{onnx_path}: no weights found for {missing}")
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise RecoverError(
                f"{onnx_path}: {k} has shape {tuple(v.shape)}, the config wants {tuple(own[k].shape)}"
            )
    model.load_state_dict(state, strict=False)
    if not np.allclose(heads_w[:V], sd["wte.weight"], atol=1e-6):
        raise RecoverError(f"{onnx_path}: the LM head is not tied to the embedding")
    return model.eval(), meta


def recover_dir(model_dir: str | Path, out: str | Path) -> Path:
    """Write a checkpoint (model.safetensors, config.json, tokenizer) rebuilt from a model directory."""
    model_dir = Path(model_dir)
    graphs = [model_dir / n for n in ("model.onnx", "model_int8.onnx") if (model_dir / n).is_file()]
    if not graphs:
        raise RecoverError(f"{model_dir}: holds neither model.onnx nor model_int8.onnx")
    model, meta = recover(graphs[0])
    vocab = TypedVocab.load(model_dir)
    labels = json.loads(meta.get("typemoe.labels", "{}"))
    extra = {"recovered_from": str(graphs[0].name), "source": json.loads(meta.get("typemoe.source", "{}"))}
    if labels.get("classes"):
        extra["class_names"] = labels["classes"]
    return checkpoint.save(model, out, vocab=vocab, extra_meta=extra)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m typemoe.training.learn.from_onnx", description=__doc__.split("\n")[0]
    )
    parser.add_argument("model_dir", help="an exported model directory (e.g. typemoe/default_model)")
    parser.add_argument("--out", required=True, help="checkpoint directory to write")
    args = parser.parse_args(argv)
    try:
        out = recover_dir(args.model_dir, args.out)
    except (RecoverError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"checkpoint written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
