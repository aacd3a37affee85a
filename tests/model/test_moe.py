"""The mixture of experts: equal to Hugging Face's Mixtral block, equal to a naive per-token
loop, and the load-balancing figures on hand-made examples."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

from benchmarks.bench_moe import mixtral_block
from mahiax.model.moe import (
    CPU_LOOP_ROWS,
    MixtureOfExperts,
    load_balancing_loss,
    load_statistics,
    router_z_loss,
)

F64 = torch.float64

# (D, H, E, K, B, T): the teaching size (config.teaching()) and a top-1 size
SIZES = [
    pytest.param(64, 128, 8, 2, 32, 32, id="teaching-E8-K2"),
    pytest.param(32, 48, 4, 1, 4, 16, id="E4-K1"),
]


def mixtral_copy(moe: MixtureOfExperts) -> MixtralSparseMoeBlock:
    """A transformers Mixtral sparse MoE block holding ``moe``'s weights, in eval mode, with
    its plain per-expert loop ("eager"); the weight mapping is the benchmark's, documented in
    :func:`benchmarks.bench_moe.mixtral_block`."""
    return mixtral_block(moe, "eager").eval()


def naive_moe(
    moe: MixtureOfExperts, x: torch.Tensor, ids: torch.Tensor, w: torch.Tensor
) -> torch.Tensor:
    """Reference: for each token, for each of its K experts, SwiGLU with that expert's weights,
    weighted by the routing weight and summed. x (N, D), ids/w (N, K) -> (N, D)."""
    ex = moe.experts
    out = torch.zeros_like(x)
    for n in range(x.shape[0]):
        for slot in range(ids.shape[1]):
            e = int(ids[n, slot])
            gate, up = x[n] @ ex.w_gate[e], x[n] @ ex.w_up[e]  # (H,), (H,)
            hidden = gate * torch.sigmoid(gate) * up  # silu(gate) * up
            out[n] += w[n, slot].to(x.dtype) * (hidden @ ex.w_down[e])
    return out


def starve_expert(moe: MixtureOfExperts, x: torch.Tensor, expert: int) -> torch.Tensor:
    """Make ``expert``'s router logit -30 for every token: feature 0 of x is set to 1 and the
    expert's router row reads only that feature. Returns the modified x."""
    x = x.clone()
    x[..., 0] = 1.0
    with torch.no_grad():
        moe.router.weight[expert] = 0.0
        moe.router.weight[expert, 0] = -30.0
    return x


# --- equivalence with transformers' Mixtral ---


def test_mixtral_reference_runs_its_eager_experts_forward():
    """The reference really is Mixtral's eager loop: the ``use_experts_implementation``
    decorator dispatches ``experts_implementation='eager'`` to the original forward."""
    block = mixtral_copy(MixtureOfExperts(d_model=8, num_experts=4, top_k=2, expert_hidden=16))
    original = object()

    impl = block.experts.config._experts_implementation
    assert impl == "eager"
    assert ALL_EXPERTS_FUNCTIONS.get_interface(impl, original) is original
    assert block.experts.config.hidden_act == "silu"


@pytest.mark.parametrize(("d", "h", "e", "k", "b", "t"), SIZES)
def test_routing_matches_mixtral_router(d, h, e, k, b, t):
    """Same logits, same experts, same renormalised weights as Mixtral's router."""
    torch.manual_seed(0)
    moe = MixtureOfExperts(d, e, k, h)
    block = mixtral_copy(moe)
    x = torch.randn(b * t, d)

    ours = moe.router(x)
    logits, weights, ids = block.gate(x)

    assert torch.equal(ours.logits, logits)
    assert torch.equal(ours.ids, ids)
    torch.testing.assert_close(ours.weights, weights, atol=1e-7, rtol=0)


