# Source of notebooks/03_stateful_buffers.ipynb (built by notebooks/build.py).

# %% [markdown]
# # 03 · State kept across steps: GraphDiffusionMemory, TinyMemory, MetaController, DWA
#
# **Goal.** Learn the two mistakes that stateful modules make with autograd, see which one
# each of the summary's four fixes makes, and learn the protocol that avoids both.
#
# **Context (read cold).** Four MAHIA-X parts keep state from one training step to the next:
# the `GraphDiffusionMemory` (memory nodes), the `TinyMemory` (a ring buffer of recent
# batch summaries), the `MetaController` (an EMA of layer importance) and Dynamic Weight
# Averaging (the loss weights). The summary, section 2, "fixed" all four:
#
# > **GraphDiffusionMemory**: Replaced `self.memory_nodes = (1 - update_strength) *
# > self.memory_nodes + update_strength * x_mean.mean(dim=0, keepdim=True)` with
# > `self.memory_nodes.copy_(new_memory_nodes)`
# > **MetaController**: Replaced `self.layer_importance.data = 0.9 * ... + 0.1 *
# > topk_probs.mean(dim=0)` with `self.layer_importance.data.copy_(new_data)`
# > **TinyMemory**: Replaced `self.memory[self.ptr % self.size] = avg.mean(dim=0).detach()`
# > with `self.memory[self.ptr % self.size].copy_(new_memory)`
# > **DynamicWeightAveraging**: Replaced `self.weights = F.softmax(-loss_tensor, dim=0)`
# > with `self.weights.copy_(new_weights)`

# %%
import plotly.graph_objects as go
import torch

from mahiax import bugs, lessons
from mahiax.bugs import stateful
from mahiax.fabric import LayerRouting, MetaController
from mahiax.memory import TinyMemory
from mahiax.weighting import DynamicWeightAveraging, LossWeighting

torch.manual_seed(0)

# %% [markdown]
# ## 1. Mistake one: state that carries the graph
#
# The state is rebound to a value computed from a *live* activation. Step 0 trains fine;
# step 1's loss reads the state, so its backward walks into step 0's graph, which step 0's
# backward already freed.

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
# ## 2. Mistake two: writing into a tensor the forward saved
#
# A read (`q @ mem.T`) saves `mem` for the backward. Writing into `mem` afterwards bumps its
# version counter, and backward refuses. `torch.no_grad()` does not help: it stops recording
# new operations, but the version counter still moves.

# %%
mem = torch.randn(4, 3)
q = torch.randn(2, 3, requires_grad=True)
attn = torch.softmax(q @ mem.T, dim=-1)  # saves mem (version 0)
with torch.no_grad():
    mem[0] = 1.0  # same as mem[0].copy_(...)
print("mem._version:", mem._version)

# %% tags=["raises-exception"]
attn.sum().backward()

# %% [markdown]
# The protocol that avoids both (what the clean modules do): in `forward`, **read** the
# state and **stage** the next state from *detached* inputs into a *new* tensor; after the
# optimiser step, `commit()` swaps it in. No graph is carried, nothing saved is written.

# %%
lessons.source(TinyMemory.forward, "the clean TinyMemory: stage into a copy")

# %%
lessons.source(TinyMemory.commit, "then swap it in after the step")

# %% [markdown]
# ## 3. GraphDiffusionMemory
#
# The original is mistake one (`self.nodes = ... x.mean(...)`, from live `x`). The summary
# replaced it with `copy_`, which is mistake two on the very tensor `read()` just saved.

# %%
lessons.source(stateful.SummaryGraphMemory.forward, "the summary's fix")

# %% [markdown]
# **Expected verdict** on the summary's fix for `graph-memory-update`: **worse**. The
# original fails at step 1 (backward through a freed graph); `copy_` fails at step 0
# (version counter).

# %%
v_graph = bugs.verdict("graph-memory-update")
lessons.verdict_report(v_graph)

# %%
lessons.variant_switch(v_graph.outcomes)

# %% [markdown]
# (Both versions also pull *every* node toward the same batch mean, so the nodes collapse
# onto one point; the clean memory moves each node toward the inputs assigned to it.)
#
# ## 4. TinyMemory
#
# The original writes a slot in place after the forward read the buffer: mistake two.
# `buf[i] = v` and `buf[i].copy_(v)` are the same in-place operation.

# %%
lessons.source(stateful.SummaryTinyMemory.forward, "the summary's fix")

# %% [markdown]
# **Expected verdict** on the summary's fix for `tiny-memory-write`: **same-error**.

# %%
v_tiny = bugs.verdict("tiny-memory-write")
lessons.verdict_report(v_tiny)

# %%
buggy, summary = v_tiny.outcomes["buggy"], v_tiny.outcomes["summary"]
assert buggy.error_signature() == summary.error_signature()
print("same error, same step:", buggy.error_step == summary.error_step)
lessons.outcome_table(v_tiny.outcomes)

# %% [markdown]
# ## 5. MetaController: no error, and a silent bug
#
# The importance EMA was written through `.data`, which bypasses autograd entirely: there was
# never an error to fix, and `.data.copy_` changes nothing. The real bug is silent:
# `topk_probs.mean(dim=0)` averages per top-k *slot* (best, second best), not per *layer*.
# A batch of two samples shows it:

