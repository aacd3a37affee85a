# Source of notebooks/04_retain_graph_and_encode.ipynb (built by notebooks/build.py).

# %% [markdown]
# # 04 · `retain_graph=True` hides the error; `encode()` + one backward removes it
#
# **Goal.** See why a second `backward()` through one graph fails, measure what
# `retain_graph=True` really costs, alone and together with state that carries the graph
# across steps, and write the loop that needs no retained graph at all: one forward, one
# backward of the weighted sum.
#
# **Context (read cold).** MAHIA-X trains three tasks at once: one loss per task, combined by
# loss weights. The summary, section 3:
#
# > **Problem**: `Trying to backward through the graph a second time` error due to multiple
# > losses being computed from the same forward pass.
# > **Fix**: Added `retain_graph=True` to backward calls as a temporary solution.
# > **Long-term Solution**: Implemented an `encode()` method in HybridEfficientModel to avoid
# > multiple forward passes.
#
# **Terms.**
#
# - **Graph.** During the forward, autograd records each operation as a node (`grad_fn`);
#   backward walks these nodes from the loss to the weights.
# - **Saved tensors.** Values a node keeps for the backward (a `tanh` keeps its output, a
#   matrix product the inputs its gradients need). Backward frees them as it goes, unless it
#   is called with `retain_graph=True`; then they live as long as the graph does.
# - **Carried state.** A tensor a module keeps from one step to the next (memory nodes, loss
#   weights). If it was computed from live activations and not detached, it carries that
#   step's graph into the next step (lesson 03a).
# - **Micro-batch / gradient accumulation.** Several forward+backward passes whose gradients
#   add up in `.grad` before one optimiser step.
#
# PyTorch docs: autograd mechanics,
# [Saved tensors](https://docs.pytorch.org/docs/stable/notes/autograd.html#saved-tensors);
# [`torch.Tensor.backward`](https://docs.pytorch.org/docs/stable/generated/torch.Tensor.backward.html)
# (`retain_graph`: "in nearly all cases setting this option to True is not needed and often
# can be worked around in a much more efficient way").

# %%
import plotly.graph_objects as go
import torch

from mahiax import bugs, lessons
from mahiax.bugs.harness import clean_loop
from mahiax.bugs.loops import (
    accumulating,
    after_detach,
    backward_per_loss,
    forward_per_loss,
    install_carried_state,
)
from mahiax.config import tiny
from mahiax.model.data import Batch, SyntheticMultiTask
from mahiax.model.hybrid import HybridEfficientModel
from mahiax.telemetry import MemoryMeter
from mahiax.training.objective import objective
from mahiax.units import MIB  # 2**20 bytes: the lab's unit for memory

torch.manual_seed(0)

# %% [markdown]
# ## 1. Two losses, one graph, two backwards
#
# **Predict.** One forward `h = tanh(2w)`, two losses computed from `h`, then
# `loss_a.backward()` and `loss_b.backward()`. Does the second call run?

# %%
w = torch.randn(3, requires_grad=True)
h = torch.tanh(2 * w)  # one shared forward
loss_a, loss_b = h.sum(), h.pow(2).sum()  # two task losses
loss_a.backward()
with lessons.attempt() as caught:
    loss_b.backward()

# %% [markdown]
# It does not. The first backward freed the saved tensors of the shared part: `tanh` saved
# its output, and `h.grad_fn` (the `tanh` node both losses lead to) no longer has it. The
# second backward walks into that node and finds it empty:

# %%
caught.expect(RuntimeError, "Trying to backward through the graph a second time")
print(type(h.grad_fn).__name__)
with lessons.expect_error(RuntimeError, "after they have already been freed"):
    print(h.grad_fn._saved_result)  # what tanh saved for its backward: its output

# %% [markdown]
# `retain_graph=True` keeps the saved tensors, so the second call runs. But gradients add
# up: one backward of the sum gives the same gradients (equal up to float32 rounding in the
# last digits), with one pass and nothing retained.

# %%
w.grad = None
h = torch.tanh(2 * w)
h.sum().backward(retain_graph=True)
h.pow(2).sum().backward()
two_backwards = w.grad.clone()

