# Source of notebooks/07_train_and_watch.ipynb (built by notebooks/build.py).

# %% [markdown]
# # 07 · Train the clean model and watch it: the run store with pandas
#
# **Goal.** Record a real training run of the clean MAHIA-X, then read it back with pandas
# and look at what the summary's bugs would have damaged: expert load balance, memory-node
# evolution, layer importance, DWA weights and memory. Then open the same run in the
# dashboard.
#
# **Context (read cold).** `mahiax.recording.record_training` trains and writes every step
# to the run store, one SQLite file (`mahiax.store`). Any number of readers can read while
# it trains: the dashboard, the command line (`python -m mahiax runs show NAME`), or
# `mahiax.store.RunReader`, which returns pandas DataFrames. This notebook writes its store
# to a temporary directory, so it leaves nothing behind.

# %%
import tempfile
from pathlib import Path

import numpy as np
import plotly.express as px
import plotly.graph_objects as go
import torch

from mahiax import bugs, lessons
from mahiax.bugs.stateful import BuggyController
from mahiax.config import teaching
from mahiax.fabric import MetaController
from mahiax.recording import record_training
from mahiax.store import RunReader
from mahiax.telemetry.probes import Cadence

store = Path(tempfile.mkdtemp(prefix="mahiax-lesson-")) / "mahiax.sqlite"
print("run store:", store)

# %% [markdown]
# ## 1. Record a run
#
# 120 steps of the teaching preset (a few seconds on a laptop CPU), memory nodes
# snapshotted every 10 steps and a full memory reading every 25.

# %%
config = teaching().replace(max_steps=120, dwa_window=10)
trainer = record_training(config, "lesson07", steps=120, store=store,
                          cadence=Cadence(snapshot_every=10, memory_every=25))
reader = RunReader(store)
reader.runs()[["name", "status", "last_step", "steps", "device"]]

# %%
run = reader.run("lesson07")
assert run["status"] == "finished" and run["last_step"] == 119
keys = reader.scalar_keys("lesson07")
print(len(keys), "scalar keys, e.g.", keys[:6])

# %% [markdown]
# ## 2. Losses
#
# `scalars(name, keys)` returns one column per key, indexed by step.

# %%
tasks = list(config.tasks)
losses = reader.scalars("lesson07", [f"loss/{t}" for t in tasks])
fig = px.line(losses, labels={"value": "loss", "variable": "task"},
              title="per-task losses (clean model, one encode(), one backward per step)")
fig.update_layout(height=340)
fig

# %%
first, last = losses.iloc[:10].mean(), losses.iloc[-10:].mean()
print("mean of the first 10 steps:\n", first.round(3).to_string())
print("mean of the last 10 steps:\n", last.round(3).to_string())
assert (last < first).all(), "every task learns"

# %% [markdown]
# ## 3. Expert load balance
#
# The vector `moe/tokens_per_expert` holds, per step, how many tokens each expert got. A
# balanced router spreads tokens evenly; the load-balancing loss pushes toward that.

# %%
load = reader.vectors("lesson07", "moe/tokens_per_expert")
share = load.div(load.sum(axis=1), axis=0)
fig = px.imshow(share.T, aspect="auto", origin="lower", color_continuous_scale="Viridis",
                labels={"x": "step", "y": "expert", "color": "share of tokens"},
                title="share of tokens per expert (even = 1 / num_experts)")
fig.update_layout(height=320)
fig

# %%
balance = reader.scalars("lesson07", ["moe/cv", "moe/max_over_mean"])
px.line(balance, title="load imbalance: coefficient of variation and max / mean",
        labels={"value": "", "variable": ""}).update_layout(height=300)

# %% [markdown]
# ## 4. Memory-node evolution
#
# Snapshots of the `GraphDiffusionMemory` nodes `(N, D)`, projected on their first two
# principal components (computed once over all snapshots, so the axes stay put). Scrub
# through the steps: the nodes move toward the inputs assigned to them and stay distinct.
# (The summary's update pulled every node toward the same batch mean: they would collapse
# onto one point.)

