# Source of notebooks/07_train_and_watch.ipynb (built by notebooks/build.py).

# %% [markdown]
# # 07 · Train the clean model and watch it: the run store with pandas
#
# **Goal.** Record a real training run of the clean MAHIA-X, then read it back with pandas
# and look at what the summary's bugs would have damaged: expert load balance, memory-node
# evolution, layer importance, DWA weights and memory. Then open the same run in the
# dashboard. About 15 minutes live.
#
# **Context (read cold).** `mahiax.recording.record_training` trains and writes every step
# to the run store, one SQLite file (`mahiax.store`). Any number of readers can read while
# it trains: the dashboard, the command line (`python -m mahiax runs show NAME`), or
# `mahiax.store.RunReader`, which returns pandas DataFrames. This notebook writes to your own
# run store (`$MAHIAX_STORE`, else `runs/` beside the notebook), the one your dashboard
# reads, under a new run name each time it runs.
#
# PyTorch docs this lesson builds on: autograd mechanics,
# [in-place correctness checks](https://docs.pytorch.org/docs/stable/notes/autograd.html#in-place-correctness-checks)
# and [saved tensors](https://docs.pytorch.org/docs/stable/notes/autograd.html#saved-tensors);
# [`torch.Tensor.detach`](https://docs.pytorch.org/docs/stable/generated/torch.Tensor.detach.html)
# (its note: in-place changes to a detached tensor are seen by autograd's correctness checks;
# a write through `.data` is not, section 7); for the memory chart,
# [CUDA semantics: memory management](https://docs.pytorch.org/docs/stable/notes/cuda.html#cuda-memory-management).

# %%
import time

import numpy as np
import plotly.express as px
import plotly.graph_objects as go
import torch
from IPython.display import display

from mahiax import bugs, lessons
from mahiax.bugs.stateful import BuggyController
from mahiax.config import teaching
from mahiax.metric_keys import (  # the run store's keys, each defined once
    FABRIC_IMPORTANCE,
    MEM_GRADS,
    MEM_OPTIMIZER,
    MEM_PARAMS,
    MEM_RSS,
    MEM_SAVED,
    MEM_TENSOR_BYTES,
    MEMORY_NODES,
    MOE_CV,
    MOE_MAX_OVER_MEAN,
    TOKENS_PER_EXPERT,
    dwa_ratio,
    task_loss,
    task_weight,
)
from mahiax.model.fabric import MetaController
from mahiax.recording import record_training
from mahiax.store import RunReader
from mahiax.store.paths import ENV_VAR, resolve_store_path
from mahiax.telemetry.probes import Cadence
from mahiax.units import MIB  # 2**20 bytes

store = resolve_store_path()  # $MAHIAX_STORE, else runs/mahiax.sqlite here
RUN = f"lesson07-{time.strftime('%Y%m%d-%H%M%S')}"  # a new name each time the lesson runs
print("run store:", store, "· run:", RUN)

# %% [markdown]
# ## 1. Record a run
#
# 120 steps of the teaching preset (the slowest cell of the lesson), memory nodes
# snapshotted every 10 steps and a full memory reading every 25.

# %%
config = teaching().replace(max_steps=120, dwa_window=10)
trainer = record_training(config, RUN, steps=120, store=store,
                          cadence=Cadence(snapshot_every=10, memory_every=25))
reader = RunReader(store)
reader.runs()[["name", "status", "last_step", "steps", "device"]]

# %%
run = reader.run(RUN)
assert run["status"] == "finished" and run["last_step"] == 119
keys = reader.scalar_keys(RUN)
print(len(keys), "scalar keys, e.g.", keys[:6])

# %% [markdown]
# ## 2. Losses
#
# `scalars(name, keys)` returns one column per key, indexed by step. The keys are named
# once, in `mahiax.metric_keys` (its docstring lists every key, its kind and when it is
# written): `task_loss("tabular")` is the key `loss/tabular`. The model has three
# tasks (`keywords`, `tabular`, `mixed`), each with its own head and loss.
#
# **Predict.** After 120 steps, has every task's loss fallen? Which falls least, relative to
# where it started?

