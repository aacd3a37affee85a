# Source of notebooks/03a_memories.ipynb (built by notebooks/build.py).

# %% [markdown]
# # 03a · Memories: state that carries the graph, and writes into a saved tensor
#
# **Goal.** Learn the two mistakes a module that keeps state across training steps can make
# with autograd, the rule that decides when an in-place write breaks backward (the version
# counter, shared by a tensor and all its views), and the protocol that avoids both. Then
# measure the summary's fixes for two memories, `GraphDiffusionMemory` and `TinyMemory`.
# (Lesson 03b does the same for the `MetaController` and the loss weighting.)
#
# **Context (read cold).** MAHIA-X keeps two memories from one training step to the next:
# `GraphDiffusionMemory` (a few *memory nodes*, vectors that each sample's query attends over,
# moved a little toward every batch) and `TinyMemory` (a ring buffer of the last few batch
# summaries, read by attention, one slot overwritten per step). Both keep their state in a
# **buffer**: a tensor registered on the module with `register_buffer`, saved in its
# `state_dict` and moved by `.to()`, but not a parameter (no gradient, the optimiser never
# touches it). The summary, section 2, "fixed" both:
#
# > **GraphDiffusionMemory**: Replaced `self.memory_nodes = (1 - update_strength) *
# > self.memory_nodes + update_strength * x_mean.mean(dim=0, keepdim=True)` with
# > `self.memory_nodes.copy_(new_memory_nodes)`
# > **TinyMemory**: Replaced `self.memory[self.ptr % self.size] = avg.mean(dim=0).detach()`
# > with `self.memory[self.ptr % self.size].copy_(new_memory)`
#
# **PyTorch docs this lesson builds on:** autograd mechanics,
# [Saved tensors](https://docs.pytorch.org/docs/stable/notes/autograd.html#saved-tensors) and
# [In-place correctness checks](https://docs.pytorch.org/docs/stable/notes/autograd.html#in-place-correctness-checks);
# [Locally disabling gradient computation](https://docs.pytorch.org/docs/stable/notes/autograd.html#locally-disabling-gradient-computation)
# (`no_grad`); [Tensor Views](https://docs.pytorch.org/docs/stable/tensor_view.html); the note
# on [`torch.Tensor.detach`](https://docs.pytorch.org/docs/stable/generated/torch.Tensor.detach.html).

# %%
import torch

from mahiax import bugs, lessons
from mahiax.bugs import stateful
from mahiax.bugs.harness import observing
from mahiax.memory import GraphDiffusionMemory, TinyMemory

torch.manual_seed(0)

# %% [markdown]
# ## 1. Mistake one: state that carries the graph
#
# The state is rebound to a value computed from a *live* activation (one that is part of
# this step's autograd graph). Here the state is an **EMA** (exponential moving average:
# `state = 0.9 * state + 0.1 * new`, each step keeps 90 % of the old value).
#
# **Predict.** Step 0 runs its backward. Does step 1's backward run too? If not, what does
# PyTorch say?

# %%
w = torch.randn(3, requires_grad=True)
state = torch.zeros(3)
with lessons.expect_error(RuntimeError, "Trying to backward through the graph a second time"):
    for step in range(2):
        y = w * torch.randn(3) + state  # reads the state
        loss = y.pow(2).sum()
        state = 0.9 * state + 0.1 * y  # live y: the state now holds this step's graph
        loss.backward()
        print(f"step {step}: backward ran; state.grad_fn = {state.grad_fn}")

# %% [markdown]
# Step 1's loss reads `state`, whose `grad_fn` belongs to step 0's graph, so step 1's backward
# walks into step 0's graph, whose saved tensors step 0's backward already freed.
#
# ## 2. Mistake two: writing into a tensor the forward saved
#
# Many operations **save** tensors for their backward: `q @ mem.T` saves `mem.T` to compute
# the gradient of `q`. Every tensor carries a **version counter**, a number that each in-place
# write (`copy_`, `buf[i] = v`, `add_`, ...) increments. Autograd records the version of each
# tensor it saves; backward compares, and refuses if the version moved.
#
# **Predict.** The write below happens under `torch.no_grad()`, which stops autograd from
# *recording* operations. Does backward still fail?

# %%
mem = torch.randn(4, 3)  # (S, D) a memory, no grad
q = torch.randn(2, 3, requires_grad=True)  # (B, D)
attn = torch.softmax(q @ mem.T, dim=-1)  # (B, S); the matmul saved mem.T at version 0
with torch.no_grad():
    mem[0] = 1.0  # an in-place write into row 0
print("mem._version:", mem._version)

# %% tags=["raises-exception"]
attn.sum().backward()

