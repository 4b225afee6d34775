"""One face for the two kinds of model `typemoe eval` scores: a PyTorch checkpoint or an exported ONNX dir.

    model = open_model("runs/pretrain")            # a training --out DIR, DIR/latest, or an export dir
    out = model.outputs_at(seq, [p1, p2])          # heads after reading seq[:p] for each p
    ids = model.generate(prefix, 64, temperature=0)  # grammar-masked continuation; guidance=, key_lock=,
                                                     # meter=... pass through to typemoe.decoding

`outputs_at` returns, for each p, what the model says after reading seq[:p]: next-token logits (for
seq[p]), key and meter probabilities. The torch path runs one forward over seq[:max(p)]; the ONNX path
feeds the tokens chunk by chunk through one export.runtime session and reads the heads at each p, so
the two agree up to float error. Sequences longer than the context are cut to it by the caller.
Both generate through the one decoder, typemoe.decoding (the torch path on typemoe.torch_session's
backend), with the decoding rules the bridge ships (strict Positions, no repeated pitch at a position, the
slide that keeps the control prefix): what `typemoe eval` scores is what the runtime plays.

The classification head (fine-tuned models) is read with `class_probs(seq)`: the pooled head over the
whole sequence. `expert_routes(seq)` gives, per layer, the expert each token went to (torch only; the
ONNX graph does not expose routing).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from typemoe import analysis
from typemoe.shipped import default_model_dir

ONNX_MANIFEST = "manifest.json"


class ModelOpenError(ValueError):
    """A --model path that is neither a TypeMoE checkpoint nor an exported model directory."""


@dataclass
class HeadOutputs:
    """Model outputs at n read positions (non-decreasing; the ONNX path streams through them in order)."""

    logits: np.ndarray  # (n, V) next-token logits
    key_probs: np.ndarray  # (n, K)
    meter_probs: np.ndarray  # (n, M)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def is_onnx_dir(path: Path) -> bool:
    return (path / ONNX_MANIFEST).is_file() and any(path.glob("*.onnx"))


def open_model(path: str | Path | None, *, provider: str = "cpu") -> TorchModel | OnnxModel:
    """Open a checkpoint (training run dir or checkpoint dir) or an exported ONNX model dir.

    None means the shipped default model.

    Raises:
        ModelOpenError: naming the path, when it holds neither kind of model.
    """
    if path is None:
        path = default_model_dir()
        if not path.is_dir() or not any(path.iterdir()):
            raise ModelOpenError(
                f"no --model given and the shipped default model ({path}) does not exist yet; "
                "pass --model CHECKPOINT_OR_EXPORTED_DIR"
            )
    path = Path(path)
    if not path.exists():
        raise ModelOpenError(f"model path {path} does not exist")
    if is_onnx_dir(path):
        return OnnxModel(path, provider=provider)
    try:
        from typemoe.checkpoint import CheckpointError
        from typemoe.training.learn import ckpt
    except ImportError as err:  # torch missing
        raise ModelOpenError(
            f"{path} is not an exported ONNX model dir, and reading a PyTorch checkpoint needs torch: {err}"
        ) from err
    try:
        return TorchModel(ckpt.resolve(path))
    except CheckpointError as err:
        raise ModelOpenError(
            f"{path} is neither an exported ONNX model dir (no {ONNX_MANIFEST} + *.onnx) nor a "
            f"TypeMoE checkpoint: {err}"
        ) from err


class _Generates:
    """generate() through the one decoder, on the subclass's session()."""

    def generate(
        self,
        prefix: Sequence[int],
        n_tokens: int,
        *,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = 0,
        **steer,
    ) -> list[int]:
        from typemoe.decoding import continuation

        return continuation(
            self.session(), prefix, n_tokens, temperature=temperature, top_p=top_p, seed=seed, **steer
        )


