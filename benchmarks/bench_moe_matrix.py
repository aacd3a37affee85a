"""The MoE layer under forced routings, 64 to 16,384 tokens: ours, Mixtral's block, the floor.

``python -m benchmarks.run_all --only moe_matrix`` (part of ``make bench``); on a GPU,
``benchmarks/gpu_check.py``'s ``moe_matrix`` section calls :func:`run` with ``device``.

Shape legend: N tokens (B * T), D ``d_model``, E ``num_experts``, K ``top_k``, H
``expert_hidden``.

``bench_moe`` races the arms on the routing a freshly initialised router happens to make,
which is close to uniform; a trained router is skewed, and skew is what a grouped dispatch
(and its padding, where it pads) feels. This matrix forces the routing instead, identically
for every arm, and measures forward + backward (output, gradients of the input and of every
weight, float32, train mode) of

- ``ours``: :class:`mahiax.model.moe.MixtureOfExperts`, its whole forward;
- ``mixtral eager`` and ``mixtral grouped_mm``: ``transformers``' ``MixtralSparseMoeBlock``
  with the same weights (:func:`benchmarks.bench_moe.mixtral_block`);
- ``floor``: one dense SwiGLU over K*N rows (:class:`benchmarks.bench_moe.DenseSwiGLU`), the
  experts' FLOPs with no routing at all (so it is the same under every routing);

under four routings of N tokens (:func:`forced_routing`): ``uniform`` (each token's K experts
a uniformly drawn set), ``zipf`` (expert r drawn with probability ~ 1/r^1.2, K distinct),
``one-hot`` (every token's first choice is expert 0) and ``rotating`` (the first choice is a
hotspot expert that moves on every sequence of T tokens).

How the routing is forced: each arm's router module is swapped for a :class:`ForcedRouter`
holding the arm's own router weight. Its logits have the *value* of a fixed (N, E) target
(:func:`target_logits`: the log of the mixing weights at the chosen experts, everything else
lower) and the *gradient* of the router's ``x @ W_r^T`` (a straight-through sum), then the
routing rule both blocks use (float32 softmax, top-k, renormalise) turns them into exactly
the forced ids and weights. The rest of each block's forward runs as is; the router weight
still gets its gradient.

Shapes (:data:`PLAN`): the teaching layer (D=64, H=128, E=8, K=2) at 64 to 16,384 tokens and
the medium one (D=256, H=512) at 64 to 4,096 tokens.

Time: per cell (shape, routing, N), the arms are built afresh, and in each round every arm
runs once, in an order rotated round by round (:func:`benchmarks.bench_moe.interleaved`);
ratios to the floor are paired within a round; median and min-max over rounds. On the CPU
with one intra-op thread by default (see :func:`run`); on CUDA each call is synchronised.

Peak memory of one forward + backward, per arm: the bytes the call allocates beyond what was
live before it, at their highest point. On CUDA that is ``torch.cuda.max_memory_allocated``
after ``reset_peak_memory_stats`` minus ``memory_allocated`` before. On the CPU there is no
allocator statistic, so it is read from ``torch.profiler``'s allocation events
(``profile_memory=True``: every tensor allocation and free with its size, in time order),
summed in order: the same quantity, as tensors see it (not the process RSS; the CPU
allocator's own caching and fragmentation are not in it).

Crossover points (:func:`crossovers`): within a routing, for each pair of arms, the token
counts where the faster of the two changes, judged on the median ratio to the floor; a
difference under 5% counts as a tie.

Goal (:data:`GOAL`, :func:`misses`): ours at least as fast as every peer (the two Mixtral
arms; the floor is no peer) at every row, i.e. every shape, routing and token count. A peer
counts as faster only where its median ratio to the floor is more than :data:`TIE` below
ours, the crossovers' tie. ``met`` is True when no row misses; the markdown names the rows
that do.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import bench_moe as bm
from mahiax.model.moe import MixtureOfExperts, RouterOutput, load_percentiles

ROUTINGS = ("uniform", "zipf", "one-hot", "rotating")
ZIPF_S = 1.2  # expert popularity ~ 1 / rank**ZIPF_S
ARMS = (bm.OURS, bm.MIXTRAL, bm.MIXTRAL_GROUPED, bm.FLOOR)
TIE = 0.05  # two arms within 5% of each other: neither is called faster
GOAL = "ours <= every peer at every row"
HOT = 0  # the one-hot routing's expert


@dataclass(frozen=True, kw_only=True)
class Shape:
    """The MoE layer's shape; the token count varies along the matrix."""

    name: str
    d_model: int  # D
    hidden: int  # H
    experts: int  # E
    top_k: int  # K
    seq: int  # T: tokens per sequence (the rotating hotspot moves every T tokens)

    def size(self, tokens: int) -> bm.Size:
        if tokens % self.seq:
            raise ValueError(f"tokens={tokens} must be a multiple of seq={self.seq}")
        return bm.Size(name=self.name, batch=tokens // self.seq, seq=self.seq,
                       d_model=self.d_model, hidden=self.hidden,
                       experts=self.experts, top_k=self.top_k)

    def label(self) -> str:
        return (f"{self.name}: D={self.d_model}, H={self.hidden}, E={self.experts}, "
                f"K={self.top_k}, T={self.seq}")


