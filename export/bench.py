"""Latency benchmark of an exported model: decode, prefill, ORT vs PyTorch, TypeMoE vs dense.

    typemoe bench --out bench.json                     # the shipped model (typemoe/default_model)
    typemoe bench --model MODEL_DIR --out bench.json
    typemoe bench --preset small --out bench.json      # an untrained small model, exported on the fly
    python -m export.bench ...                         # the same without the console script

What is measured (all in one process, same run, same thread count):
    decode_ms.<C>.{p50,p95,p99}  one OrtSession.feed([id]) with C tokens attended (C-1 cached), C = 256
                                 and 1024 (or the model's maximum when shorter; then "context" says so)
    prefill_ms.512               feed(512 ids) on an empty session (median)
    ort_vs_torch                 PyTorch eager decode ms / ORT decode ms at context 256
    typemoe_vs_dense             ORT decode ms of this model / of its dense twin (ffn="dense": one SwiGLU
                                 of the same width, i.e. equal active parameters), context 256
    tokens_per_s                 generate(n_tokens=256, temperature=1, top_p=0.95) throughput
The PyTorch and dense-twin models have the model directory's config with random weights: latency does
not depend on weight values, and a model directory holds no torch weights. Both need torch; without it
those two ratios are null, with a note. Percentiles come from many repetitions after a warm-up.
If bridge/bench.py offers run_bridge_bench(model_dir), its keys are merged in.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from export.runtime import OrtModel, OrtSession

log = logging.getLogger(__name__)

DECODE_CONTEXTS = (256, 1024)
PREFILL_LEN = 512
GEN_TOKENS = 256


def default_model_dir() -> Path:
    import typemoe

    return Path(typemoe.__file__).parent / "default_model"


def percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = np.asarray(samples_s) * 1e3
    return {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
            "p99": float(np.percentile(ms, 99)), "n": int(ms.size)}


def time_calls(fn: Callable[[], Any], *, reps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _prompt(model: OrtModel, n: int, rng: np.random.Generator) -> list[int]:
    """n grammar-valid ids (what a stream looks like), starting with BOS."""
    vocab = model.vocab
    ids = [vocab.bos_id]
    while len(ids) < n:
        ids.append(int(rng.choice(np.flatnonzero(vocab.next_allowed[vocab.family_of[ids[-1]]]))))
    return ids


def ort_decode(model: OrtModel, context: int, *, reps: int, warmup: int, seed: int = 0) -> list[float]:
    """Seconds per feed([id]) with `context` tokens attended: the session is rewound after each step."""
    rng = np.random.default_rng(seed)
    s: OrtSession = model.session()
    s.feed(_prompt(model, context - 1, rng))
    nxt = [int(i) for i in rng.integers(0, model.vocab.size, reps + warmup)]
    it = iter(nxt)

    def step() -> None:
        s.feed([next(it)])
        s.rewind(context - 1)

    return time_calls(step, reps=reps, warmup=warmup)


def torch_decode(torch_model: Any, context: int, *, reps: int, warmup: int, threads: int) -> dict[str, float]:
    """Median ms of one PyTorch eager decode step at `context`, per MoE path (the best is the baseline)."""
    import torch

    torch.set_num_threads(threads)
    cfg = torch_model.cfg
    ids = torch.randint(0, cfg.vocab_size, (1, context - 1))
    tok = torch.randint(0, cfg.vocab_size, (1, 1))
    out = {}
    with torch.inference_mode():
        past = torch_model(ids, past=torch_model.empty_past()).present
        paths = ("sparse", "gather") if cfg.ffn != "dense" else ("sparse",)
        for path in paths:
            ts = time_calls(lambda p=path: torch_model(tok, past=past, moe_path=p), reps=reps, warmup=warmup)
            out[path] = float(np.median(ts) * 1e3)
    return out


def build_torch_twin(model: OrtModel, **changes: Any) -> Any:
    """A PyTorch TypeMoE with the model directory's config (plus `changes`) and random weights."""
    from dataclasses import replace

    import torch

    from typemoe.config import ModelConfig
    from typemoe.model import TypeMoE

    cfg = replace(ModelConfig.from_dict(model.config), **changes)
    torch.manual_seed(0)
    return TypeMoE(cfg, json.loads(model.metadata["type_of_id"])).eval()


