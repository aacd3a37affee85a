"""MoE layer, forward + backward: the summary's loops, our dispatch, Mixtral's block, the floor.

Shape legend: N tokens (B * T), D ``d_model``, E ``num_experts``, K ``top_k``, H
``expert_hidden``.

Every arm gets the same router and expert weights, the same input (B, T, D) and the same
cotangent, and computes the output and the gradients of the input and of every weight
(float32, train mode):

- ``per-token loop``: the original pattern, a Python loop over tokens calling
  ``experts[id]`` once per token and slot (ids made Python ints, the smallest change that
  lets ``experts[idx]`` run; the original's tensor ``idx`` raises ``TypeError``);
- ``summary fix``: ``torch.unique`` + ``int(u.item())``, the catalog's ``SummaryExpertRouter``;
- ``ours``: :class:`mahiax.model.moe.MixtureOfExperts` (sort once; float32 below 1024 assignments
  per expert on the CPU: one ``F.grouped_mm`` over all experts per matmul, else one
  contiguous matmul per expert);
- ``mixtral eager``: ``transformers``' ``MixtralSparseMoeBlock`` as built directly (its
  per-expert loop); ``mixtral grouped_mm``: the experts implementation ``from_pretrained``
  picks by default;
- ``floor``: one dense SwiGLU FFN over K*N rows with plain matmuls: the experts' FLOPs with
  no routing, no gather and no scatter.

Both original-style arms hold each expert as its own module with its own weights (the
original's ``ModuleList`` layout). The catalog's experts are views on the stacked weights,
whose backward writes a zero-filled gradient of all E experts for every expert call: a cost
the original never paid, which would flatter our ratio.

Why the teaching goal is missed and what was tried against it: :data:`WHY` and :data:`TRIED`
(printed under the tables when a goal is missed).

Method: one process; in each round every arm runs once, in an order rotated round by round,
so machine noise hits all arms alike; each ratio to the floor is taken within its round, then
the median and min-max of those ratios are reported. The per-token loop is slow, so it runs in
a few rounds only (its ratios are still paired with the floor of the same round).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mahiax.bugs.expert_index import SummaryExpertRouter, _OriginalRouter
from mahiax.config import MahiaConfig, medium, teaching
from mahiax.model.moe import MixtureOfExperts, SwiGLUExperts

FLOOR = "floor"
OURS = "ours"
PER_TOKEN = "per-token loop"
SUMMARY = "summary fix"
MIXTRAL = "mixtral eager"
MIXTRAL_GROUPED = "mixtral grouped_mm"


@dataclass(frozen=True, kw_only=True)
class Size:
    """One benchmarked shape of the MoE layer."""

    name: str
    batch: int  # B
    seq: int  # T; N = B * T tokens
    d_model: int  # D
    hidden: int  # H
    experts: int  # E
    top_k: int  # K

    @classmethod
    def of(cls, name: str, c: MahiaConfig) -> Size:
        """The MoE layer's shape in a model built from ``c``."""
        return cls(name=name, batch=c.batch_size, seq=c.seq_len, d_model=c.d_model,
                   hidden=c.expert_hidden, experts=c.num_experts, top_k=c.top_k)

    @property
    def tokens(self) -> int:
        return self.batch * self.seq

    def label(self) -> str:
        return (f"{self.name}: {self.tokens} tokens, D={self.d_model}, H={self.hidden}, "
                f"E={self.experts}, K={self.top_k}")


# Goals of issue 7: the largest allowed ratio to the floor, the smallest speed-up over the
# Mixtral block, the smallest speed-up over the per-token loop (None: no goal).
GOALS: dict[str, dict[str, float | None]] = {
    "teaching": {"floor": 1.5, "mixtral": 1.5, "per_token": None},
    "medium": {"floor": 1.10, "mixtral": 1.0, "per_token": 50.0},
}


# --- the original's layout and its per-token loop ---------------------------------------


class _SeparateExpert(nn.Module):
    """One SwiGLU expert with its own weights, as the original's ``ModuleList`` held them."""

    def __init__(self, experts: SwiGLUExperts, e: int):
        super().__init__()
        self.w_gate = nn.Parameter(experts.w_gate[e].detach().clone())  # (D, H)
        self.w_up = nn.Parameter(experts.w_up[e].detach().clone())  # (D, H)
        self.w_down = nn.Parameter(experts.w_down[e].detach().clone())  # (H, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (F.silu(x @ self.w_gate) * (x @ self.w_up)) @ self.w_down  # (..., D)


