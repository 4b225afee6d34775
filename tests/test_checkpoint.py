"""Checkpoints: save -> load gives identical outputs; files are safetensors + JSON; bad dirs are refused."""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from typemoe.checkpoint import CONFIG, WEIGHTS, CheckpointError, load, read_config, save
from typemoe.config import FFN_KINDS, tiny
from typemoe.model import TypeMoE

V, E = 40, 5
TABLE = np.arange(V) % E


def _trained_looking(ffn: str) -> TypeMoE:
    """A model whose every parameter differs from a fresh init, so a load that skips a tensor shows."""
    torch.manual_seed(0)
    model = TypeMoE(tiny(V, E, ffn=ffn, n_classes=3, shared_expert=ffn != "dense"), TABLE)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("ffn", FFN_KINDS)
def test_save_load_identical_outputs(ffn, tmp_path):
    model = _trained_looking(ffn)
    save(model, tmp_path / "ckpt", extra_meta={"step": 12, "labels": ["a", "b"]})
    again = load(tmp_path / "ckpt")
    assert again.cfg == model.cfg and not again.training
    idx = torch.randint(0, V, (2, 20), generator=torch.Generator().manual_seed(1))
    valid = torch.ones(2, 20, dtype=torch.bool)
    a, b = model(idx, valid_mask=valid), again(idx, valid_mask=valid)
    for name in ("logits", "key_logits", "meter_logits", "cls_logits", "hidden"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert again.lm_head.weight is again.wte.weight, "tying survives the round trip"
    _, table, meta = read_config(tmp_path / "ckpt")
    assert np.array_equal(table, TABLE) and meta == {"step": 12, "labels": ["a", "b"]}


def test_files_are_safetensors_and_json_with_no_temporaries(tmp_path):
    save(_trained_looking("typemoe"), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG, WEIGHTS]
    doc = json.loads((tmp_path / CONFIG).read_text())
    assert doc["model"]["ffn"] == "typemoe" and len(doc["type_of_id"]) == V
    with safe_open(str(tmp_path / WEIGHTS), framework="pt") as f:  # plain tensors, no pickle
        assert "router.type_of_id" in set(f.keys())
    save(_trained_looking("typemoe"), tmp_path)  # overwriting in place works and leaves nothing behind
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG, WEIGHTS]


class _FakeVocab:
    """The part of TypedVocab that save() uses."""

    def __init__(self, type_of):
        self.type_of, self.hash, self.saved_to = type_of, "abc123", None

    def save(self, directory):
        self.saved_to = directory


def test_vocab_is_saved_and_checked(tmp_path):
    vocab = _FakeVocab(TABLE)
    save(_trained_looking("dense"), tmp_path, vocab=vocab)
    assert vocab.saved_to == tmp_path
    assert read_config(tmp_path)[2]["vocab_hash"] == "abc123"
    with pytest.raises(ValueError, match="type table"):
        save(_trained_looking("dense"), tmp_path / "other", vocab=_FakeVocab((TABLE + 1) % E))


def test_real_vocab_round_trip(vocab, tmp_path):
    model = TypeMoE(tiny(vocab.size, vocab.n_types), vocab.type_of)
    save(model, tmp_path, vocab=vocab)
    assert type(vocab).load(tmp_path).hash == vocab.hash
    assert read_config(tmp_path)[2]["vocab_hash"] == vocab.hash


def test_bad_directories_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load(tmp_path / "nothing")
    save(_trained_looking("typemoe"), tmp_path / "ok")
    (tmp_path / "ok" / WEIGHTS).write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match=WEIGHTS):
        load(tmp_path / "ok")
    save(_trained_looking("typemoe"), tmp_path / "shape")
    doc = json.loads((tmp_path / "shape" / CONFIG).read_text())
    doc["model"]["d_expert"] = 96  # weights no longer fit the config
    (tmp_path / "shape" / CONFIG).write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="does not fit"):
        load(tmp_path / "shape")
    (tmp_path / "shape" / CONFIG).write_text("{ truncated")
    with pytest.raises(CheckpointError, match="corrupt"):
        load(tmp_path / "shape")


def test_unserialisable_meta_is_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match="JSON"):
        save(_trained_looking("typemoe"), tmp_path, extra_meta={"when": object()})
    assert not (tmp_path / CONFIG).exists()
