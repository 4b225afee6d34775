"""The training-speed work of issue 15: each faster path computes what the old one did.

* the EMA teacher on the unlabelled rows only (Stepper teacher_rows="unlabelled") gives the same loss
  terms and gradients as the teacher on the whole padded micro-batch ("all");
* the Prefetcher's batches are WindowSampler.next_step()'s;
* `python -m typemoe.training.learn.bench_train` runs and reports both loop modes.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from training_fixtures import build_shards

from typemoe.model import TypeMoE
from typemoe.training.learn import bench_train, loop, losses, stepper
from typemoe.training.learn.data import TokenOps, WindowSampler, keep_label_fraction, load_pieces
from typemoe.training.learn.prefetch import Prefetcher
from typemoe.training.learn.presets import tiny


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return build_shards(tmp_path_factory.mktemp("bench") / "shards", n=24)


@pytest.fixture(scope="module")
def setup(shards, vocab):
    pieces = keep_label_fraction(
        load_pieces([shards], vocab).with_split("train"), 0.5
    )  # many unlabelled rows
    cfg = replace(tiny(vocab), seq_len=64, batch_size=8, micro_batch=4, threads=1)
    return cfg, pieces


def test_teacher_on_unlabelled_rows_matches_whole_batch(setup, vocab):
    cfg, pieces = setup
    torch.manual_seed(0)
    model = TypeMoE(cfg.model, vocab.type_of).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    with torch.no_grad():  # a teacher that differs from the student, as after some steps
        for p in ema.parameters():
            p.add_(0.05 * torch.randn_like(p))
    names = loop.term_names(cfg, model.cfg)
    assert "consistency" in names
    ops = TokenOps(vocab)
    batches = WindowSampler(pieces, vocab, cfg).next_step()
    assert any(
        bool(losses.unlabelled_rows(b).any()) and not bool(losses.unlabelled_rows(b).all()) for b in batches
    )
    kw = dict(model=model, ddp_model=model, ema=ema, opt=None, names=names, cls_task=None, ops=ops,
              device=torch.device("cpu"))  # fmt: skip
    old = stepper.Stepper(cfg, teacher_rows="all", **kw)
    new = stepper.Stepper(cfg, teacher_rows="unlabelled", **kw)
    for b in batches:
        t_old, t_new = old.teacher(b), new.teacher(b)
        if t_old is None:
            assert t_new is None
            continue
        out = model(b.idx, valid_mask=b.valid)
        grads = []
        for t in (t_old, t_new):
            s = losses.term_sums(out, b, names, teacher=t, threshold=0.05)
            model.zero_grad()
            (s["semi"] + s["consistency"]).backward(retain_graph=True)
            grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
            assert torch.isfinite(s["consistency"])
        s_old = losses.term_sums(out, b, names, teacher=t_old, threshold=0.05)
        s_new = losses.term_sums(out, b, names, teacher=t_new, threshold=0.05)
        for n in ("semi", "consistency"):
            torch.testing.assert_close(s_new[n], s_old[n], rtol=1e-4, atol=1e-5)
        for g_old, g_new in zip(*grads):
            torch.testing.assert_close(g_new, g_old, rtol=1e-3, atol=1e-6)


def test_prefetcher_gives_the_samplers_batches(setup, vocab):
    cfg, pieces = setup
    ref = WindowSampler(pieces, vocab, cfg)
    with Prefetcher(WindowSampler(pieces, vocab, cfg), workers=2, depth=2) as pre:
        for _ in range(4):
            for a, b in zip(ref.next_step(), pre.next_step()):
                assert (
                    torch.equal(a.idx, b.idx)
                    and torch.equal(a.head, b.head)
                    and torch.equal(a.shift, b.shift)
                )
        assert pre.sampler.state.step == ref.state.step == 4


def test_bench_train_reports_both_loop_modes(shards, capsys):
    args = ["--data", str(shards), "--preset", "tiny", "--steps", "1", "--warmup", "0", "--threads", "1",
            "--bare-batch", "2", "--bare-seq-len", "32"]  # fmt: skip
    assert bench_train.main(args) == 0
    text = capsys.readouterr().out
    assert "teacher_rows=all" in text and "teacher_rows=unlabelled" in text and "new/old" in text
