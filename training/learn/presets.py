"""Training presets: a preset is a function of the vocabulary that returns a TrainConfig.

Derive variants with dataclasses.replace (or the CLI flags); the model shapes come from
typemoe/config.py's presets of the same name.

    cfg = PRESETS["small"](vocab)
    cfg = replace(cfg, max_steps=500, model=replace(cfg.model, ffn="dense"))
"""

from __future__ import annotations

from typing import Any

from typemoe import analysis
from typemoe import config as model_presets
from typemoe.training.learn.config import LossConfig, OptimConfig, TrainConfig


def _model(name: str, vocab, **overrides: Any):
    return model_presets.PRESETS[name](vocab.size, vocab.n_types, n_meters=len(analysis.METERS), **overrides)


def tiny(vocab, **model_overrides: Any) -> TrainConfig:
    """Tests and smoke runs: a 2-layer d64 model on 128-token windows; a step takes tens of ms on CPU."""
    return TrainConfig(
        model=_model("tiny", vocab, **model_overrides),
        optim=OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10),
        loss=LossConfig(semi_rampup=20, ema_decay=0.99),
        seq_len=128,
        batch_size=8,
        micro_batch=4,
        max_steps=200,
        log_every=5,
        eval_every=50,
        eval_pieces=32,
        ckpt_every=50,
    )


def small(vocab, **model_overrides: Any) -> TrainConfig:
    """The shipped model, trained on 2 CPU cores (typemoe/config.py: ~2.7M active parameters).

    Windows of 512 tokens cover a whole folk tune and about 30 bars of a chorale; 16 windows a step
    (~5k real tokens on the music21 corpus, ~360 tokens a piece) take ~5 s on 2 free cores (~1k tok/s;
    ~10 s when the cores are shared). 1500 steps are about 1.6 passes over the ~15k pieces, ~2-4 hours;
    pass --max-steps to fit the time you have (the LR schedule follows it).
    """
    return TrainConfig(
        model=_model("small", vocab, **model_overrides),
        optim=OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=100),
        loss=LossConfig(semi_rampup=300, ema_decay=0.995),
        seq_len=512,
        batch_size=16,
        micro_batch=8,
        max_steps=1500,
        log_every=10,
        eval_every=250,
        eval_pieces=256,
        ckpt_every=50,
    )


def medium(vocab, **model_overrides: Any) -> TrainConfig:
    """The GPU recipe's preset (training/learn/gpu_recipe.py, docs/GPU.md): small's 4 blocks, 1.25x wider.

    Sized by what can ship and what comes back from the GPU machine, not by the GPU: 14.0M parameters
    (4.2M active) are 27 MiB in bf16, so the weights and the EMA teacher fit the run tool's 64 MiB of
    returned files, and 28 MB in fp16 stay under the package's 30 MB. Depth stays at 4 blocks because a
    CPU decode step is bound by per-operator overhead (typemoe/config.py, small). Dropout: the ~14M-token
    corpus is seen several times in an 8-minute H200 run. Full 1024-token windows, 64 a step.
    """
    shape = dict(d_model=320, n_head=5, d_expert=640, dropout=0.1)
    return TrainConfig(
        model=_model("small", vocab, **{**shape, **model_overrides}),
        optim=OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=200),
        loss=LossConfig(semi_rampup=500, ema_decay=0.998),
        seq_len=1024,
        batch_size=64,
        micro_batch=32,
        max_steps=3000,
        log_every=20,
        eval_every=250,
        eval_pieces=1024,
        ckpt_every=500,
    )


def base(vocab, **model_overrides: Any) -> TrainConfig:
    """For a GPU (bf16 autocast): full 1024-token windows, 64 a step."""
    return TrainConfig(
        model=_model("base", vocab, **model_overrides),
        optim=OptimConfig(lr=6e-4, min_lr=6e-5, warmup_steps=500),
        loss=LossConfig(semi_rampup=1000, ema_decay=0.999),
        seq_len=1024,
        batch_size=64,
        micro_batch=16,
        max_steps=20_000,
        log_every=20,
        eval_every=500,
        eval_pieces=1024,
        ckpt_every=500,
    )


PRESETS = {"tiny": tiny, "small": small, "medium": medium, "base": base}