# %%
tasks = list(config.tasks)
losses = reader.scalars(RUN, [task_loss(t) for t in tasks])
fig = px.line(losses, labels={"value": "loss", "variable": "task"},
              title="per-task losses (clean model, one encode(), one backward per step)")
fig.update_layout(height=340)
fig

# %%
first, last = losses.iloc[:10].mean(), losses.iloc[-10:].mean()
print("mean of the first 10 steps:\n", first.round(3).to_string())
print("mean of the last 10 steps:\n", last.round(3).to_string())
print("last / first (lower = fell more):\n", (last / first).round(2).to_string())
print("first - last (how much it fell):\n", (first - last).round(3).to_string())

# %% [markdown]
# Every task's loss fell: each ratio printed above is below 1. Relative to where it started,
# `tabular` fell least (the largest ratio); the chart shows it ends highest as well. In
# absolute terms (the last lines printed) it is not the least: `keywords` fell most,
# `tabular` almost as much, `mixed` least. "Falls least" depends on which you ask.

# %%
assert (last < first).all()
fall = dict(zip(tasks, (first - last).tolist(), strict=True))  # task -> first - last
assert fall["keywords"] > fall["tabular"] > fall["mixed"]
assert (last / first).idxmax() == task_loss("tabular") and last.idxmax() == task_loss("tabular")

# %% [markdown]
# ## 3. Expert load balance
#
# The vector `moe/tokens_per_expert` holds, per step, how many tokens each expert got. A
# balanced router spreads tokens evenly; the load-balancing loss pushes toward that.
# `moe/cv` is the coefficient of variation of those counts (standard deviation / mean: 0
# when perfectly even), `moe/max_over_mean` the busiest expert's count over the mean.

# %%
load = reader.vectors(RUN, TOKENS_PER_EXPERT)
share = load.div(load.sum(axis=1), axis=0)
fig = px.imshow(share.T, aspect="auto", origin="lower", color_continuous_scale="Viridis",
                labels={"x": "step", "y": "expert", "color": "share of tokens"},
                title="share of tokens per expert (even = 1 / num_experts)")
fig.update_layout(height=320)
fig

# %%
balance = reader.scalars(RUN, [MOE_CV, MOE_MAX_OVER_MEAN])
px.line(balance, title="load imbalance: coefficient of variation and max / mean",
        labels={"value": "", "variable": ""}).update_layout(height=300)

# %% [markdown]
# ## 4. Memory-node evolution
#
# Snapshots of the `GraphDiffusionMemory` nodes `(N, D)`, projected on their first two
# principal components (computed once over all snapshots, so the axes stay put). Scrub
# through the steps: the nodes move toward the inputs assigned to them and stay distinct.
# (The summary's update, `nodes = (1 - s) * nodes + s * m` with the same batch mean `m` for
# every node, pulls them together: the difference of two nodes becomes
# `(1 - s) * (n_i - n_j)` at every step, so it shrinks geometrically toward zero.)

# %%
snaps = reader.snapshots(RUN, MEMORY_NODES)
all_nodes = np.concatenate(list(snaps.values()))
mean = all_nodes.mean(axis=0)
_, _, vt = np.linalg.svd(all_nodes - mean, full_matrices=False)
axes = vt[:2].T  # (D, 2)
xy = {step: (nodes - mean) @ axes for step, nodes in snaps.items()}
limits = [float(np.abs(np.concatenate(list(xy.values()))).max()) * 1.1] * 2


def nodes_at(step: int) -> go.Figure:
    p = xy[step]
    fig = go.Figure(go.Scatter(x=p[:, 0], y=p[:, 1], mode="markers+text",
                               text=[str(i) for i in range(len(p))], textposition="top center"))
    fig.update_layout(title=f"memory nodes at step {step} (PCA)", height=380,
                      xaxis_range=[-limits[0], limits[0]], yaxis_range=[-limits[1], limits[1]])
    return fig


lessons.step_scrubber(sorted(snaps), nodes_at)

# %%
last_nodes = snaps[max(snaps)]
spread = np.linalg.norm(last_nodes - last_nodes.mean(axis=0), axis=1).mean()
print(f"{len(snaps)} snapshots; mean distance of the nodes from their centre: {spread:.2f}")
assert spread > 0.1, "the nodes stay distinct"

