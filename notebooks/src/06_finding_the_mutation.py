# Source of notebooks/06_finding_the_mutation.ipynb (built by notebooks/build.py).

# %% [markdown]
# # 06 · Finding the mutation: anomaly mode versus the mutation locator
#
# **Goal.** Read PyTorch's in-place error word by word, see which line anomaly mode (the
# summary's recommendation) points at and why, and find the line that changed the tensor
# with the lab's mutation locator. About 15 minutes live.
#
# **Context (read cold).** After its fixes, the summary still had an error left (remaining
# issue 2, recommendation 2):
#
# > **Persistent In-Place Operation Error**: There may still be some in-place operations in
# > other parts of the model that need to be identified and fixed.
#
# > **For In-Place Operations**: Enable PyTorch's anomaly detection to identify the exact
# > source of remaining in-place operations: `torch.autograd.set_detect_anomaly(True)`
#
# The error (summary section 2) is "one of the variables needed for gradient computation has
# been modified by an inplace operation". Every tensor carries a **version counter**
# (`t._version`): each in-place operation on it increases it, and every view of the same
# storage shares it. When autograd saves a tensor for the backward, it records the
# version; backward checks that the saved tensor still has that version, and raises this
# error if something wrote into it in between. Two places matter: where the tensor was
# **saved** (a forward line) and where it was **modified** (the line to fix).
#
# PyTorch docs this lesson builds on: autograd mechanics,
# [in-place correctness checks](https://docs.pytorch.org/docs/stable/notes/autograd.html#in-place-correctness-checks)
# and [saved tensors](https://docs.pytorch.org/docs/stable/notes/autograd.html#saved-tensors);
# [anomaly detection](https://docs.pytorch.org/docs/stable/autograd.html#anomaly-detection);
# [tensor views](https://docs.pytorch.org/docs/stable/tensor_view.html);
# [`torch.optim.AdamW`](https://docs.pytorch.org/docs/stable/generated/torch.optim.AdamW.html).

# %%
import inspect
import linecache
from pathlib import Path
from unittest import mock

import ipywidgets as widgets
import torch
import torch.optim.adam as adam_module
from torch import nn

import mahiax
from mahiax import bugs, lessons
from mahiax.bugs.harness import harness_config
from mahiax.model.memories import GraphDiffusionMemory
from mahiax.telemetry.locator import anomaly_says, locate_mutations
from mahiax.training.objective import make_optimizer

_ = torch.manual_seed(0)

# %% [markdown]
# ## 1. An in-place error with no in-place operation in sight
#
# Two layers; one backward with `retain_graph=True` (keep the graph's saved tensors after
# the backward), an optimiser step, and a second backward through the same retained graph.
#
# **Predict.** The model has no in-place operation. Does the second backward run? If not,
# which tensor will the error name?

# %%
class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(3, 3), nn.Linear(3, 1)

    def forward(self, x):
        return self.l2(torch.tanh(self.l1(x)))


net = TwoLayers()
opt = torch.optim.SGD(net.parameters(), lr=0.1)


def summary_era_step() -> None:
    loss = net(torch.randn(2, 3)).sum()
    loss.backward(retain_graph=True)
    opt.step()
    loss.backward()


# %%
with lessons.attempt() as caught:
    summary_era_step()

# %% [markdown]
# No: the second backward refuses, with the in-place error, although the model has no
# in-place operation. The tensor it names is `[3, 1]`, "output 0 of AsStrided": the next
# section decodes it.

# %%
caught.expect(RuntimeError, "[3, 1]], which is output 0 of AsStrided, is at version 2; "
                            "expected version 1")

# %% [markdown]
# ## 2. Decoding the message
#
# Which tensor is `[3, 1]`? `l2` computes `x @ l2.weight.t() + l2.bias` with one `addmm`;
# to give `l1` its gradient, the backward of `addmm` needs `l2.weight.t()`, so the forward
# saved it. `l2.weight` is `[1, 3]`; the saved tensor is its transpose, a **view** (a tensor
# sharing its base's storage, and its version counter).
#
# **Predict.** The message says the saved tensor was at version 1 when the forward saved
# it: a write before the forward, before any optimiser step. What wrote into `l2.weight`?

# %%
net = TwoLayers()
opt = torch.optim.SGD(net.parameters(), lr=0.1)
print("each parameter's _version:", {n: p._version for n, p in net.named_parameters()})
print("torch.empty(1, 3)._version:", torch.empty(1, 3)._version)