w.grad = None
h = torch.tanh(2 * w)
(h.sum() + h.pow(2).sum()).backward()  # one backward of the sum
print("two backwards:", two_backwards.tolist())
print("one backward: ", w.grad.tolist())
assert torch.allclose(two_backwards, w.grad)

# %% [markdown]
# ## 2. What `retain_graph=True` costs, and when it grows
#
# A backward frees each saved tensor once it has used it. With `retain_graph=True` it frees
# none: they stay alive as long as something still references the graph (the loss, or any
# tensor computed from the graph). Below, one forward saves two `(512, 256)` tensors that
# no Python variable names (the matrix product's input, `tanh`'s output), then one backward,
# then `del loss`, the last reference to the graph. The meter counts every live tensor.

# %%
meter = MemoryMeter()  # live tensor bytes, saved tensors of reachable graphs included
w = torch.randn(256, 256, requires_grad=True)  # (256, 256)


def held_after_backward(retain: bool) -> tuple[float, float]:
    """Live tensor MiB beyond the start: after one backward while the loss is still
    referenced, then after ``del loss``."""
    w.grad = torch.zeros_like(w)  # allocated before the first reading: it is not the graph
    base = meter.read().tensor_bytes
    loss = torch.tanh(torch.randn(512, 256) @ w).pow(2).sum()  # saves (512, 256) twice
    loss.backward(retain_graph=retain)
    kept = meter.read().tensor_bytes - base
    del loss  # the last reference to the graph
    return kept / MIB, (meter.read().tensor_bytes - base) / MIB


held = {retain: held_after_backward(retain) for retain in (True, False)}
for retain, (kept, gone) in held.items():
    print(f"retain_graph={retain}: {kept:.2f} MiB held after backward, "
          f"{gone:.2f} MiB after `del loss`")
assert held[True][0] >= 1.0 and held[True][1] < 0.01  # kept until the graph died
assert held[False][0] < 0.01  # freed by the backward itself

# %% [markdown]
# So `retain_graph=True` always costs the saved tensors of the graph it keeps, until the
# graph dies. Within one step that ends when the loss is dropped. Across steps, is
# freeing during backward what keeps training memory flat?
#
# **Predict.** Six steps, `retain_graph=True` on every backward. (a) Each step starts from
# fresh inputs. (b) Each step also adds a state computed from the previous step's `h`,
# without detaching it. Which one's live tensor memory grows?

# %%
def six_steps(carry_graph: bool) -> list[float]:
    """Six steps of two losses, retain_graph=True on both backwards; live tensor MiB after each."""
    state = torch.zeros(256)  # (256,) carried from step to step
    readings = []
    for _ in range(6):
        x = torch.randn(512, 256) + state  # (512, 256)
        h = torch.tanh(x @ w)  # (512, 256): saved for backward
        loss_a, loss_b = h.sum(), h.pow(2).sum()
        loss_a.backward(retain_graph=True)
        loss_b.backward(retain_graph=True)  # the band-aid, on every backward
        state = h.mean(dim=0) if carry_graph else h.mean(dim=0).detach()
        readings.append(round(meter.read().tensor_bytes / MIB, 2))
    return readings


run_a = six_steps(carry_graph=False)
run_b = six_steps(carry_graph=True)
print("(a) retain_graph=True, state detached:", run_a)
print("(b) retain_graph=True, state carries graph:", run_b)

# %% [markdown]
# (a) stays flat: a graph is freed once nothing references it any more, and each step's
# retained graph dies when the next step rebinds `h` and the losses. (b) grows by about one
# step's graph a step: `state` references `h`'s graph, which references the previous
# `state`, and so on back to step 0. So `retain_graph=True` costs one step's graph while
# that step's tensors are referenced; memory **grows** step after step only together with
# state that carries the graph across steps, which is exactly what lesson 03a's original
# `GraphDiffusionMemory` does.

# %%
assert max(run_a) - min(run_a) < 0.01
assert all(b > a for a, b in zip(run_b, run_b[1:], strict=False))

