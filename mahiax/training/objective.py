"""The training objective and the tail of a step: one definition, used by every loop.

:class:`mahiax.training.trainer.Trainer`, the bug catalog's clean loop and reference
(:mod:`mahiax.bugs.harness`), the benchmarks and the lessons all compute the loss with
:func:`objective` and end a step with :func:`finish_step`, so the yardstick of every verdict is
what the trainer optimises (``tests/training/test_training.py`` checks that they agree on one
batch).
The Trainer and the catalog's harness build their optimiser with :func:`make_optimizer`.

A step is: ``objective()`` (one ``encode()``, every head, the weighted total), one
``backward()``, the optimiser step (the caller's: plain, or unscale-clip-step under AMP), then
``finish_step()``: one all-reduce of everything the ranks share, the model's ``commit()``, the
weighting's ``update()``. K = number of tasks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from mahiax.config import MahiaConfig
from mahiax.model.data import Batch
from mahiax.model.hybrid import Encoded, HybridEfficientModel
from mahiax.model.weighting import LossWeighting
from mahiax.training import distributed


def make_optimizer(params: list[torch.nn.Parameter], config: MahiaConfig) -> torch.optim.AdamW:
    """AdamW at the config's learning rate and weight decay, ``foreach``: one kernel per op
    over all the parameters instead of a Python loop over them (PyTorch's default on CUDA, not
    on the CPU; the same updates, bit for bit)."""
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay,
                             foreach=True)


@dataclass(kw_only=True)
class Objective:
    """One forward's loss: what is backpropagated, and its parts."""

    total: torch.Tensor  # () weighted task losses + the router's terms: the one backward's root
    losses: torch.Tensor  # (K,) float32 task losses (float64 if the model is)
    weights: torch.Tensor  # (K,) loss weights in force this step, detached
    encoded: Encoded  # the fused features and the routing, for telemetry


def objective(
    model: HybridEfficientModel, weighting: LossWeighting, batch: Batch,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> Objective:
    """The training objective on ``batch``: ``weighting.combine(L) + encoded.router_loss(c)``.

    ``L`` are the task losses of one ``encode()`` (:meth:`HybridEfficientModel.losses`; the
    forward runs under ``autocast()``, the losses in float32 outside it). The weights come
    from detached state, so they are constants of this step's graph.
    """
    losses, enc = model.losses(batch, autocast)  # (K,)
    weights = weighting.weights().detach().clone()  # (K,)
    total = weighting.combine(losses) + enc.router_loss(model.config)
    return Objective(total=total, losses=losses, weights=weights, encoded=enc)


@dataclass(kw_only=True)
class Shared:
    """What :func:`finish_step` returns: the step's figures over the global batch."""

    losses: torch.Tensor  # (K,) task losses, mean over ranks (this process's when alone)
    figures: torch.Tensor | None  # the caller's extra figures, mean over ranks


@torch.no_grad()
def finish_step(
    model: HybridEfficientModel, weighting: LossWeighting, losses: torch.Tensor | None,
    figures: torch.Tensor | None = None,
) -> Shared | None:
    """The tail of a step, after the optimiser step: reduce, commit, update the weighting.

    1. One ``all_reduce`` (:func:`mahiax.training.distributed.sum_over_ranks`) sums, over the ranks,
       every statistic the model's stateful modules staged in this step's forward, the task
       ``losses`` (K,) and the caller's ``figures`` (any shape): one collective a step, none
       when training alone.
    2. ``model.commit(...)`` builds the next state from the summed statistics: every rank
       makes the global batch's update, so the buffers stay identical.
    3. ``weighting.update(...)`` with the global batch's losses (their mean over ranks), so
       DWA's history is the same everywhere.

    Under data parallelism every rank calls this after the same training forward, so the
    statistics (the same keys and shapes on every rank) line up in the flat buffer.
    ``losses`` is None when a loop set none (a catalog variant): then only the commit runs.
    Returns the global losses and figures (None without losses).
    """
    staged = model.staged_statistics()  # {"<module path>/<name>": local sum}
    extra = [t.detach() for t in (losses, figures) if t is not None]
    summed = distributed.sum_over_ranks([*staged.values(), *extra])
    model.commit(dict(zip(staged, summed, strict=False)))
    if losses is None:
        return None
    ranks = distributed.world_size()
    mean = summed[len(staged):]
    if ranks > 1:
        mean = [t / ranks for t in mean]
    # the losses, then the figures when the caller gave some
    global_losses, global_figures = mean if figures is not None else (*mean, None)
    weighting.update(global_losses)
    return Shared(losses=global_losses, figures=global_figures)
