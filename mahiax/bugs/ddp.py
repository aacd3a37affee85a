"""DistributedDataParallel (not in the summary): experts without tokens, buffers DDP broadcasts.

Both entries really run ``torch.nn.parallel.DistributedDataParallel`` with the gloo backend on
CPU, in float64, on small self-contained models built from the package's parts (so that they
measure DDP, whatever the clean model's own distributed code does):

- ``ddp-unused-experts``: experts held as a ``ModuleList`` and skipped when no token chose
  them (the original MAHIA-X loop). An expert that gets no token on a rank takes no part in
  that rank's loss, its gradient never arrives, DDP's reducer waits for it, and the *next*
  forward raises "Expected to have finished reduction in the prior iteration...". It runs in
  this process, in a gloo group of one (the error needs no second rank).
- ``ddp-broadcast-buffers``: a memory whose nodes are a buffer, updated after each step from
  the rank's own tokens. With ``broadcast_buffers=True`` (the default) DDP copies rank 0's
  buffers over every other rank's at the start of every forward. It runs in two forked
  processes, because what goes wrong needs a rank 1 whose buffer differs from rank 0's.

What torch 2.13 does (measured by the entries, pinned by ``tests/bugs/test_bugs.py``): DDP's
per-forward buffer broadcast runs under ``torch.autograd._unsafe_preserve_version_counter``,
so it no longer bumps the version counter (older releases raised "modified by an inplace
operation ... is at version N" when a module with a buffer ran twice before one backward:
pytorch/pytorch#22095, #70260). Two forwards before one backward therefore raise nothing; the
damage is silent: rank 1's own buffer statistics are overwritten by rank 0's every forward.

Shape legend: N tokens, D ``d_model``, E experts, K ``top_k``, H expert hidden, S memory nodes.
"""

from __future__ import annotations

import contextlib
import copy
import math
import multiprocessing as mp
import os
import pickle
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from mahiax import metric_keys as mk
from mahiax.bugs.catalog import BugEntry
from mahiax.bugs.harness import _OBSERVER, SEED, isolated, max_grad_diff
from mahiax.bugs.outcome import Outcome, graph_size
from mahiax.model.moe import SwiGLUExperts, TopKRouter
from mahiax.training import distributed

D_MODEL, NUM_EXPERTS, TOP_K, HIDDEN = 8, 8, 2, 16
TOKENS = 3  # tokens per rank and step: 3 * top-2 = 6 assignments for 8 experts, so >= 2 idle
NUM_NODES = 4  # memory nodes
MOMENTUM = 0.5  # how far a node moves toward the mean of its tokens per step
WORLD = 2  # ranks of the buffer entry
LR = 1e-2
RANK_TIMEOUT_S = 60.0  # a rank that has not answered by then is reported, not waited for


# ---- process groups -----------------------------------------------------------------------


@contextlib.contextmanager
def one_process_group() -> Iterator[None]:
    """A gloo group of one rank in this process (an in-memory store: no port, no file).

    The catalog makes its own group; inside ``torchrun`` one already exists, and the DDP
    entries refuse to run there rather than join a group whose other ranks do something else.
    """
    if dist.is_initialized():
        raise RuntimeError(
            "a torch.distributed process group is already initialised in this process; the "
            "catalog's DDP entries make their own: run them outside torchrun"
        )
    hook = sys.excepthook  # init_process_group wraps it with a "[rank0]:" prefix, for good
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()
        sys.excepthook = hook