# %% [markdown]
# The constructor: every parameter of a fresh `nn.Linear` is at version 1, where a fresh
# tensor is at 0. `nn.Linear.reset_parameters`, which the constructor calls, initialises the
# weight and the bias in place (`init.kaiming_uniform_`, `init.uniform_`), one write each:

# %%
init_lines = [ln.strip() for ln in inspect.getsource(nn.Linear.reset_parameters).splitlines()
              if "init." in ln and "_(" in ln]
print("\n".join(init_lines))
fresh = torch.empty(1, 3)
nn.init.kaiming_uniform_(fresh)
print("a fresh tensor after one in-place init:", fresh._version)
assert fresh._version == 1
assert all(p._version == 1 for p in net.parameters())
assert any("kaiming_uniform_(self.weight" in ln for ln in init_lines)

# %% [markdown]
# Then the forward saves the view at version 1, and the optimiser step moves it to 2:

# %%
loss = net(torch.randn(2, 3)).sum()
addmm = loss.grad_fn.next_functions[0][0]  # the backward node of l2's addmm
saved = addmm._saved_mat2  # the tensor it saved
print(f"{addmm.name()} saved a tensor of shape {list(saved.shape)}; "
      f"l2.weight.t() has shape {list(net.l2.weight.t().shape)}; same storage: "
      f"{saved.data_ptr() == net.l2.weight.data_ptr()}")
print("saved at version", saved._version, "| its grad_fn:", saved.grad_fn.name())
loss.backward(retain_graph=True)
opt.step()
print("after opt.step(): l2.weight at version", net.l2.weight._version,
      "| the saved view reads", saved._version, "| its grad_fn now:", saved.grad_fn.name())
assert list(saved.shape) == [3, 1] and net.l2.weight._version == 2

# %% [markdown]
# So, word by word:
#
# - **`[3, 1]`** is `l2.weight` transposed, the tensor `addmm` saved.
# - **expected version 1**: the constructor wrote the weight once, in place
#   (`nn.init.kaiming_uniform_`), so it was at version 1 when the forward saved it.
# - **is at version 2**: `opt.step()` wrote into `l2.weight` (SGD's `add_`); the view
#   shares the counter, so it moved too.
# - **output 0 of AsStrided**: after its base was changed in place, autograd rebuilt the
#   view's `grad_fn` as an `as_strided` view (**AsStrided**: the general view described
#   only by sizes, strides and a storage offset), so the message names `AsStrided` instead
#   of the `t()` that made it (shown by `grad_fn` above: `TBackward0`, then
#   `AsStridedBackward0`).
#
# ## 3. What anomaly mode says
#
# **Anomaly mode** (`torch.autograd.set_detect_anomaly(True)` or the context manager
# `torch.autograd.detect_anomaly()`) records, during the forward, the Python traceback that
# created each backward node. When a backward node fails, it prints the traceback it
# recorded for that node. `mahiax.telemetry.locator.anomaly_says` runs
# a function under anomaly mode and collects that text.
#
# **Predict.** Which line will anomaly mode point at: `opt.step()`, or a line of `forward`?

# %%
net = TwoLayers()
opt = torch.optim.SGD(net.parameters(), lr=0.1)
report = anomaly_says(summary_era_step)
print(report.text.splitlines()[0])
print("the innermost frames of its forward traceback, outside torch:")
for file, line in [(f, n) for f, n in report.frames() if "/torch/" not in f][-2:]:
    print(f"  line {line}: {linecache.getline(file, line).strip()}")
hint = str(report.error).split("Hint: ")[1]
print("\nPyTorch's own hint under anomaly mode:\n ", hint)

# %% [markdown]
# It points at `self.l2(...)` in `forward`: correct about where the weight was saved, and
# silent about `opt.step()`, the line that changed it. PyTorch says so itself: the variable
# "was changed in there **or anywhere later**". Anomaly mode names the failing node, not
# the write.

# %%
frames = [(f, n) for f, n in report.frames() if "/torch/" not in f]
assert "self.l2(" in linecache.getline(*frames[-1])
assert "opt.step()" not in "".join(linecache.getline(f, n) for f, n in frames)
assert "anywhere later" in hint

