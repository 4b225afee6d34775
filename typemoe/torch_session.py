"""The PyTorch backend of typemoe.decoding: a TypeMoE model on a KV cache, and a checkpoint opened for decoding.

    engine = TorchEngine(model, vocab=vocab)       # a typemoe.decoding.Engine
    session = Session(engine)                      # feed / generate, the same decoder as the ONNX runtime
    model = TorchModel(ckpt_dir)                   # the OrtModel face for a checkpoint: .session(), names

The cache is the model's preallocated KVCache (context_len rows); running at past_len < P first sets its
length back to past_len (a rewind: the next rows are overwritten), so a session may rewind and re-run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from typemoe import analysis
from typemoe.decoding import Session, Tables
from typemoe.model import KVCache, TypeMoE


class _Cache:
    def __init__(self) -> None:
        self.past: KVCache | None = None  # allocated on the first run


class TorchEngine:
    """Runs a TypeMoE model for typemoe.decoding.Session (eval mode, no gradients)."""

    def __init__(self, model: TypeMoE, *, vocab=None, moe_path: str = "sparse"):
        self.model = model
        self.vocab = vocab
        self.context_len = int(model.cfg.context_len)
        self.moe_path = moe_path
        self.device = model.wte.weight.device

    def new_cache(self) -> _Cache:
        return _Cache()

    def copy_cache(self, dst: _Cache, src: _Cache, n_rows: int) -> None:
        dst.past = None if src.past is None else src.past.clone(n_rows)

    @torch.inference_mode()
    def run(self, ids: Sequence[int], past_len: int, cache: _Cache) -> dict[str, np.ndarray]:
        m = self.model
        if cache.past is None:
            cache.past = m.empty_past(1)
        past = cache.past
        past.length = past_len  # a rewind when past_len < the rows held
        idx = torch.as_tensor(np.asarray(ids, dtype=np.int64)[None], device=self.device)  # (1, T)
        was_training = m.training
        m.eval()
        try:
            out = m(idx, past=past, moe_path=self.moe_path)
        finally:
            m.train(was_training)
        cache.past = out.present
        heads = {
            "logits": out.logits[0].float().cpu().numpy(),  # (T, V)
            "key_logits": out.key_logits[0].float().cpu().numpy(),  # (T, K)
            "meter_logits": out.meter_logits[0].float().cpu().numpy(),  # (T, M)
        }
        if m.cls_head is not None:  # per position; their mean is the pooled head (the head is linear)
            heads["cls_logits"] = m.cls_head(out.hidden)[0].float().cpu().numpy()  # (T, C)
        return heads


class TorchModel:
    """A checkpoint directory opened for decoding, with export.runtime.OrtModel's face.

    Attributes: model (TypeMoE), meta, vocab, context_len, key_names, meter_names, class_names, engine.
    """

    def __init__(self, ckpt_dir: str | Path, *, device: str = "cpu"):
        from typemoe import checkpoint
        from typemoe.vocab import TypedVocab

        self.path = Path(ckpt_dir)
        self.model = checkpoint.load(self.path, device=device)
        _, _, self.meta = checkpoint.read_config(self.path)
        self.vocab = TypedVocab.load(self.path)
        self.context_len = self.model.cfg.context_len
        self.key_names = list(self.meta.get("key_names") or analysis.KEYS)
        self.meter_names = list(self.meta.get("meter_names") or analysis.METERS[: self.model.cfg.n_meters])
        self.class_names = list(self.meta["class_names"]) if self.meta.get("class_names") else None
        self.engine = TorchEngine(self.model, vocab=self.vocab)

    def session(self) -> Session:
        return Session(self.engine)


def session_for(model: TypeMoE, tables: Tables, *, moe_path: str = "sparse") -> Session:
    """A decoding session on a bare model with explicit grammar tables (synthetic vocabularies, tests)."""
    return Session(TorchEngine(model, moe_path=moe_path), tables=tables)
