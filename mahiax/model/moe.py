"""Mixture of experts: a top-k router, SwiGLU experts held as stacked weights, and the MoE block
(:class:`MixtureOfExperts`, the summary's ``ExpertRouter``).

Shape legend: N tokens (B * T flattened), D ``d_model``, E ``num_experts``, K ``top_k``,
H ``expert_hidden``.

The block computes what the Mixtral sparse MoE block of Hugging Face ``transformers``
computes (softmax in float32 over all experts, top-k, weights renormalised to sum to 1,
``down(silu(gate(x)) * up(x))`` per expert); ``tests/model/test_moe.py`` loads identical
weights into both and compares. Tokens are dispatched grouped by expert: one sort of the N*K
assignments, then one contiguous matmul per expert that received tokens. There is no Python
loop over tokens and no ``experts[idx]`` with a tensor ``idx`` (the summary's bug 1). Every
token is processed by its K experts: no capacity limit, no dropped tokens.

Load balance is a choice (``MahiaConfig.balance``): ``"aux"`` adds the Switch load-balancing
loss to the objective (the model's default), ``"bias"`` moves a per-expert selection bias
instead (DeepSeek-V3's auxiliary-loss-free balancing, :meth:`MixtureOfExperts.commit`),
``"none"`` does neither.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mahiax.config import BALANCES
from mahiax.dtypes import at_least_fp32


@dataclass(kw_only=True)
class RouterOutput:
    """What the router decided, with everything telemetry and the aux losses need."""

    logits: torch.Tensor  # (N, E) router logits, input dtype
    probs: torch.Tensor  # (N, E) float32 softmax over all experts
    weights: torch.Tensor  # (N, K) float32 top-k probabilities renormalised to sum to 1
    ids: torch.Tensor  # (N, K) int64 expert ids, best first


@dataclass(kw_only=True)
class MoEOutput:
    """Output of :class:`MixtureOfExperts`; the losses carry graph for this step only."""

    hidden: torch.Tensor  # same shape as the input (..., D)
    aux_loss: torch.Tensor  # () load-balancing loss, 1.0 at perfect balance
    z_loss: torch.Tensor  # () router z-loss
    router: RouterOutput


class TopKRouter(nn.Module):
    """Linear router (no bias, Mixtral layout ``weight: (E, D)``), softmax in float32, top-k."""

    def __init__(self, d_model: int, num_experts: int, top_k: int):
        super().__init__()
        self.num_experts, self.top_k = num_experts, top_k
        self.weight = nn.Parameter(torch.empty(num_experts, d_model))  # (E, D)
        nn.init.normal_(self.weight, std=1.0 / math.sqrt(d_model))
        # the biased selection rule; the catalog's router-collapse checker swaps in a
        # learner's own rule with the same signature
        self.select = biased_top_k

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> RouterOutput:
        """Route tokens x (N, D). ``bias`` (E,) float32, if given, is added to the routing
        probabilities for the top-k *selection* only; see :func:`biased_top_k`."""
        logits = F.linear(x, self.weight)  # (N, E)
        # float32 softmax: in bf16/fp16 near-equal logits round to ties and routing flips
        probs = torch.softmax(at_least_fp32(logits), dim=-1)  # (N, E)
        if bias is None:
            top_p, ids = torch.topk(probs, self.top_k, dim=-1)  # (N, K), (N, K)
        else:
            top_p, ids = self.select(probs, bias, self.top_k)  # (N, K), (N, K)
        weights = top_p / top_p.sum(dim=-1, keepdim=True)  # (N, K) renormalised
        return RouterOutput(logits=logits, probs=probs, weights=weights, ids=ids)


def biased_top_k(probs: torch.Tensor, bias: torch.Tensor,
                 k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k selection on ``probs + bias``; the values returned are the *unbiased* ``probs``
    of the selected experts. probs (N, E) float32, bias (E,) -> ((N, K) probs, (N, K) ids).

    Auxiliary-loss-free balancing (Wang et al. 2024, "Auxiliary-Loss-Free Load Balancing
    Strategy for Mixture-of-Experts", arXiv:2408.15664; DeepSeek-V3 technical report, section
    2.1.2): the bias decides *which* experts a token goes to and nothing else. The mixing
    weights are the unbiased scores of the chosen experts (the caller renormalises them over
    the K chosen, as without a bias), so the bias never enters the output's value, and it
    reaches no gradient: the sum is taken under ``no_grad`` and ``topk`` of it only yields
    integer ids. DeepSeek-V3 scores experts with a sigmoid; this router's scores are its
    float32 softmax probabilities, so that is what the bias is added to (the scores top-k
    reads, as the paper prescribes).
    """
    with torch.no_grad():
        ids = torch.topk(probs + bias.to(probs.dtype), k, dim=-1).indices  # (N, K)
    return probs.gather(-1, ids), ids  # (N, K) differentiable wrt probs, (N, K)


