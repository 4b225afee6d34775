"""Training: data windows agree with training/learn/augment.py, a tiny real run learns and writes its outputs,
SIGKILL + --resume equals an uninterrupted run, bad inputs fail before any step, fine-tuning."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from training_fixtures import REPO, build_shards, losses_of, python_env, read_metrics, run_module, tiny_args

from typemoe import checkpoint
from typemoe.training.evaluation.eval_data import sample_ids
from typemoe.training.learn import ckpt, finetune, pretrain
from typemoe.training.learn.augment import Transposer, shift_phase
from typemoe.training.learn.data import (
    Pieces,
    TokenOps,
    WindowSampler,
    keep_label_fraction,
    load_pieces,
    make_sample,
)
from typemoe.training.learn.presets import tiny
from typemoe.vocab import TypedVocab


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return build_shards(tmp_path_factory.mktemp("shards") / "m21")


@pytest.fixture(scope="module")
def pieces(shards, vocab):
    return load_pieces([shards], vocab)


# ------------------------------------------------------------------------------------------- data


def test_phase_shift_and_transpose_match_augment(pieces, vocab):
    """The id-level rewrites equal augment.py's decode/re-encode and note-dropping versions."""
    ops, tr = TokenOps(vocab), Transposer(vocab)
    for toks in pieces.tokens[:12]:
        start = int(np.flatnonzero(toks == ops.bar)[0])
        music = toks[start:]
        for beats in (1, 2, 3):
            assert np.array_equal(ops.phase_shift(music, beats), shift_phase(vocab, music, beats)), beats
        lo, hi = ops.transpose_range(music, 6)
        for k in (lo, hi):
            mine = np.where(ops.is_pitch(music), music + k, music)
            assert np.array_equal(mine, tr.transpose(music, k)[0])


def test_sample_layout_and_key_shift(pieces, vocab):
    ops = TokenOps(vocab)
    i = int(np.flatnonzero(pieces.label("key") >= 0)[0])
    for seed in range(20):
        s = make_sample(
            pieces, i, np.random.default_rng(seed), ops=ops, seq_len=64, transpose=6, phase_shift=True
        )
        assert s.ids[0] == vocab.bos_id and s.ids[1] == ops.bar and len(s.ids) <= 64
        assert s.ids[s.head_from] == ops.bar and (s.ids[1 : s.head_from] == ops.bar).sum() == 1
        want = (pieces.label("key")[i] + s.shift) % 12  # major keys: index = tonic pitch class
        assert s.labels["key"] == want
    det = make_sample(pieces, i, None, ops=ops, seq_len=64)
    assert np.array_equal(det.ids[1:], pieces.tokens[i][:63]) and det.shift == 0


def test_conditional_controls_and_dropout(pieces, vocab):
    ops = TokenOps(vocab)
    i = int(np.flatnonzero((pieces.label("key") >= 0) & (pieces.label("meter") >= 0))[0])
    s = make_sample(pieces, i, None, ops=ops, seq_len=64, controls=True)
    names = pieces.label_names
    want = vocab.control_ids(
        key=names["key"][pieces.label("key")[i]],
        meter=names["meter"][pieces.label("meter")[i]],
        genre=names["genre"][pieces.label("genre")[i]],
    )
    assert s.ids[1 : 1 + len(want)].tolist() == want and s.ids[1 + len(want)] == ops.bar
    dropped = make_sample(
        pieces, i, np.random.default_rng(0), ops=ops, seq_len=64, controls=True, control_dropout=1.0
    )
    assert dropped.ids[1] == ops.bar