# %%
probs = torch.tensor([[0.1, 0.2, 0.6, 0.1], [0.5, 0.3, 0.1, 0.1]])  # (B=2, L=4)
top_p, ids = probs.topk(2, dim=-1)  # sample 0 chose layers 2, 1; sample 1 chose 0, 1
routing = LayerRouting(probs, ids, top_p / top_p.sum(-1, keepdim=True), top_p)
print("chosen layers:", ids.tolist())
slot_means = [round(v, 2) for v in top_p.mean(dim=0).tolist()]
print("per slot (the summary's):", slot_means, "-> stored at layers 0 and 1")
ctl = MetaController(num_layers=4, momentum=0.0)
ctl.observe(routing)
ctl.commit()
print("per layer (scattered):   ", [round(v, 2) for v in ctl.importance.tolist()])

# %% [markdown]
# Layer 2, the first choice of sample 0, gets nothing in the per-slot version; "layer 0"
# holds the mean probability of whichever layer ranked first.
#
# **Expected verdict** on the summary's fix for `controller-importance`: **no-effect**. The
# summary's variant runs exactly like the original, with the same measured error in the
# importance (against the true per-layer EMA).

# %%
v_ctl = bugs.verdict("controller-importance")
lessons.verdict_report(v_ctl)

# %%
lessons.outcome_table(v_ctl.outcomes)[["error", "steps run", "damage"]]

# %% [markdown]
# ## 6. Dynamic Weight Averaging, and why softmax(-L) is not DWA
#
# The original computed the weights from the *live* losses (mistake one); the summary's
# `copy_` writes into the weights buffer the multiply just saved (mistake two).
#
# **Expected verdict** on the summary's fix for `dwa-weights`: **worse**.

# %%
v_dwa = bugs.verdict("dwa-weights")
lessons.verdict_report(v_dwa)

# %% [markdown]
# And the formula itself is not DWA. Liu et al. (CVPR 2019) weigh task *k* by how fast its
# loss falls: `λ_k = K · softmax_k(r_k / T)` with `r_k = L_k(t-1) / L_k(t-2)`, so a task that
# stalls gets more weight. `softmax(-L)` weighs by loss *level*: a task with a naturally
# small loss dominates forever. Two synthetic tasks: A's loss is small and flat (it stalls),
# B's is large and falling fast.

# %%
steps = list(range(30))
loss_a = [0.2 for _ in steps]  # small, not improving
loss_b = [3.0 * 0.9**t + 0.5 for t in steps]  # large, falling
dwa = DynamicWeightAveraging(num_tasks=2, temperature=2.0, window=1)
dwa_w, softmax_w = [], []
for la, lb in zip(loss_a, loss_b, strict=True):
    losses = torch.tensor([la, lb])
    dwa_w.append(dwa.weights()[0].item())
    softmax_w.append((2 * torch.softmax(-losses, dim=0))[0].item())
    dwa.update(losses)
fig = go.Figure([
    go.Scatter(x=steps, y=dwa_w, name="DWA (Liu et al.)"),
    go.Scatter(x=steps, y=softmax_w, name="2 · softmax(-L)"),
])
fig.update_layout(title="weight of task A (small loss, stalled); equal weighting = 1",
                  xaxis_title="step", yaxis_title="weight of task A", height=340)
fig

# %%
assert dwa_w[-1] > 1.0, "DWA favours the task that stopped improving"
assert softmax_w[-1] > dwa_w[-1], "softmax(-L) favours it only for its low loss level"

# %% [markdown]
# ## Exercise
#
# Write a `TinyMemory` whose `forward(x)` reads the buffer, then remembers this batch's
# summary without writing into the tensor the read saved. Useful: `self.read(x)` (the
# attention read), `self.slots` `(S, D)`, `self.count` (writes so far), `self.num_slots`.
# The attempt below is the summary's `copy_`; run it, read the checker, fix it.

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

# %% tags=["solution"]
class MyTinyMemory(TinyMemory):
    """Rebind, do not write: the saved old buffer stays as it was."""

    def forward(self, x):
        out = self.read(x)
        if self.training:
            ptr = int(self.count) % self.num_slots
            slots = self.slots.clone()  # a new tensor
            slots[ptr] = x.detach().mean(dim=0)
            self.slots, self.count = slots, self.count + 1
        return out


result = bugs.check("tiny-memory-write", MyTinyMemory)
print(result)
assert result.holds

# %% [markdown]
# A second one, optional: a `LossWeighting` subclass built as `cls(num_tasks)` whose
# `combine(losses)` returns the weighted total without keeping the live losses. Check it with
# `bugs.check("dwa-weights", MyWeighting)`. For instance:

# %%
class MyWeighting(LossWeighting):
    """softmax(-L) weights, but from detached losses, applied from the next step on."""

    def __init__(self, num_tasks: int):
        super().__init__(num_tasks)
        self.w = torch.ones(num_tasks) / num_tasks

    def weights(self):
        return self.w.clone()

    def combine(self, losses):
        return (self.w.to(losses) * losses).sum()

    def update(self, losses):
        self.w = torch.softmax(-losses.detach(), dim=0)  # a new tensor, no graph


print(bugs.check("dwa-weights", MyWeighting))

# %% [markdown]
# It passes the autograd checks, and it is still not DWA: the checker measures that the
# training step is correct, not that the weighting is a good idea.
#
# ## Recap
#
# - Mistake one, state from live activations: "Trying to backward through the graph a
#   second time" on the next step. Mistake two, writing into a saved tensor: "modified by an
#   inplace operation", under `no_grad` too.
# - Measured: GraphDiffusionMemory **worse**, TinyMemory **same-error**, MetaController
#   **no-effect** (and averaged per slot, not per layer), DWA **worse** (and `softmax(-L)` is
#   not DWA).
# - Protocol: read; stage the next state from detached inputs in a new tensor; commit after
#   the optimiser step.
