"""The feed-forward blocks: routing is a lookup, the three execution paths agree, experts stay separate."""

import pytest
import torch

from typemoe.config import tiny
from typemoe.model import TypeMoE
from typemoe.moe import MOE_PATHS, DenseFFN, Experts, SwitchFFN, TypeMoEFFN, TypeRouter

V, E = 40, 5
TABLE = torch.arange(V) % E  # synthetic type table: token id -> type id, every type present


def _tokens(seed: int, shape=(2, 24)) -> torch.Tensor:
    return torch.randint(0, V, shape, generator=torch.Generator().manual_seed(seed))


def test_router_is_a_parameter_free_lookup():
    router = TypeRouter(TABLE)
    assert list(router.parameters()) == [], "the type router must learn nothing"
    assert "type_of_id" in router.state_dict(), "the table is saved with the checkpoint"
    idx = _tokens(0)
    assert torch.equal(router(idx), TABLE[idx])


@pytest.mark.parametrize("path", ["gather", "onehot"])
def test_static_paths_equal_sparse_path(path):
    torch.manual_seed(0)
    experts = Experts(E, 16, 32)
    x = torch.randn(3, 11, 16)
    expert = torch.randint(0, E - 1, (3, 11))  # the last expert gets no token: an empty group
    want = experts(x, expert, "sparse")
    got = experts(x, expert, path)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for b, t in [(0, 0), (2, 10)]:  # and each token equals its own expert run alone
        e = int(expert[b, t])
        h = torch.nn.functional.silu(x[b, t] @ experts.w_gate[e]) * (x[b, t] @ experts.w_up[e])
        torch.testing.assert_close(want[b, t], h @ experts.w_down[e], rtol=1e-5, atol=1e-6)


def test_unknown_path_is_refused():
    with pytest.raises(ValueError, match="'fast'"):
        Experts(E, 8, 8)(torch.zeros(1, 1, 8), torch.zeros(1, 1, dtype=torch.long), "fast")


@pytest.mark.parametrize("path", MOE_PATHS)
@pytest.mark.parametrize("shared", [False, True])
def test_output_depends_only_on_own_expert(path, shared):
    torch.manual_seed(0)
    ffn = TypeMoEFFN(tiny(V, E, shared_expert=shared))
    x = torch.randn(2, 24, 64)
    types = TABLE[_tokens(1)]
    before = ffn(x, types, path).y
    other = 3
    with torch.no_grad():  # perturb expert 3 only
        for w in (ffn.experts.w_gate, ffn.experts.w_up, ffn.experts.w_down):
            w[other] += torch.randn_like(w[other])
    after = ffn(x, types, path).y
    mine = types == other
    assert mine.any() and (~mine).any()
    assert torch.equal(after[~mine], before[~mine]), "a token saw another type's expert"
    assert not torch.allclose(after[mine], before[mine]), "type-3 tokens must use expert 3"


def test_every_present_expert_gets_gradient_and_absent_ones_none():
    torch.manual_seed(0)
    ffn = TypeMoEFFN(tiny(V, E))
    x = torch.randn(2, 24, 64)
    types = TABLE[_tokens(2)].clamp(max=E - 2)  # type E-1 absent
    ffn(x, types).y.square().sum().backward()
    for name in ("w_gate", "w_up", "w_down"):
        g = getattr(ffn.experts, name).grad  # (E, ., .)
        norms = g.flatten(1).norm(dim=1)  # (E,)
        assert (norms[: E - 1] > 0).all(), f"{name}: an expert whose type is present got no gradient: {norms}"
        assert norms[E - 1] == 0, f"{name}: the absent type's expert got gradient"


def test_counts_per_type():
    types = TABLE[_tokens(3)]
    out = TypeMoEFFN(tiny(V, E))(torch.randn(2, 24, 64), types)
    assert torch.equal(out.counts, torch.bincount(types.flatten(), minlength=E))
    assert out.route is None and out.balance is None
    dense = DenseFFN(tiny(V, E))(torch.randn(2, 24, 64), types)
    assert torch.equal(dense.counts, out.counts), "dense reports tokens per type, for uniform logging"


def test_switch_router_and_balance_quantity():
    torch.manual_seed(0)
    ffn = SwitchFFN(tiny(V, E))
    x = torch.randn(4, 32, 64)
    out = ffn(x, TABLE[_tokens(4, (4, 32))])
    probs = torch.softmax(ffn.router(x), dim=-1)  # (B, T, E)
    assert torch.equal(out.route, probs.argmax(-1)), "top-1 routing"
    f = torch.bincount(out.route.flatten(), minlength=E).float() / out.route.numel()
    torch.testing.assert_close(out.balance, E * (f * probs.mean((0, 1))).sum())
    assert int(out.counts.sum()) == 4 * 32
    # the expert output is scaled by the router probability, so the router learns from the LM loss
    (out.y.square().sum() + out.balance).backward()
    assert ffn.router.weight.grad.abs().sum() > 0


def test_switch_balance_is_one_when_uniform():
    ffn = SwitchFFN(tiny(V, E))
    with torch.no_grad():
        ffn.router.weight.zero_()  # equal probabilities; argmax ties pick expert 0
    out = ffn(torch.randn(1, 8, 64), torch.zeros(1, 8, dtype=torch.long))
    torch.testing.assert_close(out.balance, torch.tensor(1.0))


def test_model_output_ignores_experts_of_absent_types():
    torch.manual_seed(0)
    model = TypeMoE(tiny(V, E), TABLE).eval()
    idx = _tokens(5)
    idx = torch.where(TABLE[idx] == 2, idx + 1, idx)  # no token of type 2
    before = model(idx)
    with torch.no_grad():
        for block in model.blocks:
            block.ffn.experts.w_up[2].normal_()
    after = model(idx)
    assert torch.equal(after.logits, before.logits)
    assert torch.equal(after.key_logits, before.key_logits)
    assert before.expert_counts[:, 2].sum() == 0