# %%
snaps = reader.snapshots("lesson07", "memory/nodes")
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
# Dynamic Weight Averaging (Liu et al. 2019) keeps equal weights for the first two windows
# of 10 steps, then gives more weight to the tasks whose loss falls slowest (ratio
# `L(t-1) / L(t-2)` closer to 1 or above).

# %%
weights = reader.scalars("lesson07", [f"weight/{t}" for t in tasks])
ratios = reader.scalars("lesson07", [f"dwa/ratio/{t}" for t in tasks])
fig = go.Figure()
for t in tasks:
    fig.add_trace(go.Scatter(x=weights.index, y=weights[f"weight/{t}"], name=f"weight {t}"))
    fig.add_trace(go.Scatter(x=ratios.index, y=ratios[f"dwa/ratio/{t}"], name=f"ratio {t}",
                             line={"dash": "dot"}))
fig.update_layout(title="DWA weights (solid) and descent ratios (dotted)", height=340,
                  xaxis_title="step")
fig

# %%
assert np.allclose(weights.sum(axis=1), len(tasks), atol=1e-4), "DWA weights sum to K"

# %% [markdown]
# ## 6. Memory
#
# The probes read `MemoryMeter` every 25 steps (live tensor bytes on a CPU, the allocator on
# a GPU) and the process RSS every step. Flat tensor memory is the sign that no graph is
# carried from step to step (compare lesson 04).

# %%
mem = reader.scalars("lesson07", ["mem/tensor_bytes", "mem/rss"]) / 2**20
px.line(mem.dropna(how="all"), markers=True, labels={"value": "MB", "variable": ""},
        title=f"memory on {run['device']}").update_layout(height=300)

# %% [markdown]
# ## 7. Layer importance, and the exercise
#
# The `MetaController` keeps an EMA of how much each fabric block is used, per *layer*
# (`fabric/importance`). The summary's version averaged the chosen probabilities per top-k
# *slot* instead, which silently mixes layers (lesson 03 shows it on two samples).
#
# **Expected verdict** on the summary's fix for `controller-importance`: **no-effect**
# (`.data.copy_` changes nothing: `.data` bypasses autograd either way, and the per-slot
# average stays).

# %%
importance = reader.vectors("lesson07", "fabric/importance")
px.line(importance, labels={"value": "importance", "variable": "layer"},
        title="MetaController importance per layer (EMA)").update_layout(height=300)

# %%
v_ctl = bugs.verdict("controller-importance")
lessons.verdict_report(v_ctl)

# %% [markdown]
# **Exercise.** Write a `MetaController` whose `observe(routing)` gives each *layer* its
# chosen probability (zero where not chosen), averaged over the batch, and folds it into
# the EMA `importance = m * importance + (1 - m) * value` with `m = self.momentum`.
# `routing.ids` and `routing.topk_probs` are `(B, K)`; `routing.probs` is `(B, L)`. Use
# `torch.no_grad()` and assign a new tensor to `self.importance`. The attempt below is the
# summary's per-slot version.

# %%
MyController = BuggyController  # TODO: the per-slot average
print(bugs.check("controller-importance", MyController))

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
# ## 8. The same run in the dashboard
#
# The dashboard reads the store named by `MAHIAX_STORE`. From a terminal at the repository
# root (the exact command for this notebook's store is printed below), then open
# <http://localhost:8501>: the run `lesson07` is listed with the same charts, live while a
# run trains.

# %%
print(f"MAHIAX_STORE={store} MAHIAX_DASHBOARD_AUTOSTART=0 .venv/bin/streamlit run dashboard")
print(f"MAHIAX_STORE={store} .venv/bin/python -m mahiax runs show lesson07")

# %% [markdown]
# ## Recap
#
# - `record_training` writes every step to one SQLite store; `RunReader` reads it as pandas
#   (`scalars`, `vectors`, `snapshots`) while training runs.
# - Watch what the summary's bugs damage: expert balance (`moe/*`), memory nodes
#   (`memory/nodes`), layer importance (`fabric/importance`), DWA weights, memory.
# - The per-slot importance of the summary is a silent bug: **no-effect** for its fix,
#   and a per-layer scatter for the right one.
