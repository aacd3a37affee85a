"""Summary section 2: state kept across steps (GraphDiffusionMemory, MetaController,
TinyMemory, DynamicWeightAveraging).

Two mistakes recur. Rebinding state to a tensor computed from live activations
(``self.nodes = ... x_mean``) carries this step's graph into the next step, whose backward
then walks into a graph that was already freed. Writing into a tensor the forward already
read (``copy_``, ``buf[i] = v``) changes a tensor autograd saved, so backward refuses. The
summary swapped the first mistake for the second in three places.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mahiax.bugs.catalog import BugEntry
from mahiax.bugs.harness import StepContext, swap_class, train_variant
from mahiax.bugs.outcome import Outcome
from mahiax.bugs.verdicts import GRAD_TOL
from mahiax.model.fabric import LayerRouting, MetaController
from mahiax.model.memories import GraphDiffusionMemory, TinyMemory
from mahiax.model.weighting import DynamicWeightAveraging, LossWeighting

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


class FrozenGraphMemory(GraphDiffusionMemory):
    """A wrong answer: it reads, and never updates the nodes. Autograd has nothing to object
    to (nothing is written, no graph is carried); the memory just never learns."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.read(x)


class RandomNodesGraphMemory(GraphDiffusionMemory):
    """A wrong answer: new random nodes every step, in a new tensor. Autograd-safe, and
    unrelated to the inputs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.read(x)
        if self.training:
            self.nodes = torch.randn_like(self.nodes)  # a new tensor, not a move toward x
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


class ForgetfulTinyMemory(TinyMemory):
    """A wrong answer: it reads, and never writes. Autograd-safe; the ring stays empty, so
    the read returns zeros at every step."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.read(x)


class SlotZeroTinyMemory(TinyMemory):
    """A wrong answer: a new tensor each step (autograd-safe), but every summary goes to
    slot 0, so the ring never holds more than the latest one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.read(x)
        if self.training:
            slots = self.slots.clone()  # (S, D)
            slots[0] = x.detach().mean(dim=0)  # slot 0, whatever count says
            self.slots, self.count = slots, self.count + 1
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


State = dict[str, torch.Tensor]  # a memory's buffers, by name
TINY_STATE = ("slots", "count")  # what a TinyMemory remembers: (S, D) summaries, () writes
GRAPH_STATE = ("nodes",)  # what a GraphDiffusionMemory remembers: (N, D) nodes


@dataclass(kw_only=True)
class StateRule:
    """One update a memory may make in a step, and what it is, in words.

    ``update(start, x)`` returns the buffers the update makes of the buffers a step started
    with (``start``) and the input ``x`` (B, D) that the memory's forward saw."""

    name: str
    update: Callable[[State, torch.Tensor], State]


def _largest_error(got: State, want: State) -> float:
    """Largest absolute difference over every buffer of ``want`` (a count counts in writes)."""
    return max(float((got[k].double() - want[k].double()).abs().max()) for k in want)


def _clean_update(shadow: nn.Module, names: tuple[str, ...]) -> Callable[[State, torch.Tensor],
                                                                          State]:
    """The package memory's own update: ``shadow`` (a clean memory of the same size) loaded
    with the start state, one training forward on ``x`` under ``no_grad``, then commit()."""

    def update(start: State, x: torch.Tensor) -> State:
        shadow.to(x).train()  # x's device and dtype
        for name in names:
            setattr(shadow, name, start[name].clone())
        with torch.no_grad():
            shadow(x)
            shadow.commit()
        return {name: getattr(shadow, name) for name in names}

    return update


class MemoryWatch:
    """Checks, after every step, that a memory holds what it was told to.

    The gradient checks cannot see it: the clean reference loads the variant's state at the
    start of each step, so a memory that never writes, or writes the wrong slot, trains with
    correct gradients for the state it has. A forward pre-hook notes the buffers a step
    started with and the input the memory's forward saw; after the step (optimiser step and
    commit done) the memory's buffers are compared with what each accepted ``rule`` makes of
    them. ``worst`` is the largest error of the closest rule over the steps; ``detail`` says,
    at the first step that went wrong, what is wrong (``explain(step, start, now, wants)``).
    """

    def __init__(
        self, memory: nn.Module, names: tuple[str, ...], rules: list[StateRule],
        damage: str, explain: Callable[[int, State, State, dict[str, State]], str],
    ):
        self.memory, self.names, self.rules = memory, names, rules
        self.damage, self.explain = damage, explain
        self.worst, self.detail = 0.0, ""
        self._seen: tuple[State, torch.Tensor] | None = None
        memory.register_forward_pre_hook(self._note)

    def _note(self, module: nn.Module, args: tuple) -> None:
        if module.training:
            start = {k: getattr(module, k).detach().clone() for k in self.names}
            self._seen = (start, args[0].detach().clone())  # x (B, D)

    def on_step(self, ctx: StepContext, out: Outcome) -> None:
        """After a step: compare the memory's buffers with each rule's; record the damage."""
        if self._seen is None:
            return
        (start, x), self._seen = self._seen, None
        now = {k: getattr(self.memory, k).detach() for k in self.names}
        wants = {r.name: r.update(start, x) for r in self.rules}
        error = min(_largest_error(now, want) for want in wants.values())
        self.worst = max(self.worst, error)
        out.state_diff = self.worst
        if error > GRAD_TOL and not self.detail:
            self.detail = self.explain(ctx.step, start, now, wants)


