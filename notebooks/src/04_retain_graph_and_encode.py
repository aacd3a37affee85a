# Source of notebooks/04_retain_graph_and_encode.ipynb (built by notebooks/build.py).

# %% [markdown]
# # 04 · `retain_graph=True` hides the error; `encode()` + one backward removes it
#
# **Goal.** See why a second `backward()` fails, what `retain_graph=True` does to a training
# loop whose state carries the graph (watch the graph and memory grow), the in-place error
# it brings back, and the loop that needs no retained graph at all.
#
# **Context (read cold).** MAHIA-X trains three tasks at once: one loss per task, combined by
# loss weights. The summary, section 3:
#
# > **Problem**: `Trying to backward through the graph a second time` error due to multiple
# > losses being computed from the same forward pass.
# > **Fix**: Added `retain_graph=True` to backward calls as a temporary solution.
# > **Long-term Solution**: Implemented an `encode()` method in HybridEfficientModel to avoid
# > multiple forward passes.

# %%
import plotly.graph_objects as go
import torch

from mahiax import bugs, lessons
from mahiax.bugs.loops import backward_per_loss
from mahiax.config import tiny
from mahiax.data import Batch, SyntheticMultiTask
from mahiax.model import HybridEfficientModel

torch.manual_seed(0)

# %% [markdown]
# ## 1. Two losses, one graph, two backwards
#
# `backward()` frees the graph's saved tensors as it goes (that is what keeps training
# memory flat). A second `backward()` through the same graph finds them gone:

# %% tags=["raises-exception"]
w = torch.randn(3, requires_grad=True)
h = torch.tanh(2 * w)  # one shared forward
loss_a, loss_b = h.sum(), h.pow(2).sum()  # two task losses
loss_a.backward()
loss_b.backward()

# %%
w.grad = None
h = torch.tanh(2 * w)
loss_a, loss_b = h.sum(), h.pow(2).sum()
loss_a.backward()
with lessons.expect_error(RuntimeError, "Trying to backward through the graph a second time"):
    loss_b.backward()

# %% [markdown]
# `retain_graph=True` keeps the saved tensors, so the second call runs. But gradients add
# up: one backward of the sum gives exactly the same gradients, with one pass and nothing
# retained.

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
# ## 2. What `retain_graph=True` did to the MAHIA-X loop
#
# The summary-era loop called `backward(retain_graph=True)` once per task loss, and its
# memory module rebound its nodes to a value computed from live activations (lesson 03), so
# each step's graph stayed linked to the previous one. The catalog's `summary` variant runs
# exactly that loop (stepping the optimiser every 4 micro-batches, as the original did):

# %%
lessons.source(backward_per_loss, "one backward per loss")

# %% [markdown]
# **Expected verdict** on the summary's fix for `retain-graph`: **hides-the-error**. The
# original error is gone, the graph and memory grow every step, and when `optimizer.step()`
# updates a weight that an old, retained graph still needs, backward fails again, this time
# with an in-place error (the summary's "persistent in-place error", lesson 06).

# %%
v_rg = bugs.verdict("retain-graph")
lessons.verdict_report(v_rg)

# %%
lessons.step_figure(v_rg.outcomes, "graph_nodes", "autograd nodes reachable from the loss")

# %%
lessons.step_figure(v_rg.outcomes, "tensor_mb", "live tensor memory (MB), graphs included")

# %% [markdown]
# Scrub through the steps: the fixed loop's graph is the same size every step; the summary's
# grows until it fails.

# %%
summary_out, fixed_out = v_rg.outcomes["summary"], v_rg.outcomes["fixed"]


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
# ## 3. The long-term solution: `encode()` once, one backward
#
# The original ran a whole forward for every loss. `encode()` computes the fused features
# once; every task head reads them; the weighted sum of the task losses is backpropagated
# once. On the real model (tiny preset, float64), K forwards with K backwards and one
# `encode()` with one backward give the same gradients:

# %%
config = tiny()
model = HybridEfficientModel(config).double()
raw = SyntheticMultiTask(config).batch(0)
batch = Batch(raw.tokens, raw.tabular.double(), raw.targets)
weights = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)


def grads() -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