# %% [markdown]
# ## 5. Loss weights (DWA)
#
# Dynamic Weight Averaging (DWA, Liu et al. 2019) weights task `k` by
# `n * softmax(r / T)_k`, with `n` tasks, the descent ratio `r_k = L_k(t-1) / L_k(t-2)` of
# the mean losses of the last two epochs and a temperature `T` (2): the tasks whose loss
# falls slowest (ratio closer to 1 or above) get more weight, and the weights sum to `n`.
# The lab's "epoch" is a window of 10 steps (the paper's epochs are passes over the data
# set), so the weights stay equal for the first two windows (steps 0-19).

# %%
weights = reader.scalars(RUN, [task_weight(t) for t in tasks])
ratios = reader.scalars(RUN, [dwa_ratio(t) for t in tasks])
fig = go.Figure()
for t in tasks:
    fig.add_trace(go.Scatter(x=weights.index, y=weights[task_weight(t)], name=f"weight {t}"))
    fig.add_trace(go.Scatter(x=ratios.index, y=ratios[dwa_ratio(t)], name=f"ratio {t}",
                             line={"dash": "dot"}))
fig.update_layout(title="DWA weights (solid) and descent ratios (dotted)", height=340,
                  xaxis_title="step")
fig

# %%
assert np.allclose(weights.sum(axis=1), len(tasks), atol=1e-4), "DWA weights sum to n"
assert np.allclose(weights.loc[:19], 1.0), "equal weights for the first two windows"

# %% [markdown]
# ## 6. Memory
#
# The probes read `MemoryMeter` every 25 steps (live tensor bytes on a CPU, lesson 05) and
# the process RSS (resident set size: all of the process's pages in RAM) every step. A
# graph carried from step to step would make tensor memory grow every step (lesson 04);
# the clean loop frees each step's graph.
#
# **Predict.** Over 120 steps, does live tensor memory grow, or stay flat? And the RSS?

# %%
mem = reader.scalars(RUN, [MEM_TENSOR_BYTES, MEM_RSS]) / MIB
px.line(mem.dropna(how="all"), markers=True, labels={"value": "MiB", "variable": ""},
        title=f"memory on {run['device']}").update_layout(height=300)

# %%
tensor_mb = mem[MEM_TENSOR_BYTES].dropna()
print("live tensor MiB at the readings:", tensor_mb.round(2).to_dict())
print(f"RSS: {mem[MEM_RSS].iloc[0]:.0f} MiB at step 0, {mem[MEM_RSS].iloc[-1]:.0f} MiB at "
      f"step {mem.index[-1]}")

# %% [markdown]
# Tensor memory is flat from the second reading on; the first, at step 0, is lower. The
# probe reads memory during the step, after its forward: the graph's saved tensors are
# counted. At step 0 no parameter has a gradient yet and the optimiser, AdamW, has no state:
# AdamW creates its two moment buffers per parameter (`exp_avg` and `exp_avg_sq`, each the
# parameter's size) at its first `step()`. At every later reading both are there: the
# gradients (the previous step's: the trainer clears them with `set_to_none=True` just
# before each backward, `mahiax/training/trainer.py`) and the moments, twice the parameters' bytes. The
# next cell prints the readings by category.
#
# The RSS moves on its own (printed above): it counts everything the process holds, not
# tensors, so it is the wrong figure to judge a graph leak by.

# %%
categories = reader.scalars(RUN, [MEM_PARAMS, MEM_GRADS, MEM_OPTIMIZER, MEM_SAVED]) / MIB
categories = categories.loc[tensor_mb.index]  # the steps with a full reading
print("optimiser:", type(trainer.optimizer).__name__, "| MiB by category:")
print(categories.round(3).to_string())
assert categories.loc[0, MEM_GRADS] == 0 and categories.loc[0, MEM_OPTIMIZER] == 0
later = categories.iloc[1:]
assert ((later[MEM_GRADS] - later[MEM_PARAMS]).abs() < 0.01).all()
assert ((later[MEM_OPTIMIZER] - 2 * later[MEM_PARAMS]).abs() < 0.01).all()
assert tensor_mb.iloc[0] < tensor_mb.iloc[1]
assert tensor_mb.iloc[1:].max() - tensor_mb.iloc[1:].min() <= 0.01 * tensor_mb.iloc[1]

