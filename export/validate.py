"""Parity of an exported model directory with PyTorch, reported all at once.

Every case is a chain of feeds (a prefill, then more chunks or single decode steps on the same cache).
PyTorch runs TypeMoE.forward with its own past/present chain ("sparse" MoE path, the training code);
ONNX Runtime runs the exported graph through export.runtime, so the check covers the runtime's cache
binding too. Compared after every feed: all heads' logits at every new position, the cache rows written
so far, and (with a classification head) the running mean of the per-position class logits against the
model's pooled head on the whole prefix.

Cases: context lengths 1 (one case per token type), 17, 256 and the maximum; prompts that hold every
token type; prefill + decode chains, a chunked feed, decode from an empty cache, a batch of 2; with the
infilling tokens, a fill-in-the-middle stream whose markers run (fim_prompt).
fp32 tolerance: |ort - torch| <= 1e-4 + 1e-4 * |torch|. The fp16 graph (CUDA) is checked on CPU with
a looser bound (FP16_ATOL), as a layout check: fp16 rounding is not what it tests.

Dimensions: B batch, T new tokens, P cached tokens, V vocab, H heads, Dh d_head
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from typemoe.export.runtime import MODEL_FP16_FILE, KVCache, OrtGraph, OrtModel
from typemoe.model import TypeMoE
from typemoe.sampling import softmax

log = logging.getLogger(__name__)

ATOL = RTOL = 1e-4
FP16_ATOL = 5e-2  # abs bound for the fp16 graph vs fp32 PyTorch; see the module docstring
INT8_MAX_MEAN_KL = 1e-3  # nats: mean KL(PyTorch fp32 || int8 graph) of the next-token distribution
INT8_MAX_KL = 2e-2  # nats: the worst position, and the mean KL of the key and meter heads
CONTEXT_LENGTHS = (1, 17, 256)  # plus the model's maximum


class ExportMismatchError(RuntimeError):
    """ONNX Runtime disagrees with PyTorch; .mismatches lists every failing (case, output) pair."""

    def __init__(self, message: str, mismatches: list[str]):
        super().__init__(message)
        self.mismatches = mismatches


@dataclass
class Case:
    name: str
    chunks: list[np.ndarray]  # each (B, T) int64, fed in order on one cache


@dataclass
class ParityReport:
    rows: list[tuple[str, str, float, float]] = field(default_factory=list)  # case, output, max |diff|, bound
    mismatches: list[str] = field(default_factory=list)

    def add(
        self, case: str, name: str, got: np.ndarray, want: np.ndarray, *, atol: float, rtol: float
    ) -> None:
        if got.shape != want.shape:
            self.mismatches.append(f"{case}/{name}: shape {got.shape} != {want.shape}")
            self.rows.append((case, name, float("inf"), atol))
            return
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))  # same shape
        excess = diff - (atol + rtol * np.abs(want.astype(np.float64)))
        worst = float(diff.max()) if diff.size else 0.0
        self.rows.append((case, name, worst, atol))
        if diff.size and (excess.max() > 0 or not np.isfinite(got).all()):
            at = np.unravel_index(int(np.argmax(excess)), diff.shape)
            self.mismatches.append(
                f"{case}/{name}: max |diff| {worst:.3e} (bound {atol:.0e} + {rtol:.0e}*|ref|), "
                f"worst at index {tuple(int(i) for i in at)}"
            )

    def summary(self) -> str:
        worst: dict[str, float] = {}
        for case, name, d, _ in self.rows:
            key = ("fp16 " if case.startswith("fp16/") else "") + (
                "cache" if name.startswith("present") else name
            )
            worst[key] = max(worst.get(key, 0.0), d)
        return ", ".join(f"{k} {v:.1e}" for k, v in sorted(worst.items()))

    def to_json(self) -> dict:
        return {
            "atol": ATOL,
            "rtol": RTOL,
            "fp16_atol": FP16_ATOL,
            "cases": len({r[0] for r in self.rows}),
            "max_abs_diff": {r[0] + "/" + r[1]: r[2] for r in self.rows if not r[1].startswith("present")},
            "summary": self.summary(),
        }


def typed_prompt(vocab, n: int, rng: np.random.Generator) -> list[int]:
    """n ids that walk the REMI grammar after a control prefix, holding every token type when n >= 8."""
    control = [vocab.bos_id, *vocab.control_ids(key="D minor", meter="6/8")]
    ids = control[: min(n, len(control))]
    while len(ids) < n:
        allowed = np.flatnonzero(vocab.next_allowed[vocab.family_of[ids[-1]]])
        ids.append(int(rng.choice(allowed)))
    return ids


def default_cases(vocab, context_len: int, *, seed: int = 0) -> list[Case]:
    """The parity cases of the module docstring for a model with this context length."""
    rng = np.random.default_rng(seed)

    def row(ids: list[int]) -> np.ndarray:
        return np.asarray(ids, dtype=np.int64)[None]  # (1, T)

    cases = []
    for t, name in enumerate(vocab.type_names):  # length 1: one case per token type
        cases.append(Case(f"len1/{name}", [row([int(rng.choice(np.flatnonzero(vocab.type_of == t)))])]))
    lengths = sorted({n for n in (*CONTEXT_LENGTHS[1:], context_len) if 1 < n <= context_len})
    for n in lengths:
        cases.append(Case(f"prefill{n}", [row(typed_prompt(vocab, n, rng))]))
    p = min(17, context_len - 8)
    seq = typed_prompt(vocab, p + 8, rng)
    cases.append(Case(f"prefill{p}+decode8", [row(seq[:p])] + [row([i]) for i in seq[p:]]))
    p = min(256, context_len - 8)
    seq = typed_prompt(vocab, p + 8, rng)
    cases.append(
        Case(
            f"prefill{p}+chunk4+decode4",
            [row(seq[:p]), row(seq[p : p + 4])] + [row([i]) for i in seq[p + 4 :]],
        )
    )
    if getattr(vocab, "has_infill", False) and context_len >= 48:  # before the last 3 (the fp16 check's)
        seq = fim_prompt(vocab, rng)
        cases.append(Case("infill/prefill+decode8", [row(seq[:-8])] + [row([i]) for i in seq[-8:]]))
    seq = typed_prompt(vocab, 6, rng)
    cases.append(Case("decode6-from-empty", [row([i]) for i in seq]))
    seq = typed_prompt(vocab, context_len, rng)
    cases.append(Case(f"prefill{context_len - 1}+decode1", [row(seq[:-1]), row(seq[-1:])]))
    both = np.stack([typed_prompt(vocab, 19, rng), typed_prompt(vocab, 19, rng)])  # (2, 19)
    cases.append(Case("batch2/prefill17+decode2", [both[:, :17], both[:, 17:18], both[:, 18:]]))
    return cases


def fim_prompt(vocab, rng: np.random.Generator) -> list[int]:
    """A fill-in-the-middle stream (typemoe/infill.py): prefix, Infill_Suffix, suffix, Infill_Middle,
    Infill_Bars_2, two middle bars, Infill_End; every infilling marker runs, the last ones one by one."""

    def walk(ids: list[int], n: int) -> list[int]:
        for _ in range(n):
            ids.append(int(rng.choice(np.flatnonzero(vocab.next_allowed[vocab.family_of[ids[-1]]]))))
        return ids

    bar = vocab.id("Bar_None")
    ids = walk(typed_prompt(vocab, 12, rng) + [vocab.id("Infill_Suffix"), bar], 8)
    ids = walk(ids + [vocab.id("Infill_Middle"), vocab.id("Infill_Bars_2"), bar], 6)
    return walk(ids + [bar], 5) + [vocab.id("Infill_End")]


def check_parity(
    model: TypeMoE,
    model_dir: str | Path,
    *,
    cases: list[Case] | None = None,
    seed: int = 0,
    atol: float = ATOL,
    rtol: float = RTOL,
) -> ParityReport:
    """Compare every case on PyTorch and on the model directory's graphs; raise once, listing everything.

    Raises:
        ExportMismatchError: with every mismatch (the message names model_dir).
    """
    model_dir = Path(model_dir)
    ort_model = OrtModel(model_dir, provider="cpu")
    cases = cases if cases is not None else default_cases(ort_model.vocab, model.cfg.context_len, seed=seed)
    report = ParityReport()
    model = model.eval()
    for case in cases:
        _check_case(model, ort_model.graph, ort_model.cache_dtype, case, report, atol=atol, rtol=rtol, tag="")
    fp16_path = model_dir / MODEL_FP16_FILE
    if fp16_path.is_file():
        try:
            graph16 = OrtGraph(fp16_path, device="cpu")
        except (RuntimeError, ort.capi.onnxruntime_pybind11_state.Fail) as err:  # type: ignore[attr-defined]
            log.warning(
                "cannot run %s on CPU to check it (%s); it is checked only on CUDA", fp16_path.name, err
            )
        else:
            for case in cases[-3:]:  # chains and a batch: enough to catch a layout or dtype slip
                _check_case(model, graph16, np.float16, case, report, atol=FP16_ATOL, rtol=0.0, tag="fp16/")
    for case, name, d, bound in report.rows:
        log.debug("parity %s/%s: %.2e (bound %.0e)", case, name, d, bound)
    if report.mismatches:
        lines = "\n  ".join(report.mismatches)
        raise ExportMismatchError(
            f"{model_dir}: ONNX Runtime differs from PyTorch in {len(report.mismatches)} places:\n  {lines}",
            report.mismatches,
        )
    return report


@torch.inference_mode()
def _check_case(
    model: TypeMoE,
    graph: OrtGraph,
    dtype,
    case: Case,
    report: ParityReport,
    *,
    atol: float,
    rtol: float,
    tag: str,
) -> None:
    cfg = model.cfg
    B = case.chunks[0].shape[0]
    cache = KVCache(cfg.n_layer, cfg.n_head, cfg.context_len, cfg.d_head, device="cpu", dtype=dtype, batch=B)
    past = model.empty_past(B)
    seen: list[np.ndarray] = []
    cls_rows: list[np.ndarray] = []
    P = 0
    for step, ids in enumerate(case.chunks):
        where = f"{tag}{case.name}#{step}"
        want = model(torch.from_numpy(ids), past=past)
        past = want.present
        got = graph.run(ids, P, cache)
        P += ids.shape[1]
        seen.append(ids)
        for name, ref in (
            ("logits", want.logits),
            ("key_logits", want.key_logits),
            ("meter_logits", want.meter_logits),
        ):
            report.add(where, name, got[name], ref.numpy(), atol=atol, rtol=rtol)
        for i, (k, v) in enumerate(want.present):
            report.add(
                where, f"present_key_{i}", cache.arrays[2 * i][:, :, :P], k.numpy(), atol=atol, rtol=rtol
            )
            report.add(
                where,
                f"present_value_{i}",
                cache.arrays[2 * i + 1][:, :, :P],
                v.numpy(),
                atol=atol,
                rtol=rtol,
            )
        if cfg.n_classes:
            cls_rows.append(got["cls_logits"])
            pooled = np.concatenate(cls_rows, axis=1).mean(axis=1)  # (B, C)
            ref = model(torch.from_numpy(np.concatenate(seen, axis=1))).cls_logits  # (B, C) whole prefix
            report.add(where, "cls_logits(mean)", pooled, ref.numpy(), atol=atol, rtol=rtol)


@torch.inference_mode()
def int8_quality(model: TypeMoE, graph_path: str | Path, cases: list[Case]) -> dict:
    """How far the int8-expert graph is from PyTorch fp32, as distributions rather than logits.

    int8 weights (and QMoE's int8 activations) move logits by ~1e-2, so the 1e-4 parity bound cannot
    apply; what matters is whether the predictions change. Over every position of the cases: KL of
    the next-token, key and meter distributions, top-1 agreement, and the largest logit difference.
    "ok" applies INT8_MAX_MEAN_KL and INT8_MAX_KL.
    """
    cfg = model.cfg
    graph = OrtGraph(Path(graph_path), device="cpu")
    kl = {"logits": [], "key_logits": [], "meter_logits": []}
    agree, max_diff = [], 0.0
    for case in cases:
        cache = KVCache(
            cfg.n_layer,
            cfg.n_head,
            cfg.context_len,
            cfg.d_head,
            device="cpu",
            dtype=np.float32,
            batch=case.chunks[0].shape[0],
        )
        past, P = model.empty_past(case.chunks[0].shape[0]), 0
        for ids in case.chunks:
            want = model(torch.from_numpy(ids), past=past)
            past = want.present
            got = graph.run(ids, P, cache)
            P += ids.shape[1]
            for name in kl:
                ref = getattr(want, name).double().numpy()  # (B, T, n)
                p, q = softmax(ref), softmax(got[name].astype(np.float64))
                kl[name] += list((p * (np.log(p + 1e-30) - np.log(q + 1e-30))).sum(-1).ravel())
                if name == "logits":
                    agree += list((ref.argmax(-1) == got[name].argmax(-1)).ravel())
                    max_diff = max(max_diff, float(np.abs(ref - got[name]).max()))
    out = {
        "lm_kl_mean": float(np.mean(kl["logits"])),
        "lm_kl_max": float(np.max(kl["logits"])),
        "key_kl_mean": float(np.mean(kl["key_logits"])),
        "meter_kl_mean": float(np.mean(kl["meter_logits"])),
        "lm_top1_agreement": float(np.mean(agree)),
        "max_abs_logit_diff": max_diff,
        "positions": len(agree),
        "bounds": {"lm_kl_mean": INT8_MAX_MEAN_KL, "kl_max": INT8_MAX_KL},
    }
    out["ok"] = bool(
        out["lm_kl_mean"] <= INT8_MAX_MEAN_KL
        and out["lm_kl_max"] <= INT8_MAX_KL
        and out["key_kl_mean"] <= INT8_MAX_KL
        and out["meter_kl_mean"] <= INT8_MAX_KL
    )
    return out