def run_bench(model_dir: str | os.PathLike, *, torch_model: Any = None, threads: int = 1, reps: int = 2000,
              warmup: int = 200, torch_reps: int = 300, prefill_reps: int = 20, with_baselines: bool = True,
              ) -> dict[str, Any]:
    """Measure everything in the module docstring; returns the JSON-ready result."""
    load_before = os.getloadavg()
    model = OrtModel(model_dir, provider="auto", threads=threads)
    notes: list[str] = []
    ctx_max = model.context_len
    res: dict[str, Any] = {"provider": model.provider, "model_dir": str(model_dir), "threads": threads,
                           "context_len": ctx_max, "config": model.config}
    decode: dict[str, Any] = {}
    for c in DECODE_CONTEXTS:
        used = min(c, ctx_max)
        stats = percentiles(ort_decode(model, used, reps=reps, warmup=warmup))
        if used != c:
            stats["context"] = used
            notes.append(f"decode_ms.{c}: the model's context is {ctx_max} < {c}; measured at {used}")
        decode[str(c)] = stats
    res["decode_ms"] = decode
    n_pre = min(PREFILL_LEN, ctx_max)
    prompt = _prompt(model, n_pre, np.random.default_rng(1))
    s = model.session()

    def prefill() -> None:
        s.reset()
        s.feed(prompt)

    res["prefill_ms"] = {str(PREFILL_LEN): float(np.median(time_calls(prefill, reps=prefill_reps, warmup=2)) * 1e3)}
    if n_pre != PREFILL_LEN:
        notes.append(f"prefill_ms.{PREFILL_LEN}: the model's context is {ctx_max}; measured with {n_pre} tokens")
    g = model.session()
    g.feed(_prompt(model, 64, np.random.default_rng(2)))
    t0 = time.perf_counter()
    made = g.generate(n_tokens=GEN_TOKENS, temperature=1.0, top_p=0.95, seed=0)
    res["tokens_per_s"] = len(made) / (time.perf_counter() - t0)
    c256 = min(256, ctx_max)
    ort_ms = decode["256"]["p50"]
    res["ort_vs_torch"] = res["typemoe_vs_dense"] = None
    if with_baselines:
        try:
            import torch  # noqa: F401
        except ImportError:
            notes.append("torch is not installed: ort_vs_torch and typemoe_vs_dense need it (pip install typemoe[train])")
        else:
            _baselines(model, res, notes, torch_model=torch_model, context=c256, ort_ms=ort_ms, threads=threads,
                       reps=reps, warmup=warmup, torch_reps=torch_reps)
    bridge = _bridge_bench(model_dir)
    if bridge:
        res.update(bridge)
    res["load_avg"] = {"before": list(load_before), "after": list(os.getloadavg())}
    res["cpu_count"] = os.cpu_count()
    import onnxruntime

    res["onnxruntime"] = onnxruntime.__version__
    res["notes"] = notes
    return res


