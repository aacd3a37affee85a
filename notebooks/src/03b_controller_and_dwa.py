# Source of notebooks/03b_controller_and_dwa.ipynb (built by notebooks/build.py).

# %% [markdown]
# # 03b · MetaController and Dynamic Weight Averaging: `.data`, silent bugs, and what DWA is
#
# **Goal.** Measure the summary's fixes for the two other stateful parts of MAHIA-X: see
# what writing through `.data` really does (it is not "no effect"), find the silent bug
# behind the `MetaController`'s importance, and see why `softmax(-L)` is not Dynamic Weight
# Averaging. Lesson 03a comes first: it defines the version counter, views and the two
# mistakes (state that carries the graph; a write into a tensor the forward saved).
#
# **Context (read cold).** The `MetaController` keeps an **EMA** (exponential moving average,
# `new = 0.9 * old + 0.1 * value`) of how much each layer of the fabric is used: the fabric
# is a bank of `L` small blocks, and a gate sends each sample through its top-`K` (the
# *top-k*), with probabilities `topk_probs` `(B, K)`. The importance lives in a **buffer**
# (a tensor registered on the module: in its `state_dict`, not a parameter). Dynamic Weight
# Averaging (DWA) sets the weights of the three task losses. The summary, section 2:
#
# > **MetaController**: Replaced `self.layer_importance.data = 0.9 * self.layer_importance.data
# > + 0.1 * topk_probs.mean(dim=0)` with `self.layer_importance.data.copy_(new_data)`
# > **DynamicWeightAveraging**: Replaced `self.weights = F.softmax(-loss_tensor, dim=0)`
# > with `self.weights.copy_(new_weights)`
#
# **PyTorch docs this lesson builds on:** autograd mechanics,
# [In-place correctness checks](https://docs.pytorch.org/docs/stable/notes/autograd.html#in-place-correctness-checks)
# and [Saved tensors](https://docs.pytorch.org/docs/stable/notes/autograd.html#saved-tensors);
# the note on [`torch.Tensor.detach`](https://docs.pytorch.org/docs/stable/generated/torch.Tensor.detach.html)
# (`.data` is the older alias without that note's protection, shown in section 2);
# [`torch.autograd.graph.saved_tensors_hooks`](https://docs.pytorch.org/docs/stable/autograd.html#torch.autograd.graph.saved_tensors_hooks).

# %%
import math

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from torch.autograd.graph import saved_tensors_hooks

from mahiax import bugs, lessons
from mahiax.bugs import stateful
from mahiax.bugs.harness import harness_config
from mahiax.bugs.verdicts import GRAD_TOL
from mahiax.model.data import SyntheticMultiTask
from mahiax.model.fabric import LayerRouting, MetaController
from mahiax.model.hybrid import HybridEfficientModel
from mahiax.model.weighting import DynamicWeightAveraging, LossWeighting

torch.manual_seed(0)

# %% [markdown]
# ## 1. The summary's line, at 4 layers and top-2
#
# `topk_probs.mean(dim=0)` has one value per top-k *slot* (`K` values: the mean probability
# of each sample's first choice, of its second choice), while the importance has one value
# per *layer* (`L` values).
#
# **Predict.** With 4 layers and top-2, what do the original line and the summary's fix do?

# %%
importance = torch.full((4,), 0.25)  # (L,) one value per layer
probs = torch.softmax(torch.randn(8, 4), dim=-1)  # (B, L) the gate's probabilities
topk_probs, _ = probs.topk(2, dim=-1)  # (B, K)
with lessons.attempt() as original:
    importance.data = 0.9 * importance.data + 0.1 * topk_probs.mean(dim=0)  # the original
with lessons.attempt() as summary_fix:
    new_data = 0.9 * importance.data + 0.1 * topk_probs.mean(dim=0)  # the summary's fix
    importance.data.copy_(new_data)

# %% [markdown]
# Both raise a shape error, before any autograd question arises: the fix computes the same
# sum before its `copy_`. The summary does not say how its model got past this line.

# %%
original.expect(RuntimeError, "must match the size of tensor b")
summary_fix.expect(RuntimeError, "must match the size of tensor b")
runs = []  # the values of K (top-k) for which the sum runs with L = 4 layers
for k in range(1, 5):
    try:
        _ = importance + probs.topk(k, dim=-1).values.mean(dim=0)  # (L,) + (K,)
        runs.append(k)
    except RuntimeError:
        pass
print("with L = 4, the summary's sum runs for K in", runs)
assert runs == [1, 4]

