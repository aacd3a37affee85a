"""Float64 gradient checks: autograd's gradients equal finite differences for every component.

Each test runs ``torch.autograd.gradcheck`` on tiny shapes in float64, with respect to the
inputs *and* the parameters: parameters are passed in as gradcheck inputs and put back into
the module with ``torch.func.functional_call``. Stateful buffers (memory nodes, ring-buffer
slots) are state, not inputs: the memories run in eval mode so that a forward never stages a
write, and the state is held fixed while gradcheck perturbs inputs and parameters.

Top-k routing is discrete. A finite-difference step of 1e-6 must not flip which experts or
blocks are chosen, so every routed test first asserts that the k-th and (k+1)-th probability of
every row differ by more than ``MARGIN`` (the seeds were chosen for that).

A float64 check only means something if the forward stays in float64. ``assert_float64`` runs
the forward under a ``TorchFunctionMode`` that records every op turning a float64 tensor into a
lower-precision one (an upcast written as ``.float()`` does that); ``gradcheck_module`` asserts
it before running gradcheck.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck
from torch.func import functional_call
from torch.overrides import TorchFunctionMode

import mahiax
from mahiax.config import tiny
from mahiax.model.fabric import DynamicLayerRouter, DynamicNeuroFabric, FabricBlock
from mahiax.model.hybrid import HybridEfficientModel, TaskHead
from mahiax.model.memories import GraphDiffusionMemory, TinyMemory
from mahiax.model.moe import MixtureOfExperts, SwiGLUExperts
from mahiax.model.weighting import DynamicWeightAveraging, UncertaintyWeighting

F64 = torch.float64
MARGIN = 1e-3  # k-th minus (k+1)-th probability; a 1e-6 step moves a probability far less
_PACKAGE = Path(mahiax.__file__).resolve().parent


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """gradcheck runs thousands of forwards on tensors of a few dozen numbers: a second
    intra-op thread only adds overhead, and on a busy 2-core machine its spin-waiting made
    this file 5x slower. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class _Float64Downcasts(TorchFunctionMode):
    """Records the torch functions that return a lower-precision float from a float64 input."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if _has_float64(args) and _has_lower_float(out):
            self.seen.append(f"{getattr(func, '__name__', func)} at {_mahiax_caller()}")
        return out


def _mahiax_caller() -> str:
    """``mahiax/file.py:line`` of the innermost frame in the mahiax package."""
    for frame in reversed(traceback.extract_stack()):
        path = Path(frame.filename)
        if path.is_relative_to(_PACKAGE):
            return f"mahiax/{path.relative_to(_PACKAGE).as_posix()}:{frame.lineno}"
    return "?"


def _tensors(obj: object) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, list | tuple):
        return [t for o in obj for t in _tensors(o)]
    return []


def _has_float64(obj: object) -> bool:
    return any(t.dtype == F64 for t in _tensors(obj))


def _has_lower_float(obj: object) -> bool:
    return any(t.is_floating_point() and t.dtype != F64 for t in _tensors(obj))


def assert_float64(fn: Callable[..., object], *args: object) -> None:
    """Precondition of a float64 gradcheck: ``fn(*args)`` never drops below float64."""
    mode = _Float64Downcasts()
    try:
        with mode:
            fn(*args)
    except RuntimeError as err:  # a downcast input meeting float64 weights fails a matmul
        if not mode.seen:
            raise
        raise AssertionError(f"float64 forward downcast by {mode.seen}, then: {err}") from err
    assert not mode.seen, f"float64 forward computed in lower precision after: {mode.seen}"


def topk_margin(probs: torch.Tensor, k: int) -> float:
    """Smallest gap, over rows, between the k-th and (k+1)-th largest probability."""
    top = probs.detach().topk(k + 1, dim=-1).values
    return float((top[..., k - 1] - top[..., k]).min())


def gradcheck_module(
    module: nn.Module,
    inputs: Sequence[torch.Tensor],
    param_names: Sequence[str] | None = None,
    output: Callable[[object], object] = lambda out: out,
) -> bool:
    """gradcheck of ``output(module(*inputs))`` w.r.t. the floating inputs and the parameters.

    ``param_names`` (default: all) are copied into fresh float64 leaves that gradcheck
    perturbs; ``functional_call`` runs the module with them in place of its own parameters.
    """
    own = dict(module.named_parameters())
    names = list(own) if param_names is None else list(param_names)
    params = [own[n].detach().clone().requires_grad_(True) for n in names]
    n_in = len(inputs)

    def fn(*args: torch.Tensor) -> object:
        swapped = dict(zip(names, args[n_in:], strict=True))
        return output(functional_call(module, swapped, tuple(args[:n_in])))

    assert_float64(fn, *inputs, *params)
    return gradcheck(fn, (*inputs, *params))


class _Method(nn.Module):
    """Calls ``fn(module, *args)``, so functional_call can swap the module's parameters for
    a method other than ``forward``. Parameter names get the prefix ``module.``."""

    def __init__(self, module: nn.Module, fn: Callable[..., object]):
        super().__init__()
        self.module, self.fn = module, fn

    def forward(self, *args: object) -> object:
        return self.fn(self.module, *args)


def leaf(*shape: int) -> torch.Tensor:
    """A float64 input that gradcheck differentiates."""
    return torch.randn(*shape, dtype=F64, requires_grad=True)


# --- mixture of experts ---


def test_swiglu_experts_gradients_for_fixed_routing():
    """Given a routing, the expert mix is differentiable in the tokens, the mixing weights and
    all three stacked expert weights; the dispatch (sort, split, index_add) loses no gradient."""
    torch.manual_seed(0)
    experts = SwiGLUExperts(num_experts=4, d_model=6, hidden=5).double()
    x = leaf(7, 6)
    ids = torch.stack([torch.randperm(4)[:2] for _ in range(7)])  # (7, 2) distinct experts
    weights = torch.rand(7, 2, dtype=F64).requires_grad_(True)

    assert gradcheck_module(experts, [x, ids, weights])


def test_expert_router_gradients_of_hidden_aux_loss_and_z_loss():
    """The MoE block's output, load-balancing loss and z-loss all have exact gradients w.r.t.
    the tokens, the router and every expert, which is what training on their sum relies on."""
    torch.manual_seed(1)
    moe = MixtureOfExperts(d_model=6, num_experts=4, top_k=2, expert_hidden=5).double().eval()
    x = leaf(2, 4, 6)  # (B, T, D): 8 tokens

    margin = topk_margin(moe(x).router.probs, k=2)
    assert margin > MARGIN, f"2nd vs 3rd expert probability only {margin:.2e} apart"
    assert gradcheck_module(moe, [x], output=lambda o: (o.hidden, o.aux_loss, o.z_loss))


# --- dynamic layer routing ---


def test_fabric_block_gradients():
    """One candidate block (LayerNorm, Linear, GELU, Linear) has exact gradients w.r.t. its
    input and all of its parameters."""
    torch.manual_seed(2)
    block = FabricBlock(d_model=6).double()

    assert gradcheck_module(block, [leaf(3, 6)])


def test_layer_router_weights_gradients():
    """The renormalised top-k block weights are differentiable in the sample and the gate,
    so the gate learns from the blocks' outputs."""
    torch.manual_seed(3)
    router = DynamicLayerRouter(d_model=6, num_layers=3, top_k=2).double()
    x = leaf(5, 6)

    margin = topk_margin(router(x).probs, k=2)
    assert margin > MARGIN, f"2nd vs 3rd block probability only {margin:.2e} apart"
    assert gradcheck_module(router, [x], output=lambda r: r.weights)