def _baselines(model: OrtModel, res: dict, notes: list[str], *, torch_model: Any, context: int, ort_ms: float,
               threads: int, reps: int, warmup: int, torch_reps: int) -> None:
    from export.onnx_export import export_model

    twin = torch_model if torch_model is not None else build_torch_twin(model)
    torch_ms = torch_decode(twin, context, reps=torch_reps, warmup=max(10, warmup // 10), threads=threads)
    best = min(torch_ms.values())
    res["torch_decode_ms"] = {"256": torch_ms, "threads": threads}
    res["ort_vs_torch"] = best / ort_ms
    if model.config["ffn"] == "dense":
        res["typemoe_vs_dense"] = 1.0
        notes.append("typemoe_vs_dense: the model is itself dense")
        return
    dense = build_torch_twin(model, ffn="dense")
    with tempfile.TemporaryDirectory() as tmp:
        out = export_model(dense, model.vocab, Path(tmp) / "dense", fp16=False, labels=json.loads(model.metadata["labels"]))
        dense_ort = OrtModel(out, provider=model.provider, threads=threads)
        dense_ms = percentiles(ort_decode(dense_ort, context, reps=reps, warmup=warmup))
    # interleave a second TypeMoE measurement so that a load change during the run biases neither side
    again = percentiles(ort_decode(model, context, reps=reps, warmup=warmup))
    moe_ms = min(ort_ms, again["p50"])
    res["dense_decode_ms"] = {"256": dense_ms}
    res["typemoe_vs_dense"] = moe_ms / dense_ms["p50"]


def _bridge_bench(model_dir: str | os.PathLike) -> dict[str, Any]:
    """bridge/bench.py's run_bridge_bench(model_dir) keys, when the bridge provides it."""
    try:
        from bridge.bench import run_bridge_bench  # type: ignore[import-not-found]
    except ImportError:
        return {}
    return dict(run_bridge_bench(model_dir))


def format_table(res: dict[str, Any]) -> str:
    rows = [("provider", res["provider"]), ("threads", res["threads"])]
    for c, st in res["decode_ms"].items():
        at = f" (at {st['context']})" if "context" in st else ""
        rows.append((f"decode ms @ {c}{at}", f"p50 {st['p50']:.3f}  p95 {st['p95']:.3f}  p99 {st['p99']:.3f}"))
    for n, ms in res["prefill_ms"].items():
        rows.append((f"prefill ms @ {n}", f"{ms:.2f}"))
    rows.append(("tokens/s (generate)", f"{res['tokens_per_s']:.0f}"))
    for key in ("ort_vs_torch", "typemoe_vs_dense"):
        v = res.get(key)
        rows.append((key, "n/a" if v is None else f"{v:.2f}x"))
    rows.append(("load avg before/after", f"{res['load_avg']['before'][0]:.2f} / {res['load_avg']['after'][0]:.2f}"))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    lines += [f"note: {n}" for n in res.get("notes", [])]
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", type=Path, help="exported model directory (default: the shipped model)")
    src.add_argument("--preset", choices=("tiny", "small", "base"),
                     help="bench an untrained model of this preset, exported on the fly (needs torch)")
    p.add_argument("--out", type=Path, default=Path("bench.json"), help="JSON result file (default bench.json)")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime / PyTorch intra-op threads (default 1)")
    p.add_argument("--reps", type=int, default=2000, help="timed decode steps per context (default 2000)")
    p.add_argument("--warmup", type=int, default=200, help="untimed steps first (default 200)")
    p.add_argument("--no-baselines", action="store_true", help="skip the PyTorch and dense-twin comparisons")


def run(args: argparse.Namespace) -> int:
    """`typemoe bench`: returns an exit code."""
    torch_model = None
    with tempfile.TemporaryDirectory() as tmp:
        if args.preset:
            model_dir, torch_model = _export_preset(args.preset, Path(tmp))
        else:
            model_dir = args.model or default_model_dir()
            if not (Path(model_dir) / "manifest.json").is_file():
                what = f"--model {model_dir}" if args.model else f"the shipped model ({model_dir})"
                msg = (f"error: {what} is not an exported model directory. Pass --model MODEL_DIR "
                       "(`typemoe export --checkpoint CKPT --out MODEL_DIR` makes one) or --preset small.")
                print(msg)  # noqa: T201 - CLI output
                return 2
        res = run_bench(model_dir, torch_model=torch_model, threads=args.threads, reps=args.reps,
                        warmup=args.warmup, with_baselines=not args.no_baselines)
    if args.preset:
        res["model_dir"] = f"--preset {args.preset} (untrained, exported on the fly)"
    print(format_table(res))  # noqa: T201 - CLI output
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")  # noqa: T201 - CLI output
    return 0


def _export_preset(preset: str, tmp: Path) -> tuple[Path, Any]:
    import torch

    from export.onnx_export import export_model
    from typemoe import analysis
    from typemoe.config import PRESETS
    from typemoe.model import TypeMoE
    from typemoe.vocab import TypedVocab

    vocab = TypedVocab.default()
    cfg = PRESETS[preset](vocab.size, vocab.n_types, n_meters=len(analysis.METERS))
    torch.manual_seed(0)
    model = TypeMoE(cfg, vocab.type_of).eval()
    return export_model(model, vocab, tmp / preset, fp16=False), model


def main(argv: list[str] | None = None) -> int:
    from export.cli import quiet_exporter_logs

    p = argparse.ArgumentParser(prog="python -m export.bench", description=__doc__.split("\n")[0])
    add_arguments(p)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    quiet_exporter_logs()
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
