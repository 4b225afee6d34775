"""The GPU recipe end to end on CPU: pack -> run (tiny preset, miditok and symusic blocked, as on the GPU
machine) -> unpack -> a checkpoint that typemoe.checkpoint loads and `typemoe train --resume` continues."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from training_fixtures import REPO, build_shards, python_env

from typemoe import analysis, checkpoint
from typemoe.training.learn import gpu_recipe, pretrain
from typemoe.training.learn.gpu_vocab import PackedVocab

BLOCKED = "import sys; sys.modules['miditok'] = None; sys.modules['symusic'] = None"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return build_shards(tmp_path_factory.mktemp("gpu") / "shards", n=24)


@pytest.fixture(scope="module")
def ran(shards, tmp_path_factory):
    """(pack dir, returned files dir, work dir) of one tiny run in a subprocess without miditok/symusic."""
    root = tmp_path_factory.mktemp("gpu_run")
    pack, out, work = root / "pack", root / "out", root / "work"
    assert gpu_recipe.main(["pack", "--data", str(shards), "--out", str(pack)]) == 0
    argv = ["run", "--pack", str(pack), "--out", str(out), "--work", str(work), "--preset", "tiny",
            "--minutes", "2", "--reserve-s", "0", "--device", "cpu", "--threads", "1", "--max-steps", "3",
            "--batch-size", "4", "--micro-batch", "2", "--seq-len", "64", "--log-every", "1",
            "--eval-every", "1000", "--ckpt-every", "1000", "--data-workers", "2"]  # fmt: skip
    code = f"{BLOCKED}\nfrom typemoe.training.learn.gpu_recipe import main\nassert main({argv!r}) == 0\n"
    code += "assert all(sys.modules[m].__typemoe_stand_in__ for m in ('miditok', 'symusic'))\n"
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=python_env(), capture_output=True, text=True,
                       timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    assert "stand-ins: ['symusic', 'miditok']" in p.stdout, p.stdout
    return pack, out, work


def test_packed_vocab_matches_typed_vocab(vocab, tmp_path):
    from typemoe import vocab as vocab_module

    vocab.save(tmp_path)
    packed = PackedVocab(tmp_path)
    assert packed.tokens == vocab.tokens and packed.hash == vocab.hash
    np.testing.assert_array_equal(packed.type_of, vocab.type_of)
    np.testing.assert_array_equal(packed.family_of, vocab.family_of)
    assert (packed.pad_id, packed.bos_id, packed.eos_id) == (vocab.pad_id, vocab.bos_id, vocab.eos_id)
    assert packed.control_ids(key="A minor", meter="6/8") == vocab.control_ids(key="A minor", meter="6/8")
    assert isinstance(packed, vocab_module.TypedVocab) and packed.reads(vocab.hash)
    # what PackedVocab leaves out is only what encoding/decoding/sampling use; a new table shows up here
    assert set(vars(vocab)) - set(vars(packed)) <= {
        "next_allowed",
        "velocity_id",
        "duration_id",
        "max_duration_ticks",
    }
    packed.save(tmp_path / "copy")
    assert vocab_module.TypedVocab.load(tmp_path / "copy").hash == vocab.hash


def test_pack_round_trips_the_pieces(ran, shards, vocab):
    from typemoe.training.learn.data import load_pieces

    pack, _, _ = ran
    doc = json.loads((pack / "pack.json").read_text())
    assert sum(f["bytes"] for f in doc["files"].values()) <= 50 * gpu_recipe.MIB
    _, got = gpu_recipe.load_pack(pack)
    want = load_pieces([shards], vocab)
    assert got.ids == want.ids and list(got.split) == list(want.split)
    assert all(np.array_equal(a, b) for a, b in zip(got.tokens, want.tokens))
    for t in analysis.LABELS:
        np.testing.assert_array_equal(got.label(t), want.label(t))


def test_returned_files_fit_the_run_tool(ran):
    _, out, _ = ran
    files = sorted(out.iterdir())
    assert len(files) <= gpu_recipe.RETURN_FILES
    assert all(f.stat().st_size <= gpu_recipe.FILE_LIMIT for f in files)
    assert sum(f.stat().st_size for f in files) <= gpu_recipe.RETURN_TOTAL
    assert all(f.name.replace(".", "").replace("-", "").replace("_", "").isalnum() for f in files)
    meta = json.loads((out / gpu_recipe.META).read_text())
    assert meta["kept"] == ["model", "ema", "optimizer"]  # a tiny model: everything fits
    w = load_file(str(out / sorted(meta["files"])[0]))
    assert all(t.dtype == torch.bfloat16 for t in w.values() if t.is_floating_point())


def test_unpack_gives_a_checkpoint_that_loads_and_resumes(ran, shards, tmp_path):
    _, out, work = ran
    run_dir = tmp_path / "gpu"
    assert gpu_recipe.main(["unpack", *map(str, sorted(out.iterdir())), "--out", str(run_dir)]) == 0
    got = checkpoint.load(run_dir / "latest")
    want = checkpoint.load(work / "latest")
    assert got.cfg == want.cfg
    for (n, a), (_, b) in zip(got.state_dict().items(), want.state_dict().items()):
        assert a.shape == b.shape and a.dtype == b.dtype, n
        torch.testing.assert_close(
            a, b.to(torch.bfloat16).to(b.dtype), rtol=0, atol=0, msg=n
        )  # bf16 transfer
    args = ["--preset", "tiny", "--data", str(shards), "--out", str(run_dir), "--resume", "--max-steps", "4",
            "--batch-size", "4", "--micro-batch", "2", "--seq-len", "64", "--device", "cpu", "--threads", "1",
            "--eval-every", "1000", "--ckpt-every", "1000", "--log-every", "1"]  # fmt: skip
    assert pretrain.main(args) == 0
    assert json.loads((run_dir / "latest" / "train_state.json").read_text())["step"] == 4


def _cfg_of(work):
    return checkpoint.load(work / "latest").cfg


def test_bundle_cuts_large_tensors_and_drops_what_does_not_fit(ran, tmp_path):
    _, _, work = ran
    small = gpu_recipe.HEADER_ROOM + 32 * 1024  # 32 KiB of tensors a file: the expert stacks are cut
    doc = gpu_recipe.write_bundle(work / "latest", tmp_path / "cut", file_limit=small, max_files=200,
                                  total=200 * small)  # fmt: skip
    assert doc["parts"] and doc["kept"][0] == "model"
    assert all(f["bytes"] <= small for f in doc["files"].values())
    model_mib = (work / "latest" / "model.safetensors").stat().st_size / 2 / gpu_recipe.MIB  # fp32 -> bf16
    doc = gpu_recipe.write_bundle(
        work / "latest", tmp_path / "drop", total=int((2 + model_mib * 1.2) * gpu_recipe.MIB)
    )
    assert doc["kept"] == ["model"] and doc["dropped"] == ["ema", "optimizer"]
    latest = gpu_recipe.unpack([tmp_path / "drop"], tmp_path / "run")
    cut = gpu_recipe.write_bundle(work / "latest", tmp_path / "cut_drop", file_limit=small, max_files=200,
                                  total=int((2 + model_mib * 1.2) * gpu_recipe.MIB))  # fmt: skip
    assert cut["dropped"] == ["ema", "optimizer"] and all(k.startswith("model/") for k in cut["parts"])
    assert checkpoint.load(gpu_recipe.unpack([tmp_path / "cut_drop"], tmp_path / "run_cut")).cfg == _cfg_of(
        work
    )
    ema = load_file(str(latest / "ema.safetensors"))
    model = load_file(str(latest / "model.safetensors"))
    assert all(torch.equal(ema[k], model[k]) for k in model)  # the teacher restarts from the student
    assert torch.load(latest / "optimizer.pt", weights_only=True)["state"] == {}
    with pytest.raises(ValueError, match="smaller preset"):
        gpu_recipe.write_bundle(work / "latest", tmp_path / "none", total=2 * gpu_recipe.MIB + 1024)


def test_a_run_past_its_deadline_stops_with_a_checkpoint(shards, vocab, tmp_path):
    from dataclasses import replace

    from typemoe.training.learn import ckpt, dist, loop
    from typemoe.training.learn.data import load_pieces
    from typemoe.training.learn.presets import tiny

    cfg = replace(
        tiny(vocab), seq_len=64, batch_size=4, micro_batch=2, max_steps=50, eval_every=1000, threads=1
    )
    pieces = load_pieces([shards], vocab)
    d = dist.setup("cpu", 1)
    records = loop.train(cfg, vocab=vocab, train_pieces=pieces.with_split("train"), val_pieces=None,
                         out_dir=tmp_path, d=d, deadline=time.time() - 1)  # fmt: skip
    assert records[-1]["step"] == 1
    state = ckpt.read_state(ckpt.resolve(tmp_path))
    assert state["step"] == 1 and state["config"]["max_steps"] == 1