@pytest.mark.parametrize(("d", "h", "e", "k", "b", "t"), SIZES)
def test_output_matches_mixtral_sparse_moe_block(d, h, e, k, b, t):
    """With identical weights the block computes what Mixtral's block computes (float32)."""
    torch.manual_seed(1)
    moe = MixtureOfExperts(d, e, k, h)
    block = mixtral_copy(moe)
    x = torch.randn(b, t, d)

    with torch.no_grad():
        ours, theirs = moe(x).hidden, block(x)

    assert ours.shape == theirs.shape == (b, t, d)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("d", "h", "e", "k", "b", "t"), SIZES)
def test_input_gradient_matches_mixtral_sparse_moe_block(d, h, e, k, b, t):
    """Backpropagating one cotangent through both blocks gives the same input gradient."""
    torch.manual_seed(2)
    moe = MixtureOfExperts(d, e, k, h)
    block = mixtral_copy(moe)
    x = torch.randn(b, t, d)
    cotangent = torch.randn(b, t, d)

    x_ours = x.clone().requires_grad_(True)
    x_theirs = x.clone().requires_grad_(True)
    (g_ours,) = torch.autograd.grad((moe(x_ours).hidden * cotangent).sum(), x_ours)
    (g_theirs,) = torch.autograd.grad((block(x_theirs) * cotangent).sum(), x_theirs)

    torch.testing.assert_close(g_ours, g_theirs, atol=1e-5, rtol=0)


# --- dispatch vs a naive per-token loop ---


