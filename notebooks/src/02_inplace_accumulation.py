# Source of notebooks/02_inplace_accumulation.ipynb (built by notebooks/build.py).

# %% [markdown]
# # 02 · In-place accumulation in DynamicNeuroFabric and DynamicLayerRouter
#
# **Goal.** See why `output[b] += w * layer_out` breaks backward, read every part of
# PyTorch's error message (shape, version, "AsStrided"), and check that the summary's fix for
# these two components really holds.
#
# **Context (read cold).** MAHIA-X has a *fabric*: a bank of small blocks, of which each
# sample runs through its top-2, picked by a gate (`DynamicLayerRouter`). The block outputs
# are weighted and added to the input. The summary, section 2:
#
# > **DynamicNeuroFabric**: Replaced in-place addition `output[batch_idx] += layer_weight *
# > layer_output` with non-in-place operations.
# > **DynamicLayerRouter**: the same.

# %%
import dis

import torch
from torch import nn

from mahiax import bugs, lessons
from mahiax.bugs.accumulate import _per_sample_inplace, _per_sample_out_of_place
from mahiax.bugs.harness import harness_config
from mahiax.model.fabric import DynamicLayerRouter, DynamicNeuroFabric

torch.manual_seed(0)

# %% [markdown]
# ## 1. The error, taken apart
#
# Two terms first.
#
# - **Saved tensors.** To compute gradients, many operations keep some of their inputs for
#   the backward pass. A `Linear` keeps its input (the gradient of its weight needs it).
#   Autograd exposes them as the `_saved_*` attributes of a tensor's `grad_fn`.
# - **Version counter.** Every tensor carries a counter, `tensor._version`, that each
#   in-place operation on it bumps. A view (what basic indexing returns: an int as in
#   `x[0]`, or a slice as in `x[1:3]`) shares its base's memory *and its counter*. When an
#   operation saves a tensor, autograd records its version; when backward uses the saved
#   tensor, it checks that the version has not moved.
#
# A small model of the fabric: a gate reads `x`, a block reads one row `x[0]`, and
# `output = x` ("start from the residual") is an alias, not a copy.

# %%
a = torch.randn(4, 3, requires_grad=True)
gate, block = nn.Linear(3, 2), nn.Linear(3, 3)
x = a * 1.0  # (4, 3) an activation (not a leaf)
scores = gate(x)  # (4, 2)
row_out = block(x[0])  # (3,) one sample through the block
saved_by_gate = scores.grad_fn._saved_mat1
saved_by_block = row_out.grad_fn.next_functions[0][0]._saved_mat1
print("the gate saved ", tuple(saved_by_gate.shape), "at version", saved_by_gate._version)
print("the block saved", tuple(saved_by_block.shape), "at version", saved_by_block._version,
      "(x[0] reshaped to one row: a Linear multiplies matrices)")
same_memory = saved_by_gate.data_ptr() == x.data_ptr() == saved_by_block.data_ptr()
print("both share x's memory:", same_memory)
output = x  # "start from the residual": an alias, not a copy
print("output is x:", output is x)

# %% [markdown]
# **Predict.** `output[0] += 0.5 * row_out` is one line with one `+=`. By how much does it
# bump `x._version`?

# %%
print("x._version before:", x._version)
output[0] += 0.5 * row_out
print("x._version after: ", x._version)

# %% [markdown]
# Two, not one. Python runs `output[0] += v` as three steps: read the item, add in place,
# store the item back (`BINARY_SUBSCR`, `BINARY_OP +=`, `STORE_SUBSCR` in the bytecode):

# %%
assert x._version == 2
dis.dis("output[0] += v")

# %% [markdown]
# Step by step, on a fresh activation: `t = x[0]` is a view; `t += ...` is `add_` on the view
# (one bump, on the counter it shares with `x`); `x[0] = t` is `__setitem__`, which copies
# `t` into `x[0]` (a second bump, even though `t` already *is* that memory).

# %%
x2 = a * 1.0
t = x2[0]  # a view of row 0: shares x2's memory and version counter
t += 1.0  # Tensor.__iadd__: add_ on the view
print("after t += 1.0:", "t._version =", t._version, "| x2._version =", x2._version)
x2[0] = t  # Tensor.__setitem__: copy_ into x2[0]
print("after x2[0] = t:", "x2._version =", x2._version)
assert (t._version, x2._version) == (2, 2)