def _tiny_watch(memory: TinyMemory) -> MemoryWatch:
    """The ring buffer must hold each step's batch summary in slot ``count % S``, and count
    its writes, as the clean TinyMemory does."""
    with torch.random.fork_rng(devices=[]):  # the shadow's weights must not move the run's RNG
        shadow = TinyMemory(memory.slots.shape[1], memory.num_slots)
    rule = StateRule(name="the clean TinyMemory", update=_clean_update(shadow, TINY_STATE))

    def explain(step: int, start: State, now: State, wants: dict[str, State]) -> str:
        want = wants[rule.name]
        written = int(start["count"]) % memory.num_slots  # the slot this step writes
        parts = []
        if int(now["count"]) != int(want["count"]):
            parts.append(f"its count of writes is {int(now['count'])}, not "
                         f"{int(want['count'])} (read() attends over the first "
                         f"min(count, {memory.num_slots}) slots)")
        off = (now["slots"].double() - want["slots"].double()).abs().amax(dim=-1)  # (S,)
        for i in (off > GRAD_TOL).nonzero().flatten().tolist():
            parts.append(
                f"slot {i} does not hold step {step}'s batch summary, x.detach().mean(dim=0) "
                f"(off by {float(off[i]):.3g})" if i == written else
                f"slot {i} changed, though step {step} writes slot {written} "
                f"(off by {float(off[i]):.3g})"
            )
        return (f"The memory does not hold what it was told to remember: after step {step}, "
                + "; ".join(parts) + ".")

    return MemoryWatch(
        memory, TINY_STATE, [rule],
        damage="the ring buffer (slots, count) vs what it was told to remember",
        explain=explain,
    )


def _toward_batch_mean(write_rate: float) -> Callable[[State, torch.Tensor], State]:
    """The update lesson 06's exercise asks for: every node moves by ``write_rate`` toward the
    batch mean of the (detached) input."""

    def update(start: State, x: torch.Tensor) -> State:
        nodes = start["nodes"]  # (N, D)
        return {"nodes": (1 - write_rate) * nodes + write_rate * x.mean(dim=0, keepdim=True)}

    return update


def _graph_watch(memory: GraphDiffusionMemory) -> MemoryWatch:
    """The nodes must move as the exercise asks (toward the batch mean by ``write_rate``) or as
    the package memory does (each node toward the inputs assigned to it)."""
    num_nodes, d_model = memory.nodes.shape
    with torch.random.fork_rng(devices=[]):  # the shadow's weights must not move the run's RNG
        shadow = GraphDiffusionMemory(d_model, num_nodes, memory.write_rate,
                                      memory.write_temperature)
    rules = [
        StateRule(name="(1 - s) * nodes + s * x.detach().mean(dim=0)",
                  update=_toward_batch_mean(memory.write_rate)),
        StateRule(name="the package memory's update (each node toward the inputs assigned to "
                       "it)", update=_clean_update(shadow, GRAPH_STATE)),
    ]

    def explain(step: int, start: State, now: State, wants: dict[str, State]) -> str:
        if _largest_error(now, start) <= GRAD_TOL:
            return (f"The nodes did not move at step {step}: an update moves them toward the "
                    f"batch's inputs, by s = write_rate.")
        return (f"The nodes after step {step} are not where an update toward the batch puts "
                f"them: off by " + " and by ".join(
                    f"{_largest_error(now, want):.3g} from {name}" for name, want in wants.items())
                + ".")

    return MemoryWatch(
        memory, GRAPH_STATE, rules,
        damage="the nodes vs an update toward the batch (the exercise's or "
               "the package memory's)",
        explain=explain,
    )


