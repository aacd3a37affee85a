"""Summary section 3 and AMP: how the training loop calls backward.

- ``retain-graph``: one backward per loss fails the second time; the summary's
  ``retain_graph=True`` silences that, and with state that carries the graph across steps
  the graph and memory then grow every step until ``optimizer.step()`` changes a parameter an
  old graph saved, and an in-place error comes back (the summary's "persistent" error).
  Every variant, and a learner's loop, runs in that one setting.
- ``encode-multi-loss``: one forward per loss versus ``encode()`` once and one backward.
- ``amp-clip-before-unscale``: clipping scaled gradients with a GradScaler.

Every loop here is counted (:class:`PassCounter`): the checker asks for one forward and one
backward pass a step and no graph kept after its backward (:func:`loop_rules`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mahiax.bugs.catalog import BugEntry
from mahiax.bugs.harness import (
    Installer,
    StepContext,
    clean_loop,
    forward_losses,
    swap_class,
    train_variant,
)
from mahiax.bugs.outcome import Outcome, broken_rule, graph_nodes
from mahiax.bugs.stateful import BuggyGraphMemory
from mahiax.model.hybrid import HybridEfficientModel
from mahiax.model.weighting import LossWeighting
from mahiax.telemetry.categories import saved_names

# a reconstruction: the summary never says how often the original stepped; with an optimiser
# step every few micro-batches the retained graphs live long enough to show the in-place error
ACCUMULATE = 4


def _terms(ctx: StepContext, losses: torch.Tensor, aux: torch.Tensor) -> list[torch.Tensor]:
    w = ctx.weights.to(losses)
    terms = [w[k] * losses[k] for k in range(losses.numel())]
    terms[0] = terms[0] + aux  # the router's aux losses ride on the first term
    return terms


def _encode_and_losses(ctx: StepContext):
    losses, enc = ctx.model.losses(ctx.batch)  # (K,)
    ctx.weights = ctx.weighting.weights().detach().clone()
    return enc, losses


def backward_per_loss(retain: bool) -> Callable[[StepContext], None]:
    """One forward, then one ``backward()`` per task loss (``retain_graph`` as given)."""

    def loop(ctx: StepContext) -> None:
        enc, losses = _encode_and_losses(ctx)
        terms = _terms(ctx, losses, enc.router_loss(ctx.config))
        ctx.total, ctx.losses = sum(terms), losses
        ctx.zero_grad()
        for term in terms:
            if retain:
                term.backward(retain_graph=True)  # the summary's band-aid
            else:
                term.backward()  # the second call finds the graph freed

    return loop


def accumulating(loop: Callable[[StepContext], None], every: int) -> Callable:
    """Wrap ``loop`` so gradients accumulate and the optimiser steps every ``every`` steps.

    ``ctx.keep_grads`` tells ``ctx.zero_grad()`` to keep the cycle's gradients, and the
    harness to add the reference gradients up over the cycle the same way.
    """

    def wrapped(ctx: StepContext) -> None:
        ctx.keep_grads = ctx.step % every != 0  # clear only at the start of a cycle
        loop(ctx)
        if (ctx.step + 1) % every == 0:
            ctx.optimizer.step()  # mutates, in place, parameters the retained graphs saved
        ctx.did_step = True

    return wrapped


def forward_per_loss(ctx: StepContext) -> None:
    """The original: a whole forward for every loss, each backpropagated on its own."""
    ctx.zero_grad()
    k_tasks = len(ctx.config.tasks)
    for k in range(k_tasks):
        enc, losses = _encode_and_losses(ctx)
        term = ctx.weights.to(losses)[k] * losses[k] + (
            enc.router_loss(ctx.config) if k == 0 else 0.0
        )
        term.backward()
        ctx.total, ctx.losses = term, losses


class PassCounter:
    """Counts, per step, the forwards (``encode()`` calls) and backward passes of a loop.

    A forward hook on the fusion layer fires once per ``encode()``; a post-accumulate-grad
    hook on its weight fires once per backward pass that reaches the model (PyTorch runs it
    after the pass has added that parameter's gradient). Neither changes what is computed.
    """

    def __init__(self) -> None:
        self.forwards = 0
        self.backwards = 0

    def attach(self, model: HybridEfficientModel) -> None:
        model.fuse.register_forward_hook(lambda *_: self._count("forwards"))
        model.fuse.weight.register_post_accumulate_grad_hook(lambda _: self._count("backwards"))

    def _count(self, what: str) -> None:
        setattr(self, what, getattr(self, what) + 1)

    def reset(self) -> None:
        self.forwards = self.backwards = 0


def graph_retained(root: torch.Tensor | None) -> bool:
    """Does the graph behind ``root`` still hold saved tensors (``retain_graph=True``)?

    A backward frees every saved tensor it used, and reading one afterwards raises; a graph
    that still lets us read one was kept on purpose. The first node that saved a tensor
    answers for the whole pass (one backward frees all it ran, or keeps all).
    """
    for node in graph_nodes(root):
        for attr in saved_names(node):  # the meter's per-type cache of saved attributes
            if not attr.startswith("_saved_"):
                continue  # a custom Function's saved_tensors: not what backward frees here
            try:
                value = getattr(node, attr)
            except RuntimeError:  # "...access saved tensors after they have already been freed"
                return False
            if isinstance(value, torch.Tensor):
                return True
    return False


def loop_rules(out: Outcome) -> list[dict[str, str]]:
    """What lesson 04 teaches, checked on the counts: one forward and one backward a step,
    and no graph kept after its backward. Each broken rule as :func:`broken_rule` gives it."""
    broken = []
    f = out.figures.get("forwards_per_step")
    b = out.figures.get("backwards_per_step")
    if isinstance(f, int) and f > 1:
        broken.append(broken_rule(
            "one forward per loss",
            f"{f} forwards (encode() calls) a step: one forward per loss recomputes the "
            f"shared features {f} times; call encode() once and feed every head from it"))
    forwards = f if isinstance(f, int) and f > 0 else 1
    if isinstance(b, int) and b > forwards:  # more than one backward pass through a forward
        broken.append(broken_rule(
            "one backward per loss",
            f"{b} backward passes a step: each one walks the shared graph again, and every "
            f"pass but the last needs retain_graph=True to keep its saved tensors alive; "
            f"gradients add up, so backpropagate the weighted sum of the losses once"))
    elif out.figures.get("graph_retained"):
        broken.append(broken_rule(
            "retain_graph=True",
            "it keeps the graph's saved tensors after its backward (retain_graph=True), "
            "though nothing backpropagates through that graph again: drop retain_graph"))
    return broken


def train_counted(
    entry_id: str, variant: str, steps: int, loop: Callable[[StepContext], None],
    install: Installer | None = None, **kw,
) -> Outcome:
    """Train with ``loop``, counting forwards and backward passes at every step.

    The figures are the most seen in one step; ``rules_broken`` lists what
    :func:`loop_rules` found, for the checker.
    """
    counter = PassCounter()
    seen: list[dict] = []

    def install_all(model: HybridEfficientModel) -> LossWeighting | None:
        counter.attach(model)
        return install(model) if install is not None else None

    def counted(ctx: StepContext) -> None:
        counter.reset()
        loop(ctx)
        seen.append({
            "forwards": counter.forwards, "backwards": counter.backwards,
            "retained": graph_retained(ctx.total),
        })

    out = train_variant(entry_id, variant, steps, install=install_all, loop=counted, **kw)
    if seen:
        out.figures["forwards_per_step"] = max(s["forwards"] for s in seen)
        out.figures["backwards_per_step"] = max(s["backwards"] for s in seen)
        out.figures["graph_retained"] = any(s["retained"] for s in seen)
    out.figures["rules_broken"] = loop_rules(out)
    return out


def loop_candidate(entry_id: str, candidate: object) -> Callable[[StepContext], None]:
    if not callable(candidate):
        raise TypeError(f"a candidate for {entry_id!r} is a loop function loop(ctx)")
    return candidate  # type: ignore[return-value]


def detached_loop(ctx: StepContext) -> None:
    """The right step when the model carries state across steps: cut it, then one forward
    and one backward of the weighted sum (``clean_loop``)."""
    ctx.detach_state()
    clean_loop(ctx)


def _retained_sum_loop(ctx: StepContext) -> None:
    """One forward, one backward of the weighted sum, with ``retain_graph=True`` anyway."""
    total, losses = forward_losses(ctx)
    ctx.total, ctx.losses = total, losses
    ctx.zero_grad()
    total.backward(retain_graph=True)  # a band-aid on a loop that needs none


def after_detach(loop: Callable[[StepContext], None]) -> Callable[[StepContext], None]:
    def wrapped(ctx: StepContext) -> None:
        ctx.detach_state()
        loop(ctx)

    return wrapped


# --- retain-graph -----------------------------------------------------------------------
#
# The setting of every variant and of a learner's candidate: the original's memory, whose
# nodes carry the graph from step to step, and an optimiser step every ACCUMULATE
# micro-batches (a reconstruction: the summary does not say how often the original stepped).


def install_carried_state(model) -> None:
    swap_class(model.graph_memory, BuggyGraphMemory)


def _retain_graph_run(variant: str, steps: int, candidate: object = None) -> Outcome:
    loops = {
        "buggy": backward_per_loss(retain=False),
        "summary": backward_per_loss(retain=True),
        "fixed": detached_loop,
    }
    loop = loop_candidate("retain-graph", candidate) if variant == "candidate" else loops[variant]
    out = train_counted(
        "retain-graph", variant, steps, accumulating(loop, ACCUMULATE),
        install=install_carried_state,
    )
    out.memory_warmup_steps = ACCUMULATE  # AdamW's moments appear at the first step
    return out


def _retain_graph_candidates() -> dict[str, object]:
    return {
        "buggy": backward_per_loss(retain=False),
        "summary": backward_per_loss(retain=True),
        "fixed": detached_loop,
        "band-aid: retain_graph=True, carried state detached": after_detach(
            backward_per_loss(retain=True)
        ),
        "band-aid: one forward per loss, carried state detached": after_detach(
            forward_per_loss
        ),
        "band-aid: one backward of the sum, carried state kept": clean_loop,
        "band-aid: one backward of the sum with retain_graph=True": _retained_sum_loop,
    }


# --- encode-multi-loss ------------------------------------------------------------------


def _encode_run(variant: str, steps: int, candidate: object = None) -> Outcome:
    loops = {
        "buggy": forward_per_loss,
        "summary": backward_per_loss(retain=True),
        "fixed": clean_loop,
    }
    loop = (
        loop_candidate("encode-multi-loss", candidate) if variant == "candidate"
        else loops[variant]
    )
    return train_counted("encode-multi-loss", variant, steps, loop)


def _encode_candidates() -> dict[str, object]:
    return {
        "buggy": forward_per_loss,
        "summary": backward_per_loss(retain=True),
        "fixed": clean_loop,
        "band-aid: retain_graph=True, one backward per loss": backward_per_loss(retain=True),
        "band-aid: one backward of the sum with retain_graph=True": _retained_sum_loop,
    }


# --- AMP: clipping before unscale -------------------------------------------------------

MAX_NORM = 1.0


def amp_loop(
    unscale_first: bool, retain: bool = False, clip: str = "before step"
) -> Callable[[StepContext], None]:
    """fp16-style step with a GradScaler; clip before or after ``scaler.unscale_``.

    ``clip``: ``"before step"`` (where clipping belongs), ``"after step"`` (a wrong order:
    the update already used the unclipped gradients) or ``"never"``.
    """
    scalers: dict[int, torch.amp.GradScaler] = {}

    def loop(ctx: StepContext) -> None:
        device_type = ctx.batch.tabular.device.type  # the scaler lives where the grads do
        scaler = scalers.setdefault(id(ctx.optimizer), torch.amp.GradScaler(device_type))
        total, losses = forward_losses(ctx)
        ctx.total, ctx.losses = total, losses
        ctx.zero_grad()
        scaler.scale(total).backward(retain_graph=retain)
        if unscale_first:
            scaler.unscale_(ctx.optimizer)  # true gradients first...
        if clip == "before step":
            torch.nn.utils.clip_grad_norm_(ctx.model.parameters(), MAX_NORM)  # ...then clip
        scaler.step(ctx.optimizer)  # unscales here if not done yet: too late for the clip
        scaler.update()
        if clip == "after step":  # clips .grad after the update used it: changes nothing
            torch.nn.utils.clip_grad_norm_(ctx.model.parameters(), MAX_NORM)
        ctx.did_step = True

    return loop


def optimizer_step_rule(out: Outcome) -> list[dict[str, str]]:
    """The optimiser must step exactly once a training step (``figures["optimizer_steps"]``,
    counted by the harness): each broken count, as :func:`broken_rule` gives it."""
    counts = sorted({c for c in out.figures.get("optimizer_steps") or [] if c != 1})
    if not counts:
        return []
    if counts[0] == 0:
        return [broken_rule("no optimiser step", "the optimiser did not step in a training "
                            "step: call scaler.step(optimizer)")]
    return [broken_rule(
        "optimiser stepped twice",
        f"the optimiser stepped {counts[-1]} times in one training step: scaler.step(optimizer) "
        "steps it once; set ctx.did_step = True so the harness does not step it again")]


def _amp_run(variant: str, steps: int, candidate: object = None) -> Outcome:
    loops = {
        "buggy": amp_loop(unscale_first=False),
        "summary": amp_loop(unscale_first=False, retain=True),
        "fixed": amp_loop(unscale_first=True),
    }
    loop = (
        loop_candidate("amp-clip-before-unscale", candidate) if variant == "candidate"
        else loops[variant]
    )
    # the gradients compared are those optimizer.step() found when it ran: what the update
    # used, whatever the loop does to .grad afterwards
    out = train_counted(
        "amp-clip-before-unscale", variant, steps, loop, reference_clip=MAX_NORM,
        grads_at_step=True,
    )
    out.figures["rules_broken"] = out.figures["rules_broken"] + optimizer_step_rule(out)
    # the damage is the gradient the optimiser really applied
    out.state_diff = out.max_grad_diff
    out.figures["damage"] = "largest error of the applied gradient vs unscale-then-clip"
    return out


def _amp_candidates() -> dict[str, object]:
    return {
        "buggy": amp_loop(unscale_first=False),
        "summary": amp_loop(unscale_first=False, retain=True),
        "fixed": amp_loop(unscale_first=True),
        "band-aid: unscale first, with retain_graph=True": amp_loop(
            unscale_first=True, retain=True
        ),
        "band-aid: clip after scaler.step()": amp_loop(unscale_first=False, clip="after step"),
        "band-aid: no clipping": amp_loop(unscale_first=False, clip="never"),
    }


LOOP_KIND = (
    "a loop function loop(ctx) for one step: set ctx.weights "
    "(ctx.weighting.weights().detach()), ctx.losses and ctx.total, call ctx.zero_grad(), then "
    "backward; counted: one encode() and one backward pass a step, no retained graph"
)

RETAIN_GRAPH = BugEntry(
    id="retain-graph",
    section="3",
    lessons=("04_retain_graph_and_encode",),
    component="training loop",
    title="retain_graph=True as the cure for 'backward through the graph a second time'",
    pattern="for loss in losses: loss.backward()",
    summary_fix="loss.backward(retain_graph=True)  # and scaler.scale(loss).backward(...)",
    right_fix="detach carried state; one backward of the weighted sum of the losses",
    explanation=(
        "A second backward() through one graph fails because the first freed it. "
        "retain_graph=True keeps the graph's saved tensors until the graph itself dies; on its "
        "own that is one step's graph, freed when the step's tensors are dropped. With state "
        "that was never detached (the original's memory nodes), each step's graph is linked "
        "to the last: graph and memory grow every "
        "step, and once optimizer.step() updates a parameter an old graph saved, backward "
        "fails again with an in-place error. Detach the carried state and backpropagate the "
        "weighted sum once: no retained graph needed."
    ),
    runner=_retain_graph_run,
    steps=8,
    candidate_kind=(
        LOOP_KIND + "; run with the original's graph memory (its nodes carry the graph across "
        f"steps: call ctx.detach_state() first) and an optimiser step every {ACCUMULATE} "
        "micro-batches (ctx.zero_grad() keeps the gradients within a cycle)"
    ),
    candidates=_retain_graph_candidates,
)

ENCODE_MULTI_LOSS = BugEntry(
    id="encode-multi-loss",
    section="3",
    lessons=("04_retain_graph_and_encode",),
    component="HybridEfficientModel",
    title="One forward per loss",
    pattern="for task in tasks: loss = loss_fn(model(batch)[task]); loss.backward()",
    summary_fix="encode() once, then loss.backward(retain_graph=True) per loss",
    right_fix="encode() once, one backward of the weighted sum",
    explanation=(
        "Gradients add up, so one backward of sum_k w_k L_k equals the sum of K backwards, "
        "and one encode() feeds every head. The original paid K forwards; the summary's "
        "version pays K backwards over a retained graph; both give the same gradients as "
        "the fixed loop, which does one of each. The verdict judges the summary's claim "
        "(encode() once removes the extra forwards); the checker also asks for one backward."
    ),
    runner=_encode_run,
    steps=4,
    candidate_kind=LOOP_KIND,
    candidates=_encode_candidates,
)

AMP_CLIP_BEFORE_UNSCALE = BugEntry(
    id="amp-clip-before-unscale",
    section="AMP (not in the summary)",
    lessons=("08_amp_and_clipping",),
    component="PrecisionManager",
    title="Gradient clipping before scaler.unscale_",
    pattern="scaler.scale(loss).backward(); clip_grad_norm_(params, 1.0); scaler.step(opt)",
    summary_fix="scaler.scale(loss).backward(retain_graph=True)  # the summary's only AMP change",
    right_fix="scaler.unscale_(opt) before clip_grad_norm_",
    explanation=(
        "With a GradScaler the gradients are multiplied by the scale (65536 at the start). "
        "Clipping them compares the scaled norm with max_norm: whenever the scaled norm is "
        "above max_norm (almost always), the gradient the optimiser applies after "
        "scaler.step() unscales has norm max_norm / scale, whatever the true norm was. No "
        "error: with SGD every step shrinks by the scale and training crawls; with Adam or "
        "AdamW the shared factor cancels and every step's gradient is normalised to one "
        "norm, so a spike is never cut (lessons 08 and 10). Unscale first, then clip "
        "(PyTorch AMP examples, "
        "'Working with Unscaled Gradients')."
    ),
    runner=_amp_run,
    steps=4,
    candidate_kind=(
        LOOP_KIND + "; it also clips to max_norm=1.0, calls scaler.step and scaler.update, and "
        "sets ctx.did_step = True; graded on the gradients optimizer.step() finds when it runs "
        "(a clip after the step comes too late)"
    ),
    candidates=_amp_candidates,
)
