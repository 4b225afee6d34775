"""The transformer: config round trip, shapes, causality, KV cache == full forward, parameter counts,
memorizing a real piece, and generation."""

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from typemoe.config import FFN_KINDS, PRESETS, ModelConfig, tiny
from typemoe.model import TypeMoE, count_params
from typemoe.sample import Grammar, generate, sample_next

V, E = 40, 5
TABLE = np.arange(V) % E  # synthetic type table: every type present


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors gain nothing from a second thread, and on a shared 2-core machine OpenMP spin-waiting
    made this file 5x slower under load (130 s vs 26 s wall at load average 8)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _model(ffn: str = "typemoe", seed: int = 0, **kw) -> TypeMoE:
    torch.manual_seed(seed)
    return TypeMoE(tiny(V, E, ffn=ffn, **kw), TABLE).eval()


def _tokens(shape, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, shape, generator=torch.Generator().manual_seed(seed))


# --- config ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("ffn", FFN_KINDS)
def test_config_json_round_trip(preset, ffn):
    cfg = PRESETS[preset](205, 5, ffn=ffn, n_classes=6, shared_expert=True)
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ffn", "mlp"),
        ("d_model", 100),
        ("n_types", 0),
        ("vocab_size", -3),
        ("dropout", 1.5),
        ("n_classes", -1),
    ],
)
def test_config_rejects_bad_values_naming_them(field, value):
    with pytest.raises(ValueError, match=str(value)):
        ModelConfig(**{"vocab_size": V, "n_types": E, field: value})


def test_config_rejects_unknown_keys():
    d = tiny(V, E).to_dict() | {"n_expertz": 3}
    with pytest.raises(ValueError, match="n_expertz"):
        ModelConfig.from_dict(d)


def test_type_table_must_fit_config():
    with pytest.raises(ValueError, match="vocab_size"):
        TypeMoE(tiny(V, E), TABLE[:-1])
    with pytest.raises(ValueError, match="0..4"):
        TypeMoE(tiny(V, E), TABLE + 1)


# --- forward -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("ffn", FFN_KINDS)
def test_output_shapes(ffn):
    model = _model(ffn, n_classes=3)
    out = model(_tokens((2, 9)))
    cfg = model.cfg
    assert out.logits.shape == (2, 9, V)
    assert out.key_logits.shape == (2, 9, cfg.n_keys) and out.meter_logits.shape == (2, 9, cfg.n_meters)
    assert out.cls_logits.shape == (2, 3) and out.hidden.shape == (2, 9, cfg.d_model)
    assert len(out.present) == cfg.n_layer and out.present[0][0].shape == (2, cfg.n_head, 9, cfg.d_head)
    assert out.expert_counts.shape == (cfg.n_layer, E) and (out.expert_counts.sum(1) == 18).all()
    assert (out.aux is not None) == (ffn == "switch")
    if out.aux is not None:
        assert out.aux.route.shape == (cfg.n_layer, 2, 9) and out.aux.balance.dim() == 0
    assert model.lm_head.weight is model.wte.weight, "LM head tied to the embedding"


def _heads(out, t=None):
    sl = slice(None) if t is None else slice(0, t)
    return {
        "logits": out.logits[:, sl],
        "key": out.key_logits[:, sl],
        "meter": out.meter_logits[:, sl],
        "hidden": out.hidden[:, sl],
    }


@pytest.mark.parametrize("ffn", FFN_KINDS)
def test_causality(ffn):
    model = _model(ffn)
    idx = _tokens((2, 32))
    t = 19
    changed = idx.clone()
    changed[:, t] = (changed[:, t] + 7) % V  # another token, of another type
    a, b = model(idx), model(changed)
    for name, ref in _heads(a, t).items():
        torch.testing.assert_close(_heads(b, t)[name], ref, rtol=0, atol=1e-6, msg=f"{name} before t moved")
    assert not torch.allclose(a.logits[:, t:], b.logits[:, t:]), "the change must be visible from t on"