# %% [markdown]
# That count depends on the index. With an int, a slice, or a 0-dim integer tensor, `x[i]`
# is a view, and the line makes the two writes above. With a 1-D tensor of indices
# (advanced indexing), `x[idx]` is a **copy**: `t += ...` bumps only the copy, and
# `x[idx] = t` is one `index_put_` into `x` (its `grad_fn` becomes `IndexPutBackward0`, not
# `CopySlices`): one bump. The summary's line indexes with `batch_idx`, which it does not
# define; each kind of index, measured on a fresh activation:

# %%
indices = {
    "0 (int)": 0,
    "0:1 (slice)": slice(0, 1),
    "tensor(0) (0-dim)": torch.tensor(0),
    "tensor([0]) (1-D)": torch.tensor([0]),
    "tensor([0, 2]) (1-D)": torch.tensor([0, 2]),
}
bumps = {}
for name, idx in indices.items():
    x3 = a * 1.0  # (4, 3) a fresh activation, version 0
    is_view = x3[idx]._base is x3
    x3[idx] += 1.0
    bumps[name] = x3._version
    print(f"x3[{name:20}] += 1.0 | x3[idx] is a view: {is_view!s:5} | "
          f"x3._version: {x3._version} | x3.grad_fn: {x3.grad_fn.name()}")
assert bumps == {"0 (int)": 2, "0:1 (slice)": 2, "tensor(0) (0-dim)": 2,
                 "tensor([0]) (1-D)": 1, "tensor([0, 2]) (1-D)": 1}

# %% [markdown]
# Now backward. The raw traceback, as a learner first meets it:

# %% tags=["raises-exception"]
(output.sum() + scores.sum()).backward()

# %% [markdown]
# Read the message part by part:
#
# - `[torch.FloatTensor [1, 3]]`: the tensor backward found changed is the `[1, 3]` row that
#   `block(x[0])` saved, not the `[4, 3]` tensor `x`.
# - `is at version 2; expected version 0`: saved at version 0, bumped twice by one `+=`.
# - `output 0 of AsStrided`: the saved tensor is a view of `x`. After `x` was written in place,
#   autograd rebuilt that view's history as an **AsStrided** view (`torch.as_strided`: a view
#   given by size, stride and offset into the base's memory, the general form of any view).
#   The cell below shows a view's `grad_fn` change after its base is written. The message
#   (torch 2.13) names that node by its forward operation, `AsStrided`; printed with
#   `grad_fn.name()`, as in the cell below, such a node is `AsStridedBackward0`.
#
# The `[4, 3]` tensor the gate saved is stale too: backward simply reached the block's
# saved row first. Reading a saved tensor runs the same check, so we can ask for the gate's:

# %%
v = a * 1.0
view = v[0].view(1, 3)
print("a view's grad_fn before the write:", view.grad_fn.name())
v[0] += 1.0
print("after v[0] += 1.0:                ", view.grad_fn.name(), "| v.grad_fn:", v.grad_fn.name())

with lessons.expect_error(RuntimeError, "[4, 3]"):
    _ = scores.grad_fn._saved_mat1  # the gate's saved x

# %% [markdown]
# (`CopySlices` is the autograd node that records an in-place operation on a view as a
# write into its base: it is `v`'s `grad_fn` after the `+=`, printed above.)
#
# The same backward, checked (type, the `[1, 3]` shape and the versions), then with a 1-D
# tensor index: one `index_put_` into `x` is enough to make backward refuse, at version 1:

# %%
a.grad = None
x = a * 1.0
scores = gate(x)
output = x
output[0] += 0.5 * block(x[0])
with lessons.expect_error(RuntimeError, "modified by an inplace operation") as caught:
    (output.sum() + scores.sum()).backward()
assert "[1, 3]" in caught.message and "is at version 2; expected version 0" in caught.message

x = a * 1.0
scores = gate(x)
output = x
output[torch.tensor([0])] += 0.5 * block(x[0])  # a 1-D tensor index: one index_put_ into x
with lessons.expect_error(RuntimeError, "modified by an inplace operation") as caught:
    (output.sum() + scores.sum()).backward()
