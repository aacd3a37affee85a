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
from mahiax.bugs.harness import harness_config, observing
from mahiax.bugs.outcome import graph_nodes
from mahiax.bugs.verdicts import GRAD_TOL
from mahiax.model.memories import GraphDiffusionMemory, TinyMemory

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
with lessons.attempt() as caught:
    for step in range(2):
        y = w * torch.randn(3) + state  # reads the state
        loss = y.pow(2).sum()
        state = 0.9 * state + 0.1 * y  # the EMA, computed from this step's y
        loss.backward()
        print(f"step {step}: backward ran; state.grad_fn = {state.grad_fn}")

# %% [markdown]
# Step 0 ran; step 1 did not. Step 1's loss reads `state`, whose `grad_fn` (printed after
# step 0) belongs to step 0's graph, so step 1's backward walks into step 0's graph, whose
# saved tensors step 0's backward already freed.

# %%
caught.expect(RuntimeError, "Trying to backward through the graph a second time")
assert step == 1 and state.grad_fn is not None

# %% [markdown]
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
attn = torch.softmax(q @ mem.T, dim=-1)  # (B, S)
mm = attn.grad_fn.next_functions[0][0]  # the matmul's backward node
saved = mm._saved_mat2  # what it saved to compute the gradient of q
print(f"{mm.name()} saved a tensor of shape {list(saved.shape)}, at version {saved._version};"
      f" mem's storage: {saved.data_ptr() == mem.data_ptr()}")
with torch.no_grad():
    mem[0] = 1.0  # an in-place write into row 0
print("mem._version:", mem._version)

# %%
with lessons.attempt() as caught:
    attn.sum().backward()

# %% [markdown]
# Yes, it still fails: `no_grad` does not stop the version counter, and the check runs in the
# backward, outside the block. The `[3, 4]` in the message is `mem.T`, the transposed **view**
# of `mem` that the matmul saved (the first line printed above).

# %%
caught.expect(RuntimeError, "is at version 1; expected version 0")
assert list(saved.shape) == [3, 4] and mem._version == 1

# %% [markdown]
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
first, second = buf[:1], buf[1]  # row 0 (1, D) and row 1 (D,)
print("views:", first._is_view(), second._is_view(), buf.T._is_view(),
      "| one storage:", first.untyped_storage().data_ptr() == second.untyped_storage().data_ptr())
print("versions (buf, first, second) before:", buf._version, first._version, second._version)
second.copy_(torch.ones(3))  # write row 1 only
print("versions (buf, first, second) after: ", buf._version, first._version, second._version)
print("row 0 values:", first.tolist())

# %%
q = torch.randn(2, 3, requires_grad=True)
scores = q @ buf[:1].T  # (B, 1): saves the view buf[:1].T
buf[1] = 5.0  # writes row 1, which the matmul never read
with lessons.attempt() as caught:
    scores.sum().backward()

# %% [markdown]
# All three versions moved together, from 0 to 1, although only row 1 was written: one
# counter. And backward refuses, although the row it saved (row 0, still zeros) did not
# change: the check is on the shared version counter, not on the values. (The check is
# conservative: it refuses some writes that would have been harmless, and in exchange never
# has to compare values.)

# %%
assert (buf._version, first._version, second._version) == (2, 2, 2)  # after buf[1] = 5.0 too
assert first.tolist() == [[0.0, 0.0, 0.0]]
caught.expect(RuntimeError, "modified by an inplace operation")

# %% [markdown]
#
# Two ways to get a second name for a tensor without a copy differ exactly here. `.detach()`
# returns an alias that *shares* the version counter (its docs: in-place changes "may
# trigger errors in correctness checks"); the old `.data` returns an alias of the same storage
# that is not a view in autograd's sense: it gets a version counter of its *own*, so a write
# through it is invisible to the check:

# %%
buf = torch.zeros(4, 3)
print("same storage: .detach()", buf.detach().data_ptr() == buf.data_ptr(),
      "| .data", buf.data.data_ptr() == buf.data_ptr())
buf.detach()[2] = 2.0  # write through .detach()
print("after a write through .detach():", buf._version)
buf.data[3] = 3.0  # write through .data
print("after a write through .data:    ", buf._version, "(unchanged: the write is hidden)")
print("row 3 now:", buf[3].tolist())
copy = buf.clone()  # a new tensor: its own storage and its own counter
copy[3] = 4.0
print("after a write into buf.clone(): buf", buf._version, "| the clone", copy._version)
assert buf._version == 1 and buf[3].tolist() == [3.0, 3.0, 3.0] and copy._version == 1

