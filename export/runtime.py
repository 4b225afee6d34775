"""ONNX Runtime engine for an exported TypeMoE model directory. numpy + onnxruntime only, never torch.

    model = OrtModel("my_model/")             # provider="auto": CUDA when onnxruntime-gpu sees a GPU
    s = model.session()
    out = s.feed(ids)                          # prefill, then feed more ids (1 = a decode step)
    out.key_probs, out.meter_probs             # softmax of the heads at the last fed position
    ids = s.fork().generate(n_bars=2, temperature=1.0, top_p=0.95)

The directory (written by export/onnx_export.py, contract in export/DESIGN.md) holds model.onnx (fp32,
CPU), model_fp16.onnx (CUDA), tokenizer.json + types.json (typemoe.vocab) and manifest.json with the
sha256 of every file; everything is checked at load and a bad file is named in a ModelDirError.

One graph serves prefill and decode. Its KV cache is a preallocated buffer per layer, (1, H, S, Dh) with
S = context_len, bound with IOBinding as both the past input and the present output, so ONNX Runtime's
GroupQueryAttention writes the new rows in place and a decode step copies nothing. The session owns
its buffers; fork() copies them.

CPU session options (measured on the project's 2-core box, see export/DESIGN.md): one intra-op thread
(a decode step is ~50 small kernels, and a second thread costs more in handoff than it saves),
sequential execution, all graph optimisations, denormals flushed to zero.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from typemoe.vocab import FAMILIES, TypedVocab, VocabError

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
MODEL_FP16_FILE = "model_fp16.onnx"
MODEL_INT8_FILE = "model_int8.onnx"
PRECISIONS = {"fp32": MODEL_FILE, "fp16": MODEL_FP16_FILE, "int8": MODEL_INT8_FILE}
MANIFEST_FILE = "manifest.json"
FORMAT = "typemoe-onnx"
FORMAT_VERSION = 1
META_PREFIX = "typemoe."  # every metadata_props key starts with it
PROVIDERS = ("auto", "cpu", "cuda")
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"
_CONTROL = FAMILIES.index("control")
_BAR, _POSITION = FAMILIES.index("Bar"), FAMILIES.index("Position")
TOKENS_PER_BAR_CAP = 256  # generate(n_bars=...) without n_tokens stops after n_bars * this many tokens


class ModelDirError(ValueError):
    """A model directory that is missing, incomplete, corrupt or from another format version."""


@dataclass
class StepOut:
    """What the heads say after a feed, at the last fed position."""

    logits: np.ndarray  # (V,) float32 next-token logits
    key_probs: np.ndarray  # (K,) softmax of the key head
    meter_probs: np.ndarray  # (M,) softmax of the meter head
    class_probs: np.ndarray | None  # (C,) softmax of the mean per-position class logits; None without head


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(model_dir: Path, *, verify: bool = True) -> dict[str, Any]:
    """Load manifest.json and (by default) check every listed file's size and sha256.

    Raises:
        ModelDirError: naming the missing or corrupt file.
    """
    if not model_dir.is_dir():
        raise ModelDirError(f"{model_dir} is not a directory; pass an exported TypeMoE model directory")
    path = model_dir / MANIFEST_FILE
    if not path.is_file():
        raise ModelDirError(
            f"{path} is missing: not an exported TypeMoE model directory (or an incomplete one); "
            "`python -m export CHECKPOINT_DIR OUT_DIR` writes one"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise ModelDirError(f"{path} is corrupt: {err!r}") from err
    if not isinstance(files, dict) or not all(
        isinstance(v, dict) and {"bytes", "sha256"} <= set(v) for v in files.values()
    ):
        raise ModelDirError(f"{path} is corrupt: 'files' must map names to {{bytes, sha256}}")
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ModelDirError(
            f"{path}: format {manifest.get('format')!r} v{manifest.get('format_version')!r}, "
            f"this runtime reads {FORMAT!r} v{FORMAT_VERSION}"
        )
    for name in ("tokenizer.json", "types.json"):
        if name not in files:
            raise ModelDirError(f"{path} does not list {name}, which every model directory needs")
    if not any(graph in files for graph in PRECISIONS.values()):
        raise ModelDirError(f"{path} lists no ONNX graph; a model directory holds one of {sorted(PRECISIONS.values())}")
    if verify:
        for name, info in files.items():
            f = model_dir / name
            if not f.is_file():
                raise ModelDirError(f"{f} is missing (listed in {MANIFEST_FILE})")
            if f.stat().st_size != info["bytes"] or sha256_file(f) != info["sha256"]:
                raise ModelDirError(
                    f"{f} is corrupt: its size or sha256 differs from {MANIFEST_FILE} "
                    "(re-copy or re-export the model directory)"
                )
    return manifest


def cpu_session_options(threads: int = 1) -> ort.SessionOptions:
    """Low-latency CPU options; why each is set is in the module docstring and export/DESIGN.md."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.set_denormal_as_zero", "1")
    so.log_severity_level = 3  # ORT's own warnings (e.g. about unused initializers) are not ours to show
    return so