# %% [markdown]
# > **Reconstruction.** The summary gives neither the number of layers nor `K`, and its line
# > raises a shape error unless `K` equals `L` or is 1 (broadcasting). To measure its fix at
# > all, the lab pads the `K` slot means with zeros to length `L`: slot `j`'s mean is stored
# > as the importance of layer `j`. The lab's model has `L` = 3 layers and top-2, so it needs
# > the padding too. The verdict in section 3 is measured on this adaptation, shown next.

# %%
config = harness_config()
print("lab model: layers L =", config.fabric_layers, "| top-k K =", config.fabric_active)
lessons.source(stateful._slot_means_at_layer_indices, "the padding the lab adds")

# %% [markdown]
# With the padding it runs, and averages the wrong thing: per top-k *slot*, not per layer.
# A batch of two samples shows it (the clean `MetaController` scatters each chosen
# probability to its layer index first):

# %%
probs = torch.tensor([[0.1, 0.2, 0.6, 0.1], [0.5, 0.3, 0.1, 0.1]])  # (B=2, L=4)
top_p, ids = probs.topk(2, dim=-1)  # sample 0 chose layers 2, 1; sample 1 chose 0, 1
routing = LayerRouting(probs=probs, ids=ids, weights=top_p / top_p.sum(-1, keepdim=True),
                       topk_probs=top_p)
print("chosen layers:", ids.tolist())
padded = stateful._slot_means_at_layer_indices(routing, num_layers=4)
print("per slot, padded (the summary's):", [round(v, 2) for v in padded.tolist()])
ctl = MetaController(num_layers=4, momentum=0.0)  # momentum 0: importance = this batch
ctl.observe(routing)
ctl.commit()
print("per layer (scattered):           ", [round(v, 2) for v in ctl.importance.tolist()])

# %% [markdown]
# Layer 2, sample 0's first choice, gets nothing in the per-slot version, while "layer 0"
# holds the mean probability of whichever layer ranked first.

# %%
assert padded[2] == 0 < ctl.importance[2]

# %% [markdown]
# ## 2. What `.data` really does
#
# It is tempting to say the summary's change does nothing "because `.data` bypasses
# autograd". Half true. Backward refuses a saved tensor whose **version counter** (a number
# every in-place write increments; 03a, section 3) has moved since it was saved. What if the
# write goes through `.data`?
#
# **Predict.** `y = x.exp()` saves its *result* `y` (the derivative of `exp` is `exp`). We
# overwrite `y` with zeros through `.data`, then run backward. Error, or which `x.grad`?

# %%
x = torch.ones(3, requires_grad=True)
y = x.exp()
print(y.grad_fn.name(), "saved its result y:", y.grad_fn._saved_result.data_ptr() == y.data_ptr())
y.data.copy_(torch.zeros(3))  # the summary's pattern: .data.copy_
print("y._version:", y._version)
with lessons.attempt() as caught:
    y.sum().backward()
print("x.grad:", x.grad.tolist() if x.grad is not None else None)

# %% [markdown]
# No error, and `x.grad` is zeros, where the true gradient is `exp(1)` (printed next). A
# write through `.data` does not bump the counter (`y._version` stayed 0), so autograd cannot
# see it: backward used the zeros and reported nothing. Through `.detach()` the same write is
# caught:

# %%
caught.expect(None)
print("the true gradient, exp(1):", math.exp(1))
assert y._version == 0 and x.grad.tolist() == [0.0, 0.0, 0.0]
x = torch.ones(3, requires_grad=True)
y = x.exp()
y.detach().copy_(torch.zeros(3))  # the same write through .detach()
with lessons.expect_error(RuntimeError, "modified by an inplace operation"):
    y.sum().backward()

# %% [markdown]
# So `.data.copy_` is safe only where no graph saved the tensor. In MAHIA-X the training
# forward only *observes* the routing; the importance is written after the step. A
# saved-tensor hook, called by autograd for every tensor it saves, checks that no graph saves
# the importance, on one training forward of the lab's model, against the two memories of
# lesson 03a:

# %%
model = HybridEfficientModel(config).train()
data = SyntheticMultiTask(config)
model.encode(data.batch(0))  # one step first, so that the ring buffer holds a summary
model.commit()
saved = []  # the storage of every tensor autograd saves


def note(t):  # pack hook: autograd calls it for each tensor it saves
    saved.append(t.untyped_storage().data_ptr())
    return t


with saved_tensors_hooks(note, lambda t: t):
    model.encode(data.batch(1))
state = {
    "MetaController importance": model.fabric.controller.importance,
    "GraphDiffusionMemory nodes": model.graph_memory.nodes,
    "TinyMemory slots": model.tiny_memory.slots,
}
for name, t in state.items():
    print(f"{name:27s} saved {saved.count(t.untyped_storage().data_ptr())} times")