assert "[1, 3]" in caught.message and "is at version 1; expected version 0" in caught.message

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
# Writing in place is fine into a tensor that nothing saved. With `output = x.clone()`, the
# same `+=` line bumps the clone's own counter, and `x` (and every view of it) stays at
# version 0:

# %%
a.grad = None
x = a * 1.0
scores = gate(x)
output = x.clone()  # a new tensor with its own memory and version counter
output[0] += 0.5 * block(x[0])
print("x._version:", x._version, "| output._version:", output._version)
(output.sum() + scores.sum()).backward()
assert x._version == 0 and a.grad is not None

# %% [markdown]
# ## 2. The fabric and the router in MAHIA-X
#
# > **Reconstruction.** The summary quotes only the line `output[batch_idx] += layer_weight
# > * layer_output`. That line raises this error only when `output` shares memory with a
# > tensor autograd saved: the `clone()` cell above runs the same line without error. The lab
# > assumes the original started from the residual, `output = x`, looping per sample and per
# > chosen block, with the gate and the blocks reading `x`. The summary does not show its
# > "non-in-place operations" either; the lab writes them as adding, per step, a fresh zero
# > tensor with one row filled.
#
# The catalog's buggy fabric runs that loop inside the real model; the summary's variant
# keeps the loop and adds fresh tensors instead:

# %%
lessons.source(_per_sample_inplace, "the original loop")

# %%
lessons.source(_per_sample_out_of_place, "the summary's fix")

# %% [markdown]
# **Predict.** The harness trains the catalog's tiny model (8 samples a step, each through 2
# blocks). (a) How many version bumps does the original loop make to `x` in one forward?
# (b) Does the summary's non-in-place loop train, with the clean model's gradients?

# %%
v_fabric = bugs.verdict("fabric-accumulate")
lessons.verdict_report(v_fabric)

# %%
v_router = bugs.verdict("layer-router-accumulate")
lessons.verdict_report(v_router)

# %% [markdown]
# **Expected verdict** on the summary's fix for `fabric-accumulate`: **holds**.
#
# **Expected verdict** on the summary's fix for `layer-router-accumulate`: **holds**.
#
# The original raises PyTorch's in-place error at the first step. Decode its message with
# section 1: the shape is one sample's row (`d_model` numbers), and the version is two bumps
# per `+=` (the loop's `batch_idx` is an int from `range`), one `+=` per sample per chosen
# block:

# %%
c = harness_config()
first_line = v_fabric.outcomes["buggy"].error_message.splitlines()[0]
print(first_line.split(" Hint:")[0])
bumps_per_forward = 2 * c.batch_size * c.fabric_active
print(f"d_model = {c.d_model}; bumps in one forward = 2 x {c.batch_size} samples x "
      f"{c.fabric_active} blocks = {bumps_per_forward}")
assert f"[{c.d_model}]" in first_line
assert (f"is at version {bumps_per_forward}; expected version {bumps_per_forward - 2} "
        in first_line)

# %% [markdown]
# The version it expected, 2 fewer, is the one the last sample's row had when its second block
# read (and saved) it, just before the last `+=`.
#
# The evidence per variant. Look at the graph size (every autograd node reachable from the
# step's loss: the whole model's graph, not the fabric's alone): the summary's fix holds,
# but with its per-sample loop the graph is much larger than with the clean fabric, which
# runs each block once, on the samples that chose it.

# %%
lessons.outcome_table(v_fabric.outcomes)

# %%
lessons.variant_switch(v_fabric.outcomes)

# %%
summary_nodes = v_fabric.outcomes["summary"].graph_nodes[-1]
clean_nodes = v_fabric.outcomes["fixed"].graph_nodes[-1]
print(f"autograd nodes per step, whole model: summary's loop {summary_nodes}, "
      f"clean fabric {clean_nodes}")
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
# Write a fabric whose `forward(x)` accumulates without writing into a tensor autograd saved
# (out of place, or into a fresh clone). Subclass
# `DynamicNeuroFabric`; it has `self.router` (call it on `x` for the routing; `routing.ids`
# and `routing.weights` are `(B, K)`), `self.blocks` (the bank) and `self.controller` (call
# `self.controller.observe(routing)` in training mode: after every step the checker compares
# the controller's layer importance with a clean controller's fed the same routing). Return
# `(output, routing)`.
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


