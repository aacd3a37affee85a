"""Multi-task loss weighting: Dynamic Weight Averaging, equal weights, uncertainty weighting.

All three share one interface: ``combine(losses)`` returns the weighted total for this step's
single backward, ``update(losses)`` folds this step's **detached** losses into the state after
the optimiser step, and ``weights()`` reports the weights in force. K = number of tasks.
"""

from __future__ import annotations

import torch
from torch import nn

from mahiax.config import MahiaConfig


class LossWeighting(nn.Module):
    """Base class: equal weights (1 per task). Subclasses change how weights are chosen."""

    name = "equal"

    def __init__(self, num_tasks: int):
        super().__init__()
        if num_tasks < 1:
            raise ValueError(f"num_tasks={num_tasks} must be >= 1")
        self.num_tasks = num_tasks

    def weights(self) -> torch.Tensor:
        """Current weights (K,), float32, no graph."""
        return torch.ones(self.num_tasks)

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        """Weighted total of ``losses`` (K,) -> scalar, differentiable in the losses."""
        self._check(losses)
        return (self.weights().to(losses) * losses).sum()

    def update(self, losses: torch.Tensor) -> None:
        """Observe this step's losses (K,), detached; nothing to do for fixed weights."""

    def _check(self, losses: torch.Tensor) -> None:
        if losses.shape != (self.num_tasks,):
            raise ValueError(
                f"expected one loss per task, shape ({self.num_tasks},), "
                f"got {tuple(losses.shape)}"
            )


class EqualWeighting(LossWeighting):
    """Every task weighs 1: the baseline."""


class DynamicWeightAveraging(LossWeighting):
    """Dynamic Weight Averaging (Liu, Johns & Davison, CVPR 2019, eq. 7).

    ``lambda_k(t) = K * exp(r_k(t-1) / T) / sum_i exp(r_i(t-1) / T)`` with the descent-rate
    ratio ``r_k(t-1) = L_k(t-1) / L_k(t-2)``, where ``L_k`` is task k's mean loss over one
    window (the paper's epoch; here ``window`` steps) and T the temperature (2 in the paper).
    A task whose loss falls slowly gets more weight. The first two windows use equal weights
    (there is no ratio yet). Weights are computed from detached losses only: they are
    constants of this step's graph, never part of it, and sum to K.

    Note: ``softmax(-L)`` (the summary's version) is not DWA. It weighs tasks by their loss
    *level*, so a task with a naturally small loss dominates forever, and computed from live
    losses it drags the graph into the next step.
    """

    name = "dwa"
    history: torch.Tensor
    current: torch.Tensor

    def __init__(self, num_tasks: int, temperature: float = 2.0, window: int = 10):
        super().__init__(num_tasks)
        if temperature <= 0 or window < 1:
            raise ValueError(f"temperature={temperature} must be > 0 and window={window} >= 1")
        self.temperature, self.window = temperature, window
        # mean losses of the last two complete windows: row 0 = t-2, row 1 = t-1
        self.register_buffer("history", torch.zeros(2, num_tasks, dtype=torch.float64))
        self.register_buffer("windows_done", torch.zeros((), dtype=torch.long))
        self.register_buffer("acc", torch.zeros(num_tasks, dtype=torch.float64))
        self.register_buffer("acc_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("current", torch.ones(num_tasks))
        # ratio_values' floats, the history tensor they came from and its version then
        self._ratio_floats: list[float] = []
        self._ratios_history: torch.Tensor | None = None
        self._ratios_version = -1

    def weights(self) -> torch.Tensor:
        return self.current.clone()

    def ratios(self) -> torch.Tensor:
        """The descent rates r_k = L_k(t-1) / L_k(t-2) (K,); ones before two windows."""
        if int(self.windows_done) < 2:
            return torch.ones(self.num_tasks, device=self.current.device)
        return (self.history[1] / self.history[0].clamp_min(1e-12)).float()

    def ratio_values(self) -> list[float]:
        """:meth:`ratios` as floats, for a logger that reads them after every step.

        They change only when ``history`` does: :meth:`update` replaces it when a window
        completes, and loading a state dict copies into it (which bumps its version counter).
        So the floats are kept with the ``history`` tensor they came from and its version, and
        computed again only when either differs (holding the tensor keeps its identity unique).
        """
        history = self.history
        if self._ratios_history is not history or self._ratios_version != history._version:
            self._ratio_floats = self.ratios().tolist()
            self._ratios_history, self._ratios_version = history, history._version
        return list(self._ratio_floats)

    @torch.no_grad()
    def update(self, losses: torch.Tensor) -> None:
        self._check(losses)
        self.acc = self.acc + losses.detach().to(self.acc.device, torch.float64)
        self.acc_steps = self.acc_steps + 1
        if int(self.acc_steps) < self.window:
            return
        mean = self.acc / self.acc_steps
        self.history = torch.stack([self.history[1], mean])
        self.windows_done = self.windows_done + 1
        self.acc = torch.zeros_like(self.acc)
        self.acc_steps = torch.zeros_like(self.acc_steps)
        if int(self.windows_done) >= 2:
            r = self.ratios()
            self.current = (self.num_tasks * torch.softmax(r / self.temperature, dim=0)).to(
                self.current
            )


class UncertaintyWeighting(LossWeighting):
    """Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018, eq. 7).

    Learns ``s_k = log sigma_k^2`` per task; total ``sum_k 0.5 * exp(-s_k) * L_k + 0.5 * s_k``.
    The ``0.5 * s_k`` term stops every sigma from growing without bound. Reported weights are
    ``0.5 * exp(-s_k)``.
    """

    name = "uncertainty"

    def __init__(self, num_tasks: int):
        super().__init__(num_tasks)
        self.log_vars = nn.Parameter(torch.zeros(num_tasks))  # (K,) s_k = log sigma_k^2

    def weights(self) -> torch.Tensor:
        return (0.5 * torch.exp(-self.log_vars)).detach().float().cpu()

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        self._check(losses)
        s = self.log_vars.to(losses)
        return (0.5 * torch.exp(-s) * losses + 0.5 * s).sum()


class FixedWeighting(LossWeighting):
    """Weights given once and never updated: the weights some other weighting had in force.

    The bug catalog's clean reference recomputes a variant's step with the weights the variant
    used, whatever its own weighting would have done; ``combine`` is the base class's
    ``sum_k w_k L_k``, the same total DWA and equal weighting backpropagate.
    """

    name = "fixed"

    def __init__(self, weights: torch.Tensor):
        super().__init__(weights.numel())
        self._weights = weights.detach().clone()  # (K,)

    def weights(self) -> torch.Tensor:
        return self._weights.clone()


def make_weighting(config: MahiaConfig) -> LossWeighting:
    """The weighting ``config.weighting`` names (``dwa``, ``equal`` or ``uncertainty``), for
    ``config.tasks``, with the config's DWA temperature and window."""
    method, k = config.weighting, len(config.tasks)
    if method == "dwa":
        return DynamicWeightAveraging(k, config.dwa_temperature, config.dwa_window)
    if method == "equal":
        return EqualWeighting(k)
    if method == "uncertainty":
        return UncertaintyWeighting(k)
    raise ValueError(f"unknown weighting {method!r}; allowed: dwa | equal | uncertainty")
