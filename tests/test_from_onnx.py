"""typemoe.training.learn.from_onnx: an exported graph reads back into a checkpoint that computes the same heads."""

from __future__ import annotations

import pytest
import torch
from export_fixtures import make_tiny_model_dir, tiny_checkpoint_dir

from typemoe import checkpoint
from typemoe.training.learn.from_onnx import RecoverError, recover_dir

pytestmark = pytest.mark.onnx


def test_recovered_checkpoint_equals_the_exported_one(tmp_path, vocab):
    model_dir = make_tiny_model_dir(tmp_path / "model")
    out = recover_dir(model_dir, tmp_path / "ckpt")
    a, b = checkpoint.load(tiny_checkpoint_dir()), checkpoint.load(out)
    ids = torch.randint(0, vocab.size, (2, 40))
    with torch.no_grad():
        oa, ob = a(ids), b(ids)
    for name in ("logits", "key_logits", "meter_logits", "cls_logits"):
        assert torch.allclose(getattr(oa, name), getattr(ob, name), atol=1e-5), name


def test_a_directory_without_a_graph_is_refused(tmp_path):
    with pytest.raises(RecoverError, match="neither"):
        recover_dir(tmp_path, tmp_path / "ckpt")