def resolve_provider(provider: str) -> str:
    """ "cpu" or "cuda" from "auto" | "cpu" | "cuda"; a CUDA request without CUDA falls back, logged."""
    if provider not in PROVIDERS:
        raise ValueError(f"provider must be one of {PROVIDERS}, got {provider!r}")
    available = ort.get_available_providers()
    if provider == "cpu":
        return "cpu"
    if _CUDA in available:
        return "cuda"
    if provider == "cuda":
        log.warning(
            "CUDA requested but onnxruntime %s offers only %s (install onnxruntime-gpu, and not "
            "beside onnxruntime); falling back to CPU",
            ort.__version__,
            available,
        )
    return "cpu"


class KVCache:
    """Per-layer key and value buffers (B, H, S, Dh) as OrtValues bound as both past and present."""

    def __init__(
        self, n_layer: int, n_head: int, length: int, d_head: int, *, device: str, dtype: type, batch: int = 1
    ):
        self.shape = (batch, n_head, length, d_head)
        self.device, self.dtype = device, dtype
        self.bindings: dict[tuple, Any] = {}  # (id(OrtGraph), kind[, batch]) -> a binding on these buffers
        if device == "cpu":  # numpy owns the memory; the OrtValues are views, so ORT writes into it
            self.arrays = [np.zeros(self.shape, dtype=dtype) for _ in range(2 * n_layer)]
            self.values = [ort.OrtValue.ortvalue_from_numpy(a) for a in self.arrays]
        else:
            self.arrays = None
            self.values = [
                ort.OrtValue.ortvalue_from_shape_and_type(self.shape, dtype, "cuda", 0)
                for _ in range(2 * n_layer)
            ]

    def copy_from(self, other: KVCache, n_rows: int) -> None:
        """Copy the first n_rows cache rows of every buffer of `other` into this cache."""
        if self.arrays is not None:
            for dst, src in zip(self.arrays, other.arrays):
                dst[:, :, :n_rows] = src[:, :, :n_rows]
        else:  # no device-to-device copy in ORT's Python API: go through the host (~4 MB at S = 1024)
            for dst, src in zip(self.values, other.values):
                dst.update_inplace(src.numpy())