# %% [markdown]
# ## 7. Layer importance, and the exercise
#
# The `MetaController` keeps an EMA (exponential moving average,
# `new = m * old + (1 - m) * value`) of how much each fabric block is used, per *layer*
# (`fabric/importance`). The summary's version averaged the chosen probabilities
# `topk_probs` `(B, K)` per top-k *slot* instead (`topk_probs.mean(dim=0)`), which silently
# mixes layers (lesson 03b shows it on two samples).
#
# > **Reconstruction.** As written, the summary's line adds `K` slot means to `L` layer
# > importances: a shape error unless `K` is 1 (broadcast) or equals `L`. This run's model
# > (`L` = 4, top-2) and the catalog's (`L` = 3, top-2) both hit it (lesson 03b raises
# > it). To measure the summary's fix at all, the lab pads the `K` slot means with zeros to
# > length `L`
# > (`mahiax.bugs.stateful._slot_means_at_layer_indices`, shown in lesson 03b); the verdict
# > below is measured on that adaptation.

# %%
importance = reader.vectors(RUN, FABRIC_IMPORTANCE)
px.line(importance, labels={"value": "importance", "variable": "layer"},
        title="MetaController importance per layer (EMA)").update_layout(height=300)

# %% [markdown]
# The summary swapped `importance.data = new` for `importance.data.copy_(new)`. `.data`
# returns an alias of the tensor's storage that autograd does not track.
#
# **Predict.** `y = x.exp()` saves its result `y` for backward (the derivative of `exp` is
# `exp`). Overwrite `y` with zeros through `.data`, then call backward: an error, or which
# `x.grad`?

# %%
x = torch.ones(3, requires_grad=True)
y = x.exp()  # ExpBackward0 saved y itself
print("y._version before the write:", y._version)
y.data.copy_(torch.zeros(3))  # the summary's pattern: a write through .data
print("y._version after the write: ", y._version)
with lessons.attempt() as caught:
    y.sum().backward()
print("x.grad:", x.grad.tolist(), "| the derivative of exp at 1:",
      round(float(x.detach().exp()[0]), 3))

# %% [markdown]
# No error, and a silently wrong gradient: a write through `.data` does not move the
# tensor's version counter (`y._version` stayed 0), so the in-place check of lesson 06
# cannot see it, and backward used the zeros. Writing through `.data` is harmless in
# `MetaController` only because nothing saved `importance`: the forward never reads it
# (only the telemetry does, between steps; lesson 03b checks it with a saved-tensor hook).

# %%
caught.expect(None)
assert y._version == 0 and (x.grad == 0).all()

# %% [markdown]
# **Predict.** The catalog trains with the summary's per-slot EMA written through `.data`
# (`buggy`), then with `.data.copy_` (`summary`). Error? Does the importance differ from
# the per-layer EMA, and does the fix change it?

# %%
v_ctl = bugs.verdict("controller-importance")
lessons.verdict_report(v_ctl)

# %% [markdown]
# **Expected verdict** on the summary's fix for `controller-importance`: **no-effect**. No
# error either way; `.data.copy_` stores exactly what `.data =` stored, and the per-slot
# average is still wrong by the same amount.

# %%
ctl_buggy, ctl_summary, ctl_fixed = (v_ctl.outcomes[n] for n in ("buggy", "summary", "fixed"))
print({n: (o.error_type, round(o.state_diff, 4)) for n, o in v_ctl.outcomes.items()})
imp_key = next(k for k in ctl_buggy.final_state if k.endswith("controller.importance"))
print("importance at the end, buggy:", ctl_buggy.final_state[imp_key].tolist(),
      "| summary:", ctl_summary.final_state[imp_key].tolist())
assert all(o.error_type is None for o in v_ctl.outcomes.values())
assert torch.equal(ctl_buggy.final_state[imp_key], ctl_summary.final_state[imp_key])
assert ctl_summary.state_diff == ctl_buggy.state_diff > 1e-3 and ctl_fixed.state_diff < 1e-9