def test_control_windows_are_short_and_can_start_the_piece(pieces, vocab):
    """--control-window cuts only the windows that carry controls; --control-start-p 1 starts them all at
    the piece's first bar (a random bar otherwise)."""
    ops = TokenOps(vocab)
    i = max(range(len(pieces.tokens)), key=lambda j: len(pieces.tokens[j]))  # the longest piece
    tokens = pieces.tokens[i]
    first_bar = int(np.flatnonzero(tokens == ops.bar)[0])
    starts = set()
    for seed in range(20):
        kw = dict(ops=ops, seq_len=256, controls=True, control_window=48)
        s = make_sample(pieces, i, np.random.default_rng(seed), **kw)
        assert len(s.ids) <= 48
        n_ctrl = int(np.flatnonzero(s.ids == ops.bar)[0]) - 1
        starts.add(tuple(s.ids[1 + n_ctrl : 1 + n_ctrl + 8].tolist()))
        s = make_sample(pieces, i, np.random.default_rng(seed), control_start_p=1.0, **kw)
        n_ctrl = int(np.flatnonzero(s.ids == ops.bar)[0]) - 1
        music = s.ids[1 + n_ctrl :]
        assert music.tolist() == tokens[first_bar : first_bar + len(music)].tolist()
        plain = make_sample(pieces, i, np.random.default_rng(seed), ops=ops, seq_len=256, control_window=48)
        assert len(plain.ids) > 48  # a window without controls keeps seq_len
    assert len(starts) > 1  # without control_start_p the windows start at various bars


def test_sampler_is_rank_independent(pieces, vocab):
    """Ranks take disjoint slices of the same global batch; the stream depends only on (seed, step)."""
    cfg = tiny(vocab)
    from dataclasses import replace

    cfg = replace(cfg, batch_size=8, micro_batch=2, seq_len=64)
    one = WindowSampler(pieces, vocab, cfg)
    two = [WindowSampler(pieces, vocab, cfg, rank=r, world=2) for r in range(2)]
    for _ in range(3):
        a = [tuple(r[v].tolist()) for b in one.next_step() for r, v in zip(b.idx, b.valid)]
        b = [tuple(r[v].tolist()) for s in two for b in s.next_step() for r, v in zip(b.idx, b.valid)]
        assert sorted(a) == sorted(b)  # the same windows; only their padding depends on the micro-batching
    resumed = WindowSampler(pieces, vocab, cfg)
    resumed.load_state({**one.state.to_dict(), "step": 2})
    ref = WindowSampler(pieces, vocab, cfg)
    ref.next_step(), ref.next_step()
    assert all(np.array_equal(x.idx, y.idx) for x, y in zip(resumed.next_step(), ref.next_step()))


def test_minor_share_repeats_minor_pieces_and_drops_none(vocab):
    from dataclasses import replace

    from typemoe.training.learn.data import epoch_pieces

    key = np.r_[np.arange(80) % 12, 12 + np.arange(10) % 12, np.full(10, -1)]  # 80 major, 10 minor, 10 none
    toy = Pieces(
        ids=[f"p{i}" for i in range(100)],
        tokens=[np.zeros(4, np.int64)] * 100,
        labels={"key": key},
        label_names={},
        split=np.asarray(["train"] * 100, dtype=object),
        vocab_hash="x",
    )
    assert np.array_equal(epoch_pieces(toy, 0.0), np.arange(100))
    assert np.array_equal(epoch_pieces(toy, 0.1), np.arange(100))  # below the data's own share: as it is
    ep = epoch_pieces(toy, 0.35)
    assert set(ep.tolist()) == set(range(100))  # every piece still comes
    k = key[ep]
    share = (k >= 12).sum() / (k >= 0).sum()
    assert abs(share - 0.35) < 0.01, share
    counts = np.bincount(ep, minlength=100)
    assert counts[80:90].min() >= 4 and counts[80:90].max() - counts[80:90].min() <= 1  # spread evenly
    assert (counts[:80] == 1).all() and (counts[90:] == 1).all()
    # the training stream draws each epoch's list once, shuffled
    cfg = replace(tiny(vocab), batch_size=8, micro_batch=2, seq_len=64, minor_share=0.35)
    sampler = WindowSampler(toy, vocab, cfg)
    drawn = [sampler._piece_of(g) for g in range(len(ep))]
    assert sorted(drawn) == sorted(ep.tolist()) and drawn != ep.tolist()