class OrtGraph:
    """One InferenceSession of the step graph: run(ids, past_len, cache) -> heads, cache updated in place."""

    def __init__(self, path: Path, *, device: str, threads: int = 1):
        self.device = device
        providers = [(_CUDA, {"device_id": 0}), _CPU] if device == "cuda" else [_CPU]
        self.session = ort.InferenceSession(str(path), cpu_session_options(threads), providers=providers)
        self.providers = self.session.get_providers()
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        self.past = [n for n in inputs if n.startswith("past_key_") or n.startswith("past_value_")]
        self.present = [n.replace("past_", "present_", 1) for n in self.past]
        self.heads = [n for n in outputs if not n.startswith("present_")]
        missing = {"input_ids", "past_len", *self.present} - set(inputs) - set(outputs)
        if missing:
            raise ModelDirError(f"{path}: graph lacks {sorted(missing)}; not a TypeMoE step graph")

    def run(self, ids: np.ndarray, past_len: int, cache: KVCache) -> dict[str, np.ndarray]:
        """Run (B, T) ids at positions past_len.. on `cache` (updated in place); heads as (B, T, *) arrays.

        Each cache has its own IOBindings, so sessions may run from different threads. A decode step
        (T = 1) reuses a binding whose inputs and outputs are preallocated numpy buffers, so it binds
        nothing per step (about 40 us less on CPU than rebinding).
        """
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if ids.shape[1] == 1:
            return self._decode(ids, past_len, cache)
        io = cache.bindings.get((id(self), "any"))
        if io is None:
            io = cache.bindings[(id(self), "any")] = self.session.io_binding()
            for past, value in zip(self.past, cache.values):
                io.bind_ortvalue_input(past, value)
        io.bind_cpu_input("input_ids", ids)
        io.bind_cpu_input("past_len", np.array(past_len, dtype=np.int64))
        io.clear_binding_outputs()  # head shapes change with T; rebinding all keeps the output order fixed
        for name in self.heads:
            io.bind_output(name, "cpu")
        for present, value in zip(self.present, cache.values):
            io.bind_ortvalue_output(present, value)  # the same buffer as the past: written in place
        self.session.run_with_iobinding(io)
        values = io.get_outputs()
        return {name: values[i].numpy() for i, name in enumerate(self.heads)}

    def _decode(self, ids: np.ndarray, past_len: int, cache: KVCache) -> dict[str, np.ndarray]:
        key = (id(self), "decode", ids.shape[0])
        fast = cache.bindings.get(key)
        if fast is None:
            fast = cache.bindings[key] = _DecodeBinding(self, cache, ids.shape[0])
        fast.ids[...] = ids
        fast.past_len[...] = past_len
        self.session.run_with_iobinding(fast.io)
        return {name: buf.copy() for name, buf in fast.outputs.items()}  # the buffers serve the next step


class _DecodeBinding:
    """An IOBinding for (B, 1) steps on one cache: numpy-owned inputs and head outputs, bound once."""

    def __init__(self, graph: OrtGraph, cache: KVCache, batch: int):
        sess = graph.session
        self.ids = np.zeros((batch, 1), dtype=np.int64)
        self.past_len = np.zeros((), dtype=np.int64)
        self.io = sess.io_binding()
        self.io.bind_ortvalue_input("input_ids", ort.OrtValue.ortvalue_from_numpy(self.ids))
        self.io.bind_ortvalue_input("past_len", ort.OrtValue.ortvalue_from_numpy(self.past_len))
        widths = {o.name: o.shape[-1] for o in sess.get_outputs()}
        self.outputs = {}
        for name in graph.heads:  # heads are float32 in every precision (export/DESIGN.md)
            buf = self.outputs[name] = np.zeros((batch, 1, int(widths[name])), dtype=np.float32)
            self.io.bind_ortvalue_output(name, ort.OrtValue.ortvalue_from_numpy(buf))
        for past, present, value in zip(graph.past, graph.present, cache.values):
            self.io.bind_ortvalue_input(past, value)
            self.io.bind_ortvalue_output(present, value)


