"""Memories that persist across steps: GraphDiffusionMemory and TinyMemory.

Shape legend: B samples, D ``d_model``, N ``memory_nodes``, S ``tiny_slots``.

Both follow one protocol, which is what the summary's bug 2 got wrong three times:

1. ``forward`` *reads* the state (a buffer, never part of any graph) and, in training mode,
   stages the next state from **detached** inputs;
2. after the optimiser step, ``commit()`` swaps the staged tensor in as the new buffer.

Commit replaces the buffer with a new tensor instead of writing into the old one, so a graph
that saved the old state (the read's attention saved it) is never invalidated, whatever the
order of ``commit()`` and ``backward()``; and because the staged state was built from
detached inputs, no graph is carried to the next step. Hence no ``retain_graph`` anywhere.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mahiax import distributed
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
        self._pending: torch.Tensor | None = None
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
        """Next node matrix from detached inputs x (B, D)."""
        nodes = self.nodes  # (N, D)
        xf = x.to(nodes.dtype)
        sim = F.normalize(xf, dim=-1) @ F.normalize(nodes, dim=-1).T  # (B, N) cosine
        assign = torch.softmax(sim / self.write_temperature, dim=-1)  # (B, N)
        # sums over the global batch: under data parallelism every rank moves the nodes alike
        mass = distributed.all_sum(assign.sum(dim=0))  # (N,) share of the batch per node
        pulled = distributed.all_sum(assign.T @ xf)  # (N, D)
        batch = x.shape[0] * distributed.world_size()
        target = pulled / mass.clamp_min(1e-6).unsqueeze(-1)  # (N, D)
        share = (mass * nodes.shape[0] / batch).clamp(max=1.0)  # (N,) 1 = a fair share
        rate = (self.write_rate * share).unsqueeze(-1)  # (N, 1)
        self._pending = nodes + rate * (target - nodes)  # a new tensor

    @torch.no_grad()
    def commit(self) -> None:
        """Swap the staged node matrix in; a no-op if nothing was staged."""
        if self._pending is not None:
            self.nodes = self._pending
            self._pending = None


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
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None

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
                ptr = int(self.count) % self.num_slots
                summary = x.detach().mean(dim=0).to(self.slots.dtype)  # (D,)
                summary = distributed.all_mean(summary)  # the global batch's, on every rank
                slots = self.slots.clone()  # write into a copy: the read saved self.slots
                slots[ptr] = summary
                self._pending = (slots, self.count + 1)
        return read

    @torch.no_grad()
    def commit(self) -> None:
        """Swap the staged ring buffer in; a no-op if nothing was staged."""
        if self._pending is not None:
            self.slots, self.count = self._pending
            self._pending = None