# %% [markdown]
# The `.data` write landed (row 3 holds it) and the counter did not move. A write into a
# `clone()` moves only the clone's counter.
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
# The catalog trains the lab's small model (float64, steps counted from 0; the number of
# steps is printed below) once with each variant installed: `buggy` (the original),
# `summary` (the summary's fix) and `fixed` (the package's memory).
#
# **Predict.** Which variant fails, at which step, with which of the two errors above?

# %%
print("steps per run:", bugs.get("graph-memory-update").steps)
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
out = gm.read(x)  # (B, D)
saves_nodes = [n.name() for n in graph_nodes(out) if n.name() == "MmBackward0"
               and n._saved_mat2 is not None and n._saved_mat2.data_ptr() == gm.nodes.data_ptr()]
print("nodes saved by:", saves_nodes, "(A @ nodes, for the gradient of A)")
with torch.no_grad():
    gm.nodes.copy_(0.9 * gm.nodes + 0.1 * x.mean(dim=0, keepdim=True))
print("nodes._version:", gm.nodes._version, "| requires_grad:", gm.nodes.requires_grad)
with lessons.expect_error(RuntimeError, "modified by an inplace operation"):
    out.sum().backward()

# %% [markdown]
# Both versions have a second, silent problem: `(1 - s) * nodes + s * x_mean` adds the same
# vector to every node, so the distance between any two nodes is multiplied by exactly `1 - s` per
# step, whatever the data: the nodes collapse onto one point. The clean memory moves each
# node toward the inputs assigned to it. Random batches, `s = 0.1`, the mean distance
# between nodes as a share of where it started:

# %%
nodes = torch.randn(6, 16)  # (N, D)
clean = GraphDiffusionMemory(d_model=16, num_nodes=6)
clean.nodes = nodes.clone()
start = torch.cdist(nodes, nodes).mean().item()  # mean distance between nodes
spread = {}  # step -> (summary's update, clean memory), as a share of the start
for step in range(1, 121):
    xb = torch.randn(32, 16)  # (B, D) a batch
    nodes = (1 - 0.1) * nodes + 0.1 * xb.mean(dim=0, keepdim=True)  # the summary's update
    clean(xb)  # stages the clean write (training mode)
    clean.commit()
    if step in (30, 60, 120):
        spread[step] = [torch.cdist(n, n).mean().item() / start for n in (nodes, clean.nodes)]
        print(f"after {step} steps: summary's update {spread[step][0]:.3g} (0.9**{step} = "
              f"{0.9**step:.3g}), clean memory {spread[step][1]:.2f}")
for step, (summary_left, _) in spread.items():
    assert abs(summary_left / 0.9**step - 1) < 1e-3  # 0.9 of the spread is kept, each step
assert abs(spread[120][1] - spread[60][1]) < 0.1 * spread[60][1]

# %% [markdown]
# The summary's update keeps exactly 0.9 of the spread a step (the printed `0.9**step`); the
# clean memory's spread changes little from step 60 to step 120: it levels off where the
# data puts it.
#
# ## 5. TinyMemory
#
# The original writes one slot in place after the forward read the buffer: mistake two.
# The read, and what it saves once one slot is filled (the lab's model's sizes first):

# %%
config = harness_config()
print("lab model: slots S =", config.tiny_slots, "| d_model D =", config.d_model)
lessons.source(TinyMemory.read, "the read: zeros while nothing is remembered")

# %%
tm = TinyMemory(d_model=config.d_model, num_slots=config.tiny_slots)
print("count 0, the read's graph:", tm.read(torch.randn(2, config.d_model)).grad_fn)
tm.count += 1  # as after step 0's write
read = tm.read(torch.randn(2, config.d_model))  # (B, D)
slot_saves = [list(n._saved_self.shape) for n in graph_nodes(read) if n.name() == "MmBackward0"
              and n._saved_self is not None and n._saved_self.data_ptr() == tm.slots.data_ptr()]
print("count 1: the slots' storage is saved, with shape", slot_saves, "(by the k and v Linears)")

# %% [markdown]
# At step 0 nothing is remembered yet (the read returns zeros, with no graph: it saves
# nothing) and slot 0 is written. At step 1 the read attends over `slots[:1]`, which the
# key and value `Linear`s save (their input, for their weights' gradients), and the write
# goes to **slot 1**.
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
for out in (buggy, summary):
    print(f"{out.variant}: step {out.error_step}, {out.error_type}: {out.error_message[:140]}")