class OrtModel:
    """A loaded model directory: the graph on its provider, the vocabulary and the label names.

    Args:
        model_dir: an exported model directory.
        provider: "auto" (CUDA when available, else CPU), "cpu" or "cuda" (falls back to CPU, logged).
        precision: "auto" (CUDA: fp16, else fp32, else int8; CPU: fp32, else int8, else fp16), "fp32", "fp16" or "int8" (int8 experts, CPU:
            about 2x faster decode for the small model at equal predictions, see export/DESIGN.md).
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
        self.provider = "cuda" if self.graph.providers[0] == _CUDA else "cpu"
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
        self._position_of = _position_values(self.vocab)

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
                if graph.providers[0] == _CUDA:
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

    def session(self) -> OrtSession:
        return OrtSession(self)


def _position_values(vocab: TypedVocab) -> np.ndarray:
    """(V,) int64: the grid position of each Position_<p> token, -1 for every other id."""
    out = np.full(vocab.size, -1, dtype=np.int64)
    for i in np.flatnonzero(vocab.family_of == _POSITION):
        out[i] = int(vocab.token(int(i)).split("_", 1)[1])
    return out


class OrtSession:
    """One stream of tokens on its own KV cache.

    feed() runs new ids on top of the cache. When the context would overflow, the cache is rebuilt by
    prefilling the leading control tokens (BOS, Key_, Meter_, ...: the conditioning) plus the most
    recent tokens, 3/4 of context_len in all (typemoe.sample.generate does the same, minus the control
    prefix): cached keys carry absolute RoPE positions, so they cannot be shifted.

    class_probs is the softmax of the mean per-position classification logits over every token fed
    since the session started, each counted once with the row it got when first fed; that equals the
    model's pooled head on the whole stream as long as the stream fits the context.
    """

    def __init__(self, model: OrtModel):
        self.model = model
        self.cache = model.new_cache()
        self.reset()

    @property
    def n_past(self) -> int:
        return len(self.tokens)

    def reset(self) -> None:
        """Forget the context (the buffers are reused; rows past n_past are never read)."""
        self.tokens: list[int] = []  # the ids in the cache, in order
        self.last: StepOut | None = None
        self._cls_rows: list[np.ndarray | None] = []  # (C,) class-logit row per token in self.tokens
        self._cls_total, self._cls_n = 0.0, 0  # sum and count of every counted row, slid-out ones included
        self._bar_position = -1  # grid position of the last Position token in the current bar

    def feed(self, ids: Sequence[int]) -> StepOut:
        """Run `ids` after the cached tokens and return the heads at the last of them.

        Raises:
            ValueError: empty ids, or an id outside the vocabulary.
        """
        new = [int(i) for i in ids]
        if not new:
            raise ValueError("feed() needs at least one token id")
        V = self.model.vocab.size
        bad = [i for i in new if not 0 <= i < V]
        if bad:
            raise ValueError(f"token ids {bad[:5]} outside the vocabulary 0..{V - 1}")
        ctx = self.model.context_len
        if self.n_past + len(new) <= ctx:  # the common case: append on the cache
            heads = self._run(new, self.n_past)
            self.tokens += new
            self._count_cls(heads, range(len(new)), None)
        else:  # slide: control prefix + the most recent tokens, 3/4 of the context in all
            every = self.tokens + new
            rows: list[np.ndarray | None] = self._cls_rows + [None] * len(new)  # None: never run yet
            if len(rows) != len(every):  # no classification head: nothing to track
                rows = [None] * len(every)
            n_pre = len(_control_prefix(every, self.model.vocab.family_of, limit=ctx // 4))
            start = max(n_pre, len(every) - (3 * ctx // 4 - n_pre))
            keep = [*range(n_pre), *range(start, len(every))]
            log.debug(
                "context full (%d + %d > %d): re-prefilling %d tokens", self.n_past, len(new), ctx, len(keep)
            )
            heads = self._run([every[i] for i in keep], 0)
            self.tokens = [every[i] for i in keep]
            self._cls_rows = [rows[i] for i in keep]
            self._count_cls(heads, range(len(keep)), self._cls_rows)
        self._track_positions(new)
        return self._step_out(heads)

    def rewind(self, n_past: int) -> None:
        """Forget every token after the first n_past (e.g. a speculative continuation).

        Cache rows past n_past are simply overwritten by the next feed.
        """
        if not 0 <= n_past <= self.n_past:
            raise ValueError(f"rewind to {n_past}: the session holds {self.n_past} tokens")
        del self.tokens[n_past:]
        for row in self._cls_rows[n_past:]:
            if row is not None:
                self._cls_total, self._cls_n = self._cls_total - row, self._cls_n - 1
        del self._cls_rows[n_past:]
        self._bar_position = -1
        fam = self.model.vocab.family_of
        for i in reversed(self.tokens):  # the current bar's last Position, if any
            if fam[i] == _BAR:
                break
            if fam[i] == _POSITION:
                self._bar_position = int(self.model._position_of[i])
                break
        self.last = None  # the heads at the new last position are unknown until the next feed

    def _run(self, ids: list[int], past_len: int) -> dict[str, np.ndarray]:
        return self.model.graph.run(np.asarray(ids, dtype=np.int64)[None], past_len, self.cache)

    def _count_cls(self, heads: dict[str, np.ndarray], run_rows: range, window: list | None) -> None:
        """Add the class-logit rows of tokens that ran for the first time to the running mean.

        Append case (window None): every row just run is new. Slide case: window holds the rows of the
        re-prefilled tokens, None where a token had never run; only those count (once per token).
        """
        if "cls_logits" not in heads:
            return
        cls_TC = heads["cls_logits"][0].astype(np.float64)  # (T, C), one row per id just run
        for j in run_rows:
            if window is None:
                self._cls_rows.append(cls_TC[j])
            elif window[j] is None:
                window[j] = cls_TC[j]
            else:
                continue
            self._cls_total = self._cls_total + cls_TC[j]
            self._cls_n += 1

    def _step_out(self, heads: dict[str, np.ndarray]) -> StepOut:
        class_probs = None
        if "cls_logits" in heads:
            class_probs = softmax(self._cls_total / self._cls_n).astype(np.float32)  # (C,)
        self.last = StepOut(
            logits=heads["logits"][0, -1].astype(np.float32),
            key_probs=softmax(heads["key_logits"][0, -1]).astype(np.float32),
            meter_probs=softmax(heads["meter_logits"][0, -1]).astype(np.float32),
            class_probs=class_probs,
        )
        return self.last

    def _track_positions(self, ids: list[int]) -> None:
        fam, pos = self.model.vocab.family_of, self.model._position_of
        for i in ids:
            if fam[i] == _BAR:
                self._bar_position = -1
            elif fam[i] == _POSITION:
                self._bar_position = int(pos[i])

    def _refeed_last(self) -> None:
        last = self.tokens[-1]
        self.rewind(self.n_past - 1)
        self.feed([last])

    def fork(self) -> OrtSession:
        """An independent copy: same tokens and cache, its own buffers."""
        other = OrtSession(self.model)
        other.cache.copy_from(self.cache, self.n_past)
        other.tokens = list(self.tokens)
        other.last = self.last
        other._cls_rows = list(self._cls_rows)
        other._cls_total, other._cls_n, other._bar_position = self._cls_total, self._cls_n, self._bar_position
        return other

    def allowed_next(self, *, strict_positions: bool = True) -> np.ndarray:
        """(V,) bool: ids that keep the stream valid REMI after the last token.

        The family of the last token picks a row of vocab.next_allowed (control ids are never allowed);
        with strict_positions, a Position may not go back or repeat within the current bar.
        """
        vocab = self.model.vocab
        last = self.tokens[-1] if self.tokens else vocab.bos_id
        allowed = vocab.next_allowed[vocab.family_of[last]].copy()  # (V,)
        if strict_positions and self._bar_position >= 0:
            pos = self.model._position_of  # (V,) -1 for non-Position ids
            allowed &= ~((pos >= 0) & (pos <= self._bar_position))
        return allowed

    def generate(self, **kwargs) -> list[int]:
        """generate_steps(**kwargs), collected: the new ids (also appended to the session)."""
        return list(self.generate_steps(**kwargs))

    def generate_steps(
        self,
        *,
        n_tokens: int | None = None,
        n_bars: int | None = None,
        temperature: float = 1.0,
        top_p: float = 0.95,
        seed: int | None = None,
        strict_positions: bool = True,
    ) -> Iterator[int]:
        """Sample a grammar-valid continuation of the cached stream, feeding each new id.

        Args:
            n_tokens: at most this many new ids.
            n_bars: stop before the n_bars-th new Bar token (which is neither returned nor fed), so the
                continuation ends on a bar line; a stream that ends with a Bar token gets n_bars whole bars.
                Without n_tokens at most n_bars * 256 ids are generated.
            temperature: 0 = greedy (argmax), else logits / temperature.
            top_p: nucleus sampling: keep the most likely ids until their probability reaches top_p.
            seed: seeds numpy's generator (None: fresh entropy).
            strict_positions: forbid Position tokens that go back (or repeat) within a bar.
        Yields:
            Each new id as soon as it is sampled and fed, so a realtime caller can act on the first note
            before the rest exists, or stop early by dropping the iterator (the session then holds exactly
            the ids yielded so far).
        Raises:
            ValueError (on the first next()): neither n_tokens nor n_bars, or bad temperature / top_p.
        """
        if n_tokens is None and n_bars is None:
            raise ValueError("generate() needs n_tokens or n_bars")
        if temperature < 0 or not 0.0 < top_p <= 1.0:
            raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
        limit = n_tokens if n_tokens is not None else n_bars * TOKENS_PER_BAR_CAP
        if n_tokens is not None and n_bars is not None:
            limit = min(n_tokens, n_bars * TOKENS_PER_BAR_CAP)
        rng = np.random.default_rng(seed)
        vocab = self.model.vocab
        if self.last is None:  # nothing fed yet (start a piece), or just rewound (re-run the last token)
            self.feed([vocab.bos_id]) if not self.tokens else self._refeed_last()
        done = bars = 0
        while done < limit:
            allowed = self.allowed_next(strict_positions=strict_positions)
            nxt = sample_next(self.last.logits, allowed, temperature=temperature, top_p=top_p, rng=rng)
            if n_bars is not None and vocab.family_of[nxt] == _BAR:
                bars += 1
                if bars >= n_bars:
                    return
            self.feed([nxt])
            done += 1
            yield nxt


def sample_next(
    logits: np.ndarray, allowed: np.ndarray, *, temperature: float, top_p: float, rng: np.random.Generator
) -> int:
    """One id from (V,) logits restricted to `allowed`; the same rule as typemoe.sample.sample_next."""
    assert allowed.any(), "grammar mask allows no token"
    masked = np.where(allowed, logits.astype(np.float64), -np.inf)  # (V,)
    if temperature == 0:
        return int(np.argmax(masked))
    probs = softmax(masked / temperature)  # (V,)
    if top_p < 1.0:
        order = np.argsort(-probs, kind="stable")  # (V,)
        sorted_p = probs[order]
        drop = (np.cumsum(sorted_p) - sorted_p) >= top_p  # the most likely id always stays
        probs[order[drop]] = 0.0
        probs /= probs.sum()
    return int(rng.choice(probs.size, p=probs))


def _control_prefix(ids: list[int], family_of: np.ndarray, *, limit: int) -> list[int]:
    """The leading control ids (BOS, Key_, Meter_, Genre_, Emotion_) of a stream, at most `limit`."""
    n = 0
    while n < min(len(ids), limit) and family_of[ids[n]] == _CONTROL:
        n += 1
    return ids[:n]