# %% [markdown]
# **Exercise.** Write a `MetaController` whose `observe(routing)` gives each *layer* its
# chosen probability (zero where not chosen), averaged over the batch, and folds it into
# the EMA `importance = m * importance + (1 - m) * value` with `m = self.momentum`.
# `routing.ids` and `routing.topk_probs` are `(B, K)`; `routing.probs` is `(B, L)`. Use
# `torch.no_grad()` and assign a new tensor to `self.importance`. The attempt below is the
# summary's per-slot version.

# %%
MyController = BuggyController  # TODO: the per-slot average
print(lessons.check("controller-importance", MyController))

# %% tags=["solution"]
class MyController(MetaController):
    """Scatter each sample's chosen probabilities to their layers, then the EMA."""

    @torch.no_grad()
    def observe(self, routing) -> None:
        per_layer = torch.zeros_like(routing.probs).scatter(1, routing.ids, routing.topk_probs)
        value = per_layer.mean(dim=0).to(self.importance)  # (L,)
        self.importance = self.momentum * self.importance + (1 - self.momentum) * value

    def commit(self) -> None:
        pass  # already folded in observe


result = bugs.check("controller-importance", MyController)
print(result)
assert result.holds

# %% [markdown]
# Your attempts so far, oldest first (also on the dashboard's **My attempts** page):

# %%
lessons.my_attempts()

# %% [markdown]
# ## 8. The same run in the dashboard
#
# The dashboard reads the same store: open it from the link below (or the **MAHIA-X
# dashboard** tile in the Launcher) and pick the run named above. It lists the same series
# with the same charts, live while a run trains. The command line reads it too.

# %%
display(lessons.dashboard_link(store))
print(f"{ENV_VAR}={store} python -m mahiax runs show {RUN}")

# %% [markdown]
# ## Check your understanding
#
# 1. What would the memory chart of section 6 show if a memory module carried the graph
#    from step to step, as the summary's original `GraphDiffusionMemory` did?
#    <details><summary>Answer</summary>
#    Live tensor memory growing at every reading: each step's graph, with its saved
#    tensors, stays reachable from the carried state (lesson 04 measures it). The clean
#    run is flat after the first reading.
#    </details>
# 2. `.data.copy_` raised no error in the catalog run. Why is that not evidence that it is
#    safe?
#    <details><summary>Answer</summary>
#    A write through `.data` does not bump the tensor's version counter, so autograd's
#    check cannot see it. If a graph saved the tensor, backward silently uses the new
#    values (`x.grad` was 0 instead of e in section 7). It is harmless in `MetaController`
#    only because no graph saves `importance`.
#    </details>
# 3. Why is `topk_probs.mean(dim=0)` not a per-layer importance?
#    <details><summary>Answer</summary>
#    `topk_probs` is `(B, K)`: column `j` holds each sample's `j`-th best probability,
#    whichever layer that was. Its mean is per top-k slot; "layer 0" would hold the mean of
#    the first choices of all samples. Scatter each probability to its layer index first
#    (the exercise).
#    </details>
# 4. In the DWA chart, a task's weight rises above 1. What does that say about its loss?
#    <details><summary>Answer</summary>
#    Its descent ratio `L(t-1) / L(t-2)` is higher than the others': its loss fell least (or
#    rose) over the last window, so DWA gives it more weight. The weights always sum to the
#    number of tasks.
#    </details>
# 5. Why would the summary's memory-node update make the nodes collapse?
#    <details><summary>Answer</summary>
#    Every node moves toward the same batch mean `m`: `n_i <- (1 - s) n_i + s m`. The
#    difference of two nodes is multiplied by `(1 - s)` at every step, so all nodes converge
#    to one point. The clean memory moves each node toward the inputs assigned to it.
#    </details>

# %% [markdown]
# ## Recap
#
# - `record_training` writes every step to one SQLite store; `RunReader` reads it as pandas
#   (`scalars`, `vectors`, `snapshots`) while training runs.
# - Watch what the summary's bugs damage: expert balance (`moe/*`), memory nodes
#   (`memory/nodes`), layer importance (`fabric/importance`), DWA weights, memory (flat
#   when no graph is carried across steps).
# - `.data` hides a write from autograd's version check; it is harmless only on a tensor no
#   graph saved. The summary's `.data.copy_` has **no effect** (measured): the real bug is
#   the per-slot average, fixed by a per-layer scatter.
