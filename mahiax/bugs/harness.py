"""The measuring harness: train a small float64 model with one variant installed, step by step.

Every run is fresh and leaves no trace: a new model from a fixed seed, its own data
generator, the RNG forked, anomaly mode and grad mode restored afterwards. At each step the
harness records the autograd graph size, the live tensor bytes and memory by category
(MemoryMeter, on the device the model trains on; the graph is read after the step's backward, so
"saved for backward" is what the graph still holds: 0 unless it was retained), and the largest
difference between the variant's gradients and those of the **clean** package model loaded
with the same weights and state at the start of the step (float64, so 1e-6 is a real bound).
Exceptions are caught and recorded with their step, type and PyTorch's own message.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from mahiax import metric_keys as mk
from mahiax.bugs.outcome import Outcome, graph_size
from mahiax.config import MahiaConfig, tiny
from mahiax.errors import BadInput
from mahiax.model.data import Batch, SyntheticMultiTask
from mahiax.model.hybrid import HybridEfficientModel
from mahiax.model.weighting import FixedWeighting, LossWeighting, make_weighting
from mahiax.training.objective import Objective, finish_step, make_optimizer, objective

if TYPE_CHECKING:
    from mahiax.telemetry import MemoryMeter

SEED = 1234


def harness_config() -> MahiaConfig:
    """The catalog's model: the tiny preset with DWA windows of 2 steps."""
    return tiny().replace(seed=SEED, dwa_window=2, lr=1e-3, warmup_steps=0)


@dataclass(kw_only=True)
class StepContext:
    """What a loop function gets for one step; it fills ``total`` and does the backward."""

    model: HybridEfficientModel
    weighting: LossWeighting
    optimizer: torch.optim.Optimizer
    batch: Batch
    step: int
    config: MahiaConfig
    total: torch.Tensor | None = None  # the loss whose graph is measured
    losses: torch.Tensor | None = None  # (K,) this step's task losses
    weights: torch.Tensor | None = None  # (K,) weights used (detached) for the reference
    did_step: bool = False  # the loop already called optimizer.step()
    keep_grads: bool = False  # accumulate: zero_grad() leaves the gradients alone
    figures: dict[str, float] = field(default_factory=dict)

    def zero_grad(self) -> None:
        """Clear gradients before this step's backward, unless accumulating."""
        if not self.keep_grads:
            self.optimizer.zero_grad(set_to_none=True)

    def finish(self) -> None:
        """The step's tail, as the trainer ends its steps: the optimiser step (unless the loop
        took it), then :func:`mahiax.training.objective.finish_step` (commit, weighting update)."""
        if not self.did_step:
            self.optimizer.step()
        finish_step(self.model, self.weighting, self.losses)

    def detach_state(self) -> None:
        """Cut the state the model carries from step to step off the graph that computed it.

        A buffer rebound to a value computed from live activations (lesson 03a's original
        GraphDiffusionMemory) links this step's graph to the last one; the next backward then
        walks into a graph that was already freed. Detaching the carried state at the start
        of a step (truncated backpropagation's ``h = h.detach()``) starts a fresh graph: the
        values stay, the history goes.
        """
        for owner in (self.model, self.weighting):
            for module in owner.modules():
                for name, buf in list(module.named_buffers(recurse=False)):
                    if buf.requires_grad:
                        setattr(module, name, buf.detach())