assert saved.count(model.fabric.controller.importance.untyped_storage().data_ptr()) == 0

# %% [markdown]
# Nothing saved the importance, so the writes through `.data` cannot corrupt a gradient
# here; the memories' buffers are saved, which is why writing into them fails (03a).
#
# ## 3. The MetaController's verdict
#
# The catalog trains the lab's model (float64, 6 steps) with each variant, and compares the
# importance with the true per-layer EMA fed the same routing.
#
# **Predict.** Does either variant raise an error? Is the summary's importance any closer to
# the per-layer EMA than the original's?

# %%
v_ctl = bugs.verdict("controller-importance")
lessons.verdict_report(v_ctl)

# %%
lessons.outcome_table(v_ctl.outcomes)[["error", "steps run", "max grad diff", "damage"]]

# %% [markdown]
# **Expected verdict** on the summary's fix for `controller-importance`: **no-effect**. There
# was no error to fix; both variants write the same wrong, per-slot statistic (`damage`: the
# largest error of the importance against the per-layer EMA). The gradients match the clean
# model's (`max grad diff` 0): nothing in the forward saves the importance, and writing it
# through `.data` corrupts no gradient.

# %%
o = v_ctl.outcomes
assert all(out.passed and out.max_grad_diff <= GRAD_TOL for out in o.values())
assert math.isclose(o["buggy"].state_diff, o["summary"].state_diff)
assert o["buggy"].state_diff > GRAD_TOL >= o["fixed"].state_diff

# %% [markdown]
# ## 4. Dynamic Weight Averaging: the verdict
#
# The original computed the weights from the *live* losses (mistake one of 03a: the
# weights carry this step's graph into the next step's total); the summary's `copy_` writes
# into the weights buffer that this step's multiply `w * losses` just saved (mistake two).
#
# **Predict.** Which variant fails first?

# %%
v_dwa = bugs.verdict("dwa-weights")
lessons.verdict_report(v_dwa)

# %% [markdown]
# **Expected verdict** on the summary's fix for `dwa-weights`: **worse**: the original fails
# at step 1 (backward through step 0's freed graph), the `copy_` at step 0.

# %%
o = v_dwa.outcomes
assert (o["buggy"].error_step, o["summary"].error_step) == (1, 0)
assert "backward through the graph a second time" in o["buggy"].error_message
assert "modified by an inplace operation" in o["summary"].error_message

# %% [markdown]
# ## 5. And `softmax(-L)` is not DWA
#
# Liu, Johns & Davison (CVPR 2019, eq. 7) weigh task *k* by how fast its loss falls:
# `w_k = K · exp(r_k / T) / Σ_i exp(r_i / T)` with `r_k = L_k(t-1) / L_k(t-2)` and
# temperature `T` (2 in the paper), so a task whose loss has stalled (`r_k ≈ 1`) gets more
# weight than one still falling (`r_k < 1`). `softmax(-L)` weighs by loss *level*: the task
# with the smaller loss gets the larger weight, whether it is still learning or not. Below,
# the package's `DynamicWeightAveraging` (one-step windows) against `K · softmax(-L)`
# (scaled by `K` = 2 so that both sum to `K`; equal weighting is 1 per task) on two
# synthetic pairs of losses.
#
# **Predict.** Left: task A small and *stalled*, B large and falling. Right: A small and
# *still falling*, B large and *stalled*. Which task does each rule favour, in each case?

# %%
steps = list(range(30))
cases = {
    "A small, stalled; B large, falling": (
        [0.2 for _ in steps], [3.0 * 0.9**t + 0.5 for t in steps]),
    "A small, falling; B large, stalled": (
        [0.5 * 0.8**t for t in steps], [2.0 for _ in steps]),
}
fig = make_subplots(rows=1, cols=2, subplot_titles=list(cases), shared_yaxes=True)
final = {}
for col, (case, (loss_a, loss_b)) in enumerate(cases.items(), start=1):
    dwa = DynamicWeightAveraging(num_tasks=2, temperature=2.0, window=1)
    dwa_a, softmax_a = [], []
    for la, lb in zip(loss_a, loss_b, strict=True):
        losses = torch.tensor([la, lb])  # (K=2,)
        dwa_a.append(dwa.weights()[0].item())  # weight of task A in force at this step
        softmax_a.append((2 * torch.softmax(-losses, dim=0))[0].item())
        dwa.update(losses)
    # DWA's weights of A and B after the last step; A's last weight under 2 · softmax(-L)
    final[case] = (dwa.weights().tolist(), softmax_a[-1])
    for name, ys, color in [("DWA (Liu et al.)", dwa_a, "#00CC96"),
                            ("2 · softmax(-L)", softmax_a, "#636EFA")]:
        fig.add_trace(go.Scatter(x=steps, y=ys, name=name, line={"color": color},
                                 showlegend=col == 1), row=1, col=col)
