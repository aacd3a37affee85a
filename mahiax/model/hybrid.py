"""HybridEfficientModel: text + tabular encoders, fusion, the fabric, the MoE and the memories.

Shape legend: B samples, T tokens per sample, F ``tab_dim``, D ``d_model``.

``encode()`` runs everything up to the fused features **once**; the task heads then turn
those features into every task's output. Training computes all task losses from one
``encode()`` and calls ``backward()`` once on their weighted sum: the same gradients as one
backward per loss, with one forward instead of K (the summary's "long-term solution", which
makes its retain_graph band-aid unnecessary).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mahiax.config import MahiaConfig
from mahiax.dtypes import at_least_fp32
from mahiax.model.data import Batch
from mahiax.model.fabric import DynamicNeuroFabric, LayerRouting
from mahiax.model.memories import GraphDiffusionMemory, TinyMemory
from mahiax.model.moe import MixtureOfExperts, RouterOutput
from mahiax.model.validation import check_inputs, check_targets
from mahiax.tasks import TASKS


@dataclass(kw_only=True)
class Encoded:
    """Fused features of one forward, plus what the losses and telemetry need."""

    features: torch.Tensor  # (B, D)
    aux_loss: torch.Tensor  # () MoE load-balancing loss
    z_loss: torch.Tensor  # () MoE router z-loss
    router: RouterOutput  # token routing of the MoE (N = B*T tokens)
    layers: LayerRouting  # per-sample block routing of the fabric

    def router_loss(self, config: MahiaConfig) -> torch.Tensor:
        """The MoE's terms of the training objective: ``aux_loss_coef`` times the
        load-balancing loss (``balance="aux"`` only: ``"bias"`` balances through the selection
        bias, ``"none"`` not at all) plus ``z_loss_coef`` times the z-loss. () float32."""
        if config.balance != "aux":
            return config.z_loss_coef * self.z_loss
        return config.aux_loss_coef * self.aux_loss + config.z_loss_coef * self.z_loss


@dataclass(frozen=True, kw_only=True)
class ModelState:
    """The model's state between steps, copied (N ``memory_nodes``, S ``tiny_slots``, L
    ``fabric_layers``): what probes and the dashboard read, without reaching into modules."""

    importance: torch.Tensor  # (L,) MetaController layer importance
    memory_nodes: torch.Tensor  # (N, D) GraphDiffusionMemory nodes
    adjacency: torch.Tensor  # (N, N) its diffusion matrix A
    tiny_slots: torch.Tensor  # (S, D) TinyMemory ring buffer
    tiny_count: int  # TinyMemory writes so far


class TextEncoder(nn.Module):
    """Token + position embedding, one pre-norm MoE layer, attention pooling to (B, D)."""

    def __init__(self, c: MahiaConfig):
        super().__init__()
        self.tok = nn.Embedding(c.vocab_size, c.d_model)
        self.pos = nn.Embedding(c.seq_len, c.d_model)
        self.norm = nn.LayerNorm(c.d_model)
        self.moe = MixtureOfExperts(c.d_model, c.num_experts, c.top_k, c.expert_hidden,
                                    c.balance, c.bias_update_rate)
        self.pool = nn.Linear(c.d_model, 1)  # one score per token

    def forward(self, tokens: torch.Tensor):
        t = tokens.shape[1]
        h = self.tok(tokens) + self.pos.weight[:t]  # (B, T, D)
        m = self.moe(self.norm(h))
        h = h + m.hidden  # (B, T, D) residual
        a = torch.softmax(at_least_fp32(self.pool(h).squeeze(-1)), dim=-1).to(h.dtype)  # (B, T)
        pooled = torch.einsum("bt,btd->bd", a, h)  # (B, D)
        return pooled, m


class TabularEncoder(nn.Module):
    """Two-layer MLP from F features to D."""

    def __init__(self, c: MahiaConfig):
        super().__init__()
        self.fc1 = nn.Linear(c.tab_dim, c.d_model)
        self.fc2 = nn.Linear(c.d_model, c.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # (B, D)


class TaskHead(nn.Module):
    """Small MLP from fused features to one task's output."""

    def __init__(self, d_model: int, out_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_model)
        self.fc2 = nn.Linear(d_model, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # (B, out_dim)


class HybridEfficientModel(nn.Module):
    """The MAHIA-X model. ``forward(tokens, tabular) = heads(encode(tokens, tabular))``."""

    # The bug catalog turns this off to reproduce the summary's unchecked original.
    validate_inputs: bool = True

    def __init__(self, config: MahiaConfig):
        super().__init__()
        c = self.config = config
        self.text = TextEncoder(c)
        self.tabular = TabularEncoder(c)
        self.fuse = nn.Linear(2 * c.d_model, c.d_model)
        self.fuse_norm = nn.LayerNorm(c.d_model)
        self.fabric = DynamicNeuroFabric(
            c.d_model, c.fabric_layers, c.fabric_active, c.importance_momentum, c.dropout
        )
        self.graph_memory = GraphDiffusionMemory(c.d_model, c.memory_nodes, c.memory_write_rate)
        self.tiny_memory = TinyMemory(c.d_model, c.tiny_slots)
        self.out_norm = nn.LayerNorm(c.d_model)
        self.heads = nn.ModuleDict({t: TaskHead(c.d_model, TASKS[t].out_dim) for t in c.tasks})

    def encode(self, tokens: torch.Tensor | Batch, tabular: torch.Tensor | None = None) -> Encoded:
        """Fused features of a batch, computed once for every task head.

        Accepts ``encode(batch)`` or ``encode(tokens, tabular)``. Inputs are checked first:
        a wrong id, shape, dtype or NaN gets a clear error here, not deep inside torch.
        """
        if isinstance(tokens, Batch):
            tokens, tabular = tokens.tokens, tokens.tabular
        if self.validate_inputs:
            check_inputs(tokens, tabular, self.config)
        assert isinstance(tabular, torch.Tensor)
        text, moe = self.text(tokens)  # (B, D)
        tab = self.tabular(tabular.to(self.fuse.weight.dtype))  # (B, D)
        x = self.fuse_norm(F.gelu(self.fuse(torch.cat([text, tab], dim=-1))))  # (B, D)
        x, layers = self.fabric(x)  # (B, D)
        x = self.out_norm(x + self.graph_memory(x) + self.tiny_memory(x))  # (B, D)
        return Encoded(features=x, aux_loss=moe.aux_loss, z_loss=moe.z_loss, router=moe.router,
                       layers=layers)

    def heads_forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every task's output from fused features (B, D): logits (B, C) or values (B,)."""
        out = {}
        for name, head in self.heads.items():
            y = head(features)
            out[name] = y.squeeze(-1) if TASKS[name].kind == "regression" else y
        return out

    def forward(
        self, tokens: torch.Tensor | Batch, tabular: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        return self.heads_forward(self.encode(tokens, tabular).features)

    def task_losses(
        self, outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """One loss per task in ``config.tasks`` order: (K,), float32 (float64 if the model is)."""
        b = next(iter(outputs.values())).shape[0]
        check_targets(targets, self.config, b)
        losses = []
        for name in self.config.tasks:
            y, t = at_least_fp32(outputs[name]), targets[name]
            if TASKS[name].kind == "classification":
                losses.append(F.cross_entropy(y, t.long()))
            else:
                losses.append(F.mse_loss(y, t.to(y.dtype)))
        return torch.stack(losses)

    def losses(
        self, batch: Batch,
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ) -> tuple[torch.Tensor, Encoded]:
        """Every task's loss from one ``encode()``: ((K,) float32 losses, the encoding).

        The forward runs under ``autocast()`` (the trainer's mixed precision, if any); the
        losses are computed outside it, in float32. The training objective adds the router's
        terms (:meth:`Encoded.router_loss`) to their weighted sum: see
        :mod:`mahiax.training.objective`.
        """
        with autocast():
            enc = self.encode(batch)  # once, for every task
            outputs = self.heads_forward(enc.features)
        return self.task_losses(outputs, batch.targets), enc  # (K,)

    def staged_statistics(self) -> dict[str, torch.Tensor]:
        """The statistics the stateful modules staged in this step's training forward, keyed
        ``"<module path>/<name>"``: sums over this process's samples, no graph.

        Sums add up over processes: under data parallelism the trainer sums each one over the
        ranks (:func:`mahiax.training.objective.finish_step`, one all-reduce for all of them) and
        hands the result to :meth:`commit`. The model itself never communicates, so it runs on its
        own (a training forward, then ``commit()``) under any process group or none.
        """
        return {f"{path}/{name}": t for path, module in self.named_modules()
                for name, t in getattr(module, "staged", {}).items()}

    @torch.no_grad()
    def commit(self, statistics: Mapping[str, torch.Tensor] | None = None) -> None:
        """Apply the stateful modules' staged updates (after the optimiser step).

        ``statistics``: :meth:`staged_statistics` summed over the ranks; by default each module
        uses its own (one process: the same thing).
        """
        for key, value in (statistics or {}).items():
            path, name = key.rsplit("/", 1)
            self.get_submodule(path).staged[name] = value
        self.text.moe.commit()
        self.fabric.commit()
        self.graph_memory.commit()
        self.tiny_memory.commit()

    @torch.no_grad()
    def state_snapshot(self) -> ModelState:
        """Copies of the stateful buffers on the CPU (no graph): what probes log."""
        def copy(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to("cpu", copy=True)

        return ModelState(
            importance=copy(self.fabric.controller.importance),
            memory_nodes=copy(self.graph_memory.nodes),
            adjacency=copy(self.graph_memory.adjacency()),
            tiny_slots=copy(self.tiny_memory.slots),
            tiny_count=int(self.tiny_memory.count),
        )
