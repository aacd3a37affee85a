"""The training loop: one ``encode()``, one weighted loss, one ``backward()``, then commit.

A step reads top to bottom:

1. forward: ``encode()`` once under autocast, every task head on the same features;
2. losses: per-task losses (float32) combined by the weighting, plus the MoE aux and z losses
   (1 and 2 are :func:`mahiax.training.objective.objective`, the one definition of the objective);
3. backward: **once**, through the scaler when fp16 (no ``retain_graph``: nothing needs the
   graph afterwards, so autograd frees it);
4. unscale, clip, optimiser step (skipped by the scaler on overflow);
5. :func:`mahiax.training.objective.finish_step`: one all-reduce of the stateful modules' staged
   statistics and this step's figures, then memories, layer importance and DWA take their
   detached updates.

Under ``torchrun`` (see :mod:`mahiax.training.distributed`) each rank trains on its shard of the
global batch of ``config.batch_size`` samples; the loss module is wrapped in
DistributedDataParallel, which averages the gradients, and every reported figure is the
mean (or, for expert load, the sum) over ranks: what one process would see on the global
batch. Besides DDP's gradient reduction a step makes exactly one collective call (step 5);
the model makes none.

Seeded runs are deterministic on CPU: weights come from ``torch.manual_seed(config.seed)``
and every batch is a pure function of ``(seed, step)``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from mahiax.config import MahiaConfig, config_differences
from mahiax.errors import BadInput
from mahiax.model.data import Batch, SyntheticMultiTask
from mahiax.model.hybrid import HybridEfficientModel
from mahiax.model.weighting import LossWeighting, make_weighting
from mahiax.rng import rng_state, set_rng_state
from mahiax.training import distributed
from mahiax.training.objective import Objective, finish_step, make_optimizer, objective
from mahiax.training.precision import PrecisionManager


def lr_at(step: int, peak: float, warmup: int, total: int, floor: float = 0.1) -> float:
    """Linear warm-up to ``peak``, then cosine decay to ``floor * peak`` at ``total``."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when there is one; asking for CUDA without one is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise BadInput("device 'cuda' was asked for but no CUDA GPU is available; use cpu|auto")
    return torch.device(name)