fig.add_hline(y=1.0, line_dash="dot", line_color="grey")
fig.update_layout(title="weight of task A (equal weighting = 1)", height=360,
                  legend={"orientation": "h", "y": -0.2})
fig.update_xaxes(title_text="step")
fig

# %%
for case, ((dwa_a, dwa_b), w_softmax) in final.items():
    print(f"{case}: task A's weight, DWA {dwa_a:.2f} (B {dwa_b:.2f}), "
          f"2·softmax(-L) {w_softmax:.2f}")

# %% [markdown]
# On the left both rules favour A, so a chart of that case alone cannot tell them apart. On
# the right they disagree: DWA gives the stalled task B more weight (gently: at `T` = 2 a
# ratio of 0.8 against 1 moves the weights to about 0.95 and 1.05, printed above).
# `softmax(-L)` keeps favouring A because its loss is small, though A is the task still
# improving on its own.

# %%
stalled_a, falling_a = final.values()
assert stalled_a[0][0] > 1 and stalled_a[1] > 1  # left: both favour A (small, stalled)
assert falling_a[0][0] < 1 < falling_a[1]  # right: DWA favours B (stalled), softmax(-L) A

# %% [markdown]
# ## 6. Exercise
#
# Write a `LossWeighting` subclass, built as `cls(num_tasks)`, that is Dynamic Weight
# Averaging with one-step windows: `combine(losses)` returns the weighted total for this
# step's single backward; `update(losses)` (called after the optimiser step, with detached
# losses) computes the next weights; `weights()` reports the weights in force. Before two
# steps have been seen, the weights are all 1. `lessons.check("dwa-weights", ...)` trains the
# lab's model with your class exactly as it trains the `buggy` and `summary` variants,
# compares the gradients with the clean model's at the weights your class reports, and
# compares those weights with the package's `DynamicWeightAveraging` (one-step windows,
# T = 2) fed the same losses. The attempt below is the summary's `copy_`: run it, read the
# checker, fix it.

# %%
class MyWeighting(LossWeighting):
    def __init__(self, num_tasks):
        super().__init__(num_tasks)
        self.register_buffer("w", torch.ones(num_tasks))

    def weights(self):
        return self.w.detach().clone()

    def combine(self, losses):
        total = (self.w * losses).sum()
        self.w.copy_(torch.softmax(-losses, dim=0))  # TODO
        return total


print(lessons.check("dwa-weights", MyWeighting))

# %% [markdown]
# **Predict.** The next class makes the summary's write through `.data`, so that the version
# counter does not move (section 2). The multiply `w * losses` saved `w`. Does the checker
# accept it?

# %%
data_write = stateful.DataWriteDWA
lessons.source(data_write.combine, "the summary's write, through .data")

# %%
data_check = bugs.check("dwa-weights", data_write)
print(data_check)

# %% [markdown]
# No: no error, and wrong gradients. Writing through `.data` is a band-aid that makes the
# error silent: the backward of `w * losses` multiplies by the *new* weights, not the ones
# this step's total used. This is the silent corruption of section 2, in the real training
# step.

# %%
assert not data_check.holds and "gradients differ from the clean reference" in data_check.message

# %% [markdown]
# Another band-aid the checker knows: `softmax(-L)` from detached losses, into a new tensor
# after the optimiser step. Autograd has nothing left to object to; the weights are still
# not DWA's:

# %%
candidates = bugs.get("dwa-weights").candidates()  # the catalog's named attempts
softmax_rule = candidates["band-aid: softmax(-L) from detached losses"]
lessons.source(softmax_rule.update, "update()")
softmax_weights = bugs.check("dwa-weights", softmax_rule)
print(softmax_weights)
print("largest gradient error:", softmax_weights.outcome.max_grad_diff)
assert not softmax_weights.holds and softmax_weights.outcome.max_grad_diff <= GRAD_TOL
assert "loss weights vs DWA (one-step windows, T = 2) is off by" in softmax_weights.message

# %% [markdown]
# A solution (folded; try yours first). Its last lines compare its weights with the
# package's `DynamicWeightAveraging` on the right-hand losses of section 5.