class _OriginalLayout(_OriginalRouter):
    """The catalog's original router with experts as separate modules (see module docstring).

    The separate experts copy the stacked weights the first time they are asked for: load the
    weights first, then call :meth:`expert_list`.
    """

    def expert_list(self) -> nn.ModuleList:
        if "_separate" not in self.__dict__:  # kept out of _modules: not a registered child
            self.__dict__["_separate"] = nn.ModuleList(
                _SeparateExpert(self.experts, e) for e in range(self.num_experts)
            )
        return self.__dict__["_separate"]


class PerTokenRouter(_OriginalLayout):
    """The original per-token loop: for each token, for each slot, ``experts[id](x_n)``.

    Given its best chance: one host sync for all ids (not one ``int()`` per id), and rows and
    weights split with one ``unbind`` each instead of one indexing op per token.
    """

    def combine(self, flat: torch.Tensor, ids: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        experts = self.expert_list()
        rows = flat.unbind(0)  # N x (D,)
        weights = w.to(flat.dtype).unbind(0)  # N x (K,)
        out = []
        for x_n, w_n, ids_n in zip(rows, weights, ids.tolist(), strict=True):  # host sync
            y = w_n[0] * experts[ids_n[0]](x_n)  # (D,)
            for j in range(1, len(ids_n)):
                y = y + w_n[j] * experts[ids_n[j]](x_n)
            out.append(y)
        return torch.stack(out)  # (N, D)


class SummaryLoopRouter(_OriginalLayout, SummaryExpertRouter):
    """The summary's ``torch.unique`` + ``int(u.item())`` loop (the catalog's code) on the
    original's layout."""


def original_style(cls: type[_OriginalLayout], moe: MixtureOfExperts) -> _OriginalLayout:
    """A ``cls`` router holding ``moe``'s weights (router and experts)."""
    s = moe.router.weight.shape  # (E, D)
    router = cls(s[1], s[0], moe.top_k, moe.experts.w_gate.shape[-1])
    router.load_state_dict(moe.state_dict())
    router.expert_list()  # copy the experts now, from the loaded weights
    return router.train(moe.training)


# --- the peer and the floor -------------------------------------------------------------


def mixtral_block(moe: MixtureOfExperts, implementation: str = "eager") -> nn.Module:
    """A ``transformers`` Mixtral sparse MoE block holding ``moe``'s weights.

    The mapping (``tests/model/test_moe.py`` checks it): the router ``(E, D)`` is
    ``gate.weight`` as is; ``gate_up_proj`` (E, 2H, D) stacks the transposed gate and up
    weights; ``down_proj`` (E, D, H) is the transposed down weight.
    """
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    e, d = moe.router.weight.shape
    ex = moe.experts
    config = MixtralConfig(
        hidden_size=d, intermediate_size=ex.w_gate.shape[-1], num_local_experts=e,
        num_experts_per_tok=moe.top_k, router_jitter_noise=0.0,
        experts_implementation=implementation,
    )
    block = MixtralSparseMoeBlock(config).train(moe.training)
    with torch.no_grad():
        block.gate.weight.copy_(moe.router.weight)
        block.experts.gate_up_proj.copy_(
            torch.cat([ex.w_gate.transpose(1, 2), ex.w_up.transpose(1, 2)], dim=1)
        )
        block.experts.down_proj.copy_(ex.w_down.transpose(1, 2))
    return block


class DenseSwiGLU(nn.Module):
    """The floor: one SwiGLU FFN ``down(silu(x W_gate) * (x W_up))`` with plain matmuls."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.w_gate = nn.Parameter(torch.randn(d_model, hidden) / d_model**0.5)  # (D, H)
        self.w_up = nn.Parameter(torch.randn(d_model, hidden) / d_model**0.5)  # (D, H)
        self.w_down = nn.Parameter(torch.randn(hidden, d_model) / hidden**0.5)  # (H, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (F.silu(x @ self.w_gate) * (x @ self.w_up)) @ self.w_down  # (K*N, D)


# --- arms -------------------------------------------------------------------------------


class Arm:
    """Forward + backward of one implementation on its own copy of the input.

    ``__call__`` clears the gradients, runs ``forward(x)`` and backpropagates the fixed
    cotangent; afterwards ``out`` and ``x.grad`` hold this call's results.
    """

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor],
                 params: list[torch.Tensor], x: torch.Tensor, cotangent: torch.Tensor):
        self.forward, self.params = forward, params
        self.x = x.detach().clone().requires_grad_(True)
        self.cotangent = cotangent
        self.out: torch.Tensor | None = None

    def __call__(self) -> None:
        for p in self.params:
            p.grad = None
        self.x.grad = None
        out = self.forward(self.x)
        out.backward(self.cotangent)
        self.out = out.detach()


def build_arms(size: Size, seed: int = 0, names: list[str] | None = None) -> dict[str, Arm]:
    """Every arm of ``size`` with identical weights, input and cotangent (``names``: a subset)."""
    torch.manual_seed(seed)
    moe = MixtureOfExperts(size.d_model, size.experts, size.top_k, size.hidden).train()
    x = torch.randn(size.batch, size.seq, size.d_model)  # (B, T, D)
    cot = torch.randn(size.batch, size.seq, size.d_model)  # (B, T, D)
    floor = DenseSwiGLU(size.d_model, size.hidden)
    rows = x.reshape(-1, size.d_model).repeat_interleave(size.top_k, 0)  # (K*N, D)
    rows_cot = cot.reshape(-1, size.d_model).repeat_interleave(size.top_k, 0)  # (K*N, D)

    def hidden_of(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda t: module(t).hidden

    def original(cls: type[_OriginalLayout]) -> Arm:
        r = original_style(cls, moe)
        params = list(r.parameters()) + list(r.expert_list().parameters())
        return Arm(hidden_of(r), params, x, cot)

    makers: dict[str, Callable[[], Arm]] = {
        FLOOR: lambda: Arm(floor, list(floor.parameters()), rows, rows_cot),
        OURS: lambda: Arm(hidden_of(moe), list(moe.parameters()), x, cot),
        MIXTRAL: lambda: _mixtral_arm(moe, "eager", x, cot),
        MIXTRAL_GROUPED: lambda: _mixtral_arm(moe, "grouped_mm", x, cot),
        SUMMARY: lambda: original(SummaryLoopRouter),
        PER_TOKEN: lambda: original(PerTokenRouter),
    }
    return {n: makers[n]() for n in (names or list(makers))}


def _mixtral_arm(moe: MixtureOfExperts, impl: str, x: torch.Tensor, cot: torch.Tensor) -> Arm:
    block = mixtral_block(moe, impl)
    return Arm(block, list(block.parameters()), x, cot)


def agreement(arms: dict[str, Arm], reference: str = OURS) -> dict[str, dict[str, float]]:
    """Largest |difference| of each arm's output and input gradient from ``reference``'s.

    Call after every arm has run at least once. The floor computes something else: skipped.
    """
    ref = arms[reference]
    assert ref.out is not None and ref.x.grad is not None
    found = {}
    for name, arm in arms.items():
        if name in (reference, FLOOR):
            continue
        assert arm.out is not None and arm.x.grad is not None, f"{name} has not run"
        found[name] = {
            "output": float((arm.out - ref.out).abs().max()),
            "input_grad": float((arm.x.grad - ref.x.grad).abs().max()),
        }
    return found


# --- timing -----------------------------------------------------------------------------


def interleaved(arms: dict[str, Callable[[], None]], rounds: int,
                every: dict[str, int] | None = None) -> dict[str, dict[int, float]]:
    """Seconds of each arm in each round it ran; arms named in ``every`` run every n-th round.

    The order of the arms is rotated each round, so none always runs first (cold caches) or
    right after the same neighbour.
    """
    every = every or {}
    names = list(arms)
    times: dict[str, dict[int, float]] = {n: {} for n in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            if r % every.get(name, 1):
                continue
            t0 = time.perf_counter()
            arms[name]()
            times[name][r] = time.perf_counter() - t0
    return times


def paired_ratios(times: dict[int, float], base: dict[int, float]) -> list[float]:
    """``times[r] / base[r]`` for every round ``r`` both ran."""
    return [times[r] / base[r] for r in sorted(times) if r in base]


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def measure(size: Size, rounds: int, per_token_every: int, warmup: int = 1,
            names: list[str] | None = None) -> dict:
    """Time every arm of ``size`` in interleaved rounds; figures per arm and pairwise ratios."""
    arms = build_arms(size, names=names)
    for arm in arms.values():
        for _ in range(warmup):
            arm()
    agree = agreement(arms) if OURS in arms else {}
    times = interleaved(dict(arms), rounds, {PER_TOKEN: per_token_every})
    per_arm: dict[str, dict] = {}
    for name, t in times.items():
        ms = [1e3 * v for v in t.values()]
        entry: dict = {"runs": len(ms), "ms": _spread(ms)}
        if name != FLOOR:
            entry["over_floor"] = _spread(paired_ratios(t, times[FLOOR]))
        if OURS in times and name not in (OURS, FLOOR):
            entry["over_ours"] = _spread(paired_ratios(t, times[OURS]))  # speed-up of ours
        if name in agree:
            entry["max_abs_diff_vs_ours"] = agree[name]
        per_arm[name] = entry
    return {"size": size.__dict__ | {"tokens": size.tokens}, "label": size.label(),
            "rounds": rounds, "arms": per_arm}


def judge(name: str, figures: dict) -> dict[str, dict]:
    """The goals of size ``name`` against the measured medians of the paired ratios."""
    goals, arms = GOALS[name], figures["arms"]
    checks: dict[str, dict] = {}
    ours_floor = arms[OURS]["over_floor"]["median"]
    checks["ours/floor"] = {"value": ours_floor, "goal": f"<= {goals['floor']}",
                            "met": ours_floor <= goals["floor"]}
    for peer in (MIXTRAL, MIXTRAL_GROUPED):
        if peer in arms:
            speedup = arms[peer]["over_ours"]["median"]
            checks[f"{peer}/ours"] = {"value": speedup, "goal": f">= {goals['mixtral']}",
                                      "met": speedup >= goals["mixtral"]}
    if goals["per_token"] is not None and PER_TOKEN in arms:
        speedup = arms[PER_TOKEN]["over_ours"]["median"]
        checks["per-token/ours"] = {"value": speedup, "goal": f">= {goals['per_token']}",
                                    "met": speedup >= goals["per_token"]}
    return checks


def run(rounds: dict[str, int] | None = None, per_token_every: dict[str, int] | None = None,
        sizes: dict[str, Size] | None = None) -> dict:
    """Both sizes of issue 7; ``met`` is True when every goal of both sizes is met."""
    sizes = sizes or {"teaching": Size.of("teaching", teaching()),
                      "medium": Size.of("medium", medium())}
    rounds = rounds or {"teaching": 30, "medium": 12}
    per_token_every = per_token_every or {"teaching": 3, "medium": 6}
    result: dict = {"name": "MoE layer, forward + backward", "threads": torch.get_num_threads(),
                    "sizes": {}}
    for name, size in sizes.items():
        figures = measure(size, rounds[name], per_token_every[name])
        if name in GOALS:
            figures["goals"] = judge(name, figures)
        result["sizes"][name] = figures
    result["met"] = all(g["met"] for s in result["sizes"].values()
                        for g in s.get("goals", {}).values())
    return result


def _ratio(s: dict | None) -> str:
    return "-" if s is None else f"{s['median']:.2f} ({s['min']:.2f}-{s['max']:.2f})"


def _missed_by(check: dict) -> str:
    """How far a missed goal is off, as a percentage of its target."""
    target = float(check["goal"].split()[-1])
    return f"off by {abs(check['value'] / target - 1):.0%}"


# Why the teaching goal is missed and what was tried against it: measured once (paired rounds
# of these arms or of the forced-routing matrix's, torch.profiler, micro-timings of single ops;
# this lab's shared 2-core CPU, the timing runs under flock /tmp/cpu.lock), not every run; the
# tables above are measured every run.
WHY = (
    "Why the teaching ratio stays above 1.5 at 2 threads (medians 1.77 and 2.07 in two "
    "30-round runs, 1.76-2.15 in four more on a busy machine, from 2.51 with the per-expert "
    "loop; 1.42-1.51 at 1 thread in the "
    "forced-routing matrix at 1024 tokens): (1) the matmuls. On the CPU F.grouped_mm runs "
    "one matmul per expert, and a 256-row one stays on one thread where the floor's "
    "2048-row matmul uses both: x @ W_gate "
    "for 2048 rows in 8 groups takes 356 us grouped and 197 us as one bmm at 2 threads (370 "
    "vs 358 us at 1 thread). (2) the router: the float32 softmax over a last dimension of 8 "
    "takes ~150 us at 1 thread and ~76 us at 2 for (1024, 8) (this CPU kernel handles a row "
    "shorter than one vector element by element; 19 us on the (8, 1024) layout, which rounds "
    "differently), top-k ~28 us, and their backward; router forward + backward is ~0.2 of the "
    "floor. The router's weights are held to Mixtral's at 1e-7, which rules out a softmax "
    "that rounds differently. (3) the dispatch: sort, the gathers of the N*K rows and "
    "weights, the weighted scatter-add, and their backward, each a pass over (2048, 64). "
    "Split by paired arms at 2 threads (60 rounds, busy machine): the experts' grouped "
    "matmuls alone (forward + backward on presorted rows) 1.20-1.35 of the floor, with the "
    "dispatch 1.42-1.69, router forward + backward 0.19-0.27, the whole layer 1.72-1.93: the "
    "1.5 goal leaves 0.15-0.30 beside the experts for the router and the dispatch together, "
    "and they take ~0.5. Per op at 2 threads (micro-timings, (1024, 8) router, 2048 "
    "assignments): softmax 86 us, topk 28, sort 16, index_add_ into (1024, 64) 51 (it is the "
    "combine and the backward of the row gather), index_select of the rows 12, the weight "
    "product 10; the router's linear backward runs two matmuls with an 8-wide side (~45 us "
    "each under the profiler)."
)

# Each lever with what it gave: ratios to the floor, medians of paired rounds, beside the
# peer or the variant in the same run (1 thread unless said).
TRIED = (
    "What was tried. Kept: (a) the grouped kernel, F.grouped_mm for the 3 matmuls with offsets "
    "from a cumsum of the counts (no host sync, no Python loop over experts; the loop kept for "
    "float64, which F.grouped_mm rejects, so gradcheck runs it): at 64 teaching tokens "
    "(forced uniform routing) 2.81-2.93 vs the loop's ~5.0, beside Mixtral grouped_mm "
    "2.75-2.93; at 2 threads at the teaching size 1.86 vs the loop's 2.02 (1.89-1.94 for "
    "Mixtral grouped_mm). (b) the loop from 1024 assignments per expert on: at 16,384 "
    "teaching tokens 1.10 vs grouped 1.17, at 4096 1.22 vs 1.27; grouped wins at 1024 (1.44 "
    "vs 1.57) and 2048 (1.34 vs 1.42); equal at the medium size. (c) fewer ops around the "
    "experts: torch.sort instead of a stable argsort (4 vs 4.5 us at 128 ids; the order "
    "within an expert does not matter), index_add_ into fresh zeros (out-of-place index_add "
    "copies the zeros), the aux loss as one dot product and the z-loss as lse.lse/N, the "
    "load counts written without a no_grad block: the balance losses and load counts had "
    "cost ~0.1 ms of ours' ~1.25 ms at 64 tokens (aux loss 18 us, z-loss 20 us, counts 10 us "
    "alone). (d) the z-loss read off the router's softmax, lse = l_j - log p_j at the top-1 "
    "expert j (p_j >= 1/E), instead of a second logsumexp over the (N, E) logits: 21 vs 39 "
    "us for the z-loss forward at (1024, 8), 2 threads; its gradient is probs through the "
    "softmax's backward, so training also drops the logsumexp backward. Paired against the "
    "code before it (150 rounds, 2 threads, busy machine): hidden-only forward + backward "
    "(this benchmark's arm) 0.995 of before, with the aux and z losses in the backward "
    "0.977. Value: per row within 4 ulp of max(|lse|, max |logit|) of torch.logsumexp over "
    "logit scales 0.01-30, shifts -20..5, E 2-64 (the logsumexp itself is as far from "
    "float64); the z-loss relative difference 7.5e-8 at the teaching router, at most "
    "2.3e-6 where lse is near 0 and both forms cancel. "
    "Not kept: a custom autograd Function for the whole grouped dispatch (one node, "
    "backward written out with in-place temporaries; bit-identical): 3.02 vs 2.81 for the "
    "autograd version at 64 tokens, 1.49 vs 1.45 at 1024 (its Python backward costs more "
    "than the nodes it saves). Gate and up fused in one (E, D, 2H) grouped_mm, the weights "
    "concatenated every call: 3.38-3.52 vs Mixtral grouped_mm's 2.87 at 64 tokens; the "
    "concatenation costs what the fusion saves at the teaching size (forward, 128 rows: 92 "
    "vs 92 us) and more at the medium size (1643 vs 1173 us). Per-expert matmuls with out= "
    "into one buffer inside that Function: 1114 vs 909 us for the experts alone at 64 "
    "tokens. A padded (E, C, D) bmm, C the busiest expert's count: 3.12 vs 3.03 at 64 "
    "uniform tokens, 4.52 vs 3.01 one-hot (4x the rows); at 2 threads at the teaching size "
    "1.75 vs grouped 1.86 (bmm splits over both cores), not kept for the extra rows it "
    "computes under skew and a third code path for a 6% gain. Earlier: int32 ids for the "
    "sort, the combine by the inverse permutation, the router softmax on the (E, N) layout "
    "(1.50 vs 1.58, but the router's weights move by 1.2e-7, beyond the 1e-7 tests hold them "
    "to Mixtral's). The row gather as a custom autograd Function whose backward gathers the "
    "rows' gradients by the inverse permutation and adds the K of each token (instead of "
    "index_select's index_add_ backward): 118 vs 89 us forward + backward at 2 threads, "
    "the Python node costs more than the scatter it saves. index_put_ with accumulate for "
    "the combine: 233 vs 48 us for index_add_ (scatter_add_ 46, index_add_ on a transposed "
    "(D, N) output 81). The experts split in two halves of 4, each half's forward and "
    "backward (its own autograd graph, torch.autograd.grad) run in a second Python thread "
    "beside the main one, the ops releasing the GIL: bit-identical, but 4.85 vs 3.0 ms for "
    "the experts alone at the teaching size, 2 threads (floor 2.4 ms); with the worker left "
    "at 2 OpenMP threads its spinning team also slowed the main thread's later ops 3x."
)


def markdown(result: dict) -> str:
    """The result as a Markdown section for benchmarks/results/latest.md."""
    lines = ["### MoE layer, forward + backward", "",
             f"float32, train mode, {result['threads']} threads. Ratios are paired within "
             "each round (median, min-max over rounds); the floor is one dense SwiGLU FFN over "
             "K*N rows.", ""]
    for fig in result["sizes"].values():
        lines += [f"**{fig['label']}** ({fig['rounds']} rounds)", "",
                  "| arm | runs | median ms (min-max) | / floor (min-max) | ours faster by "
                  "(min-max) | max abs diff vs ours (out, grad x) |",
                  "|---|---|---|---|---|---|"]
        for arm, a in fig["arms"].items():
            ms = a["ms"]
            over = a.get("over_floor")
            speed = a.get("over_ours")
            diff = a.get("max_abs_diff_vs_ours")
            lines.append(
                f"| {arm} | {a['runs']} | {ms['median']:.2f} ({ms['min']:.2f}-{ms['max']:.2f}) "
                f"| {_ratio(over)} | {_ratio(speed)} | "
                + (f"{diff['output']:.1e}, {diff['input_grad']:.1e}" if diff else "-") + " |"
            )
        goals = fig.get("goals", {})
        if goals:
            lines += ["", "| goal | measured | target | met |", "|---|---|---|---|"]
            for g, c in goals.items():
                lines.append(f"| {g} | {c['value']:.2f} | {c['goal']} | "
                             f"{'yes' if c['met'] else 'NO, ' + _missed_by(c)} |")
        lines.append("")
    if not result["met"]:
        lines += [WHY, "", TRIED]
    return "\n".join(lines).rstrip()


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