# %% [markdown]
# ## 3. What `retain_graph=True` did to the MAHIA-X loop
#
# > **Reconstruction.** The summary shows neither the training loop nor how often it stepped
# > the optimiser. The lab assumes (1) one `backward()` per task loss, which fits "multiple
# > losses being computed from the same forward pass"; (2) the original graph memory of
# > lesson 03a (`BuggyGraphMemory`, nodes rebound to a blend with the live batch mean), whose
# > nodes carry each step's graph into the next; and (3) an optimiser step every 4
# > micro-batches (gradient accumulation). Every variant of `retain-graph`, and your loop in
# > the exercise, runs in exactly this setting; the cells below show it.

# %%
lessons.source(backward_per_loss, "(1) one backward per loss")

# %%
lessons.source(install_carried_state, "(2) the carried state")

# %%
lessons.source(accumulating, "(3) an optimiser step every 4 micro-batches")

# %% [markdown]
# The catalog runs three loops in that setting, 8 steps each: `buggy` (one backward per loss,
# no retained graph), `summary` (the same with `retain_graph=True`) and `fixed` (detach the
# carried state at the start of the step, then one backward of the weighted sum).
#
# **Predict.** With `retain_graph=True`, does the summary's loop raise? If so, which error,
# and at which step? What happens to the graph size meanwhile?

# %%
v_rg = bugs.verdict("retain-graph")
lessons.verdict_report(v_rg)

# %% [markdown]
# **Expected verdict** on the summary's fix for `retain-graph`: **hides-the-error**. The
# original error is gone; the graph and memory grow every step; and the first backward
# after `optimizer.step()` (step 4) fails again, this time with an in-place error: the
# optimiser updated, in place, a weight that an old, retained graph saved (the summary's
# "persistent in-place error", lesson 06).

# %%
summary_out, fixed_out = v_rg.outcomes["summary"], v_rg.outcomes["fixed"]
lessons.step_figure(v_rg.outcomes, "graph_nodes", "autograd nodes reachable from the loss")

# %% [markdown]
# Memory, compared like with like: every variant runs in the same harness, with the same
# model, memory, optimiser cadence and the same clean reference model loaded to check
# gradients, so the readings share one baseline and their difference is what the loop keeps
# alive. (`buggy` failed during step 0, before its first reading.) The fixed loop's line
# rises a little at step 1, where the gradients column of the next cell's tables steps up:
# some parameters get their first gradient only then (the tiny memory's: its ring buffer
# is empty at step 0, so its read uses none of them; lesson 00 lists them). It steps up
# again at step 3, when the first optimiser step creates AdamW's two moment buffers, then
# stays flat.

# %%
pairs = zip(summary_out.tensor_bytes, fixed_out.tensor_bytes, strict=False)
extra = [(s - f) / MIB for s, f in pairs]  # the summary ran 4 steps, the fixed loop 8
print("summary minus fixed, MiB per step:", [round(x, 2) for x in extra])
fixed_mb = [b / MIB for b in fixed_out.tensor_bytes]
print("fixed, MiB per step:", [round(x, 2) for x in fixed_mb])
assert all(b > a for a, b in zip(extra, extra[1:], strict=False))
assert fixed_mb[1] > fixed_mb[0] and fixed_mb[3] > fixed_mb[2]
assert max(fixed_mb[3:]) - min(fixed_mb[3:]) < 0.01
lessons.step_figure(v_rg.outcomes, "tensor_mb", "live tensor memory (MiB), graphs included")

# %% [markdown]
# The harness also splits that memory by what holds it: parameters, gradients, optimizer
# state, and the tensors autograd **saved for backward** that a graph still holds after its
# backward. It reads them after each step's backward with
# `MemoryMeter(device).categories(model, optimizer, graph=loss)`, which walks the loss's
# autograd graph and reads each node's saved tensors. It uses no `saved_tensors_hooks`
# (`torch.autograd.graph`): with them autograd stops checking saved tensors' versions,
# and an in-place write into a saved tensor goes unnoticed. Even identity hooks, which
# hand back the very tensor they were given:

# %%
from torch.autograd.graph import saved_tensors_hooks  # noqa: E402

v = torch.ones(3, requires_grad=True)
with saved_tensors_hooks(lambda t: t, lambda t: t):  # pack, unpack: the same tensor
    e = v.exp()  # exp saves its result, e
