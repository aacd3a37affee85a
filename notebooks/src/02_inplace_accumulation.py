# Source of notebooks/02_inplace_accumulation.ipynb (built by notebooks/build.py).

# %% [markdown]
# # 02 · In-place accumulation in DynamicNeuroFabric and DynamicLayerRouter
#
# **Goal.** See why `output[b] += w * layer_out` breaks backward, read the evidence in the
# tensor's version counter, and check that the summary's fix for these two components
# really holds.
#
# **Context (read cold).** MAHIA-X has a *fabric*: a bank of small blocks, of which each
# sample runs through its top-2, picked by a gate (`DynamicLayerRouter`). The block outputs
# are weighted and added to the input. The summary, section 2:
#
# > **DynamicNeuroFabric**: Replaced in-place addition `output[batch_idx] += layer_weight *
# > layer_output` with non-in-place operations.
# > **DynamicLayerRouter**: the same.

# %%
import torch
from torch import nn

from mahiax import bugs, lessons
from mahiax.bugs.accumulate import _per_sample_inplace, _per_sample_out_of_place
from mahiax.fabric import DynamicLayerRouter, DynamicNeuroFabric

torch.manual_seed(0)

# %% [markdown]
# ## 1. The error, in six lines
#
# A gate reads `x` (a `Linear` saves its input for the backward), then the loop writes into
# `output`, which *is* `x`. Every tensor has a version counter, bumped by each in-place
# write; backward checks that what it saved still has the version it saved.

# %%
a = torch.randn(4, 3, requires_grad=True)
gate, block = nn.Linear(3, 2), nn.Linear(3, 3)
x = a * 1.0  # an activation (not a leaf)
scores = gate(x)  # the gate saved x (version 0)
output = x  # "start from the residual": an alias, not a copy
print("x._version before:", x._version)
output[0] += 0.5 * block(x[0])  # in place, into x
print("x._version after: ", x._version)
assert output is x and x._version > 0

# %% [markdown]
# Backward now finds the saved `x` changed. The raw traceback:

# %% tags=["raises-exception"]
(output.sum() + scores.sum()).backward()

# %% [markdown]
# The same, checked (type and message):

# %%
a.grad = None
x = a * 1.0
scores = gate(x)
output = x
output[0] += 0.5 * block(x[0])
with lessons.expect_error(RuntimeError, "modified by an inplace operation"):
    (output.sum() + scores.sum()).backward()

# %% [markdown]
# Out of place, every partial sum is a new tensor: `x` keeps version 0 and backward runs.
# `index_add` (without the trailing underscore) returns a new tensor.

# %%
a.grad = None
x = a * 1.0
scores = gate(x)
output = x.index_add(0, torch.tensor([0]), 0.5 * block(x[0:1]))  # a new tensor
print("x._version:", x._version, "| output is x:", output is x)
(output.sum() + scores.sum()).backward()
assert x._version == 0 and a.grad is not None

# %% [markdown]
# ## 2. The fabric and the router in MAHIA-X
#
# The catalog's buggy fabric runs the summary-era loop inside the real model: per sample,
# per chosen block, `output[batch_idx] += ...` into an alias of `x`. The summary's fix keeps
# the loop and adds a fresh tensor instead:

# %%
lessons.source(_per_sample_inplace, "the original loop")

# %%
lessons.source(_per_sample_out_of_place, "the summary's fix")

# %% [markdown]
# **Expected verdict** on the summary's fix for `fabric-accumulate`: **holds**.
#
# **Expected verdict** on the summary's fix for `layer-router-accumulate`: **holds**.
#
# Both verdicts are measured now: the original raises PyTorch's in-place error at the first
# step; the summary's variant trains every step with gradients equal to the clean model's.

# %%
v_fabric = bugs.verdict("fabric-accumulate")
lessons.verdict_report(v_fabric)

# %%
v_router = bugs.verdict("layer-router-accumulate")
lessons.verdict_report(v_router)

# %% [markdown]
# The evidence per variant. Look at the graph size: the summary's fix holds, but its
# per-sample loop builds a much larger autograd graph than the clean fabric, which runs each
# block once, on the samples that chose it.

# %%
lessons.outcome_table(v_fabric.outcomes)

# %%
lessons.variant_switch(v_fabric.outcomes)

# %%
summary_nodes = v_fabric.outcomes["summary"].graph_nodes[-1]
clean_nodes = v_fabric.outcomes["fixed"].graph_nodes[-1]
print(f"autograd nodes per step: summary's loop {summary_nodes}, clean fabric {clean_nodes}")
assert summary_nodes > clean_nodes

# %% [markdown]
# ## 3. The right fix: out of place, grouped by block
#
# The clean router's `mix` (what the `fixed` variant runs): each block runs once on the
# samples that chose it, and `index_add` returns a new tensor every time.

# %%
lessons.source(DynamicLayerRouter.mix, "the clean mix")

# %% [markdown]
# ## Exercise
#
# Write a fabric whose `forward(x)` accumulates out of place. Subclass
# `DynamicNeuroFabric`; it has `self.router` (call it on `x` for the routing; `routing.ids`
# and `routing.weights` are `(B, K)`), `self.blocks` (the bank) and `self.controller` (call
# `self.controller.observe(routing)` in training mode). Return `(output, routing)`.
# The attempt below is the original in-place loop; run it, read the checker, fix it.

# %%
class MyFabric(DynamicNeuroFabric):
    def forward(self, x):
        routing = self.router(x)
        if self.training:
            self.controller.observe(routing)
        output = x
        for b in range(x.shape[0]):
            for k in range(routing.ids.shape[1]):
                w = routing.weights[b, k].to(x.dtype)
                output[b] += w * self.blocks[int(routing.ids[b, k])](x[b])  # TODO
        return output, routing


print(bugs.check("fabric-accumulate", MyFabric))

# %% tags=["solution"]
class MyFabric(DynamicNeuroFabric):
    """Per sample, but every addition makes a new tensor (x is never written)."""

    def forward(self, x):
        routing = self.router(x)
        if self.training:
            self.controller.observe(routing)
        output = x
        for b in range(x.shape[0]):
            for k in range(routing.ids.shape[1]):
                w = routing.weights[b, k].to(x.dtype)
                update = w * self.blocks[int(routing.ids[b, k])](x[b : b + 1])
                output = output.index_add(0, torch.tensor([b]), update)
        return output, routing


result = bugs.check("fabric-accumulate", MyFabric)
print(result)
assert result.holds

# %% [markdown]
# ## Recap
#
# - In-place ops bump a tensor's `_version`; backward refuses a saved tensor whose version
#   changed: "one of the variables needed for gradient computation has been modified by an
#   inplace operation".
# - `output = x` is an alias: `output[b] += ...` writes into `x`, which the gate saved.
# - The summary's non-in-place additions **hold** for both the fabric and the router
#   (measured), at the price of a per-sample loop and a larger graph.
# - Better: accumulate out of place, grouped by block (`DynamicLayerRouter.mix`).