@dataclass(kw_only=True)
class StepRecord:
    """What one step did: the row a logger or the run store writes."""

    step: int
    loss: float  # the weighted total that was backpropagated
    task_losses: dict[str, float]
    weights: dict[str, float]  # loss weights in force for this step
    aux_loss: float
    z_loss: float
    grad_norm: float  # true (unscaled) global norm before clipping
    lr: float
    scale: float  # AMP loss scale after this step's update (1.0 without a scaler)
    skipped: bool  # optimiser step skipped by the scaler
    step_time: float  # seconds
    samples_per_s: float
    load: dict[str, object] = field(default_factory=dict)  # MoE load statistics

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict."""
        return dict(self.__dict__)


class LossModule(nn.Module):
    """The model and the loss weighting as one module, whose forward is a whole step's loss:
    what DistributedDataParallel wraps, so its gradient hooks cover every parameter (the
    uncertainty weighting's included) and ``encode()`` + heads run inside its forward."""

    def __init__(self, model: HybridEfficientModel, weighting: LossWeighting,
                 precision: PrecisionManager):
        super().__init__()
        self.model, self.weighting = model, weighting
        self._precision = precision  # not a module: autocast and the scaler

    def forward(self, batch: Batch) -> Objective:
        """The training objective of one batch (forward under the run's autocast)."""
        return objective(self.model, self.weighting, batch, self._precision.autocast)


class Trainer:
    """Owns the model, data, optimiser, weighting and precision of one run.

    Inside a process group of several ranks (``torchrun``) it trains data-parallel: the loss
    module is wrapped in DistributedDataParallel (``forward_sync_buffers=False``: the buffers
    stay identical because every rank commits the same update, from the stateful modules'
    statistics summed over the ranks by ``finish_step``) and each step uses this rank's shard
    of the global batch.
    """

    def __init__(self, config: MahiaConfig, model: HybridEfficientModel | None = None):
        self.config = config
        self.device = resolve_device(config.device)
        self.dist = distributed.current()
        torch.manual_seed(config.seed)
        self.model = (model or HybridEfficientModel(config)).to(self.device)
        self.data = SyntheticMultiTask(config)
        self.weighting: LossWeighting = make_weighting(config).to(self.device)
        params = list(self.model.parameters()) + list(self.weighting.parameters())
        self.optimizer = make_optimizer(params, config)
        self.precision = PrecisionManager(config.precision, self.device)
        self.loss_module: nn.Module = LossModule(self.model, self.weighting, self.precision)
        if self.dist.world_size > 1:
            self.shard = distributed.shard_bounds(config.batch_size, self.dist.rank,
                                                  self.dist.world_size)
            from torch.nn.parallel import DistributedDataParallel

            # find_unused_parameters: a fabric block no sample of this shard picked takes no
            # part in this rank's graph; DDP must not wait for its gradient
            self.loss_module = DistributedDataParallel(
                self.loss_module, forward_sync_buffers=False, find_unused_parameters=True,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
            )
        self.step_num = 0
        # called with each step's loss after the forward, before the backward frees its
        # graph: the memory probe reads what the graph saved (observers only read)
        self.graph_observers: list[Callable[[torch.Tensor], None]] = []

    def loss_of(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """Forward and losses of one batch: (total, task losses (K,), weights (K,), extras)."""
        obj: Objective = self.loss_module(batch)
        enc = obj.encoded
        return obj.total, obj.losses, obj.weights, {"aux": enc.aux_loss, "z": enc.z_loss}

    def step(self, batch: Batch | None = None) -> StepRecord:
        """One optimisation step on ``batch`` (default: the data set's batch of this step)."""
        c, step = self.config, self.step_num
        t0 = time.perf_counter()
        if batch is None:
            batch = self.data.batch(step)  # the global batch: a pure function of the step
            if self.dist.world_size > 1:
                batch = batch.rows(*self.shard)  # this rank's shard
        batch = batch.to(self.device)
        self.model.train()
        lr = lr_at(step, c.lr, c.warmup_steps, c.max_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # 1-2. one forward, all losses
        total, losses, weights, extras = self.loss_of(batch)
        for observe in self.graph_observers:
            observe(total)
        # 3. one backward
        self.optimizer.zero_grad(set_to_none=True)
        self.precision.backward(total)
        # 4. unscale, clip, step
        params = list(self.model.parameters()) + list(self.weighting.parameters())
        grad_norm = self.precision.clip(self.optimizer, params, c.grad_clip)  # host sync
        stepped = self.precision.step(self.optimizer)
        # 5. one all-reduce (staged statistics, losses, the figures people read), commit state
        # from detached values, update the weighting with the global batch's losses
        shared = finish_step(self.model, self.weighting, losses, figures=torch.stack([
            total.detach().double(), extras["aux"].detach().double(), extras["z"].detach().double()
        ]))
        assert shared is not None and shared.figures is not None
        self.step_num += 1
        loss, aux_loss, z_loss = shared.figures.tolist()  # over the global batch
        if self.device.type == "cuda":
            torch.cuda.synchronize()  # honest step time
        dt = time.perf_counter() - t0
        lv = shared.losses.cpu().tolist()  # host sync: the record is for people
        return StepRecord(
            step=step,
            loss=loss,
            task_losses=dict(zip(c.tasks, lv, strict=True)),
            weights=dict(zip(c.tasks, weights.cpu().tolist(), strict=True)),
            aux_loss=aux_loss,
            z_loss=z_loss,
            grad_norm=grad_norm,
            lr=lr,
            scale=self.precision.scale,
            skipped=not stepped,
            step_time=dt,
            samples_per_s=batch.size * self.dist.world_size / dt if dt > 0 else float("inf"),
            load=self.model.text.moe.load_stats(),
        )

    def fit(
        self, steps: int, on_step: Callable[[StepRecord], None] | None = None
    ) -> list[StepRecord]:
        """Run ``steps`` steps; call ``on_step`` after each; return the records."""
        records = []
        for _ in range(steps):
            rec = self.step()
            records.append(rec)
            if on_step is not None:
                on_step(rec)
        return records

    @torch.no_grad()
    def evaluate(self, batch_size: int = 512) -> dict[str, float]:
        """Held-out metric per task: accuracy for classification, R^2 for regression."""
        from mahiax.tasks import TASKS

        batch = self.data.eval_batch(0, batch_size).to(self.device)
        self.model.eval()
        outputs = self.model(batch)
        result = {}
        for name in self.config.tasks:
            y, t = outputs[name].float(), batch.targets[name]
            if TASKS[name].kind == "classification":
                result[name] = float((y.argmax(-1) == t).float().mean())
            else:
                result[name] = float(1 - ((y - t) ** 2).mean() / t.var(unbiased=False))
        self.model.train()
        return result

    def state_dict(self) -> dict[str, object]:
        """Everything the next step depends on, each part from its owner's ``state_dict``.

        The model (weights and state buffers: memory nodes, ring buffer, layer importance),
        the optimiser's moments, the weighting (DWA windows), the precision manager (GradScaler,
        skipped steps), the step number and the RNG states (:mod:`mahiax.rng`; dropout draws
        from them). Batches are a pure function of ``(seed, step)``, so they need nothing
        saved. ``config`` says which run the state belongs to. Under ``torchrun`` this is the
        calling rank's state; rank 0's is the one checkpointed.
        """
        return {
            "config": self.config.to_dict(),
            "step": self.step_num,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "weighting": self.weighting.state_dict(),
            "precision": self.precision.state_dict(),
            "rng": rng_state(self.device),
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Continue from ``state`` (:meth:`state_dict` of a trainer of the same run).

        The configs must agree in every field but ``max_steps`` (the schedule may be
        stretched: see :data:`mahiax.config.RESUME_MAY_CHANGE`); a difference is refused with
        the field and both values.
        """
        diff = config_differences(MahiaConfig.from_dict(state["config"]), self.config)
        if diff:
            shown = ", ".join(f"{k}: {a!r} saved, {b!r} now" for k, (a, b) in diff.items())
            raise BadInput(f"the state is from a run with another config ({shown}); "
                           f"only max_steps may differ")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.weighting.load_state_dict(state["weighting"])
        self.precision.load_state_dict(state["precision"])
        set_rng_state(state["rng"], self.device)
        self.step_num = int(state["step"])