model.zero_grad()
for k in range(len(config.tasks)):  # the original: one forward per loss
    enc = model.encode(batch)
    losses = model.task_losses(model.heads_forward(enc.features), batch.targets)
    (weights[k] * losses[k]).backward()
per_loss = grads()

model.zero_grad()
enc = model.encode(batch)  # once
losses = model.task_losses(model.heads_forward(enc.features), batch.targets)  # (K,)
(weights * losses).sum().backward()  # once
once = grads()

diff = max((per_loss[n] - once[n]).abs().max().item() for n in once)
print(f"largest gradient difference: {diff:.1e} over {len(once)} parameter tensors")
assert per_loss.keys() == once.keys() and diff < 1e-12

# %% [markdown]
# **Expected verdict** on the summary's fix for `encode-multi-loss`: **holds**. The
# summary's version (`encode()` once, then one `backward(retain_graph=True)` per loss) gives
# the same gradients; the fixed loop does one forward and one backward.

# %%
v_enc = bugs.verdict("encode-multi-loss")
lessons.verdict_report(v_enc)

# %%
table = lessons.outcome_table(v_enc.outcomes)
table["forwards / step"] = [o.figures.get("forwards_per_step") for o in v_enc.outcomes.values()]
table["backwards / step"] = [o.figures.get("backwards_per_step") for o in v_enc.outcomes.values()]
table[["error", "max grad diff", "forwards / step", "backwards / step"]]

# %% [markdown]
# ## Exercise
#
# Write the training step as a loop function `loop(ctx)`. `ctx` is a
# `mahiax.bugs.harness.StepContext`: `ctx.model`, `ctx.batch`, `ctx.weighting`,
# `ctx.config`. Your function must set `ctx.weights` (the loss weights in force,
# `ctx.weighting.weights().detach()`, so the checker can build the reference), `ctx.losses`
# (the task losses) and `ctx.total` (the loss you backpropagate), call `ctx.zero_grad()`,
# then backward. Include the router's two auxiliary losses:
# `config.aux_loss_coef * enc.aux_loss + config.z_loss_coef * enc.z_loss`.
# `bugs.check("retain-graph", loop)` trains with it. The attempt below is the original: one
# backward per loss, no retained graph.

# %%
def my_loop(ctx) -> None:
    enc = ctx.model.encode(ctx.batch)
    losses = ctx.model.task_losses(ctx.model.heads_forward(enc.features), ctx.batch.targets)
    ctx.weights = ctx.weighting.weights().detach()
    aux = ctx.config.aux_loss_coef * enc.aux_loss + ctx.config.z_loss_coef * enc.z_loss
    ctx.losses, ctx.total = losses, ctx.weighting.combine(losses) + aux
    ctx.zero_grad()
    for k in range(losses.numel()):  # TODO
        (ctx.weights[k].to(losses) * losses[k] + (aux if k == 0 else 0.0)).backward()


print(bugs.check("retain-graph", my_loop))

# %% tags=["solution"]
def my_loop(ctx) -> None:
    """One encode(), one backward of the weighted sum: nothing to retain."""
    enc = ctx.model.encode(ctx.batch)
    losses = ctx.model.task_losses(ctx.model.heads_forward(enc.features), ctx.batch.targets)
    ctx.weights = ctx.weighting.weights().detach()
    aux = ctx.config.aux_loss_coef * enc.aux_loss + ctx.config.z_loss_coef * enc.z_loss
    ctx.losses, ctx.total = losses, ctx.weighting.combine(losses) + aux
    ctx.zero_grad()
    ctx.total.backward()


result = bugs.check("retain-graph", my_loop)
print(result)
assert result.holds

# %% [markdown]
# ## Recap
#
# - A second `backward()` through one graph fails because the first freed it.
# - `retain_graph=True` **hides the error**: with state that links steps, the graph and
#   memory grow every step, and once the optimiser updates a weight an old graph saved, an
#   in-place error comes back.
# - Gradients add up: one backward of `Σ w_k L_k` equals K backwards. `encode()` once + one
#   backward gives the same gradients with one forward and nothing retained (**holds**).
# - Keep no graph across steps: detach the state you carry (lesson 03).
