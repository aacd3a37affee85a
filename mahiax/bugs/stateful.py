"""Summary section 2: state kept across steps (GraphDiffusionMemory, MetaController,
TinyMemory, DynamicWeightAveraging).

Two mistakes recur. Rebinding state to a tensor computed from live activations
(``self.nodes = ... x_mean``) carries this step's graph into the next step, whose backward
then walks into a graph that was already freed. Writing into a tensor the forward already
read (``copy_``, ``buf[i] = v``) changes a tensor autograd saved, so backward refuses. The
summary swapped the first mistake for the second in three places.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mahiax.bugs.catalog import BugEntry, register
from mahiax.bugs.harness import swap_class, train_variant
from mahiax.bugs.outcome import Outcome
from mahiax.fabric import LayerRouting, MetaController
from mahiax.memory import GraphDiffusionMemory, TinyMemory
from mahiax.weighting import DynamicWeightAveraging, LossWeighting

# --- GraphDiffusionMemory ---------------------------------------------------------------


class BuggyGraphMemory(GraphDiffusionMemory):
    """The original: nodes rebound to a blend with the live batch mean, inside forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.read(x)
        if self.training:
            s = self.write_rate
            # BUG: x is live, so self.nodes now carries this step's graph into the next one
            self.nodes = (1 - s) * self.nodes + s * x.mean(dim=0, keepdim=True)
        return out


