"""ONNX Runtime pieces of the runtime: providers, session options, the KV cache and the step graph.

numpy + onnxruntime only, never torch. One graph serves prefill and decode. Its KV cache is a preallocated
buffer per layer, (1, H, S, Dh) with S = context_len, bound with IOBinding as both the past input and the
present output, so ONNX Runtime's GroupQueryAttention writes the new rows in place and a decode step copies
nothing.

CPU session options (measured on the project's 2-core box, see export/DESIGN.md): one intra-op thread
(a decode step is ~50 small kernels, and a second thread costs more in handoff than it saves),
sequential execution, all graph optimisations, denormals flushed to zero.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from typemoe.export.model_dir import ModelDirError

log = logging.getLogger(__name__)

PROVIDERS = ("auto", "cpu", "cuda")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


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
    if CUDA in available:
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
        providers = [(CUDA, {"device_id": 0}), CPU] if device == "cuda" else [CPU]
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