# %% tags=["solution"]
class MyWeighting(LossWeighting):
    """DWA with one-step windows: weights from the last two detached losses."""

    def __init__(self, num_tasks, temperature=2.0):
        super().__init__(num_tasks)
        self.temperature = temperature
        self.w = torch.ones(num_tasks)  # (K,) the weights in force: constants of the graph
        self.last = []  # the last two detached loss vectors, oldest first

    def weights(self):
        return self.w.clone()

    def combine(self, losses):
        return (self.w.to(losses) * losses).sum()  # reads w, writes nothing

    def update(self, losses):
        self.last = (self.last + [losses.detach().float()])[-2:]
        if len(self.last) == 2:
            r = self.last[1] / self.last[0]  # (K,) L(t-1) / L(t-2)
            self.w = self.num_tasks * torch.softmax(r / self.temperature, dim=0)  # new tensor


result = bugs.check("dwa-weights", MyWeighting)
print(result)
assert result.holds
mine, ref = MyWeighting(2), DynamicWeightAveraging(2, temperature=2.0, window=1)
for la, lb in zip(*cases["A small, falling; B large, stalled"], strict=True):
    mine.update(torch.tensor([la, lb]))
    ref.update(torch.tensor([la, lb]))
    assert torch.allclose(mine.weights(), ref.weights(), atol=1e-5)
print("same weights as the package's DWA at every step:", ref.weights().tolist())

# %% [markdown]
# Your attempts so far, oldest first (also on the dashboard's **My attempts** page):

# %%
lessons.my_attempts()

# %% [markdown]
# ## Check your understanding
#
# 1. `y = x.exp(); y.data.copy_(torch.zeros(3)); y.sum().backward()` runs without error.
#    Why, and is `x.grad` right?
#
#    <details><summary>Answer</summary>
#
#    `.data` gives an alias with its own version counter, so the write does not bump `y`'s
#    counter and backward's check passes. But `ExpBackward` saved `y` (its result) and now
#    multiplies by zeros: `x.grad` is 0 instead of e. Silent corruption, not "no effect".
#
#    </details>
#
# 2. Then why does writing the importance through `.data` not corrupt any gradient in
#    MAHIA-X?
#
#    <details><summary>Answer</summary>
#
#    Because no forward operation reads the importance, so no graph saves it: the
#    saved-tensor hook counted 0 saves (section 2). The same write into a tensor a graph
#    saved would be silently wrong.
#
#    </details>
#
# 3. The summary's MetaController line fails with a shape error for 4 layers and top-2. What
#    did the lab change to measure it, and why does that matter for the verdict?
#
#    <details><summary>Answer</summary>
#
#    It pads the `K` per-slot means with zeros to length `L` (a reconstruction; the summary
#    says nothing of it). The `no-effect` verdict is about that adaptation: with it, the
#    original and the summary's `copy_` compute the same per-slot statistic, so the change
#    has no effect on what is stored.
#
#    </details>
#
# 4. Two tasks: A's loss is 0.1 and still falling fast, B's is 2.0 and flat. Which one does
#    DWA favour, and which one does `softmax(-L)` favour?
#
#    <details><summary>Answer</summary>
#
#    DWA favours B: its ratio `L(t-1)/L(t-2)` is 1 (stalled), A's is below 1. `softmax(-L)`
#    favours A, only because its loss level is lower (section 5, right).
#
#    </details>
#
# 5. A weighting computes `softmax(-L)` from the detached losses in `update()`, into a new
#    tensor. Training with it is correct. Does `bugs.check("dwa-weights", ...)` pass it?
#
#    <details><summary>Answer</summary>
#
#    No. The checker measures two things: that training is correct with the weights your
#    class reports (no error, no carried graph, gradients equal to the clean model's at those
#    weights), and that those weights are DWA's (one-step windows, `T` = 2) for the same
#    losses. `softmax(-L)` passes the first and fails the second: `NOT YET`, with the weights'
#    error against DWA (section 6, the second band-aid).
#
#    </details>
#
# ## Recap
#
# - The summary's MetaController line raises a shape error whenever top-k is neither 1 nor
#   the number of layers; the lab pads it to measure it (a reconstruction).
# - `.data` hides a write from the version counter: harmless only where no graph saved the
#   tensor (true of the importance), silently wrong where one did (`x.exp()`, the DWA
#   weights that `w * losses` saved).
# - Measured: MetaController **no-effect** (and averaged per slot, not per layer), DWA
#   **worse** (the `copy_` fails a step earlier).
# - `softmax(-L)` weighs by loss level; DWA by how fast each loss falls, `K ·
#   softmax(r / T)` with `r = L(t-1) / L(t-2)`. They disagree when a small loss is still
#   falling and a large one has stalled.
# - Protocol, as in 03a: compute the next state from detached values, into a new tensor,
#   after the optimiser step.
