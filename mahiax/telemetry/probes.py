"""Probes: read what the model and the loop did in a step, and hand it to a logger.

"The model counts, the loop writes": the model keeps its routing counts and state in
buffers; after each step the probes *read* them (under ``no_grad``, copies only) and the
logger writes them. Nothing here changes what the model computes; ``tests/test_telemetry.py``
trains with and without probes and compares the losses bit for bit.

Keys written (scalars unless marked; ``<task>`` is each task name):

====================================  ===================================================
``loss``                              weighted total that was backpropagated
``loss/<task>``, ``weight/<task>``    per-task loss and the loss weight in force
``dwa/ratio/<task>``                  DWA descent rate L(t-1)/L(t-2) (DWA only)
``moe/aux_loss``, ``moe/z_loss``      load-balancing and z losses
``moe/cv``, ``moe/entropy``,          balance figures of the step's routing
``moe/max_over_mean``, ``moe/dead``
``moe/dropped``                       tokens dropped (always 0: no capacity limit)
``moe/tokens_per_expert`` (vector)    tokens routed to each expert (N*K in total)
``fabric/importance`` (vector)        MetaController per-layer importance
``optim/grad_norm``, ``optim/lr``     true grad norm before clipping; learning rate
``amp/scale``, ``amp/skipped``,       loss scale; 1 if this step was skipped; total skips
``amp/skipped_total``
``time/step_s``, ``time/samples_per_s``
``mem/rss``                           process RSS, bytes (every step: cheap)
``mem/tensor_bytes``, ``mem/peak``    CPU: live tensor bytes (every ``memory_every`` steps)
``mem/allocated``, ``mem/reserved``   CUDA allocator bytes (on a GPU)
``memory/nodes`` (snapshot)           GraphDiffusionMemory nodes (N, D), every
                                      ``snapshot_every`` steps
``memory/adjacency`` (snapshot)       its diffusion matrix A (N, N)
``tiny/slots`` (snapshot)             TinyMemory ring buffer (S, D)
====================================  ===================================================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import psutil
import torch

from mahiax.telemetry.memory_meter import MemoryMeter


class Logger(Protocol):
    """Where probes write: the run store's writer, or anything with these methods."""

    def log(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_vector(self, key: str, values: Sequence[float], step: int) -> None: ...

    def log_tensor(self, key: str, tensor: torch.Tensor, step: int) -> None: ...


@dataclass(frozen=True)
class Cadence:
    """How often each kind of reading is taken (in steps). Scalars: every step."""

    snapshot_every: int = 25  # memory nodes, adjacency, ring buffer
    memory_every: int = 250  # full MemoryMeter read: a scan of every live object (~80 ms)

    def __post_init__(self) -> None:
        for name in ("snapshot_every", "memory_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r} must be a positive integer")


class TrainingProbe:
    """Turns each :class:`~mahiax.train.StepRecord` plus the model's state into log rows."""

    def __init__(self, logger: Logger, cadence: Cadence | None = None):
        self.logger = logger
        self.cadence = cadence or Cadence()
        self.meter = MemoryMeter()
        self._process = psutil.Process()

    @torch.no_grad()
    def observe(self, trainer, record) -> None:
        """Write everything about the step ``record`` describes (call after ``step()``)."""
        step, c = record.step, self.cadence
        m = {"loss": record.loss}
        for task, v in record.task_losses.items():
            m[f"loss/{task}"] = v
        for task, v in record.weights.items():
            m[f"weight/{task}"] = v
        ratios = getattr(trainer.weighting, "ratios", None)
        if ratios is not None:
            for task, r in zip(trainer.config.tasks, ratios().tolist(), strict=True):
                m[f"dwa/ratio/{task}"] = r
        load = record.load
        m.update({
            "moe/aux_loss": record.aux_loss,
            "moe/z_loss": record.z_loss,
            "moe/cv": load["cv"],
            "moe/entropy": load["entropy"],
            "moe/max_over_mean": load["max_over_mean"],
            "moe/dead": load["dead"],
            "moe/dropped": 0.0,
            "optim/grad_norm": record.grad_norm,
            "optim/lr": record.lr,
            "amp/scale": record.scale,
            "amp/skipped": float(record.skipped),
            "amp/skipped_total": trainer.precision.skipped_steps,
            "time/step_s": record.step_time,
            "time/samples_per_s": record.samples_per_s,
            "mem/rss": self._process.memory_info().rss,
        })
        if step % c.memory_every == 0:
            r = self.meter.read()
            for key in ("tensor_bytes", "peak", "allocated", "reserved"):
                value = getattr(r, key)
                if value is not None:
                    m[f"mem/{key}"] = value
        self.logger.log(m, step)
        self.logger.log_vector("moe/tokens_per_expert", load["tokens_per_expert"], step)
        importance = trainer.model.fabric.controller.importance
        self.logger.log_vector("fabric/importance", importance.tolist(), step)
        if step % c.snapshot_every == 0:
            self.snapshot(trainer, step)

    @torch.no_grad()
    def snapshot(self, trainer, step: int) -> None:
        """Copies of the memory nodes, diffusion matrix and ring buffer at ``step``."""
        mem, tiny = trainer.model.graph_memory, trainer.model.tiny_memory
        self.logger.log_tensor("memory/nodes", mem.nodes.detach().cpu().clone(), step)
        self.logger.log_tensor("memory/adjacency", mem.adjacency().detach().cpu(), step)
        self.logger.log_tensor("tiny/slots", tiny.slots.detach().cpu().clone(), step)
