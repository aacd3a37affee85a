"""Memories that persist across steps: GraphDiffusionMemory and TinyMemory.

Shape legend: B samples, D ``d_model``, N ``memory_nodes``, S ``tiny_slots``.

Both follow one protocol, which is what the summary's bug 2 got wrong three times:

1. ``forward`` *reads* the state (a buffer, never part of any graph) and, in training mode,
   stages the *statistics* of the next write from **detached** inputs, in ``self.staged``:
   sums over this process's samples (and the number of samples), nothing else;
2. after the optimiser step, ``commit()`` builds the next state from the staged statistics
   and swaps it in as the new buffer.

Commit replaces the buffer with a new tensor instead of writing into the old one, so a graph
that saved the old state (the read's attention saved it) is never invalidated, whatever the
order of ``commit()`` and ``backward()``; and because the statistics were computed from
detached inputs, no graph is carried to the next step. Hence no ``retain_graph`` anywhere.

Sums, not means, because sums add up over processes: under data parallelism the trainer sums
every rank's staged statistics (one all-reduce, :func:`mahiax.training.distributed.sum_over_ranks`)
before ``commit()``, which then makes the global batch's update on every rank. No collective
runs inside these modules, so a memory runs on its own under any process group or none.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mahiax.dtypes import at_least_fp32


class GraphDiffusionMemory(nn.Module):
    """Memory nodes diffused over a learnable adjacency, read by per-sample attention.

    - Diffusion: ``A = softmax(adj_logits)`` row-wise (a learnable, row-stochastic graph with
      self-loops), ``diffused = A @ nodes``.
    - Read: each sample's query attends over the diffused nodes (input-dependent).
    - Write: each node moves toward the inputs assigned to it, with a sharp soft assignment
      (cosine similarity / ``write_temperature``, a soft k-means step). A node moves in
      proportion to the share of the batch it received, so nodes nobody chose stay where they
      are; this keeps the nodes distinct instead of collapsing them onto the batch mean, which
      is what the summary's ``(1-s)*nodes + s*x_mean`` does to every node.
    """

    nodes: torch.Tensor

    def __init__(
        self, d_model: int, num_nodes: int, write_rate: float = 0.1,
        write_temperature: float = 0.1,
    ):
        super().__init__()
        self.write_rate, self.write_temperature = write_rate, write_temperature
        self.register_buffer("nodes", torch.randn(num_nodes, d_model))  # (N, D)
        # self-loops start strong: each node keeps ~60% of itself through one diffusion step
        self.adj_logits = nn.Parameter(3.0 * torch.eye(num_nodes))  # (N, N)
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.k = nn.Linear(d_model, d_model, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=False)
        self.out = nn.Linear(d_model, d_model)
        # this step's write statistics, sums over this process's samples (see the module doc)
        self.staged: dict[str, torch.Tensor] = {}
        self.last_attention: torch.Tensor | None = None  # (B, N) detached, for telemetry

    def adjacency(self) -> torch.Tensor:
        """The row-stochastic diffusion matrix A (N, N)."""
        return torch.softmax(self.adj_logits, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, D) -> memory read (B, D); stages the write in training mode."""
        out = self.read(x)
        if self.training:
            self._stage_write(x.detach())
        return out

    def read(self, x: torch.Tensor) -> torch.Tensor:
        """Attention of each sample over the diffused nodes. x (B, D) -> (B, D)."""
        nodes = self.nodes.to(x.dtype)  # (N, D) state: a buffer, no graph
        diffused = self.adjacency().to(x.dtype) @ nodes  # (N, D)
        q, k, v = self.q(x), self.k(diffused), self.v(diffused)  # (B, D), (N, D), (N, D)
        attn = torch.softmax(at_least_fp32(q @ k.T) / math.sqrt(x.shape[-1]), dim=-1)  # (B, N)
        self.last_attention = attn.detach()
        return self.out(attn.to(v.dtype) @ v)  # (B, D)

    @torch.no_grad()
    def _stage_write(self, x: torch.Tensor) -> None:
        """Stage the write's statistics from detached inputs x (B, D): per node, the soft
        count of samples assigned to it and the sum of those samples."""
        nodes = self.nodes  # (N, D)
        xf = x.to(nodes.dtype)
        sim = F.normalize(xf, dim=-1) @ F.normalize(nodes, dim=-1).T  # (B, N) cosine
        assign = torch.softmax(sim / self.write_temperature, dim=-1)  # (B, N)
        self.staged = {
            "mass": assign.sum(dim=0),  # (N,) share of the batch per node
            "pulled": assign.T @ xf,  # (N, D) assigned samples, summed
            "samples": torch.full((), x.shape[0], dtype=nodes.dtype, device=nodes.device),
        }

    @torch.no_grad()
    def commit(self) -> None:
        """Move each node toward the mean of the samples assigned to it, by ``write_rate``
        times its share of the batch (capped at 1: a fair share); a new tensor replaces the
        nodes. A no-op if nothing was staged."""
        if not self.staged:
            return
        mass, pulled, samples = (self.staged.pop(k) for k in ("mass", "pulled", "samples"))
        nodes = self.nodes  # (N, D)
        target = pulled / mass.clamp_min(1e-6).unsqueeze(-1)  # (N, D)
        share = (mass * nodes.shape[0] / samples).clamp(max=1.0)  # (N,) 1 = a fair share
        rate = (self.write_rate * share).unsqueeze(-1)  # (N, 1)
        self.nodes = nodes + rate * (target - nodes)  # a new tensor


