"""Summary section 3 and AMP: how the training loop calls backward.

- ``retain-graph``: one backward per loss fails the second time; the summary's
  ``retain_graph=True`` silences that, and with state that carries the graph across steps
  the graph and memory then grow every step until ``optimizer.step()`` changes a parameter an
  old graph saved, and an in-place error comes back (the summary's "persistent" error).
- ``encode-multi-loss``: one forward per loss versus ``encode()`` once and one backward.
- ``amp-clip-before-unscale``: clipping scaled gradients with a GradScaler.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from mahiax.bugs.catalog import BugEntry, register
from mahiax.bugs.harness import StepContext, clean_loop, forward_losses, swap_class, train_variant
from mahiax.bugs.outcome import Outcome
from mahiax.bugs.stateful import BuggyGraphMemory

ACCUMULATE = 4  # the summary-era loop stepped the optimiser every few micro-batches


def _terms(ctx: StepContext, losses: torch.Tensor, aux: torch.Tensor) -> list[torch.Tensor]:
    w = ctx.weights.to(losses)
    terms = [w[k] * losses[k] for k in range(losses.numel())]
    terms[0] = terms[0] + aux  # the router's aux losses ride on the first term
    return terms


def _aux(ctx: StepContext, enc) -> torch.Tensor:
    return ctx.config.aux_loss_coef * enc.aux_loss + ctx.config.z_loss_coef * enc.z_loss


def _encode_and_losses(ctx: StepContext):
    m = ctx.model
    enc = m.encode(ctx.batch)
    losses = m.task_losses(m.heads_forward(enc.features), ctx.batch.targets)
    ctx.weights = ctx.weighting.weights().detach().clone()
    return enc, losses


def backward_per_loss(retain: bool) -> Callable[[StepContext], None]:
    """One forward, then one ``backward()`` per task loss (``retain_graph`` as given)."""

    def loop(ctx: StepContext) -> None:
        enc, losses = _encode_and_losses(ctx)
        terms = _terms(ctx, losses, _aux(ctx, enc))
        ctx.total, ctx.losses = sum(terms), losses
        ctx.zero_grad()
        for term in terms:
            if retain:
                term.backward(retain_graph=True)  # the summary's band-aid
            else:
                term.backward()  # the second call finds the graph freed
        ctx.figures["backwards_per_step"] = len(terms)

    return loop


def accumulating(loop: Callable[[StepContext], None], every: int) -> Callable:
    """Wrap ``loop`` so gradients accumulate and the optimiser steps every ``every`` steps."""

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
        term = ctx.weights.to(losses)[k] * losses[k] + (_aux(ctx, enc) if k == 0 else 0.0)
        term.backward()
        ctx.total, ctx.losses = term, losses
    ctx.figures["forwards_per_step"] = k_tasks


def _timed(loop: Callable[[StepContext], None], forwards: int, backwards: int) -> Callable:
    def wrapped(ctx: StepContext) -> None:
        t0 = time.perf_counter()
        loop(ctx)
        ctx.figures.setdefault("forwards_per_step", forwards)
        ctx.figures.setdefault("backwards_per_step", backwards)
        ctx.figures["step_seconds"] = time.perf_counter() - t0

    return wrapped


def _collect_figures(out: Outcome, ctx_figures: list[dict]) -> None:
    if not ctx_figures:
        return
    last = ctx_figures[-1]
    out.figures["forwards_per_step"] = last.get("forwards_per_step")
    out.figures["backwards_per_step"] = last.get("backwards_per_step")
    times = sorted(f["step_seconds"] for f in ctx_figures if "step_seconds" in f)
    if times:
        out.figures["median_step_seconds"] = times[len(times) // 2]


def _train_loop(entry_id: str, variant: str, steps: int, loop, **kw) -> Outcome:
    seen: list[dict] = []

    def keep(ctx: StepContext) -> None:
        loop(ctx)
        seen.append(dict(ctx.figures))

    out = train_variant(entry_id, variant, steps, loop=keep, **kw)
    _collect_figures(out, seen)
    return out


# --- retain-graph -----------------------------------------------------------------------


def _retain_graph_run(variant: str, steps: int, candidate: object = None) -> Outcome:
    if variant == "buggy":
        return _train_loop("retain-graph", variant, steps, backward_per_loss(retain=False))
    if variant == "summary":
        # the summary's loop: retain_graph=True, the original's graph-carrying memory, and
        # an optimiser step every ACCUMULATE micro-batches
        return _train_loop(
            "retain-graph", variant, steps,
            accumulating(backward_per_loss(retain=True), ACCUMULATE),
            install=lambda m: swap_class(m.graph_memory, BuggyGraphMemory),
            reference=False,
        )
    if variant == "candidate":
        if not callable(candidate):
            raise TypeError("a candidate for 'retain-graph' is a loop function loop(ctx)")
        return _train_loop("retain-graph", variant, steps, candidate)
    return _train_loop("retain-graph", variant, steps, clean_loop)


# --- encode-multi-loss ------------------------------------------------------------------


def _encode_run(variant: str, steps: int, candidate: object = None) -> Outcome:
    k = 3  # tasks of the harness config
    loops = {
        "buggy": _timed(forward_per_loss, k, k),
        "summary": _timed(backward_per_loss(retain=True), 1, k),
        "fixed": _timed(clean_loop, 1, 1),
    }
    if variant == "candidate":
        if not callable(candidate):
            raise TypeError("a candidate for 'encode-multi-loss' is a loop function loop(ctx)")
        return _train_loop("encode-multi-loss", variant, steps, _timed(candidate, 0, 0))
    return _train_loop("encode-multi-loss", variant, steps, loops[variant])


# --- AMP: clipping before unscale -------------------------------------------------------

MAX_NORM = 1.0


def amp_loop(unscale_first: bool, retain: bool = False) -> Callable[[StepContext], None]:
    """fp16-style step with a GradScaler; clip before or after ``scaler.unscale_``."""
    scalers: dict[int, torch.amp.GradScaler] = {}

    def loop(ctx: StepContext) -> None:
        scaler = scalers.setdefault(id(ctx.optimizer), torch.amp.GradScaler("cpu"))
        total, losses = forward_losses(ctx)
        ctx.total, ctx.losses = total, losses
        ctx.zero_grad()
        scaler.scale(total).backward(retain_graph=retain)
        if unscale_first:
            scaler.unscale_(ctx.optimizer)  # true gradients first...
        torch.nn.utils.clip_grad_norm_(ctx.model.parameters(), MAX_NORM)  # ...then clip
        scaler.step(ctx.optimizer)  # unscales here if not done yet: too late for the clip
        scaler.update()
        ctx.did_step = True

    return loop


def _amp_run(variant: str, steps: int, candidate: object = None) -> Outcome:
    loops = {
        "buggy": amp_loop(unscale_first=False),
        "summary": amp_loop(unscale_first=False, retain=True),
        "fixed": amp_loop(unscale_first=True),
    }
    if variant == "candidate":
        if not callable(candidate):
            raise TypeError("a candidate for 'amp-clip-before-unscale' is a loop function")
        loop = candidate
    else:
        loop = loops[variant]
    out = train_variant(
        "amp-clip-before-unscale", variant, steps, loop=loop, reference_clip=MAX_NORM
    )
    # the damage is the gradient the optimiser really applied
    out.state_diff = out.max_grad_diff
    out.figures["damage"] = "largest error of the applied gradient vs unscale-then-clip"
    return out


register(BugEntry(
    id="retain-graph",
    section="3",
    component="training loop",
    title="retain_graph=True as the cure for 'backward through the graph a second time'",
    pattern="for loss in losses: loss.backward()",
    summary_fix="loss.backward(retain_graph=True)  # and scaler.scale(loss).backward(...)",
    right_fix="detach carried state; one backward of the weighted sum of the losses",
    explanation=(
        "A second backward() through one graph fails because the first freed it. "
        "retain_graph=True keeps every graph alive, and state that was never detached links "
        "each step's graph to the last: graph and memory grow every step, and once "
        "optimizer.step() updates a parameter an old graph saved, backward fails again with "
        "an in-place error. One backward of the weighted sum needs no retained graph."
    ),
    runner=_retain_graph_run,
    steps=8,
    candidate_kind="a loop function loop(ctx) doing one step's forward and backward",
))

register(BugEntry(
    id="encode-multi-loss",
    section="3",
    component="HybridEfficientModel",
    title="One forward per loss",
    pattern="for task in tasks: loss = loss_fn(model(batch)[task]); loss.backward()",
    summary_fix="encode() once, then loss.backward(retain_graph=True) per loss",
    right_fix="encode() once, one backward of the weighted sum",
    explanation=(
        "Gradients add up, so one backward of sum_k w_k L_k equals the sum of K backwards, "
        "and one encode() feeds every head. The original paid K forwards; the summary's "
        "version pays K backwards over a retained graph; both give the same gradients as "
        "the fixed loop, which does one of each."
    ),
    runner=_encode_run,
    steps=4,
    candidate_kind="a loop function loop(ctx)",
))

register(BugEntry(
    id="amp-clip-before-unscale",
    section="AMP (not in the summary)",
    component="PrecisionManager",
    title="Gradient clipping before scaler.unscale_",
    pattern="scaler.scale(loss).backward(); clip_grad_norm_(params, 1.0); scaler.step(opt)",
    summary_fix="scaler.scale(loss).backward(retain_graph=True)  # the summary's only AMP change",
    right_fix="scaler.unscale_(opt) before clip_grad_norm_",
    explanation=(
        "With a GradScaler the gradients are multiplied by the scale (65536 at the start). "
        "Clipping them compares a norm 65536 times too large with max_norm, so every step is "
        "shrunk to almost nothing once scaler.step() unscales. No error: training just "
        "stalls. Unscale first, then clip (PyTorch AMP examples, 'gradient clipping')."
    ),
    runner=_amp_run,
    steps=4,
    candidate_kind="a loop function loop(ctx) that does the backward, clipping and step",
))
