"""torchrun with 2 gloo ranks on CPU gives the losses of 1 rank on the same global batch."""

from __future__ import annotations

import numpy as np
import pytest
from training_fixtures import build_shards, losses_of, run_module, tiny_args

from typemoe.training.learn import pretrain


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return build_shards(tmp_path_factory.mktemp("shards") / "m21")


def test_two_gloo_ranks_match_one_rank(shards, tmp_path):
    steps = 4
    one, two = tmp_path / "one", tmp_path / "two"
    assert pretrain.main(tiny_args(shards, one, steps=steps, extra=("--eval-every", "4"))) == 0
    r = run_module(
        [
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "typemoe.training.learn.pretrain",
            *tiny_args(shards, two, steps=steps, extra=("--eval-every", "4")),
        ],
        timeout=180,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 rank(s)" in r.stdout and r.stdout.count("step 00001") == 1  # rank 0 alone prints
    keys = ("loss", "lm", "key", "meter", "semi", "consistency", "val_lm", "val_key_acc", "val_meter_acc")
    a, b = losses_of(one, keys), losses_of(two, keys)
    assert a.shape == b.shape == (steps, 1 + len(keys))
    assert np.allclose(a, b, rtol=0, atol=1e-4, equal_nan=True), np.nanmax(np.abs(a - b), axis=0)