TEACHING = Shape(name="teaching", d_model=64, hidden=128, experts=8, top_k=2, seq=32)
MEDIUM = Shape(name="medium", d_model=256, hidden=512, experts=8, top_k=2, seq=64)
# shape -> {tokens: rounds}. Fewer rounds where a call is long; the medium shape stops at
# 4,096 tokens (16,384 would take ~80 s per routing at one thread). About 3.5 minutes in all
# on this lab's 2-core CPU while other work shares it (2 m 44 s with 2 rounds fewer at the
# two largest counts of each shape).
PLAN: dict[Shape, dict[int, int]] = {
    TEACHING: {64: 30, 256: 30, 1024: 12, 4096: 8, 16384: 5},
    MEDIUM: {64: 20, 256: 12, 1024: 8, 4096: 5},
}


# --- the forced routings ---------------------------------------------------------------


def forced_routing(kind: str, tokens: int, experts: int, top_k: int, seq: int,
                   seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The expert ids (N, K) int64, best first, and mixing weights (N, K) float32 (each row
    sums to 1, strictly decreasing) of routing ``kind`` (one of :data:`ROUTINGS`).

    A token's K experts are distinct. ``one-hot`` and ``rotating`` fix the first choice (expert
    :data:`HOT`; expert ``(n // seq) % E`` for token n) and draw the other K-1 uniformly from
    the remaining experts.
    """
    if kind not in ROUTINGS:
        raise ValueError(f"routing {kind!r} is not one of {', '.join(ROUTINGS)}")
    if not 0 < top_k <= experts:
        raise ValueError(f"top_k={top_k} must lie in 1 .. experts ({experts})")
    g = torch.Generator().manual_seed(seed)
    n, e, k = tokens, experts, top_k
    if kind == "uniform":
        ids = torch.rand(n, e, generator=g).argsort(dim=-1)[:, :k]  # (N, K) a uniform K-set
    elif kind == "zipf":
        popularity = 1.0 / torch.arange(1, e + 1, dtype=torch.float64) ** ZIPF_S  # (E,)
        ids = torch.multinomial(popularity.expand(n, e), k, replacement=False, generator=g)
    else:
        if kind == "one-hot":
            hot = torch.full((n,), HOT, dtype=torch.int64)  # (N,)
        else:
            hot = (torch.arange(n) // seq) % e  # (N,) the hotspot of each token's sequence
        draw = torch.rand(n, e, generator=g)  # (N, E)
        draw[torch.arange(n), hot] = -1.0  # the hot expert is never drawn again
        rest = draw.argsort(dim=-1, descending=True)[:, : k - 1]  # (N, K-1)
        ids = torch.cat([hot.unsqueeze(1), rest], dim=1)  # (N, K)
    weights = torch.randn(n, k, generator=g).softmax(dim=-1)  # (N, K)
    weights = weights.sort(dim=-1, descending=True).values  # slot 0 is the first choice
    return ids, weights


def target_logits(ids: torch.Tensor, weights: torch.Tensor, experts: int) -> torch.Tensor:
    """Router logits (N, E) whose softmax, top-k and renormalisation give back exactly ``ids``
    and (to float32 rounding) ``weights``: ``log w`` at the chosen experts, every other
    expert 4 below the smallest of them."""
    log_w = weights.log()  # (N, K)
    low = log_w.min(dim=-1, keepdim=True).values - 4.0  # (N, 1)
    return low.expand(-1, experts).clone().scatter_(-1, ids, log_w)  # (N, E)


class ForcedRouter(nn.Module):
    """An arm's router with its decision forced: logits of the value ``target`` (N, E) and the
    gradient of ``x @ weight^T``, then softmax in float32, top-k, renormalised.

    ``weight`` is the arm's own router weight (E, D) (the same Parameter, so it still gets a
    gradient); ``mixtral`` selects the output of ``MixtralTopKRouter`` (logits, weights, ids)
    instead of ours (:class:`mahiax.model.moe.RouterOutput`).
    """

    def __init__(self, weight: nn.Parameter, target: torch.Tensor, top_k: int, mixtral: bool):
        super().__init__()
        self.weight = weight  # (E, D)
        self.register_buffer("target", target)  # (N, E)
        self.top_k, self.mixtral = top_k, mixtral
        self.last_ids: torch.Tensor | None = None  # (N, K) what the last call routed

    def forward(self, x: torch.Tensor,
                bias: torch.Tensor | None = None) -> RouterOutput | tuple[torch.Tensor, ...]:
        if bias is not None:
            raise ValueError("a forced routing takes no selection bias (balance='bias')")
        scores = F.linear(x.reshape(-1, self.weight.shape[1]), self.weight)  # (N, E)
        if scores.shape != self.target.shape:
            raise ValueError(f"{scores.shape[0]} tokens routed, the forced routing has "
                             f"{self.target.shape[0]}")
        logits = self.target + (scores - scores.detach())  # value: target; gradient: scores'
        probs = torch.softmax(logits.float(), dim=-1)  # (N, E)
        top_p, ids = torch.topk(probs, self.top_k, dim=-1)  # (N, K), (N, K)
        weights = top_p / top_p.sum(dim=-1, keepdim=True)  # (N, K)
        self.last_ids = ids
        if self.mixtral:
            return logits, weights, ids
        return RouterOutput(logits=logits, probs=probs, weights=weights, ids=ids)


def build_forced_arms(size: bm.Size, ids: torch.Tensor, weights: torch.Tensor,
                      names: tuple[str, ...] = ARMS, device: str | torch.device = "cpu",
                      seed: int = 0) -> tuple[dict[str, bm.Arm], dict[str, nn.Module]]:
    """The arms ``names`` of ``size`` with identical weights, input, cotangent and routing
    ``ids``/``weights`` (N, K), on ``device``; also each routed arm's block (for checks)."""
    torch.manual_seed(seed)
    moe = MixtureOfExperts(size.d_model, size.experts, size.top_k, size.hidden).train()
    x = torch.randn(size.batch, size.seq, size.d_model)  # (B, T, D)
    cot = torch.randn(size.batch, size.seq, size.d_model)  # (B, T, D)
    floor = bm.DenseSwiGLU(size.d_model, size.hidden)
    target = target_logits(ids, weights, size.experts)  # (N, E)
    blocks: dict[str, nn.Module] = {}
    for name in names:  # Mixtral's blocks copy moe's weights before its router is swapped
        if name in (bm.MIXTRAL, bm.MIXTRAL_GROUPED):
            block = bm.mixtral_block(moe, "eager" if name == bm.MIXTRAL else "grouped_mm")
            block.gate = ForcedRouter(block.gate.weight, target, size.top_k, mixtral=True)
            blocks[name] = block
    if bm.OURS in names:
        moe.router = ForcedRouter(moe.router.weight, target, size.top_k, mixtral=False)
        blocks[bm.OURS] = moe
    for block in blocks.values():
        block.to(device)  # parameters keep their identity: the Arm's list stays valid
    floor.to(device)
    x, cot = x.to(device), cot.to(device)
    rows = x.reshape(-1, size.d_model).repeat_interleave(size.top_k, 0)  # (K*N, D)
    rows_cot = cot.reshape(-1, size.d_model).repeat_interleave(size.top_k, 0)  # (K*N, D)
    arms: dict[str, bm.Arm] = {}
    for name in names:
        if name == bm.FLOOR:
            arms[name] = bm.Arm(floor, list(floor.parameters()), rows, rows_cot)
        elif name == bm.OURS:
            arms[name] = bm.Arm(lambda t: moe(t).hidden, list(moe.parameters()), x, cot)
        else:
            arms[name] = bm.Arm(blocks[name], list(blocks[name].parameters()), x, cot)
    return arms, blocks


# --- peak memory -----------------------------------------------------------------------


def peak_bytes(calls: dict[str, Callable[[], object]],
               device: str | torch.device = "cpu") -> dict[str, int]:
    """For each of ``calls``, run one after the other: the most bytes of tensors it held at
    once beyond those live before it.

    CUDA: the caching allocator's peak statistic, reset before each call. CPU:
    ``torch.profiler``'s allocation events (``profile_memory=True``: each allocation a
    positive size, each free a negative one; frees of tensors allocated before profiling
    began are not reported), summed in time order within each call's ``record_function``
    range. One profiling session for all calls (each session prints two lines).
    """
    device = torch.device(device)
    if device.type == "cuda":
        found = {}
        for name, call in calls.items():
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            call()
            torch.cuda.synchronize(device)
            found[name] = torch.cuda.max_memory_allocated(device) - base
        return found
    from torch.profiler import DeviceType, ProfilerActivity, profile, record_function

    marks = {f"peak_bytes:{i}": name for i, name in enumerate(calls)}
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for mark, name in marks.items():
            with record_function(mark):
                calls[name]()
    events = prof.profiler.kineto_results.events()
    spans = {marks[e.name()]: (e.start_ns(), e.end_ns()) for e in events if e.name() in marks}
    allocations = sorted((e.start_ns(), e.nbytes()) for e in events
                          if e.name() == "[memory]" and e.device_type() == DeviceType.CPU)
    found = {}
    for name, (t0, t1) in spans.items():
        live = peak = 0
        for t, nbytes in allocations:
            if t0 <= t <= t1:
                live += nbytes
                peak = max(peak, live)
        found[name] = peak
    return found


def _fresh(arm: bm.Arm) -> Callable[[], None]:
    """``arm`` with last call's gradients and output dropped first, outside the measure."""
    for p in arm.params:
        p.grad = None
    arm.x.grad = None
    arm.out = None
    return arm


# --- one cell, the matrix ---------------------------------------------------------------


def _synced(fn: Callable[[], None], device: torch.device) -> Callable[[], None]:
    if device.type != "cuda":
        return fn

    def call() -> None:
        fn()
        torch.cuda.synchronize(device)

    return call


def measure_cell(shape: Shape, routing: str, tokens: int, rounds: int,
                 device: str | torch.device = "cpu", names: tuple[str, ...] = ARMS,
                 warmup: int = 1) -> dict:
    """One cell of the matrix: times, ratios to the floor, peak memory and agreement."""
    device = torch.device(device)
    ids, weights = forced_routing(routing, tokens, shape.experts, shape.top_k, shape.seq)
    arms, blocks = build_forced_arms(shape.size(tokens), ids, weights, names, device)
    failed: dict[str, str] = {}
    for name in list(arms):
        try:
            for _ in range(warmup):
                arms[name]()
        except Exception as e:  # e.g. grouped_mm where this device or build lacks it
            if name in (bm.OURS, bm.FLOOR):
                raise
            failed[name] = f"{type(e).__name__}: {str(e).strip()[:160]}"
            del arms[name]
    routed = {n: b.gate if n != bm.OURS else b.router for n, b in blocks.items() if n in arms}
    same_ids = all(torch.equal(r.last_ids.cpu(), ids) for r in routed.values())
    agree = bm.agreement(arms) if bm.OURS in arms else {}
    times = bm.interleaved({n: _synced(a, device) for n, a in arms.items()}, rounds)
    ours = arms.get(bm.OURS)
    scale = {} if ours is None else {"output": float(ours.out.abs().max()),
                                     "input_grad": float(ours.x.grad.abs().max())}
    cell: dict = {"tokens": tokens, "rounds": rounds, "same_ids": same_ids,
                  "ours_scale": scale,
                  "load": load_percentiles(torch.bincount(ids.reshape(-1),
                                                          minlength=shape.experts)),
                  "failed": failed, "arms": {}}
    peaks = peak_bytes({n: _fresh(a) for n, a in arms.items()}, device)
    for name, t in times.items():
        entry: dict = {"ms": bm._spread([1e3 * v for v in t.values()]),
                       "peak_mib": peaks[name] / 2**20}
        if name != bm.FLOOR and bm.FLOOR in times:
            entry["over_floor"] = bm._spread(bm.paired_ratios(t, times[bm.FLOOR]))
        if name in agree:
            entry["max_abs_diff_vs_ours"] = agree[name]
        cell["arms"][name] = entry
    return cell


def _rank_value(arm: dict) -> float:
    """What the ranking compares: the median ratio to the floor (the floor itself: 1)."""
    return arm["over_floor"]["median"] if "over_floor" in arm else 1.0


def crossovers(table: dict[int, dict[str, float]], tie: float = TIE) -> dict:
    """Where the ranking of the arms changes along the token counts.

    ``table``: {tokens: {arm: value}}, lower is faster (e.g. the median ratio to the floor).
    Returns ``ranking`` {tokens: arms fastest first}, ``ranking_changes`` (the token counts
    whose order differs from the previous count's), and per pair of arms (in the table's
    arm order) the verdict at each count (the faster arm, or ``"tie"`` within ``tie``), the
    counts where it changes (``points``) and a sentence.
    """
    counts = sorted(table)
    arms = list(dict.fromkeys(a for n in counts for a in table[n]))
    ranking = {n: sorted(table[n], key=table[n].__getitem__) for n in counts}
    changes = [b for a, b in itertools.pairwise(counts) if ranking[a] != ranking[b]]
    pairs = {}
    for a, b in itertools.combinations(arms, 2):
        shared = [n for n in counts if a in table[n] and b in table[n]]
        if not shared:
            continue
        verdicts = [_faster(table[n][a], table[n][b], a, b, tie) for n in shared]
        points = [n for n, (v0, v1) in zip(shared[1:], itertools.pairwise(verdicts),
                                           strict=True) if v0 != v1]
        pairs[f"{a} vs {b}"] = {"arms": [a, b], "verdicts": dict(zip(shared, verdicts,
                                                                     strict=True)),
                                "points": points,
                                "sentence": _sentence(a, b, shared, verdicts, tie)}
    return {"ranking": ranking, "ranking_changes": changes, "pairs": pairs}


def _faster(va: float, vb: float, a: str, b: str, tie: float) -> str:
    if va * (1 + tie) < vb:
        return a
    if vb * (1 + tie) < va:
        return b
    return "tie"


def _span(counts: list[int], last: bool, first: bool) -> str:
    if last and not first:
        return f"from {counts[0]} tokens on"
    if len(counts) == 1:
        return f"at {counts[0]} tokens"
    return f"at {counts[0]}-{counts[-1]} tokens"


def _sentence(a: str, b: str, counts: list[int], verdicts: list[str], tie: float) -> str:
    """E.g. 'mixtral eager is faster than ours at 64 tokens; ours from 256 tokens on.'"""
    segments: list[tuple[str, list[int]]] = []
    for n, v in zip(counts, verdicts, strict=True):
        if segments and segments[-1][0] == v:
            segments[-1][1].append(n)
        else:
            segments.append((v, [n]))
    if len(segments) == 1:
        v, ns = segments[0]
        where = f"at every size ({ns[0]}-{ns[-1]} tokens)" if len(ns) > 1 else f"at {ns[0]}"
        if v == "tie":
            return f"{a} and {b} are within {tie:.0%} of each other {where}."
        return f"{v} is faster than {b if v == a else a} {where}."
    parts = []
    for i, (v, ns) in enumerate(segments):
        who = f"within {tie:.0%}" if v == "tie" else f"{v} faster"
        parts.append(f"{who} {_span(ns, i == len(segments) - 1, i == 0)}")
    return f"{a} vs {b}: " + "; ".join(parts) + "."


def run(device: str | torch.device = "cpu", plan: dict[Shape, dict[int, int]] | None = None,
        routings: tuple[str, ...] = ROUTINGS, names: tuple[str, ...] = ARMS,
        threads: int | None = 1) -> dict:
    """The matrix: every shape x routing x token count of ``plan`` ({shape: {tokens:
    rounds}}, default :data:`PLAN`); crossovers per shape and routing.

    ``threads``: intra-op threads on the CPU for the run (restored after; None: leave as is).
    One by default: on this lab's shared 2-core machine a second thread mostly spin-waits for
    a core (a first run at 2 threads spread the paired ratios over 0.02-245x). ``met``: no row
    misses :data:`GOAL` (:func:`misses`).
    """
    from benchmarks.run_all import machine

    device = torch.device(device)
    plan = plan or PLAN
    before = torch.get_num_threads()
    if device.type == "cpu" and threads is not None:
        torch.set_num_threads(threads)
    try:
        result: dict = {"name": "MoE layer under forced routings", "machine": machine(),
                        "device": str(device), "threads": torch.get_num_threads(),
                        "zipf_s": ZIPF_S, "tie": TIE, "memory": _MEMORY[device.type],
                        "goal": GOAL, "shapes": {}}
        for shape, rounds in plan.items():
            per_routing: dict = {}
            for routing in routings:
                cells = {n: measure_cell(shape, routing, n, r, device, names)
                         for n, r in rounds.items()}
                table = {n: {a: _rank_value(c["arms"][a]) for a in c["arms"]}
                         for n, c in cells.items()}
                per_routing[routing] = {"cells": {str(n): c for n, c in cells.items()},
                                        "crossovers": _jsonable(crossovers(table))}
            result["shapes"][shape.name] = {"label": shape.label(), "routings": per_routing}
    finally:
        torch.set_num_threads(before)
    result["misses"] = misses(result)
    result["met"] = not result["misses"]
    return result


def misses(result: dict, tie: float | None = None) -> list[dict]:
    """The rows where a peer is faster than ours: its median ratio to the floor more than
    ``tie`` (default: the result's) below ours. One entry per row and peer: shape, routing,
    tokens, peer, and both medians."""
    tie = result["tie"] if tie is None else tie
    found = []
    for shape, fig in result["shapes"].items():
        for routing, r in fig["routings"].items():
            for tokens, cell in r["cells"].items():
                arms = cell["arms"]
                if bm.OURS not in arms:
                    continue
                ours = _rank_value(arms[bm.OURS])
                for peer, a in arms.items():
                    if peer in (bm.OURS, bm.FLOOR):
                        continue
                    if _faster(_rank_value(a), ours, peer, bm.OURS, tie) == peer:
                        found.append({"shape": shape, "routing": routing, "tokens": int(tokens),
                                      "peer": peer, "peer_over_floor": _rank_value(a),
                                      "ours_over_floor": ours})
    return found


def _jsonable(found: dict) -> dict:
    """Token counts as string keys, as JSON writes them."""
    return {"ranking": {str(n): r for n, r in found["ranking"].items()},
            "ranking_changes": found["ranking_changes"],
            "pairs": {k: p | {"verdicts": {str(n): v for n, v in p["verdicts"].items()}}
                      for k, p in found["pairs"].items()}}


_MEMORY = {
    "cpu": "peak MiB: tensor bytes allocated beyond those live before the call, at their "
           "highest during one forward + backward, from torch.profiler's allocation events "
           "(profile_memory=True); not the process RSS",
    "cuda": "peak MiB: torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus "
            "memory_allocated before the call",
}


def _goal_line(result: dict) -> str:
    """The goal, met or not, and the rows that miss it."""
    head = (f"Goal: {result['goal']} (a peer is faster only where its median ratio to the "
            f"floor is more than {result['tie']:.0%} below ours): ")
    if result["met"]:
        return head + "met."
    rows = "; ".join(f"{m['shape']} {m['routing']} {m['tokens']} tokens: {m['peer']} "
                     f"{m['peer_over_floor']:.2f} vs ours {m['ours_over_floor']:.2f}"
                     for m in result["misses"])
    return head + f"NOT met at {len(result['misses'])} row(s): {rows}."


def markdown(result: dict) -> str:
    """The goal line, then one table per shape and routing and its crossover sentences."""
    threads = f"{result['threads']} intra-op thread" + ("" if result["threads"] == 1 else "s")
    lines = ["### MoE layer under forced routings (forward + backward)", "",
             f"Machine: {result['machine']}; device {result['device']}, {threads}. "
             "float32, train mode. Every arm routes the same "
             f"forced ids and weights (zipf: popularity ~ 1/rank^{result['zipf_s']}; one-hot: "
             "every first choice expert 0; rotating: the first choice moves every sequence). "
             "Ratios to the floor are paired within each round (median, min-max). "
             f"{result['memory'][0].upper() + result['memory'][1:]}. Crossovers compare "
             f"the median ratios; within {result['tie']:.0%} is a tie.", "",
             _goal_line(result), ""]
    for fig in result["shapes"].values():
        for routing, r in fig["routings"].items():
            cells = r["cells"]
            arms = [a for a in ARMS if any(a in c["arms"] for c in cells.values())]
            routed = [a for a in arms if a != bm.FLOOR]
            lines += [f"**{fig['label']}, {routing} routing**", "",
                      "| tokens | rounds | MaxVio | floor ms | "
                      + " | ".join(f"{a} / floor" for a in routed)
                      + " | peak MiB (" + " / ".join(arms) + ") | max diff vs ours |",
                      "|---" * (5 + len(routed)) + "|---|"]
            for n, c in cells.items():
                a = c["arms"]
                floor = a[bm.FLOOR]["ms"]["median"] if bm.FLOOR in a else float("nan")
                diffs = [x["max_abs_diff_vs_ours"] for x in a.values()
                         if "max_abs_diff_vs_ours" in x]
                worst = max((max(d.values()) for d in diffs), default=None)
                lines.append(
                    f"| {n} | {c['rounds']} | {c['load']['max_vio']:.2f} | {floor:.2f} | "
                    + " | ".join(bm._ratio(a[x].get("over_floor")) if x in a else "failed"
                                 for x in routed)
                    + " | " + " / ".join(f"{a[x]['peak_mib']:.1f}" if x in a else "-"
                                         for x in arms)
                    + " | " + ("-" if worst is None else f"{worst:.1e}")
                    + ("" if c["same_ids"] else " (ids differ!)") + " |")
            failed = {k: v for c in cells.values() for k, v in c["failed"].items()}
            lines += [""] + [f"- {k} failed: `{v}`" for k, v in failed.items()]
            cross = r["crossovers"]
            changes = cross["ranking_changes"]
            first = next(iter(cross["ranking"]))
            lines.append(f"- Ranking at {first} tokens (fastest first): "
                         + " < ".join(cross["ranking"][first]) + "; it changes at "
                         + (", ".join(f"{n} tokens ({' < '.join(cross['ranking'][str(n)])})"
                                      for n in changes) if changes else "no size") + ".")
            for p in cross["pairs"].values():
                if bm.OURS in p["arms"] or p["points"]:
                    lines.append(f"- {p['sentence']}")
            lines.append("")
    return "\n".join(lines).rstrip()


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