e.detach().copy_(torch.zeros(3))  # an in-place write into what exp saved
e.sum().backward()  # no error
print("with the hooks, v.grad =", v.grad.tolist(), "| the true gradient, exp(v) =",
      v.detach().exp().tolist())
v.grad = None
e = v.exp()  # the same, without hooks
e.detach().copy_(torch.zeros(3))
with lessons.expect_error(RuntimeError, "modified by an inplace operation"):
    e.sum().backward()
assert v.grad is None

# %% [markdown]
# A backward frees what it used, so "saved for backward" is what a *retained* graph keeps.
#
# **Predict.** Which category grows under the band-aid, and which stay flat?

# %%
summary_cats, fixed_cats = lessons.category_table(summary_out), lessons.category_table(fixed_out)
print("summary (MiB):\n", summary_cats.round(3).to_string())
print("fixed (MiB):\n", fixed_cats.round(3).to_string())
lessons.category_figure({"summary": summary_out, "fixed": fixed_out})

# %% [markdown]
# Only "saved for backward" grows: each retained graph, linked to the last by the carried
# memory, keeps its activations; the fixed loop's graph keeps none after its backward.
# Parameters stay flat; gradients and optimizer state are the same in both loops (optimizer
# state appears at step 3, AdamW's first step). The dashboard's Bug lab and Memory page draw
# the same categories for any run.

# %%
saved_rg = summary_cats["saved for backward"].tolist()
assert all(b > a for a, b in zip(saved_rg, saved_rg[1:], strict=False))
assert (fixed_cats["saved for backward"] == 0).all()
assert summary_cats["parameters"].nunique() == 1
same_steps = summary_cats.index  # the steps both loops ran
for name in ("gradients", "optimizer state"):
    assert summary_cats[name].equals(fixed_cats.loc[same_steps, name])
assert fixed_cats["optimizer state"].loc[:2].eq(0).all()
assert fixed_cats.loc[3, "optimizer state"] > 0

# %% [markdown]
# Scrub through the steps: the fixed loop's graph is the same size from step 1 on; the
# summary's grows until it fails.

# %%
def at_step(step: int) -> go.Figure:
    def value(out, series):
        return series[step] if step < len(series) else None

    names = ["summary (retain_graph=True)", "fixed (one backward)"]
    nodes = [value(summary_out, summary_out.graph_nodes), value(fixed_out, fixed_out.graph_nodes)]
    fig = go.Figure(go.Bar(x=names, y=nodes, marker_color=["#636EFA", "#00CC96"]))
    failed = step >= len(summary_out.graph_nodes)
    error = f"{summary_out.error_type} at step {summary_out.error_step}"
    note = f" (summary: {error})" if failed else ""
    fig.update_layout(title=f"step {step}: autograd nodes{note}", height=320,
                      yaxis_range=[0, 1.1 * max(summary_out.graph_nodes)])
    return fig


lessons.step_scrubber(list(range(fixed_out.steps_run)), at_step)

# %%
print(summary_out.error_type, "at step", summary_out.error_step)
print(summary_out.error_message.splitlines()[0])
assert summary_out.graph_growth() > 0 and fixed_out.graph_growth() == 0
assert "modified by an inplace operation" in summary_out.error_message

# %% [markdown]
# Reading the message: `[32, 16]` is a Linear's weight as its matrix product saved it,
# transposed (`weight.t()`, a view). Once AdamW has updated the weight in place, autograd
# describes that view as **AsStrided** (the general view: sizes, strides and an offset;
# lesson 06 decodes it fully). "expected version 1": initialisation wrote the weight once;
# "version 3": AdamW's step wrote it twice more (weight decay, then the update: without
# weight decay, one write). The same message from one `Linear(32, 16)`:

# %%
layer = torch.nn.Linear(32, 16).double()  # weight (16, 32)
print("weight version after init:", layer.weight._version)
x = torch.randn(4, 32, dtype=torch.float64, requires_grad=True)  # (4, 32)
y = layer(x)  # (4, 16); the product saved weight.t(), (32, 16)
y.sum().backward(retain_graph=True)
torch.optim.AdamW(layer.parameters(), lr=1e-3).step()  # weight_decay=0.01, the default
print("weight version after one AdamW step:", layer.weight._version)
no_decay = torch.nn.Linear(32, 16).double()
no_decay(x).sum().backward()
torch.optim.AdamW(no_decay.parameters(), lr=1e-3, weight_decay=0.0).step()
print("the same step with weight_decay=0:", no_decay.weight._version)
assert layer.weight._version == 3 and no_decay.weight._version == 2
with lessons.expect_error(RuntimeError, "[32, 16]], which is output 0 of AsStrided, is at "
                                        "version 3; expected version 1"):
    y.sum().backward()  # the retained graph, after the weight changed

# %% [markdown]
# ## 4. The long-term solution: `encode()` once, one backward
#
# The original ran a whole forward for every loss. `encode()` computes the fused features
# once; every task head reads them; the weighted sum of the task losses is backpropagated
# once. `model.losses(batch)` is that forward: one `encode()`, every head, and the K task
# losses (with the encoding, which carries the router's losses).
#
# **Predict.** On the real model (tiny preset, float64): K forwards each with its own
# backward, versus one `encode()` and one backward of `Σ w_k L_k`. Same gradients, or only
# close?

# %%
config = tiny()
model = HybridEfficientModel(config).double()
raw = SyntheticMultiTask(config).batch(0)
batch = Batch(tokens=raw.tokens, tabular=raw.tabular.double(), targets=raw.targets)
weights = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)


def grads() -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


model.zero_grad()
for k in range(len(config.tasks)):  # the original: one forward per loss
    losses, _ = model.losses(batch)  # encode() and every head: a whole forward each time
    (weights[k] * losses[k]).backward()
per_loss = grads()

model.zero_grad()
losses, _ = model.losses(batch)  # encode() once, every head on its features: (K,)
(weights * losses).sum().backward()  # once
once = grads()

diff = max((per_loss[n] - once[n]).abs().max().item() for n in once)
print(f"parameter tensors with a gradient: {len(per_loss)} (K forwards), {len(once)} (once)")
print(f"largest gradient difference: {diff:.1e}")

# %% [markdown]
# Equal up to float64 rounding (the difference printed above), not necessarily bit for bit:
# one backward of the weighted sum adds the losses' gradients where the graph joins, then
# carries that sum through the shared layers; K backwards carry each loss's gradient through
# on its own and add them at the parameters, and floating point is not exactly distributive.
# Gradients add up, so one backward of the weighted sum is the K backwards in one pass.

# %%
assert per_loss.keys() == once.keys() and diff < 1e-12

# %% [markdown]
# The catalog's `encode-multi-loss` entry runs three loops on the clean model and counts,
# at every step, the `encode()` calls (a forward hook) and the backward passes (a hook that
# fires once per backward pass on a shared weight): `buggy` (the original's loop), `summary`
# (the summary's fix: `encode()` once, with `retain_graph=True`) and `fixed` (the clean
# loop).
#
# **Predict.** Does the summary's version give the clean gradients? How many forwards and
# backward passes does each loop do per step?

# %%
v_enc = bugs.verdict("encode-multi-loss")
lessons.verdict_report(v_enc)

# %%
table = lessons.outcome_table(v_enc.outcomes)
table["forwards / step"] = [o.figures.get("forwards_per_step") for o in v_enc.outcomes.values()]
table["backwards / step"] = [o.figures.get("backwards_per_step") for o in v_enc.outcomes.values()]
table[["error", "max grad diff", "forwards / step", "backwards / step"]]

