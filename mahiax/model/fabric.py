"""Dynamic layer routing: DynamicLayerRouter, DynamicNeuroFabric and the MetaController.

Shape legend: B samples, D ``d_model``, L ``fabric_layers`` (candidate blocks),
K ``fabric_active`` (blocks each sample runs through).

The fabric holds a bank of L candidate blocks. For each sample the DynamicLayerRouter picks
K of them and mixes them: every block runs once on the samples that picked it, and the
weighted outputs are added to the input **out of place**. The summary's bug 2 was the in-place form
``output[b] += w * layer_out`` into a tensor autograd had saved; here every partial result
is a new tensor, so nothing saved is ever written to.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mahiax.dtypes import at_least_fp32


@dataclass(kw_only=True)
class LayerRouting:
    """Which blocks each sample runs through, with what weight."""

    probs: torch.Tensor  # (B, L) float32 gate probabilities over all blocks
    ids: torch.Tensor  # (B, K) int64 chosen blocks, best first
    weights: torch.Tensor  # (B, K) float32 chosen probabilities renormalised to sum to 1
    topk_probs: torch.Tensor  # (B, K) float32 chosen probabilities before renormalising


class FabricBlock(nn.Module):
    """One candidate block: pre-norm MLP returning an update (the residual is the fabric's)."""

    def __init__(self, d_model: int, dropout: float = 0.0):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, 2 * d_model)
        self.fc2 = nn.Linear(2 * d_model, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(F.gelu(self.fc1(self.norm(x)))))  # (n, D)


class DynamicLayerRouter(nn.Module):
    """Per-sample gate over L blocks: linear logits, float32 softmax, top-K, renormalised."""

    def __init__(self, d_model: int, num_layers: int, top_k: int):
        super().__init__()
        if not 0 < top_k <= num_layers:
            raise ValueError(f"top_k={top_k} must lie in 1 .. num_layers ({num_layers})")
        self.num_layers, self.top_k = num_layers, top_k
        self.gate = nn.Linear(d_model, num_layers)

    def forward(self, x: torch.Tensor) -> LayerRouting:
        """The routing decision for x (B, D)."""
        probs = torch.softmax(at_least_fp32(self.gate(x)), dim=-1)  # (B, L)
        top_p, ids = torch.topk(probs, self.top_k, dim=-1)  # (B, K)
        return LayerRouting(probs=probs, ids=ids, weights=top_p / top_p.sum(dim=-1, keepdim=True),
                            topk_probs=top_p)

    def mix(self, x: torch.Tensor, blocks: nn.ModuleList, routing: LayerRouting) -> torch.Tensor:
        """x + sum_k w_k * block_{id_k}(x), per sample, out of place. x (B, D) -> (B, D).

        Each block runs once, on the samples that chose it (grouped by block, no loop over
        samples). Every partial sum is a new tensor: ``x`` itself, which the gate saved for
        its backward, is never written to.
        """
        out = x
        for j, block in enumerate(blocks):
            rows, slot = (routing.ids == j).nonzero(as_tuple=True)  # host sync, once per block
            if rows.numel() == 0:
                continue
            w = routing.weights[rows, slot].unsqueeze(-1).to(x.dtype)  # (n_j, 1)
            out = out.index_add(0, rows, w * block(x[rows]))  # out of place: a new tensor
        return out


class MetaController(nn.Module):
    """Per-layer importance: an EMA of the gate probabilities, scattered to layer indices.

    Each sample's chosen probabilities are scattered to the indices of the blocks it chose
    (zeros elsewhere) and averaged over the batch, giving one value per *layer*. (The
    summary's version averaged ``topk_probs`` per top-k *slot*, which mixes different layers
    into one number.) :meth:`observe` stages the batch's sum and size under ``no_grad`` (sums
    add up over data-parallel ranks: the trainer reduces them, no collective runs here);
    :meth:`commit` folds their mean into the EMA after the optimiser step, replacing the
    buffer with a new tensor rather than writing through ``.data``.
    """

    importance: torch.Tensor

    def __init__(self, num_layers: int, momentum: float = 0.9):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("importance", torch.full((num_layers,), 1.0 / num_layers))
        # this step's statistics, sums over this process's samples (see HybridEfficientModel)
        self.staged: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def observe(self, routing: LayerRouting) -> None:
        """Stage this batch's per-layer probability sum and its size (no graph kept)."""
        scattered = torch.zeros_like(routing.probs).scatter(
            1, routing.ids, routing.topk_probs
        )  # (B, L)
        self.staged = {
            "sum": scattered.sum(dim=0),  # (L,)
            "samples": torch.full((), scattered.shape[0], dtype=scattered.dtype,
                                  device=scattered.device),
        }

    @torch.no_grad()
    def commit(self) -> None:
        """Fold the staged batch mean into the EMA; a no-op if nothing was observed."""
        if not self.staged:
            return
        mean = self.staged.pop("sum") / self.staged.pop("samples")  # (L,)
        m = self.momentum
        self.importance = m * self.importance + (1 - m) * mean.to(self.importance)


class DynamicNeuroFabric(nn.Module):
    """Bank of L blocks; each sample runs through its top-K, combined weighted, out of place."""

    def __init__(
        self, d_model: int, num_layers: int, active: int, momentum: float = 0.9,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.blocks = nn.ModuleList(FabricBlock(d_model, dropout) for _ in range(num_layers))
        self.router = DynamicLayerRouter(d_model, num_layers, active)
        self.controller = MetaController(num_layers, momentum)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, LayerRouting]:
        """x (B, D) -> (x + sum_k w_k * block_{id_k}(x), routing)."""
        routing = self.router(x)
        y = self.router.mix(x, self.blocks, routing)  # (B, D)
        if self.training:
            self.controller.observe(routing)
        return y, routing

    def commit(self) -> None:
        """Commit the MetaController's staged importance."""
        self.controller.commit()