def test_classification_pools_only_valid_positions():
    model = _model(n_classes=4)
    idx = _tokens((2, 12))
    valid = torch.ones(2, 12, dtype=torch.bool)
    valid[1, 7:] = False  # row 1 is 7 real tokens + right padding
    padded = idx.clone()
    padded[1, 7:] = 0
    a, b = model(idx, valid_mask=valid), model(padded, valid_mask=valid)
    torch.testing.assert_close(a.cls_logits, b.cls_logits)
    alone = model(idx[1:, :7])
    torch.testing.assert_close(a.cls_logits[1:], alone.cls_logits, rtol=1e-5, atol=1e-6)
    # mean pooling commutes with the linear head: a stream can average per-position class logits
    per_pos = model.cls_head(alone.hidden).mean(1)
    torch.testing.assert_close(alone.cls_logits, per_pos, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("ffn", "path"),
    [
        ("typemoe", "sparse"),
        ("typemoe", "gather"),
        ("dense", "sparse"),
        ("switch", "sparse"),
        ("switch", "gather"),
    ],
)
def test_cached_decoding_matches_full_forward(ffn, path):
    """200 one-token decode steps on the cache give what one full forward gives (fp32, 1e-5)."""
    model = _model(ffn)
    n_prompt, n_steps = 8, 200
    idx = _tokens((1, n_prompt + n_steps), seed=1)
    with torch.no_grad():
        full = model(idx)
        out = model(idx[:, :n_prompt], past=model.empty_past(1), moe_path=path)  # prefill, P = 0
        steps = [out]
        for i in range(n_prompt, n_prompt + n_steps):
            out = model(idx[:, i : i + 1], past=out.present, moe_path=path)
            steps.append(out)
    assert out.present[0][0].size(2) == n_prompt + n_steps
    for name, ref in _heads(full).items():
        got = torch.cat([_heads(s)[name] for s in steps], dim=1)
        diff = (got - ref).abs().max().item()
        assert diff <= 1e-5, f"{ffn}/{path} {name}: cached vs full max |diff| {diff:.2e}"


def test_the_cache_is_preallocated_written_in_place_and_rewinds():
    """No copy of the cache per step: the buffers stay the same tensors; a rewind re-runs exactly."""
    model = _model("typemoe")
    idx = _tokens((1, 24), seed=3)
    with torch.no_grad():
        past = model.empty_past(1)
        buffers = [t.data_ptr() for t in past.k + past.v]
        assert past.capacity == model.cfg.context_len and past.length == 0
        a = model(idx[:, :16], past=past)
        b = model(idx[:, 16:20], past=a.present)
        assert b.present is past and past.length == 20
        assert [t.data_ptr() for t in past.k + past.v] == buffers
        fork = past.clone(16)  # an independent copy of the first 16 rows
        past.length = 16  # rewind: rows 16.. are written again
        again = model(idx[:, 16:20], past=past)
        c = model(idx[:, 16:20], past=fork)
    torch.testing.assert_close(again.logits, b.logits, rtol=0, atol=0)
    torch.testing.assert_close(c.logits, b.logits, rtol=0, atol=0)
    small = model.empty_past(1, capacity=8)
    with pytest.raises(ValueError, match="cannot hold 0 \\+ 9 tokens"):
        model(_tokens((1, 9)), past=small)


@pytest.mark.parametrize("ffn", FFN_KINDS)
def test_bf16_autocast_trains(ffn):
    """GPU training runs under bf16 autocast; every path must accept mixed dtypes (checked here on CPU)."""
    model = _model(ffn, n_classes=2, shared_expert=True).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(_tokens((2, 16)))
        cached = model(_tokens((2, 4)), past=model.empty_past(2), moe_path="gather")
    assert out.logits.dtype == torch.bfloat16 and cached.logits.shape == (2, 4, V)
    out.logits.float().logsumexp(-1).mean().backward()
    assert all(p.grad is not None for p in model.blocks[0].ffn.parameters())


def test_chunked_prefill_with_onehot_path_matches():
    model = _model("typemoe")
    idx = _tokens((2, 60), seed=2)
    with torch.no_grad():
        full = model(idx)
        a = model(idx[:, :17], past=model.empty_past(2), moe_path="onehot")
        b = model(idx[:, 17:], past=a.present, moe_path="onehot")  # T > 1 on a cache of P = 17
    torch.testing.assert_close(torch.cat((a.logits, b.logits), 1), full.logits, rtol=0, atol=1e-5)


# --- parameters --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shared", [False, True])
def test_active_params_equal_for_typemoe_and_dense(shared):
    counts = {ffn: count_params(_model(ffn, shared_expert=shared)) for ffn in FFN_KINDS}
    for ffn in ("dense", "switch"):
        ratio = counts[ffn]["active"] / counts["typemoe"]["active"]
        assert abs(ratio - 1) <= 0.02, f"{ffn} active params {counts[ffn]} vs typemoe {counts['typemoe']}"
    assert counts["typemoe"]["total"] > counts["dense"]["total"]


def test_param_counts_of_presets():
    """Prints the table for the report; built on the meta device, so base costs no memory."""
    table = np.arange(300) % 5
    for name, preset in PRESETS.items():
        for ffn in FFN_KINDS:
            with torch.device("meta"):
                c = count_params(TypeMoE(preset(300, 5, ffn=ffn), table))
            print(f"{name:5s} {ffn:8s} total {c['total'] / 1e6:7.3f}M active {c['active'] / 1e6:7.3f}M")
            assert c["active"] <= c["total"]


def test_param_groups_decay_matrices_only():
    model = _model("switch", n_classes=2)
    decay, no_decay = model.param_groups(0.1)
    ids = [id(p) for g in (decay, no_decay) for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters()), "each parameter exactly once"
    assert all(p.dim() >= 2 for p in decay["params"]) and decay["weight_decay"] == 0.1
    assert any(p is model.wte.weight for p in no_decay["params"]), "the embedding is not decayed"