def test_dynamic_neuro_fabric_gradients():
    """The fabric's out-of-place weighted mix of the chosen blocks has exact gradients w.r.t.
    the input, every block and the gate."""
    torch.manual_seed(4)
    fabric = DynamicNeuroFabric(d_model=6, num_layers=3, active=2).double().eval()
    x = leaf(4, 6)

    margin = topk_margin(fabric(x)[1].probs, k=2)
    assert margin > MARGIN, f"2nd vs 3rd block probability only {margin:.2e} apart"
    assert gradcheck_module(fabric, [x], output=lambda out: out[0])


# --- memories ---


def test_graph_memory_read_gradients():
    """The memory read is differentiable in the query input, the adjacency logits and the
    q/k/v/out projections. The node matrix is a buffer (state, not an input): eval mode
    keeps it fixed, so gradcheck sees one function."""
    torch.manual_seed(5)
    memory = GraphDiffusionMemory(d_model=6, num_nodes=4).double().eval()
    nodes = memory.nodes.clone()

    assert gradcheck_module(memory, [leaf(3, 6)])
    assert torch.equal(memory.nodes, nodes), "an eval-mode read must not move the nodes"


def test_tiny_memory_read_gradients_with_filled_slots():
    """With summaries in the ring buffer, the attention read over them is differentiable in
    the query input and the q/k/v/out projections (the slots themselves are state)."""
    torch.manual_seed(6)
    memory = TinyMemory(d_model=6, num_slots=4).double().train()
    for _ in range(3):  # fill 3 of 4 slots the way training does: forward, then commit
        memory(torch.randn(5, 6, dtype=F64))
        memory.commit()
    memory.eval()
    assert memory.filled() == 3

    assert gradcheck_module(memory, [leaf(3, 6)])