lessons.outcome_table(v_tiny.outcomes)[["error", "steps run", "max grad diff"]]

# %% [markdown]
# **Expected verdict** on the summary's fix for `tiny-memory-write`: **same-error**. Read
# the message with section 3 in mind: `[1, 16]` is `slots[:1]`, the one row the read saved;
# it "is at version 2; expected version 1" because step 0's write made the buffer version 1
# before the read saved it, and step 1's write into slot 1 made it 2. The saved row never
# changed; the shared counter moved. The summary's `copy_` changes nothing:
# `buf[i] = v` and `buf[i].copy_(v)` are the same kind of write, into the same storage, and
# both variants fail at the same step with the same message (printed above).

# %%
assert buggy.error_signature() == summary.error_signature()
assert buggy.error_step == summary.error_step == 1
assert "[1, 16]] is at version 2; expected version 1" in summary.error_message

# %% [markdown]
#
# ## 6. Exercise
#
# Write a `TinyMemory` whose `forward(x)` reads the buffer, then remembers this batch's
# summary (`x.detach().mean(dim=0)`) in slot `count % num_slots` and counts the write,
# without writing into the tensor the read saved. Useful: `self.read(x)` (the attention
# read), `self.slots` `(S, D)`, `self.count` (writes so far), `self.num_slots`. `lessons.check`
# trains the lab's model with your class installed exactly as it trains the `buggy` and
# `summary` variants, compares every step's gradients with the clean model's, and after every
# step compares your slots and count with a clean `TinyMemory` told the same summaries. The
# attempt below is the summary's `copy_`: run it, read the checker, fix it.

# %%
class MyTinyMemory(TinyMemory):
    def forward(self, x):
        out = self.read(x)
        if self.training:
            ptr = int(self.count) % self.num_slots
            self.slots[ptr].copy_(x.detach().mean(dim=0))  # TODO
            self.count = self.count + 1
        return out


print(lessons.check("tiny-memory-write", MyTinyMemory))

# %% [markdown]
# **Predict.** The next class writes the slot through `.data`, which hides the write from
# the version counter (section 3). Does the checker accept it?

# %%
data_write = stateful.DataWriteTinyMemory
lessons.source(data_write.forward, "the same write, through .data")

# %%
rows = []  # what the harness measured at each step
with observing(rows.append):
    data_check = bugs.check("tiny-memory-write", data_write)
print(data_check)
print("steps:", len(rows), "| largest gradient error per step:",
      [f"{r['grad_diff']:.1g}" for r in rows])

# %% [markdown]
# No: no error, and wrong gradients from step 4 on. The write through `.data` is a band-aid
# that makes the error silent. The checker runs the number of steps printed above on 4
# slots: at step 4 the ring wraps round and the write overwrites slot 0, which that step's
# read saved, and backward computes with the overwritten values. (Steps 1 to 3 wrote rows
# the read had not saved: their gradients are right, and the version check would still have
# refused them, as it refused the original in section 5.)

# %%
assert not data_check.holds and "gradients differ from the clean reference" in data_check.message
grad_error = [r["grad_diff"] for r in rows]
assert max(grad_error[:4]) <= GRAD_TOL < grad_error[4]

# %% [markdown]
# The checker grades what the exercise asks, not only autograd. A memory that never writes
# breaks no autograd rule, and its gradients match the clean model's for the state it has
# (the clean reference starts every step from the memory's own state); what the slots and
# count hold after each step tells it apart:

# %%
candidates = bugs.get("tiny-memory-write").candidates()  # the catalog's named attempts
forgetful = bugs.check("tiny-memory-write", candidates["wrong: a memory that never writes"])
print(forgetful)
print("largest gradient error:", forgetful.outcome.max_grad_diff)
assert not forgetful.holds and forgetful.outcome.max_grad_diff <= GRAD_TOL
assert "does not hold what it was told to remember" in forgetful.message

# %% [markdown]
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
# Your attempts so far, oldest first (also on the dashboard's **My attempts** page):

# %%
lessons.my_attempts()

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
#    tensor prevents mistake two (nothing a graph saved is written). `TinyMemory`'s summary
#    was already detached and still failed (section 5): detaching alone is not enough.
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
#   the write: no error, and wrong gradients wherever the write hits values a graph saved.
# - Measured: GraphDiffusionMemory **worse** (the `copy_` fails a step earlier),
#   TinyMemory **same-error** (indexed assignment and `copy_` are the same write).
# - Protocol: read; stage what the next state needs from detached inputs; after the
#   optimiser step, commit builds the next state in a new tensor and swaps it in.
