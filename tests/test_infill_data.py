"""The fill-in-the-middle training side: the vocabulary grows without breaking older models and shards,
the FIM transform round-trips, the sampler mixes it in at its rate, and an older model grows its rows."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from export_fixtures import legacy_vocab

from typemoe.vocab import INFILL_TOKENS, TypedVocab

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "typemoe" / "default_model"


@pytest.fixture(scope="module")
def vocab():
    return TypedVocab.default()


def music(vocab, n_notes: int, seed: int) -> np.ndarray:
    """REMI ids of random notes over a few bars (a real tokenization, empty bars included)."""
    import symusic

    rng = np.random.default_rng(seed)
    score = symusic.Score(4)
    track = symusic.Track("m", 0, False)
    time = np.sort(rng.integers(0, 16 * 8, n_notes))
    for t in time:
        track.notes.append(symusic.Note(int(t), int(rng.integers(1, 12)), int(rng.integers(40, 90)), 80))
    score.tracks.append(track)
    return np.asarray(vocab.encode_score(score), dtype=np.int64)


# --------------------------------------------------------------------------- vocabulary


def test_infill_tokens_are_appended_controls(vocab):
    old = legacy_vocab()
    assert vocab.tokens[: old.size] == old.tokens  # every older id keeps its meaning
    assert vocab.tokens[old.size :] == list(INFILL_TOKENS)
    control = vocab.type_names.index("control")
    assert all(vocab.type_of[vocab.id(t)] == control for t in INFILL_TOKENS)  # static routing, control expert
    assert not vocab.next_allowed[:, [vocab.id(t) for t in INFILL_TOKENS]].any()  # never sampled by grammar
    assert vocab.has_infill and not old.has_infill
    assert vocab.reads(old.hash) and vocab.reads(vocab.hash) and not old.reads(vocab.hash)


def test_shipped_model_vocabulary_is_the_default_one_and_reads_older_ids():
    """The shipped model directory has today's vocabulary, infilling tokens included (grown from the
    legacy one, whose ids keep their meaning: older shards and checkpoints stay usable)."""
    meta = json.loads((SHIPPED / "types.json").read_text())
    shipped = TypedVocab.load(SHIPPED)
    assert shipped.tokens == meta["tokens"] and shipped.hash == meta["hash"] and shipped.has_infill
    assert shipped.hash == TypedVocab.default().hash and shipped.reads(legacy_vocab().hash)


def test_older_shards_are_read_with_the_new_vocabulary(vocab, tmp_path):
    from typemoe.training.data.shards import ShardError, ShardSet

    d = tmp_path / "shards"
    d.mkdir()
    np.save(d / "offsets.npy", np.zeros(1, dtype=np.int64))
    (d / "manifest.json").write_text(json.dumps({"files": [], "vocab_hash": legacy_vocab().hash}))
    with pytest.raises((ShardError, FileNotFoundError, KeyError)) as err:  # the hash passes; the stub ends
        ShardSet(d, vocab=vocab)
    assert "tokenized with vocabulary" not in str(err.value)
    (d / "manifest.json").write_text(json.dumps({"files": [], "vocab_hash": "0" * 64}))
    with pytest.raises(ShardError, match="tokenized with vocabulary"):
        ShardSet(d, vocab=vocab)


# --------------------------------------------------------------------------- the transform


def test_fim_round_trips(vocab):
    from typemoe.training.learn.infill_data import FimOps

    fim = FimOps(vocab)
    rng = np.random.default_rng(0)
    head = [vocab.bos_id, *vocab.control_ids(key="A minor", meter="3/4")]
    n = 0
    for seed in range(60):
        ids = np.concatenate([head[: 1 + seed % 3], music(vocab, 6 + seed % 40, seed)])
        span = fim.choose_span(ids, rng)
        if span is None:
            continue
        a, k = span
        assert 1 <= k <= 4
        out = fim.apply(ids, a, k)
        assert len(out) == len(ids) + 4 and out[-1] == vocab.id("Infill_End")
        assert np.array_equal(fim.undo(out), ids)
        h = int(np.flatnonzero(ids == fim.bar)[0])  # BOS + controls stay first
        assert np.array_equal(out[:h], ids[:h]) and out[h] == vocab.id("Infill_Suffix")
        m = int(np.flatnonzero(out == vocab.id("Infill_Middle"))[0])
        middle = out[m + 1 : -1]
        assert middle[0] == fim.bar and int((middle == fim.bar).sum()) == k  # whole bars, k of them
        bars_at = int(np.flatnonzero(out == vocab.id(f"Infill_Bars_{k}"))[0])
        assert out[h + 1] == fim.bar  # the suffix opens on the bar after the middle...
        prefix = out[bars_at + 1 : m]  # ...and the prefix runs straight into the middle
        assert np.array_equal(np.concatenate([prefix, middle]), ids[h : h + len(prefix) + len(middle)])
        n += 1
    assert n >= 50


def test_fim_needs_the_tokens():
    from typemoe.training.learn.infill_data import FimError, FimOps

    with pytest.raises(FimError, match="Infill_Suffix"):
        FimOps(legacy_vocab())


def test_sampler_mixes_fim_at_its_rate_and_targets_the_end(vocab):
    from typemoe.config import tiny
    from typemoe.training.learn.config import TrainConfig
    from typemoe.training.learn.data import Pieces, TokenOps, WindowSampler, collate
    from typemoe.training.learn.infill_data import FimOps

    tokens = [music(vocab, 30 + 7 * i, i) for i in range(24)]
    n = len(tokens)
    pieces = Pieces(
        ids=[f"p{i}" for i in range(n)],
        tokens=tokens,
        labels={"key": np.full(n, 3), "meter": np.full(n, 2)},
        label_names={},
        split=np.asarray(["train"] * n, dtype=object),
    )
    base = TrainConfig(
        model=tiny(vocab.size, vocab.n_types),
        seq_len=64,
        batch_size=8,
        micro_batch=8,
        humanize=False,
        control_p=0,
    )
    plain, fimmed = (
        WindowSampler(pieces, vocab, base),
        WindowSampler(pieces, vocab, replace(base, infill_p=1.0)),
    )
    fim, end = FimOps(vocab), vocab.id("Infill_End")
    n_fim = 0
    for g in range(64):
        a, b = plain.sample(g), fimmed.sample(g)
        assert len(b.ids) <= base.seq_len
        if end in b.ids:
            n_fim += 1
            assert b.head_from == len(b.ids)  # heads off: the music is out of order
            assert np.array_equal(fim.undo(b.ids), a.ids[: base.seq_len - 4])  # the same window, rearranged
        else:
            assert np.array_equal(a.ids, b.ids)
    assert n_fim >= 48
    assert base.to_dict().get("infill_p") is None  # off: left out, as in configs from before infilling
    assert TrainConfig.from_dict(replace(base, infill_p=0.25).to_dict()).infill_p == 0.25
    batch = collate([fimmed.sample(g) for g in range(8)], TokenOps(vocab))
    assert (batch.targets == end).sum() == (batch.idx == end).sum() > 0  # Infill_End is learnt...
    for t in ("Infill_Suffix", "Infill_Middle", "Infill_Bars_1"):  # ...the given markers are not
        assert not (batch.targets == vocab.id(t)).any()
    with pytest.raises(ValueError, match="infill_p"):
        replace(base, task="genre", infill_p=0.5)


# --------------------------------------------------------------------------- an older model, grown


def test_grow_vocab_keeps_the_old_model(tmp_path, vocab):
    torch = pytest.importorskip("torch")
    from typemoe import analysis, checkpoint
    from typemoe.model import TypeMoE
    from typemoe.training.learn.infill_data import grow_vocab
    from typemoe.training.learn.presets import PRESETS
    from typemoe.training.learn.pretrain import init_model

    old = legacy_vocab()
    cfg = PRESETS["tiny"](vocab).model
    torch.manual_seed(0)
    model = TypeMoE(replace(cfg, vocab_size=old.size), old.type_of).eval()
    checkpoint.save(model, tmp_path / "old", vocab=old, extra_meta={"key_names": list(analysis.KEYS)})
    grown = init_model(tmp_path / "old", PRESETS["tiny"](vocab), vocab).eval()  # what `train --init` does
    assert grown.cfg.vocab_size == vocab.size and grown.lm_head.weight is grown.wte.weight
    assert torch.equal(grown.router.type_of_id, torch.as_tensor(vocab.type_of))
    ids = torch.as_tensor(music(vocab, 20, 1)[None, :40])
    with torch.no_grad():
        a, b = model(ids), grown(ids)
    torch.testing.assert_close(b.logits[..., : old.size], a.logits)  # old ids: the same model
    new = grown.wte.weight[old.size :]
    assert torch.isfinite(new).all() and new.std(0).min() > 0  # new rows differ from one another
    with pytest.raises(ValueError, match="prefix"):
        grow_vocab(grown, old)


def test_finetune_from_an_older_checkpoint_grows_it(tmp_path, vocab):
    torch = pytest.importorskip("torch")
    from typemoe import checkpoint
    from typemoe.model import TypeMoE
    from typemoe.training.learn.finetune import init_model
    from typemoe.training.learn.presets import PRESETS

    old = legacy_vocab()
    torch.manual_seed(1)
    model = TypeMoE(replace(PRESETS["tiny"](vocab).model, vocab_size=old.size), old.type_of)
    checkpoint.save(model, tmp_path / "old", vocab=old, extra_meta={})
    for classes in (None, ["Q1", "Q2"]):  # conditional generation, and a fresh classification head
        grown = init_model(tmp_path / "old", "emotion" if classes else "conditional", classes, vocab)
        assert grown.cfg.vocab_size == vocab.size


def test_finetune_head_only_keeps_an_older_checkpoints_vocabulary(tmp_path):
    """--head-only grows nothing: from a checkpoint saved before the infilling tokens, the fine-tuned model
    keeps that vocabulary and every weight, so its graph answers exactly as the old one (the shipped
    model's emotion head was trained this way)."""
    torch = pytest.importorskip("torch")
    from training_fixtures import build_shards

    from typemoe import checkpoint
    from typemoe.model import TypeMoE
    from typemoe.training.learn import finetune
    from typemoe.training.learn.presets import PRESETS

    new, old = TypedVocab.default(), legacy_vocab()
    shards = build_shards(tmp_path / "m21", n=16)  # base-token ids only: the same ids in both vocabularies
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest.update(vocab_hash=old.hash, vocab_size=old.size)  # shards as the old tokenizer wrote them
    (shards / "manifest.json").write_text(json.dumps(manifest))
    torch.manual_seed(1)
    model = TypeMoE(replace(PRESETS["tiny"](new).model, vocab_size=old.size), old.type_of)
    checkpoint.save(model, tmp_path / "old", vocab=old, extra_meta={})
    out = tmp_path / "genre"
    args = ["--task", "genre", "--head-only", "--from", str(tmp_path / "old"), "--data", str(shards)]
    args += ["--out", str(out), "--max-steps", "2", "--batch-size", "2", "--micro-batch", "2"]
    assert finetune.main([*args, "--seq-len", "64", "--threads", "1"]) == 0
    tuned = checkpoint.load(out / "latest")
    assert tuned.cfg.vocab_size == old.size
    assert TypedVocab.load(out / "latest").hash == old.hash
    before, after = model.state_dict(), tuned.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