# %% [markdown]
# **Expected verdict** on the summary's fix for `encode-multi-loss`: **holds**. The verdict
# judges the summary's claim: `encode()` once removes the extra forwards, with the same
# gradients and nothing growing (no state carries the graph here, so the retained graphs die
# each step, as in section 2). The table's counts: the original runs a whole forward and a
# backward per loss (K of each), the summary one `encode()` and still K backward passes
# where one would do, the fixed loop one of each; the exercise's checker asks for one
# forward *and* one backward.
#
# ## Exercise
#
# Write the training step as a loop function `loop(ctx)`. `ctx` is a
# `mahiax.bugs.harness.StepContext`: `ctx.model`, `ctx.batch`, `ctx.weighting`,
# `ctx.config`. Your function must set `ctx.weights` (the loss weights in force,
# `ctx.weighting.weights().detach()`, so the checker can build the reference), `ctx.losses`
# (the task losses) and `ctx.total` (the loss you backpropagate), call `ctx.zero_grad()`,
# then backward. Include the router's two auxiliary losses, `enc.router_loss(ctx.config)`
# (`aux_loss_coef * enc.aux_loss + z_loss_coef * enc.z_loss`). The whole objective, as the
# trainer and the catalog's reference compute it, is one function,
# `mahiax.training.objective.objective(model, weighting, batch)`: the weighted sum of the task losses
# plus the router's terms, with the weights and losses it used.
#
# `lessons.check("retain-graph", loop)` trains with it **in the summary's setting** (section 3):
# the graph memory carries the graph across steps and the optimiser steps every 4
# micro-batches (`ctx.zero_grad()` keeps the gradients within a cycle). To cut the carried
# state, call `ctx.detach_state()` at the start of the step: it detaches every buffer that
# still hangs on a previous step's graph (as truncated backpropagation through time cuts an
# RNN's hidden state with `h = h.detach()` between chunks). The
# checker counts `encode()` calls and backward passes, and wants one of each per step.
#
# The attempt below is the original: one backward per loss, no retained graph.

# %%
print(bugs.get("retain-graph").candidate_kind)


def my_loop(ctx) -> None:
    losses, enc = ctx.model.losses(ctx.batch)  # one encode(), every head: (K,)
    ctx.weights = ctx.weighting.weights().detach()
    terms = [ctx.weights[k].to(losses) * losses[k] for k in range(losses.numel())]
    terms[0] = terms[0] + enc.router_loss(ctx.config)  # the router's terms ride on the first
    ctx.losses, ctx.total = losses, sum(terms)
    ctx.zero_grad()
    for term in terms:  # TODO
        term.backward()


print(lessons.check("retain-graph", my_loop))

# %% [markdown]
# **Predict.** Three other repairs of the attempt. Which ones pass?
# (a) add `retain_graph=True` to each backward (and detach the carried state);
# (b) one forward per loss (and detach the carried state);
# (c) one backward of the weighted sum, without detaching the carried state.
# The catalog's loops build each one; the checker grades them in the same setting:

# %%
repairs = {}  # (a), (b), (c) -> the checker's result
for label, what, loop in (
    ("a", "retain_graph=True on each backward, carried state detached",
     after_detach(backward_per_loss(retain=True))),
    ("b", "one forward per loss, carried state detached", after_detach(forward_per_loss)),
    ("c", "one backward of the weighted sum, carried state kept", clean_loop),
):
    repairs[label] = bugs.check("retain-graph", loop)
    print(f"({label}) {what}\n  {repairs[label]}\n")

# (b) once more, on the clean model (no carried state): the encode-multi-loss setting
clean_b = bugs.check("encode-multi-loss", forward_per_loss)
print("(b) on the clean model, one forward per loss\n ", clean_b)

# %% [markdown]
# None passes: all three are band-aids. (a) gives the right gradients and nothing grows
# (the state is detached), but it makes 3 backward passes a step where one would do. (b)
# fails at step 0: the second
# forward reads memory nodes that carry the first forward's graph, which its backward already
# freed; without carried state it runs, but with 3 forwards a step. (c) fails at step 1 with
# the original error: step 1's backward walks through the nodes into step 0's graph.

# %%
assert not any(r.holds for r in repairs.values()) and not clean_b.holds
a = repairs["a"].outcome
assert repairs["a"].message.startswith("3 backward passes a step")
assert a.passed and a.max_grad_diff < 1e-6 and not a.grows()
assert "raised RuntimeError at step 0: Trying to backward" in repairs["b"].message
assert clean_b.outcome.passed and clean_b.message.startswith("3 forwards")
assert "raised RuntimeError at step 1: Trying to backward" in repairs["c"].message