class TinyMemory(nn.Module):
    """A ring buffer of the last S batch summaries, read by attention, written every step."""

    slots: torch.Tensor
    count: torch.Tensor

    def __init__(self, d_model: int, num_slots: int):
        super().__init__()
        self.num_slots = num_slots
        self.register_buffer("slots", torch.zeros(num_slots, d_model))  # (S, D)
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # writes so far
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.k = nn.Linear(d_model, d_model, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=False)
        self.out = nn.Linear(d_model, d_model)
        # this step's batch summary, as a sum over this process's samples (see the module doc)
        self.staged: dict[str, torch.Tensor] = {}

    def filled(self) -> int:
        """Slots that hold a summary (host sync)."""
        return min(int(self.count), self.num_slots)

    def read(self, x: torch.Tensor) -> torch.Tensor:
        """Attention over the filled slots; zeros while nothing is remembered. (B, D)."""
        n = self.filled()
        if n == 0:
            return torch.zeros_like(x)
        mem = self.slots[:n].to(x.dtype)  # (n, D)
        attn = torch.softmax(
            at_least_fp32(self.q(x) @ self.k(mem).T) / math.sqrt(x.shape[-1]), dim=-1
        )  # (B, n)
        return self.out(attn.to(x.dtype) @ self.v(mem))  # (B, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, D) -> read (B, D); stages this batch's summary for the next slot."""
        read = self.read(x)
        if self.training:
            with torch.no_grad():
                self.staged = {
                    "sum": x.detach().to(self.slots.dtype).sum(dim=0),  # (D,)
                    "samples": torch.full((), x.shape[0], dtype=self.slots.dtype,
                                          device=self.slots.device),
                }
        return read

    @torch.no_grad()
    def commit(self) -> None:
        """Write the staged batch mean into the next slot of the ring; a no-op if nothing was
        staged. The ring is copied first: the read saved ``self.slots``, which stays as it was."""
        if not self.staged:
            return
        summary = self.staged.pop("sum") / self.staged.pop("samples")  # (D,) the batch mean
        slots = self.slots.clone()  # (S, D) write into a copy: a graph may hold the old one
        slots[int(self.count) % self.num_slots] = summary
        self.slots, self.count = slots, self.count + 1