def bias_update(bias: torch.Tensor, load: torch.Tensor, rate: float) -> torch.Tensor:
    """One step of the auxiliary-loss-free rule: ``b_i + rate * sign(mean(load) - load_i)``.

    Wang et al. 2024, Algorithm 1 (and DeepSeek-V3, section 2.1.2, "bias update speed"
    gamma): an expert that got more than the mean load this step has its bias lowered by
    ``rate``, one that got less has it raised, one exactly at the mean keeps it. ``load`` (E,)
    is the step's tokens per expert over the **global** batch, so every rank makes the same
    update. bias (E,) float32 -> new (E,) float32; no graph.
    """
    load = load.detach().to(bias.dtype)
    return bias.detach() + rate * torch.sign(load.mean() - load)


# dtypes F.grouped_mm accepts (on the CPU float32, bfloat16 and float16; not float64)
GROUPED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# on the CPU, from this many assignments per expert on (on average) the looped kernel is the
# faster one: its per-expert Python cost is spread over enough rows (benchmarks/bench_moe.py,
# TRIED, has the measurements)
CPU_LOOP_ROWS = 1024


class SwiGLUExperts(nn.Module):
    """E SwiGLU experts, ``down(silu(x W_gate) * (x W_up))``, as three stacked 3-D weights.

    Stacked weights (rather than a ModuleList of experts) let one grouped matmul serve every
    expert and keep the parameters contiguous.

    The dispatch sorts the N*K assignments by expert, gathers the tokens in that order, runs
    the experts' FFN on the contiguous rows of each expert and scatter-adds the weighted
    outputs back to their tokens. Two kernels compute that FFN, chosen per call by
    :meth:`use_grouped`:

    - grouped (float32, bfloat16, float16): each of the three matmuls is one
      ``F.grouped_mm`` over all experts, the expert boundaries given as a tensor of offsets:
      no host sync, no Python loop over experts, 3 autograd nodes for the matmuls;
    - looped (float64, which ``F.grouped_mm`` rejects, and on the CPU from
      :data:`CPU_LOOP_ROWS` assignments per expert on): a Python loop over the experts that
      received tokens, one contiguous matmul each (it needs the counts on the host).

    Both run the same matmuls on the same rows; ``tests/model/test_moe.py`` checks that they agree,
    and the float64 gradient checks go through the looped kernel.
    """

    def __init__(self, num_experts: int, d_model: int, hidden: int):
        super().__init__()
        self.num_experts = num_experts
        self.w_gate = nn.Parameter(torch.empty(num_experts, d_model, hidden))  # (E, D, H)
        self.w_up = nn.Parameter(torch.empty(num_experts, d_model, hidden))  # (E, D, H)
        self.w_down = nn.Parameter(torch.empty(num_experts, hidden, d_model))  # (E, H, D)
        for w, fan_in in ((self.w_gate, d_model), (self.w_up, d_model), (self.w_down, hidden)):
            nn.init.normal_(w, std=1.0 / math.sqrt(fan_in))
        # None: choose per call (use_grouped); True/False: force a kernel (tests, ablations)
        self.grouped: bool | None = None

    def use_grouped(self, dtype: torch.dtype, rows: int = 0, device: str = "cpu") -> bool:
        """Whether a call of ``rows`` assignments (N*K) whose matmuls compute in ``dtype`` on
        ``device`` takes the grouped kernel: ``F.grouped_mm`` takes the dtype, every row of its
        operands starts on a 16-byte boundary (its requirement for 2-byte dtypes), and, on the
        CPU, the experts get fewer than :data:`CPU_LOOP_ROWS` rows each on average."""
        if self.grouped is not None:
            return self.grouped
        d, h = self.w_down.shape[1:]
        if device == "cpu" and rows >= CPU_LOOP_ROWS * self.num_experts:
            return False
        return dtype in GROUPED_DTYPES and (d * dtype.itemsize) % 16 == 0 and (
            h * dtype.itemsize) % 16 == 0

    def forward(self, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
                counts: torch.Tensor | None = None) -> torch.Tensor:
        """Weighted sum over each token's K experts. x (N, D), ids/weights (N, K) -> (N, D).

        ``counts`` (E,) int64: assignments per expert, ``bincount(ids)``, when the caller has it
        already (:class:`MixtureOfExperts` counts once for the dispatch, the aux loss and the load).
        """
        n, k = ids.shape
        flat_ids = ids.reshape(-1)  # (N*K,)
        if counts is None:
            counts = torch.bincount(flat_ids, minlength=self.num_experts)  # (E,)
        # assignments grouped by expert; within an expert in any fixed order: the rows are
        # independent, and a token's K outputs still reach it in expert order
        order = torch.sort(flat_ids).indices  # (N*K,)
        token_of = order // k if k > 1 else order  # (N*K,) the token of each sorted assignment
        # index_select, not x[token_of]: its backward is one index_add, where indexing's is an
        # accumulating index_put
        xs = x.index_select(0, token_of)  # (N*K, D) tokens in expert order
        device = x.device.type
        autocast = torch.is_autocast_enabled(device)
        # under autocast the looped kernel's matmuls run in the autocast dtype; F.grouped_mm
        # is not on autocast's list, so the grouped kernel casts its operands itself
        dtype = torch.get_autocast_dtype(device) if autocast else x.dtype
        if self.use_grouped(dtype, flat_ids.numel(), device):
            ys = self._grouped(xs.to(dtype), counts, dtype)  # (N*K, D)
        else:
            ys = self._looped(xs, counts)  # (N*K, D)
        w_sorted = weights.reshape(-1).index_select(0, order)  # (N*K,) same reason as xs
        ys = ys * w_sorted.unsqueeze(-1).to(ys.dtype)  # (N*K, D)
        # index_add_ into a fresh zero tensor: nothing autograd saved is written into
        return ys.new_zeros(n, x.shape[-1]).index_add_(0, token_of, ys)  # (N, D)

    def _grouped(self, xs: torch.Tensor, counts: torch.Tensor,
                 dtype: torch.dtype) -> torch.Tensor:
        """The grouped kernel: xs (N*K, D) sorted by expert, counts (E,) -> (N*K, D)."""
        offsets = torch.cumsum(counts, 0, dtype=torch.int32)  # (E,) end of each expert's rows
        w_gate, w_up, w_down = (w.to(dtype) for w in (self.w_gate, self.w_up, self.w_down))
        h = F.silu(F.grouped_mm(xs, w_gate, offs=offsets)) * F.grouped_mm(
            xs, w_up, offs=offsets)  # (N*K, H)
        return F.grouped_mm(h, w_down, offs=offsets)  # (N*K, D)

    def _looped(self, xs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """The looped kernel: xs (N*K, D) sorted by expert, counts (E,) -> (N*K, D)."""
        sizes = counts.tolist()  # host sync: the split sizes
        # unbind once, not w_gate[e] per expert: the backward of each select would write a
        # zero-filled (E, D, H) gradient, E times per weight; unbind's backward stacks once
        w_gate, w_up, w_down = self.w_gate.unbind(0), self.w_up.unbind(0), self.w_down.unbind(0)
        outs = []
        for e, xs_e in enumerate(torch.split(xs, sizes)):  # loop over experts, not tokens
            if xs_e.shape[0] == 0:
                continue  # an expert with no tokens costs nothing
            h = F.silu(xs_e @ w_gate[e]) * (xs_e @ w_up[e])  # (n_e, H)
            outs.append(h @ w_down[e])  # (n_e, D)
        return torch.cat(outs, dim=0)  # (N*K, D)


def load_balancing_loss(probs: torch.Tensor, ids: torch.Tensor, num_experts: int,
                        counts: torch.Tensor | None = None) -> torch.Tensor:
    """Switch Transformer load-balancing loss ``E * sum_i f_i * P_i`` (Fedus et al. 2021, eq. 4-6).

    ``f_i`` is the fraction of the N*K routing assignments that went to expert i (a count, no
    gradient) and ``P_i`` the mean router probability of expert i (differentiable). The product
    is smallest when both are uniform; it equals 1.0 at perfect balance for any K. (The
    ``transformers`` Mixtral version sums f over the K slots, which is K times this value.)
    probs (N, E) float32, ids (N, K), optional ``counts`` (E,) ``bincount(ids)`` -> scalar.
    """
    if counts is None:
        counts = torch.bincount(ids.reshape(-1), minlength=num_experts)  # (E,)
    # E * sum_i (counts_i / (N*K)) * (sum_n p_ni / N): one dot product of two (E,) vectors
    scale = num_experts / (ids.numel() * probs.shape[0])
    return torch.dot(counts.to(probs.dtype), probs.sum(dim=0)) * scale


def router_z_loss(logits: torch.Tensor, probs: torch.Tensor | None = None,
                  top: torch.Tensor | None = None) -> torch.Tensor:
    """ST-MoE router z-loss ``mean_n logsumexp(logits_n)^2`` (Zoph et al. 2022, eq. 5).

    Keeps router logits small so the float32 softmax stays well conditioned. logits (N, E).

    With the router's softmax ``probs`` (N, E) and each token's most probable expert ``top``
    (N, 1) int64, the log-sum-exp is read off the softmax instead of computed again:
    ``p_j = exp(l_j - lse)``, so ``lse = l_j - log p_j`` for any expert j. At the top-1 expert
    ``p_j >= 1/E``, so the log is well conditioned and the value agrees with
    ``torch.logsumexp`` to float32 rounding. Its gradient is ``probs`` (the derivative of
    ``l_j - log p_j`` with respect to the logits), through the softmax's own backward, so no
    second pass over the (N, E) logits runs in the forward or the backward.
    """
    if probs is None or top is None:
        lse = torch.logsumexp(at_least_fp32(logits), dim=-1)  # (N,)
    else:
        lse = (at_least_fp32(logits).gather(-1, top)
               - probs.gather(-1, top).log()).squeeze(-1)  # (N, 1) -> (N,)
    return torch.dot(lse, lse) / lse.numel()


def load_statistics(tokens_per_expert: torch.Tensor) -> dict[str, float]:
    """Balance figures of one routing: the dashboard's and the tests' vocabulary.

    - ``cv``: coefficient of variation std/mean of tokens per expert (0 = perfect balance).
    - ``entropy``: entropy of the expert fractions divided by log E (1 = perfect balance).
    - ``max_over_mean``: the busiest expert's load over the mean load (1 = perfect balance).
    - ``dead``: experts that got no token.

    More figures of the same load: :func:`load_percentiles`.
    """
    counts = tokens_per_expert.detach().double().cpu()  # host sync: telemetry only
    e = counts.numel()
    total = counts.sum().item()
    frac = counts / total if total > 0 else torch.full_like(counts, 1.0 / e)
    nz = frac[frac > 0]
    entropy = float(-(nz * nz.log()).sum() / math.log(e)) if e > 1 else 1.0
    mean = counts.mean().item()
    return {
        "cv": float(counts.std(unbiased=False) / mean) if mean > 0 else 0.0,
        "entropy": entropy,
        "max_over_mean": float(counts.max() / mean) if mean > 0 else 0.0,
        "dead": int((counts == 0).sum()),
    }


def load_percentiles(tokens_per_expert: torch.Tensor) -> dict[str, float]:
    """MaxVio and the spread of one routing's expert loads (0 everywhere with no tokens).

    - ``max_vio``: MaxVio, ``max load / mean load - 1`` (0 = perfect balance), the imbalance
      measure of Wang et al. 2024 (arXiv:2408.15664), here of one step's batch.
    - ``load_min``, ``load_p50``, ``load_p90``, ``load_p99``: percentiles of the E experts'
      loads (linear interpolation, as ``torch.quantile``) in units of the mean load (1 =
      perfect balance); the maximum is ``max_over_mean`` of :func:`load_statistics`.
    """
    counts = tokens_per_expert.detach().double().cpu()  # host sync: telemetry only
    mean = counts.mean().item()
    if mean <= 0:
        return dict.fromkeys(("max_vio", "load_min", "load_p50", "load_p90", "load_p99"), 0.0)
    rel = counts / mean  # (E,) load in units of the mean load
    q = torch.quantile(rel, torch.tensor([0.5, 0.9, 0.99], dtype=rel.dtype)).tolist()
    return {"max_vio": float(rel.max()) - 1.0, "load_min": float(rel.min()),
            "load_p50": q[0], "load_p90": q[1], "load_p99": q[2]}


class MixtureOfExperts(nn.Module):
    """The MoE block: a :class:`TopKRouter` (``.router``) sends each token to its top-k
    :class:`SwiGLUExperts` (``.experts``), whose outputs are mixed with the router's weights.

    Load counts are written into a non-persistent buffer under ``no_grad`` in training mode
    ("the model counts, the loop writes"): :meth:`load_stats` reads them for the logger. The
    forward counts this process's tokens and stages them; no collective runs here. A trainer
    that trains data-parallel sums the staged counts over the ranks (with every other staged
    statistic, in one all-reduce) and :meth:`commit` then writes the global load.

    ``balance`` says how the load is balanced: ``"aux"`` (the objective adds the aux loss,
    :meth:`mahiax.model.hybrid.Encoded.router_loss`), ``"none"``, or ``"bias"``: a per-expert bias
    ``expert_bias`` (E,) float32, a persistent buffer (checkpointed, not a parameter), is added
    to the routing scores for the top-k selection only (:func:`biased_top_k`) and moved by
    :func:`bias_update` with ``bias_update_rate`` in :meth:`commit`, from the load of the
    global batch, outside autograd: every rank holds the same bias.
    """

    tokens_per_expert: torch.Tensor
    expert_bias: torch.Tensor | None

    def __init__(self, d_model: int, num_experts: int, top_k: int, expert_hidden: int,
                 balance: str = "aux", bias_update_rate: float = 1e-3):
        super().__init__()
        if not 0 < top_k <= num_experts:
            raise ValueError(f"top_k={top_k} must lie in 1 .. num_experts ({num_experts})")
        if balance not in BALANCES:
            raise ValueError(f"balance={balance!r} must be one of {' | '.join(BALANCES)}")
        self.num_experts, self.top_k = num_experts, top_k
        self.balance, self.bias_update_rate = balance, bias_update_rate
        self.router = TopKRouter(d_model, num_experts, top_k)
        self.experts = SwiGLUExperts(num_experts, d_model, expert_hidden)
        self.register_buffer("tokens_per_expert", torch.zeros(num_experts), persistent=False)
        if balance == "bias":
            self.register_buffer("expert_bias", torch.zeros(num_experts))  # (E,) float32
        else:
            self.expert_bias = None
        # share of the last step's N*K top-k choices the bias changed (bias only)
        self.bias_flipped = 0.0
        # this step's statistics, sums over this process's tokens (see HybridEfficientModel)
        self.staged: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> MoEOutput:
        shape = x.shape  # (..., D)
        flat = x.reshape(-1, shape[-1])  # (N, D)
        r = self.router(flat, self.expert_bias)
        # count once: the dispatch, the aux loss and the logged load share one bincount
        counts = torch.bincount(r.ids.reshape(-1), minlength=self.num_experts)  # (E,) int64
        y = self.experts(flat, r.ids, r.weights, counts).to(x.dtype)  # (N, D)
        aux = load_balancing_loss(r.probs, r.ids, self.num_experts, counts)  # this rank's counts
        # the top-1 expert of the unbiased probabilities: topk's first column, or, when a
        # selection bias chose the ids, the argmax of the probabilities
        top = r.ids[:, :1] if self.expert_bias is None else r.probs.detach().argmax(
            -1, keepdim=True)  # (N, 1)
        z = router_z_loss(r.logits, r.probs, top)
        if self.training:  # counts are integers: no graph to keep out of
            load = counts.to(self.tokens_per_expert.dtype)  # (E,) this process's tokens
            self.tokens_per_expert = load
            self.staged = {"tokens_per_expert": load}
            if self.expert_bias is not None:
                self.staged["bias_flipped"] = flipped_choices(r.probs, r.ids, self.top_k)
        return MoEOutput(hidden=y.reshape(shape), aux_loss=aux, z_loss=z, router=r)

    @torch.no_grad()
    def commit(self) -> None:
        """Write the staged load (summed over ranks when a trainer reduced it) and, with
        ``balance="bias"``, move the bias by :func:`bias_update` from that global load; a
        no-op if nothing was staged."""
        if "tokens_per_expert" not in self.staged:
            return
        load = self.tokens_per_expert = self.staged.pop("tokens_per_expert")  # (E,)
        flipped = self.staged.pop("bias_flipped", None)
        if self.expert_bias is not None:
            choices = float(load.sum())  # N*K over the global batch
            self.bias_flipped = float(flipped) / choices if flipped is not None and choices else 0.0
            self.expert_bias.copy_(bias_update(self.expert_bias, load, self.bias_update_rate))

    def load_stats(self) -> dict[str, object]:
        """Tokens per expert, fractions and balance figures of the last training forward;
        with ``balance="bias"`` also the bias (after this step's update) and the share of
        top-k choices it changed."""
        counts = self.tokens_per_expert.detach().cpu()
        total = float(counts.sum())
        stats: dict[str, object] = {
            "tokens_per_expert": counts.tolist(),
            "fraction": (counts / total).tolist() if total else [0.0] * self.num_experts,
        }
        stats.update(load_statistics(counts))
        stats.update(load_percentiles(counts))
        if self.expert_bias is not None:
            stats["bias"] = self.expert_bias.detach().cpu().tolist()
            stats["bias_flipped"] = self.bias_flipped
        return stats


def flipped_choices(probs: torch.Tensor, ids: torch.Tensor, k: int) -> torch.Tensor:
    """How many of the N*K top-k choices ``ids`` (N, K) are not in the unbiased top-k of
    ``probs`` (N, E): the choices a selection bias changed. () float32 count, no graph
    (a sum, so it adds up over ranks)."""
    with torch.no_grad():
        plain = torch.topk(probs, k, dim=-1).indices  # (N, K) unbiased choice
        chosen = torch.zeros_like(probs, dtype=torch.bool).scatter_(-1, ids, True)  # (N, E)
        unbiased = torch.zeros_like(chosen).scatter_(-1, plain, True)  # (N, E)
        return (chosen & ~unbiased).sum().to(torch.float32)


# The summary's name for the whole block (section 1, "index out of range in self in
# ExpertRouter"): lesson 01 and the catalog's expert-index entry quote it.
ExpertRouter = MixtureOfExperts