def run_ranks(
    fn: Callable[[int, int], Any], world_size: int = WORLD, timeout_s: float = RANK_TIMEOUT_S
) -> list[Any]:
    """Run ``fn(rank, world_size)`` in ``world_size`` forked processes joined in a gloo group.

    Forked (not spawned) so that a rank starts in milliseconds with torch already imported,
    and ``fn`` may be a closure (a learner's function in a notebook). The group meets through
    a file in a fresh temp dir (no port to race for). Returns each rank's result in rank
    order; a rank that raised returns ``{"error": (type name, message)}``; one that has not
    answered in ``timeout_s`` (a collective another rank never joined) is killed and
    reported the same way, as ``TimeoutError``.
    """
    if dist.is_initialized():
        raise RuntimeError("run_ranks starts its own process group: call it outside one")
    ctx = mp.get_context("fork")
    with tempfile.TemporaryDirectory(prefix="mahiax-ddp-") as tmp:
        init = f"file://{os.path.join(tmp, 'store')}"
        pipes, procs = [], []
        for rank in range(world_size):
            recv, send = ctx.Pipe(duplex=False)
            p = ctx.Process(target=_rank_main, args=(fn, rank, world_size, init, timeout_s, send))
            p.start()
            send.close()
            pipes.append(recv)
            procs.append(p)
        results: list[Any] = []
        deadline = time.monotonic() + timeout_s
        for rank, (recv, p) in enumerate(zip(pipes, procs, strict=True)):
            left = max(0.1, deadline - time.monotonic())
            if recv.poll(left):
                try:  # plain pickle: torch's fd-sharing reduction outlives no child
                    results.append(pickle.loads(recv.recv_bytes()))
                except EOFError:  # the rank died without a word (killed, crashed)
                    results.append({"error": ("ChildProcessError", f"rank {rank} died "
                                              f"(exit code {p.exitcode})")})
            else:
                results.append({"error": ("TimeoutError", f"rank {rank} did not finish in "
                                          f"{timeout_s:.0f} s")})
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
    return results


def _rank_main(
    fn: Callable[[int, int], Any], rank: int, world: int, init: str, timeout_s: float, send: Any
) -> None:
    """One forked rank: join the group, run ``fn``, send its result (or its error) home."""
    torch.set_num_threads(1)  # tiny tensors; and the parent's thread pool is not ours
    result: Any
    try:
        dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world,
                                timeout=timedelta(seconds=timeout_s))
        try:
            result = fn(rank, world)
        finally:
            dist.destroy_process_group()
    except Exception as e:  # the point: report PyTorch's own error to the parent
        result = {"error": (type(e).__name__, str(e))}
    send.send_bytes(pickle.dumps(result))
    send.close()


# ---- ddp-unused-experts ---------------------------------------------------------------------


class SwiGLUExpert(nn.Module):
    """One SwiGLU expert with its own weights: ``down(silu(x W_gate) * (x W_up))``."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.w_gate = nn.Parameter(torch.randn(d_model, hidden) / math.sqrt(d_model))  # (D, H)
        self.w_up = nn.Parameter(torch.randn(d_model, hidden) / math.sqrt(d_model))  # (D, H)
        self.w_down = nn.Parameter(torch.randn(hidden, d_model) / math.sqrt(hidden))  # (H, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (F.silu(x @ self.w_gate) * (x @ self.w_up)) @ self.w_down  # (n, D)


class ExpertList(nn.Module):
    """The original layout: a ModuleList of experts, and an expert with no tokens skipped.

    Skipping is right for the maths (its output would be multiplied by nothing) and wrong for
    DDP: that expert's parameters take no part in this rank's loss, so their gradients never
    arrive and the reducer is left waiting for them.
    """

    def __init__(self, num_experts: int, d_model: int, hidden: int):
        super().__init__()
        self.experts = nn.ModuleList(SwiGLUExpert(d_model, hidden) for _ in range(num_experts))

    def forward(self, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """x (N, D), ids/weights (N, K) -> (N, D)."""
        out = torch.zeros_like(x)  # (N, D)
        for e, expert in enumerate(self.experts):
            rows, slot = (ids == e).nonzero(as_tuple=True)  # (n_e,), (n_e,)
            if rows.numel() == 0:
                continue  # BUG under DDP: no tokens, so this expert's parameters get no grad
            w = weights[rows, slot].unsqueeze(-1).to(x.dtype)  # (n_e, 1)
            out = out.index_add(0, rows, w * expert(x[rows]))  # out of place
        return out


class TinyMoE(nn.Module):
    """A residual MoE layer: the package's top-k router and an experts module of any layout."""

    def __init__(self, experts_cls: type[nn.Module]):
        super().__init__()
        self.router = TopKRouter(D_MODEL, NUM_EXPERTS, TOP_K)
        self.experts = experts_cls(NUM_EXPERTS, D_MODEL, HIDDEN)
        self.last_ids: torch.Tensor | None = None  # (N, K) the last forward's expert ids

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.router(x)
        self.last_ids = r.ids.detach()
        return x + self.experts(x, r.ids, r.weights).to(x.dtype)  # (N, D)