class TorchModel(_Generates):
    """A PyTorch checkpoint, evaluated on CPU (or `device`)."""

    kind = "torch"

    def __init__(self, ckpt_dir: Path, device: str = "cpu"):
        import torch

        from typemoe import checkpoint
        from typemoe.torch_session import TorchEngine
        from typemoe.vocab import TypedVocab

        self.path = Path(ckpt_dir)
        self.model = checkpoint.load(self.path, device=device)
        _, _, self.meta = checkpoint.read_config(self.path)
        self.vocab = TypedVocab.load(self.path)
        self.cfg = self.model.cfg
        self.context_len = self.cfg.context_len
        self.key_names = list(self.meta.get("key_names") or analysis.KEYS)
        self.meter_names = list(self.meta.get("meter_names") or analysis.METERS[: self.cfg.n_meters])
        self.class_names = list(self.meta["class_names"]) if self.meta.get("class_names") else None
        self.task = self.meta.get("task")
        self.ffn = self.cfg.ffn
        self._engine = TorchEngine(self.model, vocab=self.vocab)
        self._torch = torch
        self._device = device

    def _forward(self, seq: Sequence[int]):
        torch = self._torch
        idx = torch.as_tensor(np.asarray(seq, dtype=np.int64)[None], device=self._device)  # (1, T)
        with torch.inference_mode():
            return self.model(idx)

    def outputs_at(self, seq: Sequence[int], at: Sequence[int]) -> HeadOutputs:
        at = np.asarray(at, dtype=np.int64)
        if len(at) == 0 or at.min() < 1 or at.max() > len(seq):
            raise ValueError(f"read positions must be in 1..{len(seq)}, got {at.tolist()[:5]}...")
        out = self._forward(list(seq)[: int(at.max())])
        rows = at - 1  # output at index p-1 has read seq[:p]
        logits = out.logits[0].float().cpu().numpy()[rows]
        keys = out.key_logits[0].float().cpu().numpy()[rows]
        meters = out.meter_logits[0].float().cpu().numpy()[rows]
        return HeadOutputs(logits, _softmax(keys), _softmax(meters))

    def class_probs(self, seq: Sequence[int]) -> np.ndarray | None:
        if self.model.cls_head is None:
            return None
        return _softmax(self._forward(seq).cls_logits[0].float().cpu().numpy())

    def session(self):
        from typemoe.decoding import Session

        return Session(self._engine)

    def expert_routes(self, seq: Sequence[int]) -> np.ndarray | None:
        """(L, T) expert of every token in every layer: the token type for TypeMoE, the learned route for
        Switch; None for the dense baseline (one FFN, no experts)."""
        if self.ffn == "dense":
            return None
        out = self._forward(seq)
        if out.aux is not None:
            return out.aux.route[:, 0].cpu().numpy()  # (L, T)
        types = self.vocab.type_of[np.asarray(seq, dtype=np.int64)]  # (T,)
        return np.tile(types, (self.cfg.n_layer, 1))


class OnnxModel(_Generates):
    """An exported model directory run by export.runtime (numpy + onnxruntime)."""

    kind = "onnx"
    ffn = "typemoe"

    def __init__(self, model_dir: Path, provider: str = "cpu"):
        from typemoe.export.runtime import OrtModel

        self.path = Path(model_dir)
        self.ort = OrtModel(model_dir, provider=provider)
        self.vocab = self.ort.vocab
        self.context_len = self.ort.context_len
        self.key_names = list(self.ort.key_names)
        self.meter_names = list(self.ort.meter_names)
        self.class_names = list(self.ort.class_names) if self.ort.class_names else None
        self.meta = dict(self.ort.metadata)
        try:  # export.onnx_export keeps the checkpoint's meta (task, step, ...) as JSON under "source"
            self.task = json.loads(self.meta.get("source", "{}")).get("task")
        except (json.JSONDecodeError, AttributeError):
            self.task = None

    def outputs_at(self, seq: Sequence[int], at: Sequence[int]) -> HeadOutputs:
        at = [int(p) for p in at]
        if not at or at[0] < 1 or at[-1] > len(seq) or any(b < a for a, b in zip(at, at[1:])):
            raise ValueError(f"read positions must be non-decreasing in 1..{len(seq)}, got {at[:5]}...")
        if at[-1] > self.context_len:
            raise ValueError(
                f"read position {at[-1]} is past the context ({self.context_len}); cut the sequence"
            )
        session = self.ort.session()
        logits, keys, meters = [], [], []
        done = 0
        for p in at:
            if p > done:
                step = session.feed(list(seq[done:p]))
                done = p
            logits.append(step.logits)
            keys.append(step.key_probs)
            meters.append(step.meter_probs)
        return HeadOutputs(np.stack(logits), np.stack(keys), np.stack(meters))

    def class_probs(self, seq: Sequence[int]) -> np.ndarray | None:
        if self.class_names is None:
            return None
        head = self.ort.session().feed(list(seq)).class_probs
        return self.ort.class_answer(seq, head)  # the directory's emotion fusion, when it has one

    def session(self):
        return self.ort.session()

    def expert_routes(self, seq: Sequence[int]) -> np.ndarray | None:
        return None