print(lessons.check("fabric-accumulate", MyFabric))

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
# The checker grades the controller too: the clean forward without
# `self.controller.observe(routing)` trains with the right gradients, but its layer
# importance never moves.

# %%
no_observe = bugs.get("fabric-accumulate").candidates()["wrong: the controller never observes"]
silent = bugs.check("fabric-accumulate", no_observe)
print(silent)
importance = silent.outcome.final_state["fabric.controller.importance"]
print(f"largest gradient difference {silent.outcome.max_grad_diff:.1e}; "
      f"layer importance after training: {importance.tolist()}")
assert not silent.holds and silent.outcome.max_grad_diff < 1e-9

# %% [markdown]
# Your attempts so far, oldest first (also on the dashboard's **My attempts** page):

# %%
lessons.my_attempts()

# %% [markdown]
# ## Check your understanding
#
# 1. Why does one `output[0] += v` bump the version counter by 2? And `output[idx] += v`,
#    with `idx` a 1-D tensor of indices?
#
#    <details><summary>Answer</summary>
#
#    Python runs it as `t = output[0]`, `t += v` (an in-place `add_` on a view, which shares
#    `output`'s counter: +1), then `output[0] = t` (`__setitem__` copies into the slice: +1).
#    With a 1-D index tensor, `output[idx]` is a copy: the `add_` bumps only the copy, and
#    the store is one `index_put_` into `output`: +1. Either way backward refuses.
#
#    </details>
#
# 2. The error names a `[1, 3]` tensor, but the code wrote into the `[4, 3]` tensor `x`.
#    Which tensor is it, and why is it affected?
#
#    <details><summary>Answer</summary>
#
#    The row `x[0]`, reshaped to `[1, 3]`, that the block's `Linear` saved. It is a view of
#    `x`, so it shares `x`'s version counter: the write into `x` moved its version from 0 to
#    2. The gate's saved `[4, 3]` `x` is stale too; backward reached the row first.
#
#    </details>
#
# 3. Would `output = x.clone()` followed by the same in-place loop be correct?
#
#    <details><summary>Answer</summary>
#
#    Yes: the clone is a new tensor with its own counter, and no operation saved it, so the
#    bumps of `+=` touch nothing autograd checks (the clone cell of section 1 shows it). It
#    still runs a per-sample loop.
#
#    </details>
#
# 4. In the catalog run, the message says version 32, expected 30. Where do those numbers
#    come from?
#
#    <details><summary>Answer</summary>
#
#    8 samples x 2 blocks = 16 `+=`, 2 bumps each (an int index): 32 after the forward. The
#    last block to read a row read `x[7]` just before the last `+=`, at version 30.
#
#    </details>

# %% [markdown]
# ## PyTorch documentation
#
# - Autograd mechanics: [Saved tensors](https://docs.pytorch.org/docs/stable/notes/autograd.html#saved-tensors)
#   and [In-place correctness checks](https://docs.pytorch.org/docs/stable/notes/autograd.html#in-place-correctness-checks).
# - [Tensor views](https://docs.pytorch.org/docs/stable/tensor_view.html) and
#   [`torch.as_strided`](https://docs.pytorch.org/docs/stable/generated/torch.as_strided.html).
# - [`torch.Tensor.index_add`](https://docs.pytorch.org/docs/stable/generated/torch.Tensor.index_add.html)
#   (out of place) and `index_add_` (in place).

# %% [markdown]
# ## Recap
#
# - In-place ops bump a tensor's version counter, shared by all views of the same memory;
#   backward refuses a saved tensor whose version moved: "one of the variables needed for
#   gradient computation has been modified by an inplace operation".
# - With an int (or slice) index, one `output[b] += ...` is two in-place writes (`add_` on
#   the view, then `__setitem__`'s copy): +2 per line. With a 1-D tensor index, `output[b]`
#   is a copy and the store is one `index_put_`: +1. Either bump makes backward refuse.
# - `output = x` is an alias: `output[b] += ...` writes into `x`, and every saved view of `x`
#   goes stale. The first one backward meets is named in the error, with its own shape.
# - The summary's non-in-place additions **hold** for both the fabric and the router
#   (measured), at the price of a per-sample loop and a larger graph.
# - Better: accumulate out of place, grouped by block (`DynamicLayerRouter.mix`).
