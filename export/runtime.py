"""ONNX Runtime engine for an exported TypeMoE model directory. numpy + onnxruntime only, never torch.

    model = OrtModel("my_model/")             # provider="auto": CUDA when onnxruntime-gpu sees a GPU
    s = model.session()
    out = s.feed(ids)                          # prefill, then feed more ids (1 = a decode step)
    out.key_probs, out.meter_probs             # softmax of the heads at the last fed position
    ids = s.fork().generate(n_bars=2, temperature=1.0, top_p=0.95)

The directory (written by export/onnx_export.py, contract in export/DESIGN.md) holds model.onnx (fp32,
CPU), model_fp16.onnx (CUDA), tokenizer.json + types.json (typemoe.vocab) and manifest.json with the
sha256 of every file; everything is checked at load (export.model_dir) and a bad file is named in a
ModelDirError. The graph, its preallocated KV cache and the IOBindings are in export.ort_graph.

OrtModel is a typemoe.decoding.Engine; OrtSession is the decoder's Session on it, so the grammar, the
context slide, sampling, guidance, key lock and meter-aware bars are those of typemoe.decoding, shared
with the PyTorch backend and the evaluation.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from typemoe import analysis
from typemoe.decoding import TOKENS_PER_BAR_CAP, Session, StepOut  # noqa: F401
from typemoe.emotion_fusion import FILE as EMOTION_FILE
from typemoe.emotion_fusion import EmotionFusion, EmotionReader
from typemoe.export.model_dir import (  # noqa: F401  (re-exported: the runtime's public names)
    EXPORT_COMMAND,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_FILE,
    META_PREFIX,
    MODEL_FILE,
    MODEL_FP16_FILE,
    MODEL_INT8_FILE,
    PRECISIONS,
    ModelDirError,
    read_manifest,
    sha256_file,
)
from typemoe.export.ort_graph import (  # noqa: F401
    CUDA,
    PROVIDERS,
    KVCache,
    OrtGraph,
    cpu_session_options,
    resolve_provider,
)
from typemoe.key_fusion import FILE as KEY_FILE
from typemoe.key_fusion import KeyFusion, KeyReader
from typemoe.meter import FILE as METER_FILE
from typemoe.meter import MeterFusion, MeterReader
from typemoe.meter_family import FamilyJudge
from typemoe.remi_notes import RemiNotes
from typemoe.vocab import TypedVocab, VocabError

log = logging.getLogger(__name__)


class OrtModel:
    """A loaded model directory: the graph on its provider, the vocabulary and the label names.

    Args:
        model_dir: an exported model directory.
        provider: "auto" (CUDA when available, else CPU), "cpu" or "cuda" (falls back to CPU, logged).
        precision: "auto" (CUDA: fp16, else fp32, else int8; CPU: fp32, else int8, else fp16), "fp32", "fp16" or "int8" (int8 experts, CPU:
            about 2x faster decode for the small model at equal predictions, see export/MEASUREMENTS.md).
        threads: CPU intra-op threads (default 1, see the module docstring).
        verify: check every file's sha256 against the manifest (about 30 ms for the small model).
    Raises:
        ModelDirError: missing, corrupt or inconsistent files, naming the file.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        *,
        provider: str = "auto",
        precision: str = "auto",
        threads: int = 1,
        verify: bool = True,
    ):
        self.model_dir = Path(model_dir)
        self.manifest = read_manifest(self.model_dir, verify=verify)
        try:
            self.vocab = TypedVocab.load(self.model_dir)
        except VocabError as err:
            raise ModelDirError(f"{self.model_dir}: bad vocabulary files: {err}") from err
        self.graph = self._open(resolve_provider(provider), precision, threads)
        self.provider = "cuda" if self.graph.providers[0] == CUDA else "cpu"
        log.info(
            "TypeMoE model %s: %s on %s (%s)",
            self.model_dir,
            self.graph_file,
            self.provider.upper(),
            ", ".join(self.graph.providers),
        )
        meta = self.graph.session.get_modelmeta().custom_metadata_map
        self.metadata = {k[len(META_PREFIX) :]: v for k, v in meta.items() if k.startswith(META_PREFIX)}
        try:
            self.config: dict[str, Any] = json.loads(self.metadata["config"])
            labels = json.loads(self.metadata["labels"])
            vocab_hash = self.metadata["vocab_hash"]
        except (KeyError, json.JSONDecodeError) as err:
            raise ModelDirError(
                f"{self.model_dir / self.graph_file}: metadata_props lack or garble {err}"
            ) from err
        if vocab_hash != self.vocab.hash:
            raise ModelDirError(
                f"{self.model_dir}: tokenizer.json/types.json (hash {self.vocab.hash[:12]}) are not "
                f"the vocabulary the graph was exported with ({vocab_hash[:12]})"
            )
        self.context_len: int = int(self.config["context_len"])
        self.key_names: list[str] = list(labels["keys"])
        self.meter_names: list[str] = list(labels["meters"])
        self.class_names: list[str] | None = list(labels["classes"]) if labels.get("classes") else None
        self.n_layer, self.n_head = int(self.config["n_layer"]), int(self.config["n_head"])
        self.d_head = int(self.config["d_model"]) // self.n_head
        try:
            fusion = MeterFusion.load(self.model_dir)
        except ValueError as err:
            raise ModelDirError(str(err)) from err
        if fusion is not None and list(fusion.meters) != self.meter_names:
            raise ModelDirError(f"{self.model_dir / METER_FILE}: meter classes differ from the graph's")
        try:
            judge = FamilyJudge.load(self.model_dir)
        except ValueError as err:
            raise ModelDirError(str(err)) from err
        remi = RemiNotes(self.vocab)  # one set of note-reading tables for both readers
        self.meter = MeterReader(fusion, self.vocab, remi, judge)
        """The meter answer: meter_fusion.json (rhythm + head) when the directory has one, else the head;
        inside the family meter_family.json's judge hears, else the onset-autocorrelation rule's."""
        try:
            key_fusion = KeyFusion.load(self.model_dir)
        except ValueError as err:
            raise ModelDirError(str(err)) from err
        if key_fusion is not None and self.key_names != list(analysis.KEYS):
            raise ModelDirError(f"{self.model_dir / KEY_FILE}: the graph's key classes are not analysis.KEYS")
        self.key = KeyReader(key_fusion, self.vocab, remi)
        """The key answer: key_fusion.json (pitch-class profiles + head) when the directory has one, else
        the head."""
        try:
            emotion_fusion = EmotionFusion.load(self.model_dir)
        except ValueError as err:
            raise ModelDirError(str(err)) from err
        if emotion_fusion is not None and emotion_fusion.classes != self.class_names:
            raise ModelDirError(
                f"{self.model_dir / EMOTION_FILE}: classes differ from the graph's class head"
            )
        self.emotion = EmotionReader(emotion_fusion, self.vocab, remi)
        """The emotion answer: emotion_fusion.json (the notes' rhythm, register and mode + the class head)
        when the directory has one, else the head."""
        self._remi = remi

    def answer(self, ids, key_probs, meter_probs) -> tuple[np.ndarray, np.ndarray]:
        """(key, meter) probabilities after hearing `ids`, given the heads' at their end: the directory's
        fusions (self.key, self.meter) over the notes of `ids`, read once for both; the heads without."""
        key, meter = np.asarray(key_probs, dtype=np.float64), np.asarray(meter_probs, dtype=np.float64)
        if self.key.fusion is None and self.meter.fusion is None:
            return key, meter
        notes = self._remi.notes(np.asarray(ids, dtype=np.int64))[0]
        return self.key.probs_of(notes, key), self.meter.probs_of(notes, meter)

    def class_answer(self, ids, class_probs) -> np.ndarray:
        """The class probabilities after hearing `ids`, given the class head's pooled ones: the emotion
        fusion over the notes of `ids` when the directory has one, else the head's."""
        if self.emotion.fusion is None:
            return np.asarray(class_probs, dtype=np.float64)
        return self.emotion.probs_of(self._remi.notes(np.asarray(ids, dtype=np.int64))[0], class_probs)

    def _open(self, device: str, precision: str, threads: int) -> OrtGraph:
        """The graph for this provider: fp16 on CUDA, fp32 on CPU by default; a failed CUDA start falls
        back to the CPU (logged), where an automatic choice also goes back to fp32."""
        files = self.manifest["files"]
        if precision not in ("auto", *PRECISIONS):
            raise ValueError(f"precision must be 'auto' or one of {sorted(PRECISIONS)}, got {precision!r}")
        # "auto": the best graph the directory holds for the device. A shipped directory may hold only the
        # int8-expert CPU graph (and fp16 for CUDA) to stay small (typemoe/default_model/MODEL_CARD.md).
        cpu_order, cuda_order = ("fp32", "int8", "fp16"), ("fp16", "fp32", "int8")

        def _best(order: tuple[str, ...]) -> str:
            return next((p for p in order if PRECISIONS[p] in files), order[0])

        chosen = precision
        if precision == "auto":
            chosen = _best(cuda_order if device == "cuda" else cpu_order)
        if PRECISIONS[chosen] not in files:
            raise ModelDirError(
                f"{self.model_dir} has no {PRECISIONS[chosen]} (precision {chosen!r}); it holds "
                f"{sorted(f for f in files if f.endswith('.onnx'))}"
            )
        if device == "cuda":
            if chosen == "fp32":
                log.warning(
                    "%s has no %s: CUDA runs the fp32 graph, and GroupQueryAttention has no fp32 CUDA "
                    "kernel, so part of it runs on the CPU",
                    self.model_dir,
                    MODEL_FP16_FILE,
                )
            try:
                graph = self._session(chosen, "cuda", threads)
                if graph.providers[0] == CUDA:
                    return graph
                log.warning("onnxruntime did not start CUDA (its log says why); falling back to CPU")
            except (RuntimeError, ort.capi.onnxruntime_pybind11_state.Fail) as err:  # type: ignore[attr-defined]
                log.warning("CUDA session failed (%s); falling back to CPU", err)
            if precision == "auto":
                chosen = _best(cpu_order)
        return self._session(chosen, "cpu", threads)

    def _session(self, precision: str, device: str, threads: int) -> OrtGraph:
        self.graph_file = PRECISIONS[precision]
        self.cache_dtype = np.float16 if precision == "fp16" else np.float32
        path = self.model_dir / self.graph_file
        try:
            return OrtGraph(path, device=device, threads=threads)
        except (RuntimeError, ort.capi.onnxruntime_pybind11_state.Fail) as err:  # type: ignore[attr-defined]
            if device == "cuda":
                raise
            raise ModelDirError(f"{path}: onnxruntime {ort.__version__} cannot load it: {err}") from err

    def new_cache(self) -> KVCache:
        device = "cuda" if self.provider == "cuda" else "cpu"
        return KVCache(
            self.n_layer, self.n_head, self.context_len, self.d_head, device=device, dtype=self.cache_dtype
        )

    def copy_cache(self, dst: KVCache, src: KVCache, n_rows: int) -> None:
        dst.copy_from(src, n_rows)

    def run(self, ids: Sequence[int], past_len: int, cache: KVCache) -> dict[str, np.ndarray]:
        """decoding.Engine.run: one stream's ids on its cache; heads as (T, *) arrays."""
        heads = self.graph.run(np.asarray(ids, dtype=np.int64)[None], past_len, cache)
        return {name: value[0] for name, value in heads.items()}

    def session(self) -> OrtSession:
        return OrtSession(self)


class OrtSession(Session):
    """One stream of tokens on its own KV cache of an OrtModel: typemoe.decoding.Session (feed, fork,
    generate, generate_steps, rewind, reset, n_past, tokens, last, allowed_next)."""

    def __init__(self, model: OrtModel):
        self.model = model
        super().__init__(model)

    def _fork_extra(self, other: Session) -> None:
        other.model = self.model