@pytest.mark.parametrize("starved", [None, 2], ids=["all-experts-used", "expert-2-gets-none"])
def test_dispatch_equals_naive_per_token_reference(starved):
    """Grouping the N*K assignments by expert and running one matmul per expert gives exactly
    the per-token loop, also when an expert receives no token (float64)."""
    torch.manual_seed(3)
    moe = MixtureOfExperts(d_model=8, num_experts=4, top_k=2, expert_hidden=12).double()
    x = torch.randn(3, 5, 8, dtype=F64)
    if starved is not None:
        x = starve_expert(moe, x, starved)

    out = moe(x)
    counts = torch.bincount(out.router.ids.flatten(), minlength=4)
    if starved is None:
        assert bool((counts > 0).all()), f"every expert should get tokens, got {counts}"
    else:
        assert counts[starved] == 0, f"expert {starved} should get no token, got {counts}"

    flat = x.reshape(-1, 8)
    expected = naive_moe(moe, flat, out.router.ids, out.router.weights)
    torch.testing.assert_close(out.hidden.reshape(-1, 8), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("starved", [None, 2], ids=["all-experts-used", "expert-2-gets-none"])
def test_grouped_kernel_equals_looped_kernel(starved):
    """The grouped kernel (F.grouped_mm, float32) and the looped one (a matmul per expert) give
    the same output and the same gradients of the tokens, the routing weights and all three
    stacked weights, also when an expert receives no token. They run the same matmuls on the
    same rows (the grouped one slices what the looped one splits), so they agree to the bit."""
    torch.manual_seed(7)
    experts = MixtureOfExperts(d_model=64, num_experts=8, top_k=2, expert_hidden=128).experts
    x = torch.randn(300, 64)
    ids = torch.stack([torch.randperm(8)[:2] for _ in range(300)])  # (300, 2) distinct experts
    if starved is not None:
        ids = torch.where(ids == starved, (ids + 2) % 8, ids)  # distinct still: a shift by 2
        ids[:, 1] = torch.where(ids[:, 1] == ids[:, 0], (ids[:, 0] + 1) % 8, ids[:, 1])
        ids = torch.where(ids == starved, (ids + 1) % 8, ids)
        assert not (ids == starved).any() and bool((ids[:, 0] != ids[:, 1]).all())
    weights = torch.rand(300, 2).softmax(dim=-1)
    cotangent = torch.randn(300, 64)

    found = {}
    for grouped in (True, False):
        experts.grouped = grouped
        x_, w_ = x.clone().requires_grad_(True), weights.clone().requires_grad_(True)
        experts.zero_grad(set_to_none=True)
        out = experts(x_, ids, w_)
        out.backward(cotangent)
        found[grouped] = [out, x_.grad, w_.grad] + [p.grad for p in experts.parameters()]

    for name, a, b in zip(["output", "x", "weights", "w_gate", "w_up", "w_down"],
                          found[True], found[False], strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)


def test_kernel_choice_by_dtype_and_rows():
    """float32 takes the grouped kernel, float64 (which F.grouped_mm rejects) the looped one;
    on the CPU the looped one also from CPU_LOOP_ROWS assignments per expert on."""
    experts = MixtureOfExperts(d_model=8, num_experts=4, top_k=2, expert_hidden=16).experts

    assert experts.use_grouped(torch.float32)
    assert experts.use_grouped(torch.bfloat16)
    assert not experts.use_grouped(torch.float64)
    odd = MixtureOfExperts(d_model=6, num_experts=4, top_k=2, expert_hidden=5).experts
    assert not odd.use_grouped(torch.bfloat16)  # 12-byte rows: not on a 16-byte boundary
    many = CPU_LOOP_ROWS * 4  # E = 4
    assert experts.use_grouped(torch.float32, many - 1, "cpu")
    assert not experts.use_grouped(torch.float32, many, "cpu")
    assert experts.use_grouped(torch.float32, many, "cuda")


def test_load_stats_report_a_starved_expert_as_dead():
    """An expert that received no token in the last training forward is counted as dead."""
    torch.manual_seed(4)
    moe = MixtureOfExperts(d_model=8, num_experts=4, top_k=2, expert_hidden=12).train()
    x = starve_expert(moe, torch.randn(3, 5, 8), expert=1)

    moe(x)
    stats = moe.load_stats()

    assert stats["tokens_per_expert"][1] == 0
    assert stats["dead"] == 1


# --- load-balancing loss, z-loss, balance figures ---


def test_load_balancing_loss_is_one_at_perfect_balance():
    """Uniform router probabilities and a uniform assignment give exactly 1.0 (any K)."""
    n, e, k = 8, 4, 2
    probs = torch.full((n, e), 1.0 / e)
    ids = (torch.arange(n * k) % e).reshape(n, k)  # every expert gets N*K/E = 4 assignments

    assert load_balancing_loss(probs, ids, e).item() == pytest.approx(1.0, abs=1e-7)


@pytest.mark.parametrize(
    ("k", "expected"),
    [(1, 4.0), (2, 2.0)],
    ids=["all-tokens-on-one-expert", "all-tokens-on-two-experts"],
)
def test_load_balancing_loss_grows_when_the_router_collapses(k, expected):
    """A router that sends every token to the same K of E experts scores E/K, above 1.0."""
    n, e = 8, 4
    probs = torch.zeros(n, e)
    probs[:, :k] = 1.0 / k
    ids = torch.arange(k).expand(n, k)

    loss = load_balancing_loss(probs, ids, e).item()

    assert loss == pytest.approx(expected, abs=1e-6)
    assert loss > 1.0


def test_router_z_loss_matches_formula_on_hand_example():
    """z-loss = mean over tokens of logsumexp(logits)^2: rows [0, 0] and [ln 3, 0] have
    logsumexp ln 2 and ln 4, so the loss is (ln2^2 + (2 ln2)^2) / 2 = 2.5 ln2^2."""
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])

    assert router_z_loss(logits).item() == pytest.approx(2.5 * math.log(2.0) ** 2, abs=1e-6)