def test_label_fraction_is_by_piece(pieces):
    half = keep_label_fraction(pieces, 0.5)
    again = keep_label_fraction(pieces, 0.5)
    assert np.array_equal(half.label("key"), again.label("key"))
    kept = (half.label("meter") >= 0).sum() / max((pieces.label("meter") >= 0).sum(), 1)
    assert 0.2 < kept < 0.8
    assert np.array_equal(half.label("genre"), pieces.label("genre"))  # only key and meter are thinned


def test_label_fraction_does_not_depend_on_where_a_folder_lies(shards, tmp_path, vocab):
    # The same MIDI folder's shards, moved: the same pieces keep their labels (the ids carry no path).
    moved = tmp_path / "elsewhere" / shards.name
    shutil.copytree(shards, moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["sources"] = [
        s.replace(str(shards.parent), str(tmp_path / "other_disk")) for s in manifest["sources"]
    ]
    (moved / "manifest.json").write_text(json.dumps(manifest))
    a, b = load_pieces([shards], vocab), load_pieces([moved], vocab)
    assert a.ids == b.ids and not any(str(tmp_path) in i or str(shards.parent) in i for i in a.ids)
    assert np.array_equal(keep_label_fraction(a, 0.5).label("key"), keep_label_fraction(b, 0.5).label("key"))
    tunes = [f"tune{i:03d}.mid" for i in range(40)]  # and eval's --max-pieces sample
    here, there = (sample_ids([(f"folder:{d}/m21_midi", t) for t in tunes], 10) for d in ("/a", "/b/c"))
    assert {t for _, t in here} == {t for _, t in there}


# ------------------------------------------------------------------------------------------- runs


def test_tiny_run_learns_and_writes_outputs(shards, tmp_path):
    out = tmp_path / "run"
    args = tiny_args(
        shards, out, steps=30, extra=("--eval-every", "30", "--batch-size", "8", "--micro-batch", "4")
    )
    assert pretrain.main(args) == 0
    recs = read_metrics(out)
    assert [r["step"] for r in recs] == list(range(1, 31))
    for k in ("step", "loss", "lm", "key", "meter", "semi", "consistency", "tokens_per_s", "lr"):
        assert k in recs[0], k
    assert {"val_lm", "val_key_acc", "val_meter_acc"} <= set(recs[-1])
    first, last = np.mean([r["lm"] for r in recs[:3]]), np.mean([r["lm"] for r in recs[-3:]])
    assert last < first - 0.5, (first, last)
    model = checkpoint.load(out / "latest")  # the run directory is a plain model checkpoint too
    _, _, meta = checkpoint.read_config(ckpt.resolve(out))
    assert (
        meta["step"] == 30
        and meta["key_names"][0] == "C major"
        and model.cfg.n_meters == len(meta["meter_names"])
    )
    assert list((out / "tb").iterdir())
    from typemoe.training.learn.plot import plot

    png = plot([out], tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sigkill_then_resume_matches_uninterrupted(shards, tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    steps = 40
    assert pretrain.main(tiny_args(shards, ref, steps=steps, extra=("--ckpt-every", "10"))) == 0
    cmd = [
        sys.executable,
        "-m",
        "typemoe.training.learn.pretrain",
        *tiny_args(shards, run, steps=steps, extra=("--ckpt-every", "10")),
    ]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=python_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    state = run / "latest" / ckpt.STATE
    deadline = time.time() + 50
    try:
        while time.time() < deadline and proc.poll() is None:
            if state.is_file() and json.loads(state.read_text() or "{}").get("step", 0) >= 10:
                break
            time.sleep(0.02)
        assert proc.poll() is None, (
            f"run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        )
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    killed_at = json.loads(state.read_text())["step"]
    assert killed_at < steps
    assert pretrain.main(tiny_args(shards, run, steps=steps, extra=("--ckpt-every", "10", "--resume"))) == 0
    a, b = losses_of(ref), losses_of(run)
    assert a.shape == b.shape and np.allclose(a, b, rtol=0, atol=1e-5, equal_nan=True), np.nanmax(
        np.abs(a - b)
    )


# ------------------------------------------------------------------------------------------- bad input


def test_bad_inputs_fail_before_any_step(shards, tmp_path, capsys):
    # another tokenizer version
    other = tmp_path / "other"
    shutil.copytree(shards, other)
    man = json.loads((other / "manifest.json").read_text())
    man["vocab_hash"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(man))
    assert pretrain.main(tiny_args(other, tmp_path / "r1")) == 2
    assert "vocabulary" in capsys.readouterr().err and not (tmp_path / "r1" / "metrics.jsonl").exists()
    # not a shard directory
    assert pretrain.main(tiny_args(tmp_path, tmp_path / "r2")) == 2
    assert "manifest.json" in capsys.readouterr().err
    # an empty training split
    with pytest.raises(ValueError, match="empty dataset"):
        pretrain.split_pieces(
            Pieces(ids=[], tokens=[], labels={}, label_names={}, split=np.array([])), [shards]
        )
    # an existing run without --resume
    out = tmp_path / "r3"
    assert pretrain.main(tiny_args(shards, out, steps=1)) == 0
    assert pretrain.main(tiny_args(shards, out, steps=2)) == 2
    assert "--resume" in capsys.readouterr().err
    # --resume with another configuration
    assert pretrain.main(tiny_args(shards, out, steps=2, extra=("--resume", "--seed", "5"))) == 2
    assert "seed" in capsys.readouterr().err


def test_resume_continues_with_the_runs_own_configuration(shards, tmp_path):
    """--resume needs only --out, --data and the new --max-steps: a run started with other values than the
    preset's (here lr, warmup, seed, labelled fraction) continues with its own, as the shipped checkpoint
    (checkpoints/default, started by a session script) must."""
    out = tmp_path / "run"
    assert (
        pretrain.main(
            tiny_args(shards, out, steps=2, extra=("--lr", "3e-4", "--warmup-steps", "1", "--seed", "7"))
        )
        == 0
    )
    bare = ["--data", str(shards), "--out", str(out), "--resume", "--max-steps", "3", "--threads", "1"]
    assert pretrain.main(bare) == 0
    from typemoe.training.learn import ckpt

    saved = ckpt.read_state(ckpt.resolve(out))
    assert saved["step"] == 3 and saved["config"]["optim"]["lr"] == 3e-4 and saved["config"]["seed"] == 7
    assert saved["config"]["model"]["d_model"] == read_config_of_tiny()


def read_config_of_tiny() -> int:
    from typemoe.training.learn.presets import PRESETS
    from typemoe.vocab import TypedVocab

    return PRESETS["tiny"](TypedVocab.default()).model.d_model


# ------------------------------------------------------------------------------------------- finetune


def test_finetune_classification_and_label_set(shards, tmp_path, capsys):
    pre = tmp_path / "pre"
    assert pretrain.main(tiny_args(shards, pre, steps=2)) == 0
    ft = tmp_path / "genre"
    common = [
        "--data",
        str(shards),
        "--max-steps",
        "4",
        "--batch-size",
        "4",
        "--micro-batch",
        "2",
        "--seq-len",
        "64",
        "--log-every",
        "1",
        "--eval-every",
        "4",
        "--threads",
        "1",
    ]
    assert finetune.main(["--task", "genre", "--from", str(pre), "--out", str(ft), *common]) == 0
    _, _, meta = checkpoint.read_config(ft / "latest")
    assert meta["task"] == "genre" and meta["class_names"] == ["classical", "folk"]
    assert checkpoint.load(ft / "latest").cfg.n_classes == 2
    assert "cls" in read_metrics(ft)[-1] and "val_cls_acc" in read_metrics(ft)[-1]
    # a checkpoint fine-tuned on another label set
    cfg_path = ft / "latest" / checkpoint.CONFIG
    doc = json.loads(cfg_path.read_text())
    doc["meta"]["class_names"] = ["classical", "jazz"]
    cfg_path.write_text(json.dumps(doc))
    assert finetune.main(["--task", "genre", "--from", str(ft), "--out", str(tmp_path / "g2"), *common]) == 2
    assert "label set mismatch" in capsys.readouterr().err
    # a missing --from
    assert (
        finetune.main(
            ["--task", "genre", "--from", str(tmp_path / "nope"), "--out", str(tmp_path / "g3"), *common]
        )
        == 2
    )
    assert "nope" in capsys.readouterr().err
    # no piece has the label
    assert (
        finetune.main(["--task", "emotion", "--from", str(pre), "--out", str(tmp_path / "g4"), *common]) == 2
    )
    assert "emotion" in capsys.readouterr().err


def test_finetune_head_only_keeps_every_other_weight(shards, tmp_path, capsys):
    """--head-only trains the classification head alone: the trunk and the next-token, key and meter heads
    come out bit-identical, so one graph can carry the pre-trained heads and the new one."""
    pre = tmp_path / "pre"
    assert pretrain.main(tiny_args(shards, pre, steps=2)) == 0
    common = ["--data", str(shards), "--max-steps", "3", "--batch-size", "4", "--micro-batch", "2"]
    common += ["--seq-len", "64", "--threads", "1", "--lr", "1e-2"]
    ft = tmp_path / "head"
    args = ["--task", "genre", "--head-only", "--no-humanize", "--from", str(pre), "--out", str(ft), *common]
    assert finetune.main(args) == 0
    saved = json.loads((ft / "latest" / "train_state.json").read_text())["config"]
    assert saved["head_only"] is True and saved["humanize"] is False
    before = checkpoint.load(pre / "latest").state_dict()
    after = checkpoint.load(ft / "latest").state_dict()
    assert set(after) - set(before) == {"cls_head.weight", "cls_head.bias"}
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == [], changed
    # the whole model moves without the flag (so the check above can fail)
    full = tmp_path / "full"
    assert finetune.main(["--task", "genre", "--from", str(pre), "--out", str(full), *common]) == 0
    moved = checkpoint.load(full / "latest").state_dict()
    assert any(not torch.equal(before[k], moved[k]) for k in before)
    # a task without a classification head is refused by name
    args = ["--task", "conditional", "--head-only", "--from", str(pre), "--out", str(tmp_path / "c"), *common]
    assert finetune.main(args) == 2
    assert "head_only" in capsys.readouterr().err


def test_controls_only_learns_the_control_rows_and_nothing_else(shards, tmp_path, capsys):
    """--controls-only (issue 13): of all the weights only the control tokens' embedding rows move, so the
    model reads and continues music without controls exactly as --init did; the class head and its class
    names come with it. Without --init, or without windows that carry controls, it is refused by name."""
    pre = tmp_path / "pre"
    assert pretrain.main(tiny_args(shards, pre, steps=2)) == 0
    common = ["--data", str(shards), "--max-steps", "3", "--batch-size", "4", "--micro-batch", "2"]
    common += ["--seq-len", "64", "--threads", "1", "--lr", "1e-2"]
    head = tmp_path / "head"
    assert (
        finetune.main(["--task", "genre", "--head-only", "--from", str(pre), "--out", str(head), *common])
        == 0
    )
    ctrl = tmp_path / "ctrl"
    flags = ["--control-p", "1", "--control-dropout", "0", "--objective", "clm", "--infill-p", "0"]
    args = ["--preset", "tiny", "--controls-only", "--init", str(head / "latest"), *flags, "--out", str(ctrl)]
    assert pretrain.main([*args, *common]) == 0
    before = checkpoint.load(head / "latest")
    after = checkpoint.load(ctrl / "latest")
    sb, sa = before.state_dict(), after.state_dict()
    assert set(sa) == set(sb)
    changed = [k for k in sb if not torch.equal(sb[k], sa[k])]
    assert set(changed) == {"wte.weight", "lm_head.weight"}, changed  # one tied tensor, two names
    rows = torch.nonzero((sb["wte.weight"] != sa["wte.weight"]).any(1)).flatten().tolist()
    tokens = TypedVocab.load(ctrl / "latest").tokens
    assert rows and all(tokens[r].split("_")[0] in ("Key", "Meter", "Genre", "Emotion") for r in rows), rows
    names = checkpoint.read_config(head / "latest")[2]["class_names"]
    assert names and checkpoint.read_config(ctrl / "latest")[2]["class_names"] == names
    # refused by name: no --init; no windows with controls
    assert pretrain.main(["--preset", "tiny", "--controls-only", "--out", str(tmp_path / "a"), *common]) == 2
    assert "--init" in capsys.readouterr().err
    bad = ["--preset", "tiny", "--controls-only", "--init", str(head / "latest"), "--control-p", "0"]
    assert pretrain.main([*bad, "--out", str(tmp_path / "b"), *common]) == 2
    assert "controls_only" in capsys.readouterr().err


def test_infill_only_learns_the_infilling_rows_and_nothing_else(shards, tmp_path, capsys):
    """--infill-only (issue 16): of all the weights only the Infill_* tokens' embedding rows move, so the
    model reads, continues and classifies music without them exactly as --init did. Without --init, or
    without infilling windows, it is refused by name."""
    head = tmp_path / "head"
    common = ["--data", str(shards), "--max-steps", "3", "--batch-size", "4", "--micro-batch", "2"]
    common += ["--seq-len", "64", "--threads", "1", "--lr", "1e-2"]
    assert pretrain.main(tiny_args(shards, tmp_path / "pre", steps=2)) == 0
    assert (
        finetune.main(
            ["--task", "genre", "--head-only", "--from", str(tmp_path / "pre"), "--out", str(head)] + common
        )
        == 0
    )
    fill = tmp_path / "fill"
    flags = ["--infill-p", "1", "--control-p", "0.5", "--objective", "clm"]
    assert (
        pretrain.main(
            [
                "--preset",
                "tiny",
                "--infill-only",
                "--init",
                str(head / "latest"),
                *flags,
                "--out",
                str(fill),
                *common,
            ]
        )
        == 0
    )
    sb, sa = checkpoint.load(head / "latest").state_dict(), checkpoint.load(fill / "latest").state_dict()
    changed = [k for k in sb if not torch.equal(sb[k], sa[k])]
    assert set(changed) == {"wte.weight", "lm_head.weight"}, changed  # one tied tensor, two names
    rows = torch.nonzero((sb["wte.weight"] != sa["wte.weight"]).any(1)).flatten().tolist()
    tokens = TypedVocab.load(fill / "latest").tokens
    assert rows and all(tokens[r].startswith("Infill_") for r in rows), rows
    assert (
        checkpoint.read_config(fill / "latest")[2]["class_names"]
        == checkpoint.read_config(head / "latest")[2]["class_names"]
    )
    assert pretrain.main(["--preset", "tiny", "--infill-only", "--out", str(tmp_path / "a"), *common]) == 2
    assert "--init" in capsys.readouterr().err
    bad = ["--preset", "tiny", "--infill-only", "--init", str(head / "latest"), "--infill-p", "0"]
    assert pretrain.main([*bad, "--out", str(tmp_path / "b"), *common]) == 2
    assert "infill_only" in capsys.readouterr().err


def test_whole_model_training_starts_from_a_checkpoint_with_a_class_head(shards, tmp_path):
    """`typemoe train --init` from a model that carries a classification head (the shipped graph's emotion
    head, recovered by from_onnx): the whole trunk trains, the head is kept as it was (pre-training has no
    loss for it) with its class names, so the run exports with every head."""
    common = ["--data", str(shards), "--max-steps", "2", "--batch-size", "4", "--micro-batch", "2"]
    common += ["--seq-len", "64", "--threads", "1", "--lr", "1e-2"]
    assert pretrain.main(tiny_args(shards, tmp_path / "pre", steps=2)) == 0
    head = tmp_path / "head"
    args = ["--task", "genre", "--head-only", "--from", str(tmp_path / "pre"), "--out", str(head), *common]
    assert finetune.main(args) == 0
    whole = tmp_path / "whole"
    flags = ["--own-bars", "0.5", "--objective", "ssmtp"]
    assert (
        pretrain.main(
            ["--preset", "tiny", "--init", str(head / "latest"), *flags, "--out", str(whole), *common]
        )
        == 0
    )
    sb, sa = checkpoint.load(head / "latest").state_dict(), checkpoint.load(whole / "latest").state_dict()
    assert set(sa) == set(sb)
    changed = {k for k in sb if not torch.equal(sb[k], sa[k])}
    assert "cls_head.weight" not in changed and "cls_head.bias" not in changed
    assert any(k.startswith("blocks.") for k in changed)  # the trunk trained
    names = checkpoint.read_config(head / "latest")[2]["class_names"]
    assert names and checkpoint.read_config(whole / "latest")[2]["class_names"] == names


def test_finetune_conditional(shards, tmp_path):
    pre = tmp_path / "pre"
    assert pretrain.main(tiny_args(shards, pre, steps=2)) == 0
    out = tmp_path / "cond"
    assert (
        finetune.main(
            [
                "--task",
                "conditional",
                "--from",
                str(pre),
                "--data",
                str(shards),
                "--out",
                str(out),
                "--max-steps",
                "3",
                "--batch-size",
                "4",
                "--micro-batch",
                "2",
                "--seq-len",
                "64",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    _, _, meta = checkpoint.read_config(out / "latest")
    assert meta["task"] == "conditional" and meta["controls"] == ["key", "meter", "genre", "emotion"]
    assert set(read_metrics(out)[-1]) >= {"lm", "loss"}


def test_cli_registers_train_and_finetune():
    import argparse

    from typemoe.training.learn.cli import add_parsers

    p = argparse.ArgumentParser()
    add_parsers(p.add_subparsers(dest="cmd"))
    a = p.parse_args(["train", "--preset", "tiny", "--data", "x", "--out", "y", "--objective", "clm"])
    assert a.func is not None and a.objective == "clm"
    f = p.parse_args(["finetune", "--task", "emotion", "--from", "c", "--data", "x", "--out", "y"])
    assert f.func is not None and f.task == "emotion"
    r = run_module(["-m", "typemoe.training.learn.pretrain", "--help"], timeout=60)
    assert r.returncode == 0 and "--labelled-fraction" in r.stdout


def test_the_shipped_checkpoint_resumes_with_this_code(tmp_path):
    """checkpoints/default unpacks into a run whose saved configuration this code rebuilds unchanged, so
    `typemoe train --resume` takes it. A configuration field added after the run must be left out of the
    saved form while it is off (TrainConfig.to_dict), or every older run, the shipped one included, is
    refused as "the configuration changed"."""
    from typemoe.training.learn import gpu_recipe, loop
    from typemoe.training.learn.config import TrainConfig

    run = gpu_recipe.unpack([REPO / "checkpoints" / "default"], tmp_path / "run")
    saved = ckpt.read_state(run)["config"]
    assert loop._diff_config(saved, TrainConfig.from_dict(saved).to_dict()) == []


def test_a_field_added_later_counts_as_absent_while_off():
    """Runs saved before clean_rhythm existed (no key) and after (False) both resume; True does not match."""
    from typemoe.training.learn import loop

    before, after, on = {"seed": 1}, {"seed": 1, "clean_rhythm": False}, {"seed": 1, "clean_rhythm": True}
    assert loop._diff_config(before, after) == [] and loop._diff_config(after, before) == []
    assert loop._diff_config(before, on) == ["clean_rhythm: None -> True"]
