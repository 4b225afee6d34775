"""SS-MTP loss terms: masking, key shifting, pseudo-label threshold, consistency, and the global
normalisation that makes a step independent of how its batch is split into micro-batches."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from typemoe import analysis
from typemoe.model import TypeMoE
from typemoe.training.learn import losses
from typemoe.training.learn.data import Pieces, TokenOps, collate, make_sample
from typemoe.training.learn.dist import Dist
from typemoe.training.learn.loop import train
from typemoe.training.learn.presets import tiny


def synthetic_pieces(vocab, n: int = 12, bars: int = 12, seed: int = 0, key_labelled=True) -> Pieces:
    """Valid REMI streams of random quarter notes, with key/meter labels (or none)."""
    rng = np.random.default_rng(seed)
    bar, vel, dur = vocab.id("Bar_None"), vocab.id("Velocity_79"), vocab.id("Duration_1.0.4")
    tokens = []
    for _ in range(n):
        seq = []
        for _ in range(bars):
            seq.append(bar)
            for beat in range(4):
                seq += [
                    vocab.id(f"Position_{4 * beat}"),
                    vocab.id(f"Pitch_{int(rng.integers(55, 80))}"),
                    vel,
                    dur,
                ]
        tokens.append(np.asarray(seq, dtype=np.int64))
    key = rng.integers(0, 24, n) if key_labelled else np.full(n, -1)
    return Pieces(
        ids=[f"p{i}" for i in range(n)],
        tokens=tokens,
        labels={"key": key.astype(np.int64), "meter": rng.integers(0, 3, n).astype(np.int64)},
        label_names={"key": analysis.KEYS, "meter": analysis.METERS},
        split=np.array(["train"] * (n - 2) + ["val"] * 2, dtype=object),
    )


def _batch(vocab, pieces, idx=range(4)):
    ops = TokenOps(vocab)
    return collate([make_sample(pieces, i, None, ops=ops, seq_len=64) for i in idx], ops)


def _tiny_model(vocab):
    torch.manual_seed(0)
    return TypeMoE(tiny(vocab).model, vocab.type_of)


@pytest.mark.parametrize("missing", ["key", "meter"])
def test_missing_labels_give_zero_loss_and_zero_grad(vocab, missing):
    pieces = synthetic_pieces(vocab)
    pieces.labels[missing][:] = -1
    model, batch = _tiny_model(vocab), _batch(vocab, pieces)
    out = model(batch.idx)
    names = ("lm", "key", "meter")
    s = losses.term_sums(out, batch, names)
    assert losses.term_counts(batch, names)[missing] == 0
    assert float(s[missing].detach()) == 0.0
    sum(s.values()).backward()
    head, other = (
        (model.key_head, model.meter_head) if missing == "key" else (model.meter_head, model.key_head)
    )
    assert head.weight.grad is None or torch.count_nonzero(head.weight.grad) == 0
    assert torch.count_nonzero(other.weight.grad) > 0 and torch.count_nonzero(model.wte.weight.grad) > 0


def test_heads_are_trained_from_the_second_bar(vocab):
    pieces = synthetic_pieces(vocab)
    batch = _batch(vocab, pieces)
    bar = vocab.id("Bar_None")
    for b in range(batch.idx.size(0)):
        first = int(batch.head[b].nonzero()[0])
        assert batch.idx[b, first] == bar and int((batch.idx[b, :first] == bar).sum()) == 1


def test_shift_keys_moves_the_tonic_and_keeps_the_mode():
    for c in range(24):
        for k in (-5, 0, 3, 11):
            p = torch.zeros(1, 1, 24)
            p[0, 0, c] = 1.0
            shifted = losses.shift_keys(p, torch.tensor([k]))
            assert int(shifted.argmax()) == analysis.transpose_key(c, k)


def test_pseudo_labels_and_consistency(vocab):
    pieces = synthetic_pieces(vocab, key_labelled=False)
    batch = _batch(vocab, pieces)
    B, T = batch.idx.shape
    teacher = torch.softmax(torch.randn(B, T, 24) * 3, -1)
    last = teacher[torch.arange(B), batch.last]  # (B, 24)
    rows = torch.ones(B, dtype=torch.bool)
    logits = torch.randn(B, T, 24)
    assert (
        float(losses.pseudo_sum(logits, last, rows, batch.head, threshold=1.0 + 1e-6)) == 0.0
    )  # nobody is sure
    assert float(losses.pseudo_sum(logits, last, rows, batch.head, threshold=0.0)) > 0.0
    assert float(losses.consistency_sum(teacher.log(), teacher, rows, batch.head)) == pytest.approx(
        0.0, abs=1e-4
    )
    assert float(losses.consistency_sum(logits, teacher, rows, batch.head)) > 0.0


def test_untranspose_inverts_the_pitch_shift(vocab):
    pieces = synthetic_pieces(vocab)
    ops = TokenOps(vocab)
    samples = [
        make_sample(pieces, i, np.random.default_rng(i), ops=ops, seq_len=64, transpose=6) for i in range(4)
    ]
    batch = collate(samples, ops)
    assert any(s.shift for s in samples)
    orig = losses.untranspose(batch, ops.pitch_lo, ops.pitch_hi)
    for b, s in enumerate(samples):
        raw = orig[b, : len(s.ids)].numpy()
        assert ops.is_pitch(raw).any()
        assert np.array_equal(np.where(ops.is_pitch(raw), raw + s.shift, raw), s.ids)


def test_step_does_not_depend_on_the_micro_batch_split(vocab, tmp_path):
    """4 windows as 1 x 4 or 2 x 2 micro-batches: the same losses (the DDP argument, in one process)."""
    pieces = synthetic_pieces(vocab, n=14, key_labelled=False)
    pieces.labels["key"][::2] = 3
    cfg = replace(
        tiny(vocab),
        batch_size=4,
        seq_len=64,
        max_steps=3,
        log_every=1,
        eval_every=3,
        ckpt_every=100,
        labelled_fraction=0.5,
        control_p=0.0,
    )  # no control windows: every row trains the heads
    cfg = replace(cfg, loss=replace(cfg.loss, semi_rampup=1, pseudo_threshold=0.05))
    d = Dist(rank=0, local_rank=0, world=1, device=torch.device("cpu"))
    runs = []
    for mb in (4, 2):
        out = tmp_path / f"mb{mb}"
        train(
            replace(cfg, micro_batch=mb),
            vocab=vocab,
            train_pieces=pieces.with_split("train"),
            val_pieces=pieces.with_split("val"),
            out_dir=out,
            d=d,
        )
        runs.append([json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()])
    a, b = runs
    assert a[-1]["semi"] > 0 and a[-1]["consistency"] > 0  # the semi-supervised terms were live
    for ra, rb in zip(a, b):
        for k in ("loss", "lm", "key", "meter", "semi", "consistency", "val_lm"):
            if k in ra:
                assert ra[k] == pytest.approx(rb[k], abs=1e-5), (k, ra["step"])