# %% [markdown]
# ## 4. What the mutation locator says
#
# `mahiax.telemetry.locator.locate_mutations(model)` watches both ends. It notes every tensor autograd
# saves (op, module, file and line), and it sees every **ATen** op (PyTorch's C++ operator
# library: `aten.addmm`, `aten.add_`, ...) through a `TorchDispatchMode` (a Python hook that
# every op passes through), noting each in-place write to the storage of a saved tensor.
# When backward fails, it appends the mutating op, module and line to PyTorch's own error.

# %%
net = TwoLayers()
opt = torch.optim.SGD(net.parameters(), lr=0.1)
with lessons.expect_error(RuntimeError, "modified by an inplace operation") as caught:
    with locate_mutations(net) as locator:
        summary_era_step()

# %%
first = locator.mutations[0]
print("the write backward tripped on:", first.op, "| line:",
      linecache.getline(first.file, first.line).strip())
assert first.tripped_backward and first.op == "aten.add_"
assert linecache.getline(first.file, first.line).strip() == "opt.step()"

# %% [markdown]
# `aten.add_`, inside `opt.step()`: SGD's update writes `-lr * grad` into each parameter
# in place.

# %% [markdown]
# ## 5. The summary's "persistent" error in MAHIA-X
#
# > **Reconstruction.** The summary does not say where its persistent error came from. The
# > lab assumes the loop the summary describes (`retain_graph=True` on every backward,
# > summary section 3) together with state that carries the graph from one step to the
# > next (the original `GraphDiffusionMemory` update, lesson 03a), with an optimiser step
# > after every step. Then step 1's backward runs into step 0's retained graph, whose saved
# > parameters step 0's optimiser step has since changed: an in-place error with no in-place
# > operation in the model.
#
# The catalog's `persistent-inplace` entry trains that model. Its `summary` variant follows
# the recommendation (anomaly mode), then asks the locator.
#
# **Predict.** Under anomaly mode, does the error go away? Does anomaly mode name the line
# that changed the tensor?

# %%
v_pi = bugs.verdict("persistent-inplace")
lessons.verdict_report(v_pi)

# %% [markdown]
# **Expected verdict** on the summary's fix for `persistent-inplace`: **wrong-diagnosis**.
# The error is still there, and anomaly mode names the forward line that saved the tensor,
# not the optimiser step that changed it.

# %%
def package_line(where: str) -> str:
    """The source line at ``where`` ("path/in/mahiax.py:line")."""
    file, line = where.rsplit(":", 1)
    return linecache.getline(str(Path(mahiax.__file__).parent / file), int(line)).strip()


figures = v_pi.outcomes["summary"].figures
print("anomaly mode points to:", figures["anomaly_points_to"])
print("  that line:", package_line(figures["anomaly_points_to"]))
print("the tensor was changed:", figures["mutating_op"], "at", figures["mutation_at"])
print("  that line:", package_line(figures["mutation_at"]))
assert figures["anomaly_points_to"] != figures["mutation_at"]
assert package_line(figures["mutation_at"]) == "self.optimizer.step()"

# %% [markdown]
# The locator names the op printed above, at the catalog harness's `optimizer.step()`: not
# SGD's `add_` of section 4, but a `_foreach_` op, one call over a whole list of tensors.
# The harness trains with `torch.optim.AdamW` built by `mahiax.training.objective.make_optimizer`
# with `foreach=True`, so AdamW runs its multi-tensor loop, `_multi_tensor_adam`. Its
# *decoupled weight decay* first multiplies every parameter in place by
# `1 - lr * weight_decay`, with one `torch._foreach_mul_`, before the Adam update (a second
# in-place write, `_foreach_addcdiv_`). The optimiser the harness builds, which loop runs,
# that loop's decay line, and the effect on a parameter whose gradient is zero (so that only
# the decay acts; a learning rate of 0.1 makes it visible):

# %%
p = nn.Parameter(torch.randn(4))
p.grad = torch.zeros(4)
adamw = make_optimizer([p], harness_config().replace(lr=0.1))
lr, decay = adamw.defaults["lr"], adamw.defaults["weight_decay"]
print(type(adamw).__name__, "| foreach:", adamw.defaults["foreach"], "| lr:", lr,
      "| weight_decay:", decay)
before, version = p.detach().clone(), p._version
loops = {name: mock.patch.object(adam_module, name, wraps=getattr(adam_module, name))
         for name in ("_single_tensor_adam", "_multi_tensor_adam")}