def forward_losses(ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
    """The trainer's objective (:func:`mahiax.training.objective.objective`): one encode(), every
    head, the weighted total with the router's terms; sets ``ctx.weights``."""
    obj = objective(ctx.model, ctx.weighting, ctx.batch)
    ctx.weights = obj.weights
    return obj.total, obj.losses


def clean_loop(ctx: StepContext) -> None:
    """The package's loop: one forward, one backward of the weighted sum."""
    total, losses = forward_losses(ctx)
    ctx.total, ctx.losses = total, losses
    ctx.zero_grad()
    total.backward()


class Reference:
    """The clean package model, loaded with a variant's weights and state, one step at a time.

    Its loss is the trainer's objective (:func:`mahiax.training.objective.objective`) with the loss
    weights the variant had in force. Built once per run and reloaded every step (building a
    model per step would cost more than the step). It runs with anomaly mode off: it is the
    yardstick, not the suspect.
    """

    def __init__(self, config: MahiaConfig, device: torch.device | None = None):
        self.config = config
        with torch.random.fork_rng():
            self.model = HybridEfficientModel(config).double().to(device or "cpu")

    def objective(
        self, state: dict[str, torch.Tensor], batch: Batch, weights: torch.Tensor
    ) -> Objective:
        """The trainer's objective on ``batch`` with ``state`` loaded and fixed loss
        ``weights`` (K,), in training mode."""
        self.model.load_state_dict(state)
        self.model.train()
        return objective(self.model, FixedWeighting(weights), batch)

    def grads(
        self, state: dict[str, torch.Tensor], batch: Batch, weights: torch.Tensor,
        clip: float | None = None, accumulate: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Gradients on ``batch`` with ``state`` loaded and fixed loss ``weights`` (clipped to
        a global norm of ``clip`` when given, as a correct AMP step would be); with
        ``accumulate``, added to the previous call's, as gradient accumulation does."""
        ref = self.model
        if not accumulate:
            ref.zero_grad(set_to_none=True)
        with torch.autograd.set_detect_anomaly(False):
            self.objective(state, batch, weights).total.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(ref.parameters(), clip)
        return {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}


def max_grad_diff(
    model: torch.nn.Module, ref: dict[str, torch.Tensor],
    grads: dict[str, torch.Tensor] | None = None,
) -> float:
    """Largest absolute difference between the model's gradients and the reference's.

    ``grads`` (name -> gradient) replaces the model's ``.grad`` when given: the gradients
    the optimiser stepped with, captured at its step (:func:`_one_step`); a parameter
    missing from it had no gradient."""
    worst = 0.0
    for name, p in model.named_parameters():
        g, r = (p.grad if grads is None else grads.get(name)), ref.get(name)
        if g is None and r is None:
            continue
        g = torch.zeros_like(p) if g is None else g
        r = torch.zeros_like(p) if r is None else r
        worst = max(worst, float((g.double() - r.double()).abs().max()))
    return worst


@contextlib.contextmanager
def isolated(anomaly: bool = False) -> Iterator[None]:
    """Fork the RNG and restore anomaly and grad mode, whatever happens inside."""
    was_anomaly = torch.is_anomaly_enabled()
    was_grad = torch.is_grad_enabled()
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        torch.autograd.set_detect_anomaly(anomaly or was_anomaly)  # an outer mode stays on
        try:
            yield
        finally:
            torch.autograd.set_detect_anomaly(was_anomaly)
            torch.set_grad_enabled(was_grad)


# the device catalog runs train on (see `on_device`); the CPU unless a caller asks otherwise
_DEVICE: ContextVar[torch.device | None] = ContextVar("mahiax_bugs_device", default=None)


def current_device() -> torch.device:
    """The device that catalog runs started here train on (``on_device`` sets it)."""
    return _DEVICE.get() or torch.device("cpu")


@contextlib.contextmanager
def on_device(device: str | torch.device) -> Iterator[torch.device]:
    """Run every catalog run started inside on ``device`` ("cpu", "cuda", "cuda:N").

    The model is still built on the CPU from the same seed and then moved, so a variant
    starts from the same weights on every device; the batches, the loss weighting and the
    clean reference move with it. An unknown or absent device is refused here, with what is
    allowed, before anything runs.
    """
    try:
        dev = torch.device(device)
    except RuntimeError:  # torch's own message lists every backend it knows, not ours
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise BadInput(f"catalog device {str(device)!r} is not supported; allowed: cpu, cuda")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BadInput(f"catalog device {str(device)!r}: no CUDA device here; allowed: cpu")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    token = _DEVICE.set(dev)
    try:
        yield dev
    finally:
        _DEVICE.reset(token)


# a context factory that every train_variant run inside `watching_mutations()` is wrapped in
_AMBIENT: ContextVar[Callable | None] = ContextVar("mahiax_bugs_ambient", default=None)
# a callback that sees every step of every run started inside `observing(...)`
_OBSERVER: ContextVar[Callable[[dict], None] | None] = ContextVar(
    "mahiax_bugs_observer", default=None
)


@contextlib.contextmanager
def observing(callback: Callable[[dict], None]) -> Iterator[None]:
    """Call ``callback(row)`` after every step of catalog runs started inside.

    ``row`` has ``step``, ``variant``, ``graph_nodes``, ``loss`` and ``loss/<task>``, memory
    by category (``mem/params``, ``mem/grads``, ``mem/optimizer``, ``mem/saved``), and
    ``tensor_bytes`` / ``grad_diff`` when measured: what ``mahiax train --bug`` records live.
    """
    token = _OBSERVER.set(callback)
    try:
        yield
    finally:
        _OBSERVER.reset(token)


# a callback that sees the trainer and the record of every step of catalog runs that train
# with mahiax.training.trainer.Trainer itself (router-collapse), started inside
# `observing_trainer(...)`
_TRAINER_OBSERVER: ContextVar[Callable[[object, object], None] | None] = ContextVar(
    "mahiax_bugs_trainer_observer", default=None
)


@contextlib.contextmanager
def observing_trainer(callback: Callable[[object, object], None]) -> Iterator[None]:
    """Call ``callback(trainer, record)`` after every step of the catalog runs started inside
    that train with :class:`mahiax.training.trainer.Trainer`: a recording hands them to the training
    probe, so the store gets the full telemetry (expert load, bias, memory) of a normal run."""
    token = _TRAINER_OBSERVER.set(callback)
    try:
        yield
    finally:
        _TRAINER_OBSERVER.reset(token)


def trainer_observer() -> Callable[[object, object], None] | None:
    """The callback of the innermost :func:`observing_trainer`, or None."""
    return _TRAINER_OBSERVER.get()


@contextlib.contextmanager
def watching_mutations() -> Iterator[list]:
    """Run every catalog run started inside under :func:`mahiax.telemetry.locator.locate_mutations`.

    Yields the list of locators, one per training run, filled as runs happen.
    """
    from mahiax.telemetry.locator import locate_mutations

    locators: list = []

    @contextlib.contextmanager
    def factory(model: torch.nn.Module) -> Iterator[object]:
        with locate_mutations(model) as loc:
            locators.append(loc)
            yield loc

    token = _AMBIENT.set(factory)
    try:
        yield locators
    finally:
        _AMBIENT.reset(token)


Installer = Callable[[HybridEfficientModel], LossWeighting | None]
LoopFn = Callable[[StepContext], None]


def train_variant(
    entry: str,
    variant: str,
    steps: int,
    install: Installer | None = None,
    loop: LoopFn = clean_loop,
    config: MahiaConfig | None = None,
    anomaly: bool = False,
    reference: bool = True,
    reference_clip: float | None = None,
    grads_at_step: bool = False,
    measure_memory: bool = True,
    data_config: MahiaConfig | None = None,
    prepare: Callable[[Batch], Batch] | None = None,
    context: Callable[[HybridEfficientModel], contextlib.AbstractContextManager] | None = None,
    on_step: Callable[[StepContext, Outcome], None] | None = None,
) -> Outcome:
    """Train the float64 tiny model with ``install`` applied, measuring every step.

    ``install(model)`` swaps components for the variant's (it may return a replacement loss
    weighting); ``loop(ctx)`` does one step's forward and backward (default: the clean one);
    ``data_config`` lets a variant feed data the model was not built for (bug 1), and
    ``prepare`` transforms each batch first (a learner's data-side fix); ``context(model)``
    wraps the whole run (the mutation locator). With ``grads_at_step`` the gradients compared
    with the reference are those ``optimizer.step()`` found when it ran (a loop can change
    ``.grad`` after the step, which the update never saw), and ``figures["optimizer_steps"]``
    counts the optimiser steps of each training step.
    """
    config = config or harness_config()
    device = current_device()
    from mahiax.telemetry import MemoryMeter  # late: telemetry imports are heavier

    out = Outcome(entry=entry, variant=variant, steps_requested=steps)
    memory_every = max(1, steps // 20)  # ~20 readings per run; each one scans every object
    out.memory_every = memory_every
    with isolated(anomaly):
        model = HybridEfficientModel(config).double()  # built on the CPU: same weights anywhere
        weighting = (install(model) if install else None) or make_weighting(config)
        model, weighting = model.to(device), weighting.double().to(device)
        # the meter measures the device the catalog's model lives on (CPU unless on_device)
        meter = MemoryMeter(next(model.parameters()).device) if measure_memory else None
        optimizer = make_optimizer(list(model.parameters()) + list(weighting.parameters()), config)
        data = SyntheticMultiTask(data_config or config)
        worst: float | None = None  # stays None until a step's gradients were compared
        ref = Reference(config, device) if reference else None
        context = context or _AMBIENT.get()
        around = context(model) if context is not None else contextlib.nullcontext()
        with around:
            for step in range(steps):
                raw = data.batch(step)
                raw = prepare(raw) if prepare is not None else raw
                batch = Batch(tokens=raw.tokens, tabular=raw.tabular.double(),
                              targets=raw.targets).to(device)
                ctx = StepContext(model=model, weighting=weighting, optimizer=optimizer,
                                  batch=batch, step=step, config=config)
                try:
                    diff = _one_step(ctx, loop, ref, reference_clip, meter, grads_at_step)
                except Exception as e:  # the point: record PyTorch's own error and step
                    out.error_type, out.error_message, out.error_step = (
                        type(e).__name__, str(e), step,
                    )
                    break
                out.graph_nodes.append(ctx.figures.pop("graph_nodes"))
                if grads_at_step:
                    out.figures.setdefault("optimizer_steps", []).append(
                        ctx.figures.pop("optimizer_steps"))
                memory = ctx.figures.pop("memory", None)  # MemoryCategories, or None
                if memory is not None:
                    out.memory_categories.append({"step": step, **memory.to_dict()})
                if diff is not None:
                    worst = max(worst or 0.0, diff)
                out.steps_run += 1
                if on_step is not None:
                    on_step(ctx, out)
                row = _row(ctx, out, diff)
                if memory is not None:
                    row.update(memory.as_metrics())  # mem/params, mem/saved, ...
                del ctx
                if meter is not None and (step % memory_every == 0 or step == steps - 1):
                    reading = meter.read()  # CPU: a gc scan; CUDA: the allocator
                    held = reading.tensor_bytes if reading.tensor_bytes is not None else (
                        reading.allocated or 0
                    )
                    out.tensor_bytes.append(held)
                    row[mk.TENSOR_BYTES] = out.tensor_bytes[-1]
                observer = _OBSERVER.get()
                if observer is not None:
                    observer(row)
        out.max_grad_diff = worst
        out.final_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return out


def _row(ctx: StepContext, out: Outcome, diff: float | None) -> dict:
    """What an observer sees of one finished step: its step and variant, and the store keys
    of :mod:`mahiax.metric_keys` a catalog run records."""
    row: dict = {"step": ctx.step, "variant": out.variant, mk.GRAPH_NODES: out.graph_nodes[-1]}
    if ctx.losses is not None:
        losses = ctx.losses.detach().tolist()
        row.update({mk.task_loss(t): v for t, v in zip(ctx.config.tasks, losses, strict=True)})
        row[mk.LOSS] = float(sum(losses))
    if diff is not None:
        row[mk.GRAD_DIFF] = diff
    return row


def _one_step(
    ctx: StepContext, loop: LoopFn, reference: Reference | None, reference_clip: float | None,
    meter: MemoryMeter | None = None, grads_at_step: bool = False,
) -> float | None:
    """One step: the variant's loop, the reference gradients, the optimiser step, commit.

    Returns the largest gradient difference from the clean reference (None if not measured):
    of the gradients in ``.grad`` after the loop, or with ``grads_at_step`` of those the
    optimiser stepped with (the last step's, when it stepped more than once; none when it
    never stepped), read by an optimizer step pre-hook.
    """
    model = ctx.model
    start_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.train()
    stepped: list[dict[str, torch.Tensor]] = []  # per optimizer.step(): name -> gradient
    named = list(model.named_parameters())

    def read_grads(*_: object) -> None:  # (optimizer, args, kwargs): reads, changes nothing
        stepped.append({n: p.grad.detach().clone() for n, p in named if p.grad is not None})

    hook = ctx.optimizer.register_step_pre_hook(read_grads) if grads_at_step else None
    ref = None
    try:
        loop(ctx)
        ctx.figures["graph_nodes"] = graph_size(ctx.total)
        if meter is not None:  # after the backward: what the step's graph still holds
            ctx.figures["memory"] = meter.categories(
                (model, ctx.weighting), ctx.optimizer, ctx.total)
        if reference is not None and ctx.weights is not None:
            # ctx.keep_grads: the loop kept the cycle's gradients (accumulation): so does the
            # reference
            ref = reference.grads(
                start_state, ctx.batch, ctx.weights, reference_clip, accumulate=ctx.keep_grads
            )
        # the gradients left in .grad, before the harness's own optimiser step (if any)
        left = None if ref is None or grads_at_step else max_grad_diff(model, ref)
        ctx.finish()  # the optimiser step (unless the loop took it), commit, weighting update
    finally:
        if hook is not None:
            hook.remove()
    ctx.total = None  # drop this step's graph before memory is measured
    if grads_at_step:
        ctx.figures["optimizer_steps"] = len(stepped)
    if ref is None:
        return None
    if grads_at_step:  # the last step's gradients; no step: no gradient was applied
        return max_grad_diff(model, ref, stepped[-1] if stepped else {})
    return left


def swap_class(module: torch.nn.Module, cls: type) -> None:
    """Turn ``module`` into a ``cls``: a variant subclass with the same parameters and state.

    The variants override methods only, so the weights, buffers and state-dict keys stay the
    clean module's, and the clean reference can load the variant's state.
    """
    if not (isinstance(cls, type) and issubclass(cls, type(module))):
        raise TypeError(f"{cls.__name__} is not a variant of {type(module).__name__}")
    module.__class__ = cls