# %% tags=["solution"]
def my_loop(ctx) -> None:
    """Cut the carried state, one encode(), one backward of the weighted sum."""
    ctx.detach_state()  # the memory nodes lose the previous step's graph, keep their values
    obj = objective(ctx.model, ctx.weighting, ctx.batch)  # one encode(), the weighted sum
    ctx.weights, ctx.losses, ctx.total = obj.weights, obj.losses, obj.total
    ctx.zero_grad()
    ctx.total.backward()  # once


result = bugs.check("retain-graph", my_loop)
print(result)
assert result.holds

# %% [markdown]
# Your attempts so far, oldest first (also on the dashboard's **My attempts** page):

# %%
lessons.my_attempts()

# %% [markdown]
# ## Check your understanding
#
# 1. Why does the second `backward()` in section 1 fail, and why does one backward of
#    `loss_a + loss_b` give the same gradients as two?
#
#    <details><summary>Answer</summary>
#
#    The first backward freed the saved tensors of the shared part of the graph (`tanh`'s
#    output); the second needs them. Gradients are linear: d(a + b)/dw = da/dw + db/dw, and
#    `.grad` accumulates, so one pass over the sum gives what two passes add up to.
#
#    </details>
#
# 2. Section 2's run (a) used `retain_graph=True` on every backward and stayed flat. What
#    freed each step's graph?
#
#    <details><summary>Answer</summary>
#
#    Reference counting: once the next step rebinds `h`, `loss_a` and `loss_b`, nothing
#    points at the old graph any more and it is freed with its saved tensors. Without
#    `retain_graph`, backward frees them sooner, as it runs (section 2's first cell: nothing
#    held after the backward, against a whole graph with `retain_graph=True` until
#    `del loss`); that is not what keeps memory flat from step to step.
#
#    </details>
#
# 3. In the summary's setting, why does the in-place error appear at step 4 and not before?
#
#    <details><summary>Answer</summary>
#
#    The optimiser steps every 4 micro-batches, first at the end of step 3. It updates the
#    weights in place, bumping their version counters. Step 4's backward walks through the
#    carried memory nodes into the retained graphs of steps 0-3, which saved those weights at
#    their old versions, and refuses.
#
#    </details>
#
# 4. The verdict on `encode-multi-loss` is **holds**, yet the checker gives the same loop
#    (`encode()` once, `retain_graph=True` per loss) NOT YET. Why both?
#
#    <details><summary>Answer</summary>
#
#    The verdict judges the summary's claim: `encode()` once removes the extra forwards, with
#    the clean gradients. The checker grades what the lesson teaches: one forward and one
#    backward per step. K backward passes over a retained graph are correct but wasteful,
#    and the retained graph is what turns into growth as soon as some state carries it.
#
#    </details>
#
# 5. What does `ctx.detach_state()` change, and what does it keep?
#
#    <details><summary>Answer</summary>
#
#    It rebinds every buffer that requires grad (it was computed from a live graph) to its
#    `.detach()`: same values, no history. The next forward starts a fresh graph, so backward stops at this step. The
#    right place to fix it for good is the module (lesson 03a's clean memory stages its
#    update from `x.detach()` and swaps it in after the optimiser step).
#
#    </details>

# %% [markdown]
# ## Recap
#
# - A second `backward()` through one graph fails because the first freed its saved tensors.
# - `retain_graph=True` keeps the graph's saved tensors alive until the graph itself dies;
#   on its own that is one step's graph, freed when the step's tensors are dropped
#   (section 2). With state that carries the graph across steps it **hides the error**: graph
#   and memory grow every step, and once the optimiser updates a weight an old graph saved,
#   an in-place error comes back.
# - Gradients add up: one backward of `Σ w_k L_k` equals K backwards. `encode()` once gives
#   the same gradients with one forward (**holds**); one backward of the sum removes the
#   retained graph too.
# - Keep no graph across steps: detach the state you carry (lesson 03a), and backpropagate
#   once. The checker counts forwards and backward passes to hold you to it.
# - Docs: [Saved tensors](https://docs.pytorch.org/docs/stable/notes/autograd.html#saved-tensors),
#   [`torch.Tensor.backward`](https://docs.pytorch.org/docs/stable/generated/torch.Tensor.backward.html).