with loops["_single_tensor_adam"] as single, loops["_multi_tensor_adam"] as multi:
    adamw.step()
    calls = {"_single_tensor_adam": single.call_count, "_multi_tensor_adam": multi.call_count}
print("calls:", calls)
source = inspect.getsource(adam_module._multi_tensor_adam).splitlines()
at = next(i for i, s in enumerate(source) if "_foreach_mul_(device_params" in s)
print("\n".join(source[at - 3:at + 1]))
print(f"p after == p before * (1 - lr * wd): "
      f"{torch.allclose(p.detach(), before * (1 - lr * decay), rtol=0, atol=1e-7)}; "
      f"p's version {version} -> {p._version}")
assert figures["mutating_op"] == "aten._foreach_mul_"
assert calls == {"_single_tensor_adam": 0, "_multi_tensor_adam": 1}
assert torch.allclose(p.detach(), before * (1 - lr * decay), rtol=0, atol=1e-7)
assert p._version == version + 2


# %% [markdown]
# The fix is not to move or drop the optimiser step: it is to stop keeping step t's graph
# alive into step t+1 (detach carried state, one backward per step, no `retain_graph`).
#
# ## 6. The locator on every in-place bug of the catalog
#
# `bugs.locate(entry_id, variant)` runs a variant under the locator and returns the
# mutations it saw, the one backward tripped on first. Pick an entry and a variant.

# %%
INPLACE_ENTRIES = ["tiny-memory-write", "graph-memory-update", "fabric-accumulate",
                   "dwa-weights", "persistent-inplace"]
entry_pick = widgets.Dropdown(options=INPLACE_ENTRIES, description="entry")
variant_pick = widgets.ToggleButtons(options=["buggy", "summary"], description="variant")
found = widgets.HTML()


def run_locator(change=None) -> None:
    out, mutations = bugs.locate(entry_pick.value, variant_pick.value)
    if not mutations:
        what = "no in-place write to a saved tensor" + (
            f" ({out.error_type} at step {out.error_step}: not a version error)"
            if out.error_type else ""
        )
        found.value = f"<p>{what}</p>"
        return
    m = mutations[0]
    found.value = (
        f"<p><b>{out.error_type} at step {out.error_step}</b><br>{m.describe()}</p>"
    )


entry_pick.observe(run_locator, names="value")
variant_pick.observe(run_locator, names="value")
run_locator()
widgets.VBox([entry_pick, variant_pick, found])

# %% [markdown]
# The summary's `GraphDiffusionMemory` fix, for instance: the locator names the `copy_` in
# its `forward` and the read that saved the nodes.

# %%
out, mutations = bugs.locate("graph-memory-update", "summary")
print(mutations[0].describe())
assert mutations[0].op == "aten.copy_"

# %% [markdown]
# ## Exercise
#
# The locator just named the write in the summary's memory. Write a `GraphDiffusionMemory`
# whose `forward(x)` reads the nodes (`self.read(x)`) and, in training mode, updates
# `self.nodes` toward the batch mean (`(1 - s) * nodes + s * mean(x)`, `s = self.write_rate`)
# without writing into the tensor the read saved and without carrying the graph.
# `lessons.check("graph-memory-update", cls)` trains with it, compares every step's gradients
# with the clean model's, and after every step compares the nodes with that update of the
# nodes the step started with (it also accepts the package memory's own update, which
# moves each node toward the inputs assigned to it). The attempt below is the summary's
# `copy_` under `no_grad`.
#
# **Predict.** Does `torch.no_grad()` around the `copy_` help?

# %%
class MyMemory(GraphDiffusionMemory):
    def forward(self, x):
        out = self.read(x)
        if self.training:
            s = self.write_rate
            with torch.no_grad():
                self.nodes.copy_((1 - s) * self.nodes + s * x.mean(dim=0, keepdim=True))  # TODO
        return out


attempt = lessons.check("graph-memory-update", MyMemory)
print(attempt)

# %% [markdown]
# No: `no_grad` stops autograd from *recording* new operations; the in-place write still
# bumps the version counter of the tensor the read saved, and step 0's backward refuses.

# %%
assert not attempt.holds and "raised RuntimeError at step 0" in attempt.message
assert "is at version 1; expected version 0" in attempt.message

# %% [markdown]
# The checker grades the update too, not only autograd. Nodes that never move break no
# autograd rule, and their gradients match the clean model's for the nodes they have (the
# clean reference starts every step from the memory's own state); where the nodes are after
# each step tells them apart:

# %%
frozen = bugs.get("graph-memory-update").candidates()["wrong: the nodes never move"]
frozen_result = bugs.check("graph-memory-update", frozen)
print(frozen_result)
print("largest gradient error:", frozen_result.outcome.max_grad_diff)
assert not frozen_result.holds and "The nodes did not move at step 0" in frozen_result.message
assert frozen_result.outcome.max_grad_diff <= 1e-6

# %% tags=["solution"]
class MyMemory(GraphDiffusionMemory):
    """A new tensor from detached inputs: nothing saved is written, no graph carried."""

    def forward(self, x):
        out = self.read(x)
        if self.training:
            s = self.write_rate
            self.nodes = ((1 - s) * self.nodes + s * x.detach().mean(dim=0, keepdim=True))
        return out


result = bugs.check("graph-memory-update", MyMemory)
print(result)
assert result.holds

# %% [markdown]
# (It passes: the nodes move as the exercise asks, and autograd is satisfied. It still
# pulls every node toward one batch mean, which lesson 03a, section 4, measured collapsing
# the nodes; the package memory moves each node toward the inputs assigned to it: see
# `GraphDiffusionMemory._stage_write`.)

# %% [markdown]
# Your attempts so far, oldest first (also on the dashboard's **My attempts** page):

# %%
lessons.my_attempts()

# %% [markdown]
# ## Check your understanding
#
# 1. Decode `[torch.FloatTensor [3, 1]], which is output 0 of AsStrided, is at version 2;
#    expected version 1` for the two-layer net.
#    <details><summary>Answer</summary>
#    The saved tensor is `l2.weight.t()` (`[3, 1]`), which `addmm` saved to compute the
#    gradient for `l1`. It was at version 1 when saved (the constructor's in-place
#    `kaiming_uniform_`), and `opt.step()` wrote into the weight, making it 2; the view
#    shares its base's counter. `AsStrided` is how autograd describes the view once its
#    base was changed (section 2).
#    </details>
# 2. Why does anomaly mode point at a line of `forward` and not at `opt.step()`?
#    <details><summary>Answer</summary>
#    It records, for each backward node, the forward traceback that created it, and prints
#    the one of the node that failed: the node that *saved* the tensor. The write happened
#    later, somewhere else; PyTorch's hint says "changed in there or anywhere later"
#    (section 3).
#    </details>
# 3. `with torch.no_grad(): nodes.copy_(new)` still fails. Why?
#    <details><summary>Answer</summary>
#    `no_grad` only stops recording new graph; the write still bumps the version counter of
#    `nodes`, which the read saved, so the backward's check fails (the exercise's first
#    attempt).
#    </details>
# 4. In MAHIA-X the locator names `aten._foreach_mul_` at `optimizer.step()`. What is
#    multiplied, why a `_foreach_` op, and what does it name with plain SGD?
#    <details><summary>Answer</summary>
#    AdamW's decoupled weight decay multiplies every parameter in place by
#    `1 - lr * weight_decay` before its update. The harness builds AdamW with
#    `foreach=True`, so `_multi_tensor_adam` runs and does it with one
#    `torch._foreach_mul_` over all the parameters (section 5). With section 4's SGD (no
#    weight decay, `foreach` left at its default) the write is the update itself,
#    `aten.add_` (on CPU; on CUDA the default is foreach: `aten._foreach_add_`).
#    </details>
# 5. After the locator names the optimiser step, what is the fix?
#    <details><summary>Answer</summary>
#    Not to move or remove the step: stop step t's graph from surviving into step t+1.
#    Detach state carried across steps, do one backward per step, and drop
#    `retain_graph=True` (lessons 03a and 04).
#    </details>

# %% [markdown]
# ## Recap
#
# - The in-place error means: a tensor that backward saved was written to afterwards. Read
#   its shape (which tensor), its versions (how many writes since it was saved) and
#   `AsStrided` (a view whose base was changed).
# - Anomaly mode shows where it was **saved**; the fix is where it was **modified**: here
#   the optimiser step under a retained graph (a **wrong diagnosis**, measured).
# - `mahiax.telemetry.locator.locate_mutations(model)` names the mutating op, module and line; use it
#   around the failing step only: it records every saved tensor and sees every op.
# - Then remove the cause: detach carried state, one backward per step, no `retain_graph`.