# %% [markdown]
# Yes: `no_grad` does not stop the version counter. The `[3, 4]` in the message is `mem.T`,
# the transposed **view** that the matmul saved.
#
# ## 3. The key concept: one version counter, shared by a tensor and all its views
#
# A **view** is a tensor that reads another tensor's memory (its *storage*) through its own
# shape and offset, without a copy: slicing (`buf[:1]`), indexing one row (`buf[1]`) and `.T`
# all return views. A tensor and every view made from it share **one** version counter, so
# autograd cannot tell a write into the rows it saved from a write into rows it never read.
#
# **Predict.** `first` is row 0 of a buffer, `second` is row 1. We write into `second` only.
# What are the three version numbers after the write? And does a backward that saved only
# row 0 still run?

# %%
buf = torch.zeros(4, 3)  # (S, D) a ring buffer
first, second = buf[:1], buf[1]  # two views: row 0 (1, D) and row 1 (D,)
print("one storage:", first.untyped_storage().data_ptr() == second.untyped_storage().data_ptr())
print("versions (buf, first, second) before:", buf._version, first._version, second._version)
second.copy_(torch.ones(3))  # write row 1 only
print("versions (buf, first, second) after: ", buf._version, first._version, second._version)
print("row 0 is unchanged:", first.tolist())

# %%
q = torch.randn(2, 3, requires_grad=True)
scores = q @ buf[:1].T  # (B, 1): saves the view buf[:1].T, at version 1
buf[1] = 5.0  # writes row 1, which the matmul never read
with lessons.expect_error(RuntimeError, "modified by an inplace operation"):
    scores.sum().backward()

# %% [markdown]
# The saved values did not change, and backward still refuses: the check is on the shared
# version counter, not on the values. (The check is conservative: it refuses some writes
# that would have been harmless, and in exchange never has to compare values.)
#
# Two ways to get a second name for a tensor without a copy differ exactly here. `.detach()`
# returns an alias that *shares* the version counter (its docs: in-place changes "may
# trigger errors in correctness checks"); the old `.data` returns an alias of the same storage
# that is not a view in autograd's sense: it gets a version counter of its *own*, so a write
# through it is invisible to the check:

# %%
buf = torch.zeros(4, 3)
buf.detach()[2] = 2.0  # write through .detach()
print("after a write through .detach():", buf._version)
buf.data[3] = 3.0  # write through .data
print("after a write through .data:    ", buf._version, "(unchanged: the write is hidden)")

# %% [markdown]
# A hidden write into a saved tensor is not safe, it is *silent*: backward then computes
# with the new values. Section 6 measures that on the `TinyMemory`.
#
# **The protocol** that avoids both mistakes (what the clean modules do): in `forward`,
# **read** the state and **stage** what the next state needs (here the batch's sum and size)
# from *detached* inputs; after the optimiser step, `commit()` builds the next state in a
# *new* tensor and swaps it in. No graph is carried, and nothing a graph saved is ever
# written.

# %%
lessons.source(TinyMemory.forward, "the clean TinyMemory: read, stage detached sums")

# %%
lessons.source(TinyMemory.commit, "after the step: write into a copy, swap it in")

# %% [markdown]
# ## 4. GraphDiffusionMemory
#
# The original rebinds the nodes to a blend with the batch mean of the *live* `x`: mistake
# one. The summary replaced it with `copy_` into the nodes, which `read()` has just saved
# (the diffusion `A @ nodes` saves `nodes` for the gradient of `A`): mistake two.

# %%
lessons.source(stateful.BuggyGraphMemory.forward, "the original")

# %%
lessons.source(stateful.SummaryGraphMemory.forward, "the summary's fix")

# %% [markdown]
# The catalog trains the lab's small model (float64, 6 steps, steps counted from 0) once with
# each variant installed: `buggy` (the original), `summary` (the summary's fix) and `fixed`
# (the package's memory).
#
# **Predict.** Which variant fails, at which step, with which of the two errors above?

# %%
v_graph = bugs.verdict("graph-memory-update")
lessons.verdict_report(v_graph)

# %%
lessons.outcome_table(v_graph.outcomes)[["error", "steps run", "max grad diff"]]

# %% [markdown]
# **Expected verdict** on the summary's fix for `graph-memory-update`: **worse**. The
# original fails on the second step (step 1: backward through step 0's freed graph); `copy_`
# fails on the first (step 0: version counter). The message calls the nodes "output 0 of
# CopyBackwards" because `copy_` from a live tensor also made the buffer part of the graph:

# %%
nodes = torch.zeros(4, 8)  # (N, D) a buffer: no grad_fn
nodes.copy_(torch.randn(4, 8, requires_grad=True) * 1.0)  # copy_ from a live tensor
print("after copy_:", nodes.grad_fn.name(), "| requires_grad:", nodes.requires_grad)