# --- learning ----------------------------------------------------------------------------------------


def test_tiny_memorizes_a_real_piece(vocab, tmp_path):
    """A Bach chorale (music21 corpus -> MIDI -> REMI ids) is learned to a loss below 0.1."""
    music21 = pytest.importorskip("music21")
    import symusic

    midi = tmp_path / "bwv66.6.mid"
    music21.corpus.parse("bach/bwv66.6").write("midi", fp=str(midi))
    ids = [vocab.bos_id, *vocab.encode_score(symusic.Score(str(midi)))]
    assert len(ids) > 300, f"a real piece, got {len(ids)} tokens"
    x = torch.tensor(ids).unsqueeze(0)  # (1, T)
    torch.manual_seed(0)
    model = TypeMoE(tiny(vocab.size, vocab.n_types, context_len=1024), vocab.type_of).train()
    opt = torch.optim.AdamW(model.param_groups(0.0), lr=3e-3)
    for _ in range(600):
        loss = F.cross_entropy(model(x[:, :-1]).logits[0], x[0, 1:])
        if loss.item() < 0.1:
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert loss.item() < 0.1, f"tiny did not memorize {len(ids)} tokens: loss {loss.item():.3f}"


# --- generation --------------------------------------------------------------------------------------


def test_greedy_generation_equals_argmax_of_full_forward():
    model = _model("typemoe")
    prompt = _tokens((2, 5), seed=3)
    new = generate(model, prompt, max_new_tokens=30, temperature=0.0)
    seq = prompt
    with torch.no_grad():
        for _ in range(30):
            seq = torch.cat((seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)), dim=1)
    assert torch.equal(new, seq[:, 5:])


def test_sampling_is_seeded():
    model = _model("switch")
    prompt = _tokens((1, 4), seed=4)
    a = generate(model, prompt, max_new_tokens=40, temperature=1.0, top_p=0.9, seed=7)
    b = generate(model, prompt, max_new_tokens=40, temperature=1.0, top_p=0.9, seed=7)
    c = generate(model, prompt, max_new_tokens=40, temperature=1.0, top_p=0.9, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_top_p_keeps_the_nucleus():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log().repeat(2000, 1)
    picks = sample_next(logits, temperature=1.0, top_p=0.7, generator=torch.Generator().manual_seed(0))
    assert set(picks.tolist()) == {0, 1}, "0.5 + 0.3 reach 0.7: ids 2 and 3 are cut"
    picks = sample_next(logits, temperature=1.0, top_p=1e-6, generator=torch.Generator().manual_seed(0))
    assert (picks == 0).all(), "a tiny top_p is greedy"


def test_synthetic_grammar_is_obeyed():
    family_of = np.arange(V) % 3
    next_allowed = np.stack([family_of == (f + 1) % 3 for f in range(3)])  # (3, V): family f -> f+1 only
    grammar = Grammar.from_arrays(next_allowed, family_of)
    seq = torch.cat(
        (
            _tokens((3, 4), seed=5),
            generate(_model(), _tokens((3, 4), seed=5), max_new_tokens=50, grammar=grammar, seed=0),
        ),
        dim=1,
    )
    fam = torch.as_tensor(family_of)[seq]  # (3, 54)
    assert ((fam[:, 4:] - fam[:, 3:-1]) % 3 == 1).all()


def test_real_vocab_grammar_gives_valid_remi(vocab):
    torch.manual_seed(0)
    model = TypeMoE(tiny(vocab.size, vocab.n_types), vocab.type_of).eval()
    grammar = Grammar.from_vocab(vocab)
    prompt = torch.tensor([[vocab.bos_id, vocab.id("Bar_None")]])
    new = generate(model, prompt, max_new_tokens=80, temperature=1.0, grammar=grammar, seed=1)[0].tolist()
    seq = prompt[0].tolist() + new
    for prev, nxt in zip(seq[1:], seq[2:]):
        assert vocab.next_allowed[vocab.family_of[prev], nxt], f"{vocab.token(prev)} -> {vocab.token(nxt)}"


def test_generation_slides_past_the_context():
    model = _model("typemoe", context_len=16)
    new = generate(model, _tokens((1, 10)), max_new_tokens=40, temperature=0.0)
    assert new.shape == (1, 40)


def test_stop_id_ends_generation():
    model = _model("dense")
    with torch.no_grad():  # make token 3 overwhelmingly likely
        model.lm_head.weight[3] += 5 * model.norm_f(model(_tokens((1, 4))).hidden).mean((0, 1)).sign()
    new = generate(model, _tokens((2, 4)), max_new_tokens=20, temperature=0.0, stop_id=3)
    assert new.shape[1] < 20 and (new[:, -1] == 3).all()


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        tiny(V, E).n_layer = 3
