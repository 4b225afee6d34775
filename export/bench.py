"""Latency benchmark of an exported model: decode, prefill, ORT vs PyTorch, TypeMoE vs dense.

    typemoe bench --out bench.json                     # the shipped model (typemoe/default_model)
    typemoe bench --model MODEL_DIR --out bench.json
    typemoe bench --preset small --out bench.json      # an untrained small model, exported on the fly
    python -m typemoe.export.bench ...                         # the same without the console script

What is measured (all in one process, same run, same thread count):
    decode_ms.<C>.{p50,p95,p99}  one OrtSession.feed([id]) with C tokens attended (C-1 cached), C = 256
                                 and 1024 (or the model's maximum when shorter; then "context" says so)
    prefill_ms.512               feed(512 ids) on an empty session (median)
    ort_vs_torch                 PyTorch eager decode ms (best MoE path) / ORT decode ms, context 256
    typemoe_vs_dense             ORT decode ms of this model / of its dense twin (ffn="dense": one SwiGLU
                                 of the same width, i.e. equal active parameters), context 256
    tokens_per_s                 generate(n_tokens=256, temperature=1, top_p=0.95) throughput
    guidance_cost                decode ms per generated token with classifier-free guidance 1.5 (two KV-cached
                                 streams) vs unguided, after a prompt with Key_/Meter_ controls: medians of
                                 the step times and their ratio; the guided first step, which prefills the
                                 second stream, is reported apart (first_step_ms); head_*: guidance 1.5 with
                                 the key head's guidance (typemoe.key_steering) at its default weight
    int8.*                       the same decode figures and ratios for model_int8.onnx (int8 experts)
                                 against an int8 dense twin, plus the export's int8 quality report
The PyTorch and dense-twin models have the model directory's config with random weights: latency does
not depend on weight values, and a model directory holds no torch weights. Both need torch; without it
those ratios are null, with a note. Decode ids are random, so consecutive steps use different experts,
as in music (Position, Pitch, Velocity, Duration in turn). Models compared with each other are timed in
alternating blocks, so a change of machine load during the run (this box is shared) biases none.
The `typemoe` command registers the bridge's latency rows (bridge/bench.py) and `typemoe analyze`'s cost
(typemoe/commands/analyze_bench.py), `typemoe infill`'s (typemoe/commands/infill_bench.py) and `typemoe
generate --candidates`'s (typemoe/commands/candidates_bench.py) in EXTRA_BENCHES.
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

from typemoe.export.runtime import MODEL_INT8_FILE, OrtModel, OrtSession
from typemoe.key_steering import DEFAULT_HEAD_GUIDANCE
from typemoe.meter_steering import DEFAULT_METER_GUIDANCE
from typemoe.shipped import default_model_dir

log = logging.getLogger(__name__)

DECODE_CONTEXTS = (256, 1024)
PREFILL_LEN = 512
GEN_TOKENS = 256
GUIDANCE = 1.5  # the guidance weight whose cost `guidance_cost` reports
GUIDED_TOKENS = 64  # tokens per timed generation of guidance_cost


def percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = np.asarray(samples_s) * 1e3
    return {
        "p50": float(np.percentile(ms, 50)),
        "p95": float(np.percentile(ms, 95)),
        "p99": float(np.percentile(ms, 99)),
        "n": int(ms.size),
    }


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


def interleaved_decode(
    models: dict[str, OrtModel], context: int, *, reps: int, warmup: int, block: int = 100, seed: int = 0
) -> dict[str, list[float]]:
    """Seconds per feed([id]) with `context` tokens attended, per model, timed in alternating blocks.

    The session is rewound after each step, so every step attends exactly `context` tokens.
    """
    rng = np.random.default_rng(seed)
    sessions: dict[str, OrtSession] = {}
    for name, model in models.items():
        s = sessions[name] = model.session()
        s.feed(_prompt(model, context - 1, rng))
    vocab_size = next(iter(models.values())).vocab.size
    ids = [int(i) for i in rng.integers(0, vocab_size, reps + warmup)]
    out: dict[str, list[float]] = {name: [] for name in models}
    for start in range(0, reps + warmup, block):
        for name, s in sessions.items():
            for i in ids[start : start + block]:
                t0 = time.perf_counter()
                s.feed([i])
                out[name].append(time.perf_counter() - t0)
                s.rewind(context - 1)
    return {name: ts[warmup:] for name, ts in out.items()}


def torch_decode(torch_model: Any, context: int, *, reps: int, warmup: int, threads: int) -> dict[str, float]:
    """Median ms of one PyTorch eager decode step at `context`, per MoE path (the best is the baseline)."""
    import torch

    torch.set_num_threads(threads)
    cfg = torch_model.cfg
    ids = torch.randint(0, cfg.vocab_size, (1, context - 1))
    toks = torch.randint(0, cfg.vocab_size, (reps + warmup, 1, 1))
    out = {}
    with torch.inference_mode():
        past = torch_model(ids, past=torch_model.empty_past()).present
        P = past.length

        def step(path: str, it) -> None:  # one decode step at P cached tokens, every time
            past.length = P
            torch_model(next(it), past=past, moe_path=path)

        for path in ("sparse", "gather") if cfg.ffn != "dense" else ("sparse",):
            it = iter(toks)
            ts = time_calls(lambda p=path, it=it: step(p, it), reps=reps, warmup=warmup)
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


def run_bench(
    model_dir: str | os.PathLike,
    *,
    torch_model: Any = None,
    threads: int = 1,
    reps: int = 2000,
    warmup: int = 200,
    torch_reps: int = 300,
    prefill_reps: int = 20,
    with_baselines: bool = True,
) -> dict[str, Any]:
    """Measure everything in the module docstring; returns the JSON-ready result."""
    load_before = os.getloadavg()
    model = OrtModel(model_dir, provider="auto", threads=threads)
    notes: list[str] = []
    ctx_max = model.context_len
    res: dict[str, Any] = {
        "provider": model.provider,
        "graph": model.graph_file,
        "model_dir": str(model_dir),
        "threads": threads,
        "context_len": ctx_max,
        "config": model.config,
    }
    models = {"typemoe": model}
    if model.provider == "cpu" and MODEL_INT8_FILE in model.manifest["files"]:
        models["typemoe_int8"] = OrtModel(model_dir, provider="cpu", precision="int8", threads=threads)
    with tempfile.TemporaryDirectory() as tmp:
        twins: dict[str, OrtModel] = {}
        if with_baselines and model.config["ffn"] != "dense":
            twins = _dense_twins(model, Path(tmp), threads, notes)
        decode: dict[str, dict] = {name: {} for name in [*models, *twins]}
        for c in DECODE_CONTEXTS:
            used = min(c, ctx_max)
            timed = {**models, **twins} if c == 256 else models
            for name, ts in interleaved_decode(timed, used, reps=reps, warmup=warmup).items():
                decode[name][str(c)] = percentiles(ts) | ({"context": used} if used != c else {})
            if used != c:
                notes.append(f"decode_ms.{c}: the model's context is {ctx_max} < {c}; measured at {used}")
    res["decode_ms"] = decode["typemoe"]
    res["prefill_ms"] = {str(PREFILL_LEN): _prefill_ms(model, prefill_reps, notes)}
    res["tokens_per_s"] = _tokens_per_s(model)
    res["guidance_cost"] = guidance_cost(model, blocks=max(2, reps // 200))
    res["ort_vs_torch"] = res["typemoe_vs_dense"] = None
    if "dense" in decode:
        res["dense_decode_ms"] = decode["dense"]
        res["typemoe_vs_dense"] = decode["typemoe"]["256"]["p50"] / decode["dense"]["256"]["p50"]
    elif model.config["ffn"] == "dense":
        res["typemoe_vs_dense"] = 1.0
        notes.append("typemoe_vs_dense: the model is itself dense")
    torch_ms = None
    if with_baselines:
        torch_ms = _torch_baseline(
            model,
            torch_model,
            notes,
            context=min(256, ctx_max),
            threads=threads,
            reps=torch_reps,
            warmup=max(10, warmup // 10),
        )
    if torch_ms is not None:
        res["torch_decode_ms"] = {"256": torch_ms, "threads": threads}
        res["ort_vs_torch"] = min(torch_ms.values()) / decode["typemoe"]["256"]["p50"]
    if "typemoe_int8" in decode:
        q = res["int8"] = {
            "graph": MODEL_INT8_FILE,
            "decode_ms": decode["typemoe_int8"],
            "quality": model.manifest.get("int8_quality"),
        }
        if "dense_int8" in decode:
            q["dense_decode_ms"] = decode["dense_int8"]
            q["typemoe_vs_dense"] = decode["typemoe_int8"]["256"]["p50"] / decode["dense_int8"]["256"]["p50"]
        if torch_ms is not None:
            q["ort_vs_torch"] = min(torch_ms.values()) / decode["typemoe_int8"]["256"]["p50"]
    res.update(_extra_benches(model_dir, notes))
    res["load_avg"] = {"before": list(load_before), "after": list(os.getloadavg())}
    res["cpu_count"] = os.cpu_count()
    import onnxruntime

    res["onnxruntime"] = onnxruntime.__version__
    res["notes"] = notes
    return res


def _prefill_ms(model: OrtModel, reps: int, notes: list[str]) -> float:
    n = min(PREFILL_LEN, model.context_len)
    if n != PREFILL_LEN:
        notes.append(
            f"prefill_ms.{PREFILL_LEN}: the model's context is {model.context_len}; measured with {n} tokens"
        )
    prompt = _prompt(model, n, np.random.default_rng(1))
    s = model.session()

    def prefill() -> None:
        s.reset()
        s.feed(prompt)

    return float(np.median(time_calls(prefill, reps=reps, warmup=2)) * 1e3)


def _tokens_per_s(model: OrtModel) -> float:
    g = model.session()
    g.feed(_prompt(model, 64, np.random.default_rng(2)))
    t0 = time.perf_counter()
    made = g.generate(n_tokens=GEN_TOKENS, temperature=1.0, top_p=0.95, seed=0)
    return len(made) / (time.perf_counter() - t0)


def guidance_cost(model: OrtModel, *, blocks: int = 10, n_tokens: int = GUIDED_TOKENS) -> dict[str, Any]:
    """Decode ms per token of generate_steps unguided, with guidance GUIDANCE, with guidance GUIDANCE plus
    the key head's guidance at its default weight (typemoe.key_steering), and with both plus the meter
    guidance at its default weight (typemoe.meter_steering), in alternating blocks. The last two write in
    3/4 bars (the meter guidance acts only there), the head arm without meter guidance.

    All continue the same prompt (BOS, a key and a meter control, 128 grammar-valid ids) on a fork, with
    the same seed per block. A step's time is from one yielded id to the next (sampling and masks
    included); the first step of each generation is kept apart, since guided it also prefills the second
    stream (typemoe.decoding.Session.unconditioned).
    """
    vocab = model.vocab
    controls = vocab.control_ids(key="F# major", meter="3/4")
    base = model.session()
    base.feed([vocab.bos_id, *controls, *_prompt(model, 129, np.random.default_rng(3))[1:]])
    bars = {"meter": "3/4", "n_bars": n_tokens}  # a window the n_tokens ids cannot leave
    arms = {
        "unguided": {"guidance": 1.0, "head_guidance": 0.0},
        "guided": {"guidance": GUIDANCE, "head_guidance": 0.0},
        "head": {"guidance": GUIDANCE, "head_guidance": DEFAULT_HEAD_GUIDANCE, "meter_guidance": 0.0, **bars},
        "meter": {"guidance": GUIDANCE, "head_guidance": DEFAULT_HEAD_GUIDANCE, **bars},
    }
    steps: dict[str, list[float]] = {a: [] for a in arms}
    first: dict[str, list[float]] = {a: [] for a in arms}
    for block in range(blocks):
        for arm, kw in arms.items():
            it = base.fork().generate_steps(n_tokens=n_tokens, temperature=1.0, top_p=0.95, seed=block, **kw)
            t0 = time.perf_counter()
            next(it)
            prev = time.perf_counter()
            first[arm].append(prev - t0)
            for _ in it:
                now = time.perf_counter()
                steps[arm].append(now - prev)
                prev = now
    plain, guided, head, meter = (float(np.median(steps[a]) * 1e3) for a in arms)
    return {
        "guidance": GUIDANCE,
        "unguided_ms": plain,
        "guided_ms": guided,
        "ratio": guided / plain,
        "head_guidance": DEFAULT_HEAD_GUIDANCE,
        "head_guided_ms": head,
        "head_ratio": head / plain,
        "meter_guidance": DEFAULT_METER_GUIDANCE,
        "meter_guided_ms": meter,
        "meter_ratio": meter / plain,
        "first_step_ms": {a: float(np.median(first[a]) * 1e3) for a in arms},
        "tokens": {a: len(steps[a]) for a in arms},
    }


def _dense_twins(model: OrtModel, tmp: Path, threads: int, notes: list[str]) -> dict[str, OrtModel]:
    """The equal-active-parameter dense baseline (ffn="dense", random weights): fp32, and int8 on CPU."""
    try:
        from typemoe.export.onnx_export import export_model
    except ImportError as err:  # the bridge-only install: no torch / onnx
        notes.append(f"typemoe_vs_dense needs torch and onnx ({err}); pip install typemoe[train]")
        return {}
    int8 = model.provider == "cpu" and MODEL_INT8_FILE in model.manifest["files"]
    out = export_model(
        build_torch_twin(model, ffn="dense"),
        model.vocab,
        tmp / "dense",
        fp16=model.provider == "cuda",
        int8=int8,
        labels=json.loads(model.metadata["labels"]),
    )
    twins = {"dense": OrtModel(out, provider=model.provider, threads=threads)}
    if int8 and MODEL_INT8_FILE in twins["dense"].manifest["files"]:
        twins["dense_int8"] = OrtModel(out, provider="cpu", precision="int8", threads=threads)
    return twins


def _torch_baseline(
    model: OrtModel, torch_model: Any, notes: list[str], *, context: int, threads: int, reps: int, warmup: int
) -> dict[str, float] | None:
    try:
        import torch  # noqa: F401
    except ImportError:
        notes.append("torch is not installed: ort_vs_torch needs it (pip install typemoe[train])")
        return None
    twin = torch_model if torch_model is not None else build_torch_twin(model)
    return torch_decode(twin, context, reps=reps, warmup=warmup, threads=threads)


EXTRA_BENCHES: dict[str, Any] = {}
"""name -> callable(model_dir) -> dict of more keys (the CLI registers the bridge's here); a callable that
raises RuntimeError, ImportError or OSError leaves its rows out with a note saying why."""


def _extra_benches(model_dir: str | os.PathLike, notes: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, fn in EXTRA_BENCHES.items():
        try:
            out.update(fn(model_dir))
        except (RuntimeError, ImportError, OSError) as err:
            notes.append(f"{name} rows missing: {err}")
    return out


def format_table(res: dict[str, Any]) -> str:
    def decode_rows(prefix: str, decode: dict) -> list[tuple[str, str]]:
        out = []
        for c, st in decode.items():
            at = f" (at {st['context']})" if "context" in st else ""
            out.append(
                (
                    f"{prefix}decode ms @ {c}{at}",
                    f"p50 {st['p50']:.3f}  p95 {st['p95']:.3f}  p99 {st['p99']:.3f}",
                )
            )
        return out

    def ratio(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f}x"

    rows = [("provider / graph", f"{res['provider']} / {res['graph']}"), ("threads", str(res["threads"]))]
    rows += decode_rows("", res["decode_ms"])
    rows += [(f"prefill ms @ {n}", f"{ms:.2f}") for n, ms in res["prefill_ms"].items()]
    rows.append(("tokens/s (generate)", f"{res['tokens_per_s']:.0f}"))
    gc = res.get("guidance_cost")
    if gc:
        rows.append(
            (
                f"guidance {gc['guidance']:g} vs unguided",
                f"{gc['ratio']:.2f}x (decode ms/token p50 {gc['guided_ms']:.3f} vs {gc['unguided_ms']:.3f})",
            )
        )
        if "head_ratio" in gc:
            rows.append(
                (
                    f"guidance {gc['guidance']:g} + head guidance {gc['head_guidance']:g} vs unguided",
                    f"{gc['head_ratio']:.2f}x (decode ms/token p50 {gc['head_guided_ms']:.3f})",
                )
            )
        if "meter_ratio" in gc:
            rows.append(
                (
                    f"the same + meter guidance {gc['meter_guidance']:g} vs unguided",
                    f"{gc['meter_ratio']:.2f}x (decode ms/token p50 {gc['meter_guided_ms']:.3f})",
                )
            )
    rows += [(key, ratio(res.get(key))) for key in ("ort_vs_torch", "typemoe_vs_dense")]
    q = res.get("int8")
    if q:
        rows += decode_rows("int8 ", q["decode_ms"])
        rows += [(f"int8 {key}", ratio(q.get(key))) for key in ("ort_vs_torch", "typemoe_vs_dense")]
        if q.get("quality"):
            rows.append(
                (
                    "int8 quality",
                    f"next-token KL {q['quality']['lm_kl_mean']:.1e}, "
                    f"top-1 agreement {q['quality']['lm_top1_agreement']:.3f}",
                )
            )
    an = res.get("analyze")
    if an:
        rows.append(
            (
                "analyze, twelve hearings vs one",
                f"{an['ratio']:.1f}x ({an['twelve_s']:.2f} s vs {an['quick_s']:.2f} s, {an['bars']} bars)",
            )
        )
        fam = an.get("family")
        if fam:
            rows.append(
                (
                    "meter family, judge vs onset rule (one window)",
                    f"{fam['ratio']:.1f}x ({fam['judge_ms']:.2f} ms vs {fam['rule_ms']:.2f} ms, "
                    f"{fam['notes']} notes)",
                )
            )
    fill = res.get("infill")
    if fill and "ratio" in fill:
        rows.append(
            (
                "infill, mixed readings vs the infilling one alone",
                f"{fill['ratio']:.2f}x ({fill['mixed_s']:.2f} s vs {fill['alone_s']:.2f} s, "
                f"bars {fill['span'][0]}-{fill['span'][1]} of {fill['bars']})",
            )
        )
    best = res.get("candidates")
    if best and "ratio" in best:
        rows.append(
            (
                f"generate, best of {best['n']} vs one",
                f"{best['ratio']:.2f}x ({best['best_s']:.2f} s vs {best['one_s']:.2f} s, {best['bars']} bars of 3/4)",
            )
        )
    rows.append(
        ("load avg before/after", f"{res['load_avg']['before'][0]:.2f} / {res['load_avg']['after'][0]:.2f}")
    )
    width = max(len(k) for k, _ in rows)
    return "\n".join([f"{k:<{width}}  {v}" for k, v in rows] + [f"note: {n}" for n in res.get("notes", [])])


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", type=Path, help="exported model directory (default: the shipped model)")
    src.add_argument(
        "--preset",
        choices=("tiny", "small", "base"),
        help="bench an untrained model of this preset, exported on the fly (needs torch)",
    )
    p.add_argument(
        "--out", type=Path, default=Path("bench.json"), help="JSON result file (default bench.json)"
    )
    p.add_argument(
        "--threads", type=int, default=1, help="ONNX Runtime / PyTorch intra-op threads (default 1)"
    )
    p.add_argument(
        "--reps", type=int, default=2000, help="timed decode steps per context and model (default 2000)"
    )
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
                msg = (
                    f"error: {what} is not an exported model directory. Pass --model MODEL_DIR "
                    "(`typemoe export --checkpoint CKPT --out MODEL_DIR` makes one) or --preset small."
                )
                print(msg)  # noqa: T201 - CLI output
                return 2
        res = run_bench(
            model_dir,
            torch_model=torch_model,
            threads=args.threads,
            reps=args.reps,
            warmup=args.warmup,
            with_baselines=not args.no_baselines,
        )
    if args.preset:
        res["model_dir"] = f"--preset {args.preset} (untrained, exported on the fly)"
    print(format_table(res))  # noqa: T201 - CLI output
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")  # noqa: T201 - CLI output
    return 0


def _export_preset(preset: str, tmp: Path) -> tuple[Path, Any]:
    import torch

    from typemoe import analysis
    from typemoe.config import PRESETS
    from typemoe.export.cli import quiet_exporter_logs
    from typemoe.export.onnx_export import export_model
    from typemoe.model import TypeMoE
    from typemoe.vocab import TypedVocab

    quiet_exporter_logs()  # again: importing torch re-levels its loggers
    vocab = TypedVocab.default()
    cfg = PRESETS[preset](vocab.size, vocab.n_types, n_meters=len(analysis.METERS))
    torch.manual_seed(0)
    model = TypeMoE(cfg, vocab.type_of).eval()
    return export_model(model, vocab, tmp / preset, fp16=False), model


def main(argv: list[str] | None = None) -> int:
    from typemoe.export.cli import quiet_exporter_logs

    p = argparse.ArgumentParser(prog="python -m typemoe.export.bench", description=__doc__.split("\n")[0])
    add_arguments(p)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    quiet_exporter_logs()
    return run(p.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