def _memory_runner(
    entry_id: str, path: str, classes: dict[str, type | None], base: type,
    watch: Callable[[nn.Module], MemoryWatch],
):
    """Runner for a memory submodule (dotted ``path``) replaced by the variant's class: the
    harness's autograd checks, and what the memory holds after every step (``watch``)."""

    def run(variant: str, steps: int, candidate: object = None) -> Outcome:
        cls = candidate if variant == "candidate" else classes[variant]
        _check_candidate(entry_id, variant, cls, base)
        watches: list[MemoryWatch] = []

        def install(model):
            module = model.get_submodule(path)
            if cls is not None:
                swap_class(module, cls)
            watches.append(watch(module))

        out = train_variant(entry_id, variant, steps, install,
                            on_step=lambda ctx, o: watches[-1].on_step(ctx, o))
        out.figures["damage"] = watches[-1].damage
        if watches[-1].detail:
            out.figures["damage_detail"] = watches[-1].detail
        return out

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


GRAPH_MEMORY_UPDATE = BugEntry(
    id="graph-memory-update",
    section="2",
    lessons=("03a_memories",),
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
    runner=_memory_runner(
        "graph-memory-update", "graph_memory",
        {"buggy": BuggyGraphMemory, "summary": SummaryGraphMemory, "fixed": None},
        GraphDiffusionMemory, _graph_watch,
    ),
    candidate_kind=(
        "a subclass of mahiax.model.memories.GraphDiffusionMemory whose training forward reads the "
        "nodes and moves them toward the batch (by s = write_rate toward the batch mean, or "
        "as the package memory does); after every step its nodes are compared with that "
        "update of the nodes the step started with"
    ),
    candidates=lambda: {
        "buggy": BuggyGraphMemory, "summary": SummaryGraphMemory,
        "fixed": GraphDiffusionMemory, "band-aid: copy_ under no_grad": NoGradCopyGraphMemory,
        "band-aid: .data.copy_": DataCopyGraphMemory,
        "wrong: the nodes never move": FrozenGraphMemory,
        "wrong: random nodes every step": RandomNodesGraphMemory,
    },
)

CONTROLLER_IMPORTANCE = BugEntry(
    id="controller-importance",
    section="2",
    lessons=("03b_controller_and_dwa", "07_train_and_watch"),
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
    candidate_kind="a subclass of mahiax.model.fabric.MetaController",
    candidates=lambda: {
        "buggy": BuggyController, "summary": SummaryController, "fixed": MetaController,
    },
)

TINY_MEMORY_WRITE = BugEntry(
    id="tiny-memory-write",
    section="2",
    lessons=("03a_memories",),
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
    runner=_memory_runner(
        "tiny-memory-write", "tiny_memory",
        {"buggy": BuggyTinyMemory, "summary": SummaryTinyMemory, "fixed": None}, TinyMemory,
        _tiny_watch,
    ),
    candidate_kind=(
        "a subclass of mahiax.model.memories.TinyMemory whose training forward reads the ring and "
        "remembers the batch summary x.detach().mean(dim=0) in slot count % num_slots, "
        "count + 1; after every step its slots and count are compared with a clean "
        "TinyMemory's"
    ),
    candidates=lambda: {
        "buggy": BuggyTinyMemory, "summary": SummaryTinyMemory, "fixed": TinyMemory,
        "band-aid: the write under no_grad": NoGradTinyMemory,
        "band-aid: the write through .data": DataWriteTinyMemory,
        "wrong: a memory that never writes": ForgetfulTinyMemory,
        "wrong: every summary into slot 0": SlotZeroTinyMemory,
    },
)

DWA_WEIGHTS = BugEntry(
    id="dwa-weights",
    section="2",
    lessons=("03b_controller_and_dwa",),
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
        "a subclass of mahiax.model.weighting.LossWeighting, built as cls(num_tasks): Dynamic "
        "Weight Averaging with one-step windows and T = 2 (weights all 1 until two steps were "
        "seen); its weights() are compared with "
        "mahiax.model.weighting.DynamicWeightAveraging fed the same losses"
    ),
    candidates=lambda: {
        "buggy": BuggyDWA, "summary": SummaryDWA, "fixed": OneStepDWA,
        "band-aid: the summary's copy_ through .data": DataWriteDWA,
        "band-aid: softmax(-L) from detached losses": DetachedSoftmaxWeighting,
    },
)

__all__ = [
    "BuggyController", "BuggyDWA", "BuggyGraphMemory", "BuggyTinyMemory",
    "DataCopyGraphMemory", "DataWriteDWA", "DataWriteTinyMemory", "DynamicWeightAveraging",
    "DetachedSoftmaxWeighting", "ForgetfulTinyMemory", "FrozenGraphMemory", "MemoryWatch",
    "NoGradCopyGraphMemory", "NoGradTinyMemory", "OneStepDWA", "RandomNodesGraphMemory",
    "SlotZeroTinyMemory", "StateRule",
    "SummaryController", "SummaryDWA",
    "SummaryGraphMemory", "SummaryTinyMemory",
]
