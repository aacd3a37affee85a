# Source of notebooks/06_finding_the_mutation.ipynb (built by notebooks/build.py).

# %% [markdown]
# # 06 · Finding the mutation: anomaly mode versus the mutation locator
#
# **Goal.** Understand what PyTorch's in-place error really says, why anomaly mode (the
# summary's recommendation) points at the wrong line, and find the line that changed the
# tensor with the lab's mutation locator.
#
# **Context (read cold).** After its fixes, the summary still had an error left (remaining
# issue 2):
#
# > **Persistent In-Place Operation Error**: There may still be some in-place operations in
# > other parts of the model that need to be identified and fixed.
# > *Recommendation*: Enable PyTorch's anomaly detection to identify the exact source of
# > remaining in-place operations: `torch.autograd.set_detect_anomaly(True)`
#
# The error is "one of the variables needed for gradient computation has been modified by an
# inplace operation". Backward checks that each tensor it saved still has the version it had
# when saved; something wrote into one in between. Two places matter: where the tensor was
# **saved** (a forward line) and where it was **modified** (the line to fix).

# %%
import linecache

import ipywidgets as widgets
import torch
from torch import nn

from mahiax import bugs, lessons
from mahiax.debug import anomaly_says, locate_mutations
from mahiax.memory import GraphDiffusionMemory

torch.manual_seed(0)

# %% [markdown]
# ## 1. An in-place error with no in-place operation in sight
#
# Two layers; one backward with `retain_graph=True`, an optimiser step, and a second
# backward through the same (retained) graph. The second layer's weight was saved by the
# forward (to compute the first layer's gradient); `optimizer.step()` updated it in place.

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
    opt.step()  # writes into l2.weight, which the retained graph saved
    loss.backward()


# %% tags=["raises-exception"]
summary_era_step()

# %% [markdown]
# ## 2. What anomaly mode says
#
# Anomaly mode prints the *forward* traceback of the node whose backward failed: the line
# where the tensor was saved. `mahiax.debug.anomaly_says` runs a function under anomaly
# mode and collects that text.

# %%
report = anomaly_says(summary_era_step)
print(type(report.error).__name__, ":", str(report.error).splitlines()[0][:100], "...")
print("anomaly mode's forward traceback, lines of this notebook only:")
for file, line in report.frames():
    if "/torch/" not in file:
        print(f"  line {line}: {linecache.getline(file, line).strip()}")

# %% [markdown]
# It points at `self.l2(...)` in `forward`: correct about where `l2.weight` was saved, and
# silent about `opt.step()`, the line that changed it.
#
# ## 3. What the mutation locator says
#
# `mahiax.debug.locate_mutations(model)` watches both ends: it notes every tensor autograd
# saves (op, module, file and line) and every in-place write to the storage of one (via a
# `TorchDispatchMode`). When backward fails, it appends the mutating op, module and line to
# PyTorch's own error.

# %%
with lessons.expect_error(RuntimeError, "modified by an inplace operation") as caught:
    with locate_mutations(net):
        summary_era_step()

# %%
report_text = caught.message.split("Mutation locator:")[1]
assert "_foreach" in report_text or "add_" in report_text  # the optimiser's in-place update

# %% [markdown]
# ## 4. The summary's "persistent" error in MAHIA-X
#
# The catalog's `persistent-inplace` entry trains the summary-era model: `retain_graph=True`
# on every backward and memory nodes that carry the graph from step to step (lessons 03 and
# 04). Its `summary` variant follows the recommendation (anomaly mode), then asks the locator.
#
# **Expected verdict** on the summary's fix for `persistent-inplace`: **wrong-diagnosis**.
# The error is still there, and anomaly mode names the forward line that saved the tensor,
# not the `optimizer.step()` that changed it.

# %%
v_pi = bugs.verdict("persistent-inplace")
lessons.verdict_report(v_pi)

# %%
figures = v_pi.outcomes["summary"].figures
print("anomaly mode points to:", figures["anomaly_points_to"])
print("the tensor was changed:", figures["mutating_op"], "at", figures["mutation_at"])
assert figures["anomaly_points_to"] != figures["mutation_at"]

# %% [markdown]
# ## 5. The locator on every in-place bug of the catalog
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
# `self.nodes` toward the batch mean (`s = self.write_rate`) without writing into the tensor
# the read saved and without carrying the graph. `bugs.check("graph-memory-update", cls)`
# trains with it. The attempt below is the summary's `copy_` under `no_grad` (does `no_grad`
# help?).

# %%
class MyMemory(GraphDiffusionMemory):
    def forward(self, x):
        out = self.read(x)
        if self.training:
            s = self.write_rate
            with torch.no_grad():
                self.nodes.copy_((1 - s) * self.nodes + s * x.mean(dim=0, keepdim=True))  # TODO
        return out


print(bugs.check("graph-memory-update", MyMemory))

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
# (It passes the autograd checks; it still pulls every node toward one batch mean. The
# clean memory moves each node toward the inputs assigned to it: see
# `GraphDiffusionMemory._stage_write`.)
#
# ## Recap
#
# - The in-place error means: a tensor that backward saved was written to afterwards.
# - Anomaly mode shows where it was **saved**; the fix is where it was **modified**: here
#   `optimizer.step()` under a retained graph (a **wrong diagnosis**, measured).
# - `mahiax.debug.locate_mutations(model)` names the mutating op, module and line; use it
#   around the failing step (it slows each step 5-10x).
# - Then remove the cause: detach carried state, one backward per step, no `retain_graph`.