def _teacher(x: torch.Tensor) -> torch.Tensor:
    """The regression target: a fixed smooth function of the tokens. x (N, D) -> (N, D)."""
    g = torch.Generator().manual_seed(SEED + 1)
    w = torch.randn(x.shape[-1], x.shape[-1], generator=g, dtype=x.dtype)  # (D, D)
    return torch.tanh(x @ w)


def global_tokens(step: int, world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Step ``step``'s whole batch, a pure function of (seed, step): tokens and targets.

    Rank r trains on rows ``r*TOKENS .. (r+1)*TOKENS``. Returns x, y (world*TOKENS, D).
    """
    g = torch.Generator().manual_seed(SEED * 1000 + step)
    x = torch.randn(world_size * TOKENS, D_MODEL, generator=g, dtype=torch.float64)
    return x, _teacher(x)


def _shard(t: torch.Tensor, rank: int) -> torch.Tensor:
    return t[rank * TOKENS : (rank + 1) * TOKENS]


def idle_experts(ids: torch.Tensor) -> list[int]:
    """Experts that no token chose. ids (N, K)."""
    counts = torch.bincount(ids.reshape(-1), minlength=NUM_EXPERTS)  # (E,)
    return [int(e) for e in (counts == 0).nonzero().flatten()]


def _observe(out: Outcome, step: int, loss: float, diff: float | None) -> None:
    """Tell ``harness.observing`` about a finished step (what ``mahiax train --bug`` records)."""
    observer = _OBSERVER.get()
    if observer is None:
        return
    row: dict[str, Any] = {"step": step, "variant": out.variant, mk.LOSS: loss,
                           mk.GRAPH_NODES: out.graph_nodes[-1] if out.graph_nodes else 0}
    if diff is not None:
        row[mk.GRAD_DIFF] = diff
    observer(row)


def _experts_for(variant: str, candidate: object) -> type[nn.Module]:
    if variant == "candidate":
        if not (isinstance(candidate, type) and issubclass(candidate, nn.Module)):
            raise TypeError(
                "a candidate for 'ddp-unused-experts' is an nn.Module class "
                "Experts(num_experts, d_model, hidden) whose forward(x (N, D), ids (N, K), "
                "weights (N, K)) returns (N, D)"
            )
        return candidate
    return SwiGLUExperts if variant == "fixed" else ExpertList


def _unused_run(variant: str, steps: int, candidate: object = None) -> Outcome:
    """Train TinyMoE under DDP (a gloo group of one) and compare with the same model without
    DDP, loaded with the same weights at the start of every step."""
    from mahiax.telemetry import MemoryMeter

    experts_cls = _experts_for(variant, candidate)
    out = Outcome(entry="ddp-unused-experts", variant=variant, steps_requested=steps)
    idle: list[list[int]] = []
    step_ms: list[float] = []
    memory_every = max(1, steps // 20)
    meter = MemoryMeter("cpu")  # TinyMoE trains on the CPU (gloo), GPU or not
    worst: float | None = None
    with isolated(), one_process_group():
        model = TinyMoE(experts_cls).double()
        reference = copy.deepcopy(model)  # the yardstick: plain autograd, no DDP
        ddp = DDP(model, find_unused_parameters=variant == "summary")  # summary: the usual fix
        # SGD: no optimiser state, so memory stays flat while experts are first used one by one
        opt = torch.optim.SGD(model.parameters(), lr=LR)
        for step in range(steps):
            # one micro-batch, repeated: the router learns slowly, so the idle experts (and
            # the graph's size, which depends on how many experts ran) stay put step to step
            x, y = global_tokens(0, 1)  # (TOKENS, D) each
            start = {k: v.detach().clone() for k, v in model.state_dict().items()}
            try:
                t0 = time.perf_counter()
                loss = F.mse_loss(ddp(x), y)  # the step after an idle expert raises here
                loss.backward()
                step_ms.append((time.perf_counter() - t0) * 1e3)
            except Exception as e:  # the point: record PyTorch's own error and step
                out.error_type, out.error_message, out.error_step = type(e).__name__, str(e), step
                break
            assert model.last_ids is not None
            idle.append(idle_experts(model.last_ids))
            out.graph_nodes.append(graph_size(loss))
            reference.load_state_dict(start)
            F.mse_loss(reference(x), y).backward()
            ref = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
            diff = max_grad_diff(model, ref)
            worst = max(worst or 0.0, diff)
            opt.step()
            # gradients cleared after the step, not before the next backward: which experts
            # got one varies with routing, and memory is read below
            opt.zero_grad(set_to_none=True)
            reference.zero_grad(set_to_none=True)
            del ref
            out.steps_run += 1
            loss_value = float(loss.detach())
            del loss
            if step % memory_every == 0 or step == steps - 1:
                out.tensor_bytes.append(meter.read().tensor_bytes or 0)
            _observe(out, step, loss_value, diff)
        del ddp
        out.final_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out.max_grad_diff = worst
    out.figures.update(
        idle_experts=idle,  # per step: experts no token chose
        ms_per_step=step_ms,  # forward + backward under DDP (noisy on a shared CPU)
        find_unused_parameters=variant == "summary",
        experts_layout=experts_cls.__name__,
    )
    return out


def per_rank_idle_experts(steps: int = 2, world_size: int = WORLD) -> list[dict]:
    """The buggy layout under DDP on forked ranks, each on its own shard: per rank and step,
    the experts no token chose and the parameters that therefore got no gradient, then the
    error each rank raised (the evidence behind ``ddp-unused-experts``)."""

    def rank_fn(rank: int, world: int) -> dict:
        torch.manual_seed(SEED)
        model = TinyMoE(ExpertList).double()
        ddp = DDP(model)
        rows: list[dict] = []
        for step in range(steps):
            xg, yg = global_tokens(0, world)  # repeated, as in the entry's runs
            try:
                F.mse_loss(ddp(_shard(xg, rank)), _shard(yg, rank)).backward()
            except Exception as e:  # the point: each rank's own error
                return {"rank": rank, "steps": rows, "error": (type(e).__name__, str(e)),
                        "error_step": step}
            assert model.last_ids is not None
            no_grad = [n for n, p in model.named_parameters() if p.grad is None]
            rows.append({"step": step, "idle": idle_experts(model.last_ids), "no_grad": no_grad})
            model.zero_grad(set_to_none=True)
        return {"rank": rank, "steps": rows, "error": None, "error_step": None}

    return run_ranks(rank_fn, world_size)


def unused_named_in(message: str) -> list[str]:
    """The parameter names behind DDP's "Parameter indices which did not receive grad for
    rank R: i j ..." (indices into the buggy TinyMoE's ``parameters()``)."""
    found = re.search(r"did not receive grad for rank \d+: ([\d ]+)", message)
    if found is None:
        return []
    names = [n for n, _ in TinyMoE(ExpertList).named_parameters()]
    return [names[int(i)] for i in found.group(1).split()]


# why the DDP entries stay on the CPU on any machine
DDP_DEVICE_NOTE = (
    "its ranks are processes joined by gloo on the CPU, so that one machine without a GPU "
    "shows the reducer's behaviour; NCCL on GPUs runs the same reducer and buffer broadcast"
)


DDP_UNUSED_EXPERTS = BugEntry(
    id="ddp-unused-experts",
    devices=("cpu",),
    device_note=DDP_DEVICE_NOTE,
    section="DDP (not in the summary)",
    lessons=("09_ddp_pitfalls",),
    trained_by="ddp",
    component="mixture of experts (the summary's ExpertRouter) under DistributedDataParallel",
    title="Experts with no tokens on a rank: parameters DDP waits for",
    pattern="for e, expert in enumerate(self.experts):  # a ModuleList\n"
            "    if no_tokens(e): continue\n"
            "model = DistributedDataParallel(model)",
    summary_fix="DistributedDataParallel(model, find_unused_parameters=True)  # the usual first "
                "fix: the summary has no DDP section",
    right_fix="stacked expert weights (mahiax.model.moe.SwiGLUExperts): every expert parameter "
              "takes part in every step's graph, an idle expert's gradient is a zero slice",
    explanation=(
        "DDP's reducer expects a gradient for every parameter in every backward. An expert "
        "skipped for having no tokens contributes none, the reduction never finishes, and the "
        "next forward raises 'Expected to have finished reduction in the prior iteration' "
        "(measured with 2 ranks, each idle on different experts: both raise at step 1, and "
        "step 0's gradients were never averaged). "
        "find_unused_parameters=True is correct: DDP walks the autograd graph after every "
        "forward to mark the missing parameters ready, at a cost per step. Stacked expert "
        "weights need no search: the whole weight is in the graph, idle experts get zero rows."
    ),
    runner=_unused_run,
    steps=6,
    candidate_kind="an nn.Module class Experts(num_experts, d_model, hidden) with "
                   "forward(x, ids, weights) -> (N, D), trained under DDP without "
                   "find_unused_parameters",
    candidates=lambda: {
        "buggy": ExpertList,
        "summary": ExpertList,  # find_unused_parameters is DDP's flag, not the experts'
        "fixed": SwiGLUExperts,
    },
)


# ---- ddp-broadcast-buffers ------------------------------------------------------------------


class NodeMemory(nn.Module):
    """A memory of S nodes (a buffer) read by attention, moved after each step toward the mean
    of the tokens each node attracted: GraphDiffusionMemory in miniature.

    The update is computed from *statistics* (per-node token sums and counts), so ranks can
    add theirs up and apply the same update: that is what keeps buffers identical under DDP.
    """

    nodes: torch.Tensor

    def __init__(self, d_model: int, num_nodes: int, momentum: float):
        super().__init__()
        self.momentum = momentum
        self.query = nn.Linear(d_model, d_model)
        self.register_buffer("nodes", torch.randn(num_nodes, d_model))  # (S, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, D) -> (N, D): the tokens plus what they read from the nodes."""
        scores = self.query(x) @ self.nodes.T / math.sqrt(x.shape[-1])  # (N, S); saves nodes
        return x + torch.softmax(scores, dim=-1) @ self.nodes  # (N, D)

    @torch.no_grad()
    def statistics(
        self, x: torch.Tensor, nodes: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per node: the sum of the tokens closest to it (S, D) and how many there were (S,).

        ``nodes`` defaults to the buffer; the harness passes others to compute the right update.
        """
        nodes = self.nodes if nodes is None else nodes  # (S, D)
        nearest = torch.cdist(x, nodes).argmin(dim=-1)  # (N,)
        sums = torch.zeros_like(nodes).index_add(0, nearest, x)  # (S, D)
        counts = torch.bincount(nearest, minlength=nodes.shape[0]).to(x.dtype)  # (S,)
        return sums, counts

    @torch.no_grad()
    def update(self, sums: torch.Tensor, counts: torch.Tensor) -> None:
        """Move each node that attracted tokens toward their mean (after the step's backward)."""
        self.nodes.copy_(self.moved(self.nodes, sums, counts))

    def moved(self, nodes: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """The updated nodes (S, D), out of place.

        Only ``sums / counts`` (the mean of a node's tokens) and ``counts > 0`` are read, so
        statistics scaled alike give the same update: summed over the ranks, or averaged
        (both divided by the world size, a count then no longer a whole number).
        """
        hit = counts > 0  # (S,)
        mean = sums / torch.where(hit, counts, torch.ones_like(counts)).unsqueeze(-1)  # (S, D)
        return nodes + self.momentum * hit.unsqueeze(-1).to(nodes.dtype) * (mean - nodes)


Sync = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def all_reduce_statistics(
    sums: torch.Tensor, counts: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The right fix: add every rank's statistics up, so every rank applies one update.

    One all-reduce for both, the package's :func:`mahiax.training.distributed.sum_over_ranks`: the
    trainer sums every statistic the clean model's memories staged the same way, in one call.
    """
    sums, counts = distributed.sum_over_ranks([sums, counts])  # (S, D), (S,) over ranks
    return sums, counts


def own_statistics(sums: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What the buggy and the summary's runs do: each rank keeps its own statistics."""
    return sums, counts


def _buffer_rank(variant: str, steps: int, sync: Sync | None) -> Callable[[int, int], dict]:
    """What each rank of a ``ddp-broadcast-buffers`` run does; returns its measurements."""
    # buggy: DDP's defaults; summary: the usual (deprecated in 2.13) switch; else 2.13's own
    ddp_kwargs: dict[str, bool] = {
        "buggy": {}, "summary": {"broadcast_buffers": False},
    }.get(variant, {"forward_sync_buffers": False})
    two_forwards = variant in ("buggy", "summary")  # two micro-batches, then one backward

    def rank_fn(rank: int, world: int) -> dict:
        from mahiax.telemetry import MemoryMeter

        torch.manual_seed(SEED)  # the same model on every rank
        model = NodeMemory(D_MODEL, NUM_NODES, MOMENTUM).double()
        reference = copy.deepcopy(model)  # one process on the whole batch: the yardstick
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ddp = DDP(model, **ddp_kwargs)
        opt = torch.optim.AdamW(model.parameters(), lr=LR)
        res: dict[str, Any] = {"rank": rank, "steps_run": 0, "graph_nodes": [],
                               "tensor_bytes": [], "losses": [], "grad_diff": [],
                               "damage": [], "version_bumps": 0, "overwritten": [],
                               "nodes": [], "warnings": [str(w.message) for w in caught]}
        meter = MemoryMeter("cpu") if rank == 0 else None  # the ranks train on the CPU
        memory_every = max(1, steps // 20)
        for step in range(steps):
            xg, yg = global_tokens(step, world)  # (world*TOKENS, D) each
            x, y = _shard(xg, rank), _shard(yg, rank)  # (TOKENS, D) each
            start = {k: v.detach().clone() for k, v in model.state_dict().items()}
            version = model.nodes._version
            try:
                if two_forwards:
                    halves = [(x[:1], y[:1]), (x[1:], y[1:])]
                    loss = sum(F.mse_loss(ddp(xh), yh, reduction="sum") for xh, yh in halves)
                    loss = loss / x.numel()
                else:
                    loss = F.mse_loss(ddp(x), y)
                # what DDP's broadcast did to this rank's buffer during the forward
                res["version_bumps"] += int(model.nodes._version != version)
                res["overwritten"].append(float((model.nodes - start["nodes"]).abs().max()))
                used = model.nodes.detach().clone()  # (S, D) the nodes the forward read
                opt.zero_grad(set_to_none=True)
                loss.backward()
            except Exception as e:  # the point: record PyTorch's own error and step
                res["error"] = (type(e).__name__, str(e))
                res["error_step"] = step
                break
            res["graph_nodes"].append(graph_size(loss))
            res["losses"].append(float(loss.detach()))
            if rank == 0:  # DDP's gradients are the same on every rank: compare once
                reference.load_state_dict({**start, "nodes": used})
                reference.zero_grad(set_to_none=True)
                F.mse_loss(reference(xg), yg).backward()
                ref = {n: p.grad for n, p in reference.named_parameters()}
                res["grad_diff"].append(max_grad_diff(model, ref))
            opt.step()
            sums, counts = model.statistics(x)
            if sync is not None:
                sums, counts = sync(sums, counts)
            model.update(sums, counts)
            # the right next state: the nodes the forward read, moved with the whole batch
            right = model.moved(used, *model.statistics(xg, used))  # (S, D)
            res["damage"].append(float((model.nodes - right).abs().max()))
            res["nodes"].append(model.nodes.detach().clone())
            res["steps_run"] += 1
            del loss
            if meter is not None and (step % memory_every == 0 or step == steps - 1):
                res["tensor_bytes"].append(meter.read().tensor_bytes or 0)
        res["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return res

    return rank_fn


def _buffer_run(variant: str, steps: int, candidate: object = None) -> Outcome:
    """Train NodeMemory under DDP on two forked ranks; gather what each rank measured.

    - ``buggy``: ``broadcast_buffers=True`` (the default), two micro-batch forwards before one
      backward, each rank moving its nodes with its own tokens' statistics.
    - ``summary``: the usual first fix, ``broadcast_buffers=False``, and nothing else.
    - ``fixed``: ``broadcast_buffers=False``, one forward per backward, statistics all-reduced
      so that every rank applies the same update.
    - ``candidate``: ``broadcast_buffers=False`` with a learner's ``sync(sums, counts)``.

    Damage: the largest difference, over steps and ranks, between a rank's nodes after the
    update and the nodes its forward read moved with the whole batch's statistics (what one
    process on the global batch would do).
    """
    if variant == "candidate":
        if not callable(candidate):
            raise TypeError(
                "a candidate for 'ddp-broadcast-buffers' is a function sync(sums (S, D), "
                "counts (S,)) -> (sums, counts), called on every rank before the update"
            )
        sync: Sync | None = candidate  # type: ignore[assignment]
    else:
        sync = all_reduce_statistics if variant == "fixed" else None
    out = Outcome(entry="ddp-broadcast-buffers", variant=variant, steps_requested=steps)
    ranks = run_ranks(_buffer_rank(variant, steps, sync), WORLD)
    failed = [r for r in ranks if "error" in r]
    if failed:  # the earliest step's error (a rank that failed outside a step counts as 0)
        first = min(failed, key=lambda r: r.get("error_step", 0))
        out.error_type, out.error_message = first["error"]
        out.error_step = first.get("error_step", 0)
    done = [r for r in ranks if "steps_run" in r]
    if len(done) < WORLD:  # a rank that died before training: nothing else to read
        return out
    r0 = done[0]
    out.steps_run = min(r["steps_run"] for r in done)
    out.graph_nodes = r0["graph_nodes"][: out.steps_run]
    out.tensor_bytes = r0["tensor_bytes"]
    out.max_grad_diff = max(r0["grad_diff"], default=None)
    damages = [d for r in done for d in r["damage"]]
    out.state_diff = max(damages, default=0.0)
    spread = [
        float(max((float((a - b).abs().max()) for a, b in zip(ns, done[0]["nodes"],
                                                                strict=False)), default=0.0))
        for ns in (r["nodes"] for r in done[1:])
    ]
    out.figures.update(
        damage="largest error of a rank's memory nodes vs the update with the whole batch",
        version_bumps_by_forward=[r["version_bumps"] for r in done],  # per rank
        overwritten_by_forward=[r["overwritten"] for r in done],  # per rank, per step
        rank_spread=max(spread, default=0.0),  # largest |nodes rank r - nodes rank 0|
        ddp_warnings=done[0]["warnings"],  # what DDP's constructor warned about
        forwards_per_step=2 if variant in ("buggy", "summary") else 1,
        world_size=WORLD,
    )
    out.final_state = r0["state"]
    for step in range(out.steps_run):
        diff = r0["grad_diff"][step] if step < len(r0["grad_diff"]) else None
        _observe(out, step, r0["losses"][step], diff)
    return out


DDP_BROADCAST_BUFFERS = BugEntry(
    id="ddp-broadcast-buffers",
    devices=("cpu",),
    device_note=DDP_DEVICE_NOTE,
    section="DDP (not in the summary)",
    lessons=("09_ddp_pitfalls",),
    trained_by="ddp",
    component="stateful buffers under DistributedDataParallel",
    title="Buffers DDP broadcasts: rank 0's state written over every rank's",
    pattern="model = DistributedDataParallel(model)  # broadcast_buffers=True by default\n"
            "loss = model(micro_1) + model(micro_2); loss.backward()\n"
            "memory.update(*memory.statistics(local_tokens))  # each rank its own",
    summary_fix="DistributedDataParallel(model, broadcast_buffers=False)  # the usual first "
                "fix: the summary has no DDP section",
    right_fix="broadcast_buffers=False and all-reduce the update's statistics, so every rank "
              "applies the same update (the package's trainer sums every staged statistic in "
              "one all-reduce: mahiax.training.distributed.sum_over_ranks); one forward per "
              "backward",
    explanation=(
        "With broadcast_buffers=True DDP copies rank 0's buffers into every rank's at the start "
        "of every forward, in place. Older PyTorch bumped the version counter there, so two "
        "forwards before one backward raised 'modified by an inplace operation' "
        "(pytorch/pytorch#22095); torch 2.13 preserves the counter and raises nothing. The "
        "damage is silent: each rank's own update is thrown away, the state learns from rank "
        "0's shard only. broadcast_buffers=False alone lets the ranks drift apart and their "
        "gradients disagree with one process on the whole batch. Reducing the statistics "
        "first keeps every rank's buffers identical and right."
    ),
    runner=_buffer_run,
    steps=4,
    candidate_kind="a function sync(sums, counts) -> (sums, counts) run on every rank before "
                   "the memory update, with broadcast_buffers=False",
    candidates=lambda: {
        "buggy": own_statistics, "summary": own_statistics, "fixed": all_reduce_statistics,
    },
)