# %% [markdown]
# Wrapping the `copy_` in `torch.no_grad()` does not rescue it, as section 2 predicts. The
# real memory, one read, one write:

# %%
gm = GraphDiffusionMemory(d_model=8, num_nodes=4)
x = torch.randn(5, 8)  # (B, D)
out = gm.read(x)  # (B, D); saved gm.nodes (version 0)
with torch.no_grad():
    gm.nodes.copy_(0.9 * gm.nodes + 0.1 * x.mean(dim=0, keepdim=True))
print("nodes._version:", gm.nodes._version, "| requires_grad:", gm.nodes.requires_grad)
with lessons.expect_error(RuntimeError, "modified by an inplace operation"):
    out.sum().backward()

# %% [markdown]
# Both versions have a second, silent problem: `(1 - s) * nodes + s * x_mean` adds the same
# vector to every node, so the distance between any two nodes shrinks by exactly `1 - s` per
# step, whatever the data: the nodes collapse onto one point. The clean memory moves each
# node toward the inputs assigned to it. Random batches, `s = 0.1`, the mean distance
# between nodes as a share of where it started:

# %%
nodes = torch.randn(6, 16)  # (N, D)
clean = GraphDiffusionMemory(d_model=16, num_nodes=6)
clean.nodes = nodes.clone()
start = torch.cdist(nodes, nodes).mean().item()  # mean distance between nodes
for step in range(1, 61):
    xb = torch.randn(32, 16)  # (B, D) a batch
    nodes = (1 - 0.1) * nodes + 0.1 * xb.mean(dim=0, keepdim=True)  # the summary's update
    clean(xb)  # stages the clean write (training mode)
    clean.commit()
    if step in (30, 60):
        left = [torch.cdist(n, n).mean().item() / start for n in (nodes, clean.nodes)]
        print(f"after {step} steps: summary's update {left[0]:.4f} (0.9**{step} = "
              f"{0.9**step:.4f}), clean memory {left[1]:.2f}")

# %% [markdown]
# The summary's update keeps shrinking the spread by 10 % a step; the clean memory's spread
# changes little from step 30 to step 60: it levels off where the data puts it.
#
# ## 5. TinyMemory
#
# The original writes one slot in place after the forward read the buffer: mistake two.
# `buf[i] = v` and `buf[i].copy_(v)` are the same kind of write, into the same storage.
# In the lab's model the buffer has 4 slots. At step 0 nothing is remembered yet (the read
# returns zeros and saves nothing) and slot 0 is written. At step 1 the read attends over
# `slots[:1]` (the `Linear`s that make keys and values save it), and the write goes to
# **slot 1**.
#
# **Predict.** Does step 1 fail, although slot 1 is not among the rows the read saved? And
# does the summary's `copy_` change anything?

# %%
lessons.source(stateful.SummaryTinyMemory.forward, "the summary's fix")

# %%
v_tiny = bugs.verdict("tiny-memory-write")
lessons.verdict_report(v_tiny)

# %%
buggy, summary = v_tiny.outcomes["buggy"], v_tiny.outcomes["summary"]
print("same error message:", buggy.error_signature() == summary.error_signature())
print("same step:", buggy.error_step == summary.error_step)
lessons.outcome_table(v_tiny.outcomes)[["error", "steps run", "max grad diff"]]

# %% [markdown]
# **Expected verdict** on the summary's fix for `tiny-memory-write`: **same-error**. Read
# the message with section 3 in mind: `[1, 16]` is `slots[:1]`, the one row the read saved;
# it "is at version 2; expected version 1" because step 0's write made the buffer version 1
# before the read saved it, and step 1's write into slot 1 made it 2. The saved row never
# changed; the shared counter moved.
#
# ## 6. Exercise
#
# Write a `TinyMemory` whose `forward(x)` reads the buffer, then remembers this batch's
# summary (`x.detach().mean(dim=0)`) without writing into the tensor the read saved.
# Useful: `self.read(x)` (the attention read), `self.slots` `(S, D)`, `self.count` (writes so
# far), `self.num_slots`. `bugs.check` trains the lab's model with your class installed
# exactly as it trains the `buggy` and `summary` variants, and compares every step's
# gradients with the clean model's. The attempt below is the summary's `copy_`: run it, read
# the checker, fix it.

# %%
class MyTinyMemory(TinyMemory):
    def forward(self, x):
        out = self.read(x)
        if self.training:
            ptr = int(self.count) % self.num_slots
            self.slots[ptr].copy_(x.detach().mean(dim=0))  # TODO
            self.count = self.count + 1
        return out