@pytest.mark.parametrize("scale", [0.1, 1.0, 30.0])
def test_router_z_loss_read_off_the_softmax_equals_logsumexp(scale):
    """The z-loss from the softmax at the top-1 expert (``l_j - log p_j``) has the value of the
    ``torch.logsumexp`` form to float32 rounding, and the same gradient (float64)."""
    torch.manual_seed(8)
    logits = torch.randn(512, 8) * scale
    probs = torch.softmax(logits, dim=-1)
    top = probs.argmax(dim=-1, keepdim=True)

    torch.testing.assert_close(router_z_loss(logits, probs, top), router_z_loss(logits),
                               rtol=1e-6, atol=0)

    l64 = logits.double().requires_grad_(True)
    (g_read,) = torch.autograd.grad(router_z_loss(l64, torch.softmax(l64, -1), top), l64)
    (g_lse,) = torch.autograd.grad(router_z_loss(l64), l64)
    torch.testing.assert_close(g_read, g_lse, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("balance", ["aux", "bias"])
def test_block_z_loss_is_the_logsumexp_z_loss(balance):
    """The block's z-loss equals :func:`router_z_loss` of its logits (the logsumexp form),
    also when a selection bias picked ids whose first is not the most probable expert."""
    torch.manual_seed(9)
    moe = MixtureOfExperts(d_model=16, num_experts=8, top_k=2, expert_hidden=24,
                           balance=balance).train()
    if moe.expert_bias is not None:
        moe.expert_bias.copy_(torch.linspace(-0.5, 0.5, 8))  # flips some top-1 choices

    out = moe(torch.randn(4, 32, 16))

    if balance == "bias":
        best = out.router.probs.argmax(dim=-1)
        assert bool((out.router.ids[:, 0] != best).any())
    torch.testing.assert_close(out.z_loss, router_z_loss(out.router.logits), rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        ([4, 4, 4, 4], {"cv": 0.0, "entropy": 1.0, "max_over_mean": 1.0, "dead": 0}),
        ([16, 0, 0, 0], {"cv": math.sqrt(3.0), "entropy": 0.0, "max_over_mean": 4.0, "dead": 3}),
        ([8, 8, 0, 0], {"cv": 1.0, "entropy": 0.5, "max_over_mean": 2.0, "dead": 2}),
    ],
    ids=["balanced", "collapsed", "half-dead"],
)
def test_load_statistics_on_hand_made_counts(counts, expected):
    """cv = std/mean (population std), entropy of the fractions / log E, busiest / mean,
    and the number of experts with no token."""
    stats = load_statistics(torch.tensor(counts, dtype=torch.float32))

    assert stats == pytest.approx(expected, abs=1e-12)


# --- load telemetry of MixtureOfExperts ---


def test_load_stats_count_only_training_forwards():
    """tokens_per_expert is written by training-mode forwards only: evaluating the model
    leaves the figures of the last training step on the dashboard."""
    torch.manual_seed(5)
    moe = MixtureOfExperts(d_model=8, num_experts=4, top_k=2, expert_hidden=12)

    moe.eval()(torch.randn(2, 6, 8))
    assert moe.tokens_per_expert.sum() == 0, "an eval forward must not count"

    moe.train()(torch.randn(2, 6, 8))
    after_training = moe.tokens_per_expert.clone()
    moe.eval()(torch.randn(3, 7, 8))

    assert after_training.sum() > 0
    assert torch.equal(moe.tokens_per_expert, after_training)


def test_load_stats_tokens_sum_to_n_times_k():
    """Every token is counted once per expert it went to: the counts sum to N*K."""
    torch.manual_seed(6)
    moe = MixtureOfExperts(d_model=8, num_experts=4, top_k=2, expert_hidden=12).train()

    moe(torch.randn(3, 7, 8))  # N = 21 tokens
    stats = moe.load_stats()

    assert sum(stats["tokens_per_expert"]) == 21 * 2
    assert sum(stats["fraction"]) == pytest.approx(1.0)


def test_top_k_larger_than_num_experts_raises():
    """Asking for more experts per token than there are fails at construction, naming both."""
    with pytest.raises(ValueError, match=r"top_k=5 .*num_experts \(4\)"):
        MixtureOfExperts(d_model=8, num_experts=4, top_k=5, expert_hidden=12)