class SummaryGraphMemory(GraphDiffusionMemory):
    """The summary's fix: ``self.memory_nodes.copy_(new_memory_nodes)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.read(x)
        if self.training:
            s = self.write_rate
            new_memory_nodes = (1 - s) * self.nodes + s * x.mean(dim=0, keepdim=True)
            self.nodes.copy_(new_memory_nodes)  # in place on the nodes read() saved
        return out


class NoGradCopyGraphMemory(GraphDiffusionMemory):
    """A band-aid (lesson 06's first attempt): the summary's ``copy_`` under ``no_grad``.

    ``no_grad`` stops recording; it does not stop the write from bumping the version
    counter of the nodes ``read()`` saved."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.read(x)
        if self.training:
            s = self.write_rate
            with torch.no_grad():
                self.nodes.copy_((1 - s) * self.nodes + s * x.mean(dim=0, keepdim=True))
        return out


class DataCopyGraphMemory(GraphDiffusionMemory):
    """A band-aid: ``.data.copy_`` writes without bumping the version counter, so nothing
    raises, and backward silently uses the new nodes where ``read()`` saved the old ones."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.read(x)
        if self.training:
            s = self.write_rate
            new_nodes = (1 - s) * self.nodes + s * x.detach().mean(dim=0, keepdim=True)
            self.nodes.data.copy_(new_nodes)  # no version bump: the saved nodes change
        return out


# --- TinyMemory -------------------------------------------------------------------------


class BuggyTinyMemory(TinyMemory):
    """The original: ``self.memory[self.ptr % self.size] = avg.mean(dim=0).detach()``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.read(x)
        if self.training:
            ptr = int(self.count) % self.num_slots
            self.slots[ptr] = x.mean(dim=0).detach()  # BUG: the read above saved self.slots
            self.count = self.count + 1
        return out


class SummaryTinyMemory(TinyMemory):
    """The summary's fix: ``self.memory[self.ptr % self.size].copy_(new_memory)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.read(x)
        if self.training:
            ptr = int(self.count) % self.num_slots
            self.slots[ptr].copy_(x.mean(dim=0).detach())  # the same in-place write
            self.count = self.count + 1
        return out


class NoGradTinyMemory(TinyMemory):
    """A band-aid: the original write under ``no_grad`` (the version counter still moves)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.read(x)
        if self.training:
            ptr = int(self.count) % self.num_slots
            with torch.no_grad():
                self.slots[ptr] = x.mean(dim=0)
            self.count = self.count + 1
        return out


class DataWriteTinyMemory(TinyMemory):
    """A band-aid (lesson 03a): the original write through ``.data``. No version bump, so no
    error; once the ring wraps round onto a slot the read saved, backward silently computes
    with the overwritten values."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.read(x)
        if self.training:
            ptr = int(self.count) % self.num_slots
            self.slots.data[ptr] = x.detach().mean(dim=0)  # invisible to the version counter
            self.count = self.count + 1
        return out


# --- MetaController ---------------------------------------------------------------------


def _slot_means_at_layer_indices(routing: LayerRouting, num_layers: int) -> torch.Tensor:
    """The original's statistic: topk_probs averaged per slot (K values), stored at layers
    0..K-1, so 'layer 0' holds the mean probability of whichever layer ranked first."""
    slot_means = routing.topk_probs.mean(dim=0)  # (K,)
    return F.pad(slot_means, (0, num_layers - slot_means.numel()))  # (L,)


class BuggyController(MetaController):
    """The original: ``importance.data = 0.9 * importance.data + 0.1 * topk_probs.mean(0)``."""

    def observe(self, routing: LayerRouting) -> None:
        m, imp = self.momentum, self.importance
        new = _slot_means_at_layer_indices(routing, imp.numel()).to(imp)
        self.importance.data = m * self.importance.data + (1 - m) * new

    def commit(self) -> None:
        pass


class SummaryController(MetaController):
    """The summary's fix: ``self.layer_importance.data.copy_(new_data)``."""

    def observe(self, routing: LayerRouting) -> None:
        m, imp = self.momentum, self.importance
        new_data = m * imp.data + (1 - m) * _slot_means_at_layer_indices(routing, imp.numel())
        self.importance.data.copy_(new_data)

    def commit(self) -> None:
        pass


# --- DynamicWeightAveraging -------------------------------------------------------------


class BuggyDWA(LossWeighting):
    """The original: ``self.weights = F.softmax(-loss_tensor, dim=0)`` from live losses."""

    name = "summary-dwa"

    def __init__(self, num_tasks: int):
        super().__init__(num_tasks)
        self.w = torch.ones(num_tasks, dtype=torch.float64) / num_tasks

    def weights(self) -> torch.Tensor:
        return self.w.detach().clone()

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        total = (self.w.to(losses) * losses).sum()
        self.w = F.softmax(-losses, dim=0)  # BUG: live losses, graph kept to the next step
        return total


class SummaryDWA(LossWeighting):
    """The summary's fix: ``self.weights.copy_(new_weights)`` into a buffer."""

    name = "summary-dwa"
    w: torch.Tensor

    def __init__(self, num_tasks: int):
        super().__init__(num_tasks)
        self.register_buffer("w", torch.ones(num_tasks) / num_tasks)

    def weights(self) -> torch.Tensor:
        return self.w.detach().clone()

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        total = (self.w * losses).sum()  # the multiply saved self.w
        self.w.copy_(F.softmax(-losses, dim=0))  # in place on what was saved
        return total


class DataWriteDWA(SummaryDWA):
    """A band-aid (lesson 03b): the summary's ``copy_`` through ``.data``. No error; the
    backward of ``w * losses`` multiplies by the new weights, not the ones the total used."""

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        total = (self.w * losses).sum()  # the multiply saved self.w
        self.w.data.copy_(F.softmax(-losses.detach(), dim=0))  # no version bump
        return total


class DetachedSoftmaxWeighting(LossWeighting):
    """A band-aid (lesson 03b): ``softmax(-L)`` from detached losses, applied from the next
    step on. Autograd has nothing left to object to; it is still not DWA."""

    name = "softmax-detached"

    def __init__(self, num_tasks: int):
        super().__init__(num_tasks)
        self.w = torch.ones(num_tasks) / num_tasks  # (K,) constants of the graph

    def weights(self) -> torch.Tensor:
        return self.w.clone()

    def combine(self, losses: torch.Tensor) -> torch.Tensor:
        return (self.w.to(losses) * losses).sum()

    def update(self, losses: torch.Tensor) -> None:
        self.w = F.softmax(-losses.detach().float(), dim=0)  # a new tensor, no graph


DWA_TEMPERATURE = 2.0  # T of Liu et al. 2019, as in lesson 03b's exercise


class OneStepDWA(DynamicWeightAveraging):
    """The right fix as a candidate, built as ``cls(num_tasks)``: DWA with one-step windows
    and T = 2 (what lesson 03b's exercise asks for, and what the checker compares with)."""

    def __init__(self, num_tasks: int):
        super().__init__(num_tasks, temperature=DWA_TEMPERATURE, window=1)


# --- runners ----------------------------------------------------------------------------


def _swap_runner(entry_id: str, path: str, classes: dict[str, type | None], base: type):
    """Runner for a model submodule (dotted ``path``) replaced by the variant's class."""

    def run(variant: str, steps: int, candidate: object = None) -> Outcome:
        cls = candidate if variant == "candidate" else classes[variant]
        _check_candidate(entry_id, variant, cls, base)

        def install(model):
            if cls is not None:
                swap_class(model.get_submodule(path), cls)

        return train_variant(entry_id, variant, steps, install)

    return run


def _check_candidate(entry_id: str, variant: str, cls: object, base: type) -> None:
    if variant == "candidate" and not (isinstance(cls, type) and issubclass(cls, base)):
        raise TypeError(f"a candidate for {entry_id!r} must be a subclass of {base.__name__}")


def _controller_run(variant: str, steps: int, candidate: object = None) -> Outcome:
    """Train with the variant controller; measure its importance against the per-layer EMA."""
    classes = {"buggy": BuggyController, "summary": SummaryController, "fixed": None}
    cls = candidate if variant == "candidate" else classes[variant]
    _check_candidate("controller-importance", variant, cls, MetaController)
    seen: list[LayerRouting] = []
    truth: dict[str, MetaController] = {}
    worst = [0.0]

    def install(model):
        ctl = model.fabric.controller
        truth["ema"] = MetaController(ctl.importance.numel(), ctl.momentum).double()
        model.fabric.router.register_forward_hook(lambda m, i, o: seen.append(o))
        if cls is not None:
            swap_class(ctl, cls)

    def on_step(ctx, out) -> None:
        ema = truth["ema"].to(ctx.batch.tabular.device)  # built before the model moved
        ema.observe(seen[-1])  # the per-layer EMA, fed the same routing
        ema.commit()
        seen.clear()
        diff = (ctx.model.fabric.controller.importance - ema.importance).abs().max()
        worst[0] = max(worst[0], float(diff))
        out.state_diff = worst[0]

    out = train_variant("controller-importance", variant, steps, install, on_step=on_step)
    out.figures["damage"] = "largest error of layer importance vs the per-layer EMA"
    if out.final_state is not None:
        out.figures["importance"] = out.final_state["fabric.controller.importance"].tolist()
    return out


def _dwa_run(variant: str, steps: int, candidate: object = None) -> Outcome:
    """Train with the variant's weighting; measure its weights against DWA (one-step windows,
    T = 2) fed the same detached losses after every step."""
    classes = {"buggy": BuggyDWA, "summary": SummaryDWA, "fixed": OneStepDWA}
    cls = candidate if variant == "candidate" else classes[variant]
    _check_candidate("dwa-weights", variant, cls, LossWeighting)
    truth: dict[str, DynamicWeightAveraging] = {}
    worst = [0.0]

    def install(model):
        truth["dwa"] = OneStepDWA(len(model.config.tasks)).double()
        return cls(len(model.config.tasks))

    def on_step(ctx, out) -> None:
        dwa = truth["dwa"].to(ctx.batch.tabular.device)  # built before the model moved
        dwa.update(ctx.losses.detach())  # the harness just gave the variant the same losses
        diff = (ctx.weighting.weights().double() - dwa.weights().double()).abs().max()
        worst[0] = max(worst[0], float(diff))
        out.state_diff = worst[0]

    out = train_variant("dwa-weights", variant, steps, install, on_step=on_step)
    out.figures["damage"] = "largest error of the loss weights vs DWA (one-step windows, T = 2)"
    out.figures["damage_tol"] = 1e-5  # float32 weights
    return out


register(BugEntry(
    id="graph-memory-update",
    section="2",
    component="GraphDiffusionMemory",
    title="Memory nodes updated from live activations",
    pattern=(
        "self.memory_nodes = (1 - s) * self.memory_nodes "
        "+ s * x_mean.mean(dim=0, keepdim=True)"
    ),
    summary_fix="self.memory_nodes.copy_(new_memory_nodes)",
    right_fix="stage the update from x.detach() and swap it in after the optimiser step",
    explanation=(
        "Rebinding the nodes to a value computed from live x makes them carry step t's graph; "
        "step t+1 reads them, and its backward walks into step t's graph, already freed. "
        "copy_ is worse: read() saved the nodes for its backward, so writing into them fails "
        "on the very first step (no_grad would not help: the version counter still moves). "
        "Both also pull every node toward the same batch mean."
    ),
    runner=_swap_runner(
        "graph-memory-update", "graph_memory",
        {"buggy": BuggyGraphMemory, "summary": SummaryGraphMemory, "fixed": None},
        GraphDiffusionMemory,
    ),
    candidate_kind="a subclass of mahiax.memory.GraphDiffusionMemory",
    candidates=lambda: {
        "buggy": BuggyGraphMemory, "summary": SummaryGraphMemory,
        "fixed": GraphDiffusionMemory, "band-aid: copy_ under no_grad": NoGradCopyGraphMemory,
        "band-aid: .data.copy_": DataCopyGraphMemory,
    },
))

register(BugEntry(
    id="controller-importance",
    section="2",
    component="MetaController",
    title="Layer importance EMA written through .data",
    pattern="self.layer_importance.data = 0.9 * self.layer_importance.data "
            "+ 0.1 * topk_probs.mean(dim=0)",
    summary_fix="self.layer_importance.data.copy_(new_data)",
    right_fix="scatter the chosen probabilities to their layer indices, EMA under no_grad",
    explanation=(
        "There was no error to fix: nothing in the forward saves the importance, so writing "
        "it through .data (which skips the version counter) corrupts no gradient here, and "
        "the summary's .data.copy_ is the same write. (A .data write into a tensor a graph "
        "did save would silently corrupt its gradient.) The real bug is silent: "
        "topk_probs.mean(0) "
        "averages per top-k slot (best, second best), not per layer, so the 'importance' of "
        "layer 0 is the mean probability of whichever layer ranked first."
    ),
    runner=_controller_run,
    candidate_kind="a subclass of mahiax.fabric.MetaController",
    candidates=lambda: {
        "buggy": BuggyController, "summary": SummaryController, "fixed": MetaController,
    },
))

register(BugEntry(
    id="tiny-memory-write",
    section="2",
    component="TinyMemory",
    title="Ring buffer written in place after it was read",
    pattern="self.memory[self.ptr % self.size] = avg.mean(dim=0).detach()",
    summary_fix="self.memory[self.ptr % self.size].copy_(new_memory)",
    right_fix="write into a copy of the buffer and swap it in after the step",
    explanation=(
        "The forward read the buffer (the attention saved it), then wrote a slot in place. "
        "Indexed assignment and copy_ are the same in-place write, so the summary's fix "
        "raises the same error at the same step."
    ),
    runner=_swap_runner(
        "tiny-memory-write", "tiny_memory",
        {"buggy": BuggyTinyMemory, "summary": SummaryTinyMemory, "fixed": None}, TinyMemory,
    ),
    candidate_kind="a subclass of mahiax.memory.TinyMemory",
    candidates=lambda: {
        "buggy": BuggyTinyMemory, "summary": SummaryTinyMemory, "fixed": TinyMemory,
        "band-aid: the write under no_grad": NoGradTinyMemory,
        "band-aid: the write through .data": DataWriteTinyMemory,
    },
))

register(BugEntry(
    id="dwa-weights",
    section="2",
    component="DynamicWeightAveraging",
    title="Loss weights computed from live losses (and not DWA)",
    pattern="self.weights = F.softmax(-loss_tensor, dim=0)",
    summary_fix="self.weights.copy_(new_weights)",
    right_fix="DWA of Liu et al. 2019 from detached window means, updated after the step",
    explanation=(
        "Weights computed from live losses carry this step's graph into the next step's "
        "total: backward twice. copy_ into the buffer the multiply just saved fails at once. "
        "And softmax(-L) is not DWA: it weighs tasks by loss level, not by how fast each loss "
        "falls (K * softmax((L(t-1)/L(t-2)) / T))."
    ),
    runner=_dwa_run,
    candidate_kind=(
        "a subclass of mahiax.weighting.LossWeighting, built as cls(num_tasks): Dynamic Weight "
        "Averaging with one-step windows and T = 2 (weights all 1 until two steps were seen); "
        "its weights() are compared with mahiax.weighting.DynamicWeightAveraging fed the same "
        "losses"
    ),
    candidates=lambda: {
        "buggy": BuggyDWA, "summary": SummaryDWA, "fixed": OneStepDWA,
        "band-aid: the summary's copy_ through .data": DataWriteDWA,
        "band-aid: softmax(-L) from detached losses": DetachedSoftmaxWeighting,
    },
))

__all__ = [
    "BuggyController", "BuggyDWA", "BuggyGraphMemory", "BuggyTinyMemory",
    "DataCopyGraphMemory", "DataWriteDWA", "DataWriteTinyMemory", "DynamicWeightAveraging",
    "DetachedSoftmaxWeighting", "NoGradCopyGraphMemory", "NoGradTinyMemory", "OneStepDWA",
    "SummaryController", "SummaryDWA",
    "SummaryGraphMemory", "SummaryTinyMemory",
]