print(bugs.check("tiny-memory-write", MyTinyMemory))

# %% [markdown]
# **Predict.** The tempting band-aid writes through `.data`, which hides the write from the
# version counter (section 3). Does the checker accept it?

# %%
class DataWriteTinyMemory(TinyMemory):
    """The band-aid: the same write, through .data."""

    def forward(self, x):
        out = self.read(x)
        if self.training:
            ptr = int(self.count) % self.num_slots
            self.slots.data[ptr] = x.detach().mean(dim=0)  # no version bump
            self.count = self.count + 1
        return out


rows = []  # what the harness measured at each step
with observing(rows.append):
    band_aid = bugs.check("tiny-memory-write", DataWriteTinyMemory)
print(band_aid)
print("largest gradient error per step:", [f"{r['grad_diff']:.1g}" for r in rows])
assert not band_aid.holds

# %% [markdown]
# No error, and wrong gradients from step 4 on. The checker runs 6 steps on 4 slots: at step 4
# the ring wraps round and the write overwrites slot 0, which that step's read saved, and
# backward computes with the overwritten values. (Steps 1 to 3 wrote rows the read had not
# saved: their gradients are right, and the version check would still have refused them.)
# A solution (folded; try yours first):

# %% tags=["solution"]
class MyTinyMemory(TinyMemory):
    """Rebind, do not write: the old buffer the read saved stays as it was."""

    def forward(self, x):
        out = self.read(x)
        if self.training:
            ptr = int(self.count) % self.num_slots
            slots = self.slots.clone()  # a new tensor, with its own version counter
            slots[ptr] = x.detach().mean(dim=0)
            self.slots, self.count = slots, self.count + 1
        return out


result = bugs.check("tiny-memory-write", MyTinyMemory)
print(result)
assert result.holds

# %% [markdown]
# ## Check your understanding
#
# 1. A forward saved `buf[:2]`; later code writes `buf[3]` in place. Does backward fail? Does
#    it fail if the write goes to `buf.clone()[3]` instead?
#
#    <details><summary>Answer</summary>
#
#    Yes, it fails: `buf[:2]` and `buf[3]` are views of `buf` and share its version
#    counter, so the write moves the version backward checks (section 3). Writing into
#    `buf.clone()[3]` is fine: the clone is a new tensor with its own storage and counter.
#
#    </details>
#
# 2. Why does `torch.no_grad()` around the write not help?
#
#    <details><summary>Answer</summary>
#
#    `no_grad` only stops autograd from *recording* new operations. The in-place write still
#    happens and still bumps the version counter, and the saved tensor's check runs in the
#    later backward, which is outside the `no_grad` block (sections 2 and 4).
#
#    </details>
#
# 3. The original `GraphDiffusionMemory` fails at step 1, the summary's `copy_` at step 0.
#    Why one step apart?
#
#    <details><summary>Answer</summary>
#
#    The original carries the graph (mistake one): the error needs a *second* backward that
#    walks into step 0's freed graph, so it shows at step 1. `copy_` writes into the nodes
#    that step 0's own read saved (mistake two), so step 0's backward already fails.
#
#    </details>
#
# 4. Writing through `.data` makes the error go away. Why is that worse than the error?
#
#    <details><summary>Answer</summary>
#
#    `.data` has its own version counter, so the write is invisible to the check. When the
#    write hits values a graph saved, backward silently uses the new values: the checker
#    measured gradients that differ from the clean model's, with no error at all. An error
#    you can see is better than wrong gradients you cannot.
#
#    </details>
#
# 5. In the protocol, why is the next state built from `x.detach()` *and* put into a new
#    tensor? Would one of the two be enough?
#
#    <details><summary>Answer</summary>
#
#    No. Detaching prevents mistake one (no graph carried into the next step); the new
#    tensor prevents mistake two (nothing a graph saved is written). The summary's `copy_`
#    fixes of these memories avoid neither: `TinyMemory` already detached and still failed.
#
#    </details>
#
# ## Recap
#
# - Mistake one, state rebound to a value from live activations: "Trying to backward
#   through the graph a second time" on the next step.
# - Mistake two, an in-place write into a tensor a graph saved: "modified by an inplace
#   operation", under `no_grad` too.
# - A tensor and all its views share one version counter, so a write into rows that were
#   never saved still trips the check. `.data` has a counter of its own and hides
#   the write: no error, wrong gradients.
# - Measured: GraphDiffusionMemory **worse** (the `copy_` fails a step earlier),
#   TinyMemory **same-error** (indexed assignment and `copy_` are the same write).
# - Protocol: read; stage what the next state needs from detached inputs; after the
#   optimiser step, commit builds the next state in a new tensor and swaps it in.