# --- heads and loss weighting ---


def test_task_head_gradients():
    """A task head's output has exact gradients w.r.t. the fused features and its weights."""
    torch.manual_seed(7)
    head = TaskHead(d_model=6, out_dim=3).double()

    assert gradcheck_module(head, [leaf(4, 6)])


def test_uncertainty_weighting_combine_gradients():
    """The uncertainty-weighted total is differentiable in the task losses and in the learned
    log variances, so the weights are trained by the same backward as the model."""
    weighting = UncertaintyWeighting(num_tasks=3).double()
    with torch.no_grad():
        weighting.log_vars.copy_(torch.tensor([0.3, -0.5, 1.2]))
    losses = torch.tensor([0.7, 1.9, 0.2], dtype=F64, requires_grad=True)

    combine = _Method(weighting, UncertaintyWeighting.combine)
    assert gradcheck_module(combine, [losses], ["module.log_vars"])


def test_dwa_combine_gradients_treat_weights_as_constants():
    """DWA's total is the losses weighted by constants: its gradient w.r.t. the losses is the
    weights in force, with no path through the weights themselves."""
    dwa = DynamicWeightAveraging(num_tasks=3, window=1)
    for losses in ([1.0, 1.0, 1.0], [0.5, 0.9, 0.99]):  # two windows: weights become unequal
        dwa.update(torch.tensor(losses))
    weights = dwa.weights()
    assert not torch.allclose(weights, torch.ones(3)), "the check needs non-trivial weights"
    losses = torch.tensor([0.7, 1.9, 0.2], dtype=F64, requires_grad=True)

    assert_float64(dwa.combine, losses)
    assert gradcheck(dwa.combine, (losses,))
    (grad,) = torch.autograd.grad(dwa.combine(losses), losses)
    torch.testing.assert_close(grad, weights.to(F64))


# --- the whole model ---


def test_encode_gradients_wrt_tabular_and_parameters():
    """``encode`` on the tiny config in float64 has exact gradients w.r.t. the tabular input
    and a parameter from every stage (tokens are held fixed: they are discrete). Two training
    steps' worth of forward + commit first put summaries in the TinyMemory, then eval mode
    holds all state fixed."""
    torch.manual_seed(8)
    c = tiny()
    model = HybridEfficientModel(c).double().train()
    for _ in range(2):
        model.encode(torch.randint(0, c.vocab_size, (4, c.seq_len)), torch.randn(4, c.tab_dim))
        model.commit()
    model.eval()
    assert model.tiny_memory.filled() == 2
    tokens = torch.randint(0, c.vocab_size, (2, c.seq_len))
    tabular = leaf(2, c.tab_dim)
    encode = _Method(model, lambda m, tok, tab: m.encode(tok, tab).features)

    enc = model.encode(tokens, tabular)
    moe_margin = topk_margin(enc.router.probs, k=c.top_k)
    fabric_margin = topk_margin(enc.layers.probs, k=c.fabric_active)
    assert moe_margin > MARGIN, f"MoE k-th vs (k+1)-th only {moe_margin:.2e} apart"
    assert fabric_margin > MARGIN, f"fabric k-th vs (k+1)-th only {fabric_margin:.2e} apart"
    params = [  # one small parameter per stage keeps this under a few seconds
        "text.norm.weight",
        "text.moe.router.weight",
        "text.pool.weight",
        "tabular.fc1.bias",
        "fuse_norm.weight",
        "fabric.router.gate.weight",
        "graph_memory.adj_logits",
        "tiny_memory.out.bias",
        "out_norm.bias",
    ]
    assert gradcheck_module(encode, [tokens, tabular], [f"module.{p}" for p in params])
