# Source of notebooks/00_tour.ipynb (built by notebooks/build.py; edit here, then rebuild).

# %% [markdown]
# # 00 · A tour of the MAHIA-X Lab
#
# **Goal.** In about twelve minutes: what the model is, what the user's bug-fix summary
# claims, how the lab turns each claim into something you can run and measures it, and where
# everything lives. Every other lesson starts from here, but each one also stands on its own.
#
# **How the lessons work.** Each lesson takes one section of the summary and tells one bug's
# story: the symptom, PyTorch's exact error where it happens, the evidence (version counters,
# graph sizes, memory), the summary's fix *as written* and what it really does (measured when
# you run the cell, never a stored answer), the right fix and its proof, an exercise that
# `mahiax.bugs.check` grades, and a recap. Run the cells top to bottom (*Run → Run All
# Cells*); no cell needs a GPU.

# %%
import plotly.express as px
import torch

from mahiax import bugs, lessons
from mahiax.config import teaching, tiny
from mahiax.model.data import SyntheticMultiTask
from mahiax.model.hybrid import HybridEfficientModel

torch.manual_seed(0)
print("torch", torch.__version__, "| GPU found:", torch.cuda.is_available())

# %% [markdown]
# ## 1. The summary the lab is built around
#
# A user debugged a demo script of MAHIA-X and wrote down what they fixed. Here it is,
# unedited. Read it once; the lessons test every claim in it.

# %%
lessons.fixes_summary()

# %% [markdown]
# ## 2. The model
#
# MAHIA-X is a hybrid **text + tabular** model trained on three tasks at once:
#
# - a text encoder: token embeddings, then a **mixture of experts** (`ExpertRouter`: each
#   token goes to its top-2 of 8 small feed-forward experts), pooled to one vector;
# - a tabular encoder (a small MLP), fused with the text vector;
# - a **DynamicNeuroFabric**: a bank of blocks, of which each sample runs through its top-2,
#   chosen by a `DynamicLayerRouter`, with a `MetaController` tracking how important each
#   block is;
# - two memories that persist across training steps: a `GraphDiffusionMemory` (nodes
#   diffused over a learned graph) and a `TinyMemory` (a ring buffer of recent batches);
# - one head per task; the task losses are combined by **Dynamic Weight Averaging** (DWA).
#
# `encode()` computes the fused features once; every head reads them. The chart shows where
# the parameters are.

# %%
config = teaching()
model = HybridEfficientModel(config)
parts = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
fig = px.bar(
    x=list(parts), y=list(parts.values()), labels={"x": "component", "y": "parameters"},
    title=f"HybridEfficientModel: {sum(parts.values()):,} parameters (teaching preset)",
)
fig.update_layout(height=360)
fig

# %% [markdown]
# One batch through `encode()`: the shapes are written once in `mahiax/config.py`
# (B samples, T tokens, F tabular features, D `d_model`).

# %%
batch = SyntheticMultiTask(config).batch(0)
enc = model.encode(batch)
print("tokens   ", tuple(batch.tokens.shape), "ids in [0, vocab_size) =", config.vocab_size)
print("tabular  ", tuple(batch.tabular.shape))
print("features ", tuple(enc.features.shape), "(B, D): what every task head reads")
print("experts  ", tuple(enc.router.ids.shape), "(B*T tokens, top_k) expert ids")
print(f"each token: top-{config.top_k} of {config.num_experts} experts | each sample: "
      f"top-{config.fabric_active} of {config.fabric_layers} fabric blocks")
assert enc.features.shape == (config.batch_size, config.d_model)

# %% [markdown]
# ## 3. The bug catalog: every claim, runnable
#
# `mahiax.bugs` holds one entry per claim of the summary, plus a few the summary does not make
# but users run into (mixed precision, DDP). Each entry has three variants you can run:
# `buggy` (the original pattern), `summary` (the fix exactly as the summary states it) and
# `fixed` (the right fix). Pick an entry to read its record; the last line says which lesson
# tells its story.

# %%
import ipywidgets as widgets

picker = widgets.Dropdown(options=[e.id for e in bugs.entries()], description="entry")
card = widgets.HTML()


def show_entry(change=None):
    entry = bugs.get(picker.value)
    lessons = ", then ".join(entry.lessons)  # the one that tells its story first
    card.value = (
        f"<b>{entry.title}</b> (summary section {entry.section}, {entry.component})<br>"
        f"<code>{entry.pattern.splitlines()[0]}</code><br>"
        f"the summary's fix: <code>{entry.summary_fix}</code><br>"
        f"the right fix: {entry.right_fix}<br><i>lesson: {lessons}</i>"
    )


picker.observe(show_entry, names="value")
show_entry()
widgets.VBox([picker, card])

# %% [markdown]
# ### How a verdict is measured: the harness
#
# Every variant runs through one harness, `mahiax.bugs.harness.train_variant`. It builds a
# fresh **float64** copy of the `tiny` model from a fixed seed, installs the variant, and
# trains it for a few steps. Each step is the function below; read it once, because every
# verdict in every lesson comes from it.

# %%
from IPython.display import display

from mahiax.bugs import harness

display(
    lessons.source(harness._one_step, "one measured step"),
    lessons.source(harness.max_grad_diff, "the gradient yardstick"),
)

# %% [markdown]
# What it records, per step, in an `Outcome`:
#
# | field | what it measures |
# |---|---|
# | `graph_nodes` | the size of the autograd graph reachable from the step's loss (after the first step it should stay flat) |
# | `tensor_bytes` | live tensor bytes after the step, read by `MemoryMeter` (lesson 05); a steady rise means something keeps old tensors alive |
# | `max_grad_diff` | the largest difference between the variant's gradients and those of the **clean** package model, loaded with the same weights and state at the start of the step, on the same batch, in float64: a verdict calls gradients wrong above a tolerance, `GRAD_TOL`, far above float64 rounding (both printed with the `fixed` run below) |
# | `error_type`, `error_message`, `error_step` | PyTorch's own exception, caught unedited, and the step it was raised at |
#
# **Predict.** The original `TinyMemory` writes the batch summary into its ring buffer right
# after the forward read that buffer. Does step 0 finish? If not, what type of error do you
# expect?

# %%
out = bugs.run("tiny-memory-write", "buggy")
print(f"steps run: {out.steps_run} of {out.steps_requested}")
print(out.error_type, "at step", out.error_step)
print(out.error_message.splitlines()[0])

# %% [markdown]
# Step 0 finished. The error comes at step 1 (the step printed above), and it is a
# `RuntimeError`: a tensor needed for gradient computation "has been modified by an inplace
# operation". Read the step as well as the error: lesson 03a explains why this one comes
# when it does.

# %%
out_error = f"{out.error_type}: {out.error_message}"
assert out.steps_run == 1 and out.error_step == 1, out_error
assert out.error_type == "RuntimeError" and "modified by an inplace operation" in out_error

# %% [markdown]
# The `fixed` variant of the same entry: every step ran; from step 1 on, the graph and the
# live tensor bytes keep one size; and the gradients equal the clean model's to float64
# rounding. Step 0 is smaller: the ring buffer is still empty, so its read returns zeros
# and builds no graph, and the memory's own parameters get no gradient. They get their
# first gradients at step 1, and AdamW, which makes a parameter's state at its first
# update, holds state for them only after step 1's update (the last lines below; the
# harness reads memory before each step's update, so that state shows at step 2).

# %%
from mahiax.bugs.verdicts import GRAD_TOL

ok = bugs.run("tiny-memory-write", "fixed")
print(f"steps run: {ok.steps_run} of {ok.steps_requested}")
print("graph nodes per step:", ok.graph_nodes)
print("live tensor KB:      ", [round(b / 1024) for b in ok.tensor_bytes])
print(f"largest gradient difference from the clean model: {ok.max_grad_diff:.1e} "
      f"(GRAD_TOL = {GRAD_TOL:g}; float64 machine epsilon {torch.finfo(torch.float64).eps:.1e})")
assert ok.passed and ok.max_grad_diff < 1e-9
assert len(set(ok.graph_nodes[1:])) == 1 and ok.graph_nodes[0] < ok.graph_nodes[1]
assert len(set(ok.tensor_bytes[1:])) == 1

# the same tiny model, one plain step: which parameters have a gradient after step 0?
tiny_model = HybridEfficientModel(tiny())
losses, _ = tiny_model.losses(SyntheticMultiTask(tiny()).batch(0))  # (K,) task losses
losses.sum().backward()
no_grad = [n for n, p in tiny_model.named_parameters() if p.grad is None]
print("no gradient after step 0:", no_grad)
# the harness's reading after each step's backward, before its optimiser step (so the
# AdamW state it shows at step k is what the updates of steps 0 .. k-1 made)
print("gradient KB per step:  ", [round(m["grads"] / 1024, 1) for m in ok.memory_categories])
print("AdamW state KB per step:", [round(m["optimizer"] / 1024, 1) for m in ok.memory_categories])
assert no_grad and all(n.startswith("tiny_memory.") for n in no_grad)

# %% [markdown]
# ### Why trust the clean model? An independent check
#
# The yardstick above is the clean model's own gradients, so the clean model must be right.
# `tests/model/test_gradients.py` checks that with `torch.autograd.gradcheck`, which compares the
# gradients autograd computes with finite differences (nudge each input by a tiny step and
# watch the output), in float64, for every component and for the whole `encode()`. One such
# check, done the same way: a fabric block, differentiated with respect to its input *and* all
# of its parameters (`torch.func.functional_call` runs the block with the parameters passed
# in, so that gradcheck can nudge them).

# %%
from torch.autograd import gradcheck
from torch.func import functional_call

from mahiax.model.fabric import FabricBlock

torch.manual_seed(2)
block = FabricBlock(d_model=6).double()  # LayerNorm, Linear, GELU, Linear
names = [n for n, _ in block.named_parameters()]
params = [p.detach().clone().requires_grad_(True) for p in block.parameters()]
x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)  # (B, D)


def block_fn(x, *ps):
    return functional_call(block, dict(zip(names, ps, strict=True)), (x,))


print("parameters checked:", names)
print("gradcheck:", gradcheck(block_fn, (x, *params)))

# %% [markdown]
# A check that cannot fail proves nothing, so here is gradcheck failing: `x * x.detach()`
# hides one factor from autograd, whose gradient is then `x` instead of `2x`.

# %%
def wrong(x):
    return x * x.detach()


(grad,) = torch.autograd.grad(wrong(x).sum(), x)
print("autograd's gradient equals x (not 2x):", torch.equal(grad, x.detach()))
print("gradcheck of x * x.detach():", gradcheck(wrong, (x,), raise_exception=False))

# %% [markdown]
# Finite differences also need float64. The same correct block, with the same weights and
# input in float32, checked with respect to its input: float32 rounding swamps the tiny
# nudges, and gradcheck rejects gradients that are right (it warns that its input is not
# double precision; the cell silences that).

# %%
import warnings

x32 = x.detach().float().requires_grad_(True)  # (B, D) the same input, in float32
params32 = [p.detach().float() for p in params]  # the same weights, in float32
with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)  # "Input #0 ... is not a double precision"
    passed32 = gradcheck(block_fn, (x32, *params32), raise_exception=False)
print("gradcheck of the same block in float32:", passed32)
assert not passed32

# %% [markdown]
# `bugs.verdict(id)` runs all three variants and judges the summary's fix from what it
# measured. The labels mean:
#
# | label | the summary's variant... |
# |---|---|
# | `holds` | runs every step, gradients equal the clean model's, nothing grows |
# | `same-error` | raises the bug's own error again |
# | `worse` | fails sooner, or with a new error |
# | `no-effect` | runs exactly like the bug: the same measured damage |
# | `hides-the-error` | no exception (or one only later), but the graph or memory grows every step, or the gradients are wrong |
# | `wrong-diagnosis` | the reported error is still there; what the change fixes is a different problem |
#
# The same from a terminal: `.venv/bin/python -m mahiax bugs verdict tiny-memory-write`.

# %% [markdown]
# ## 4. Where things live
#
# | path | what |
# |---|---|
# | `mahiax/` | the clean model (`model.py`, `moe.py`, `fabric.py`, `memory.py`, `weighting.py`, `precision.py`, `train.py`) |
# | `mahiax/bugs/` | the catalog: buggy and summary variants beside it, never inside the clean code |
# | `mahiax/telemetry/locator.py` | the mutation locator (lesson 06) |
# | `mahiax/telemetry/` | `MemoryMeter` (lesson 05) and the probes that feed the run store |
# | `mahiax/store/` | the run store: SQLite, read with pandas (lesson 07) |
# | `notebooks/` | these lessons; their sources are `notebooks/src/*.py` |
# | `dashboard/` | the live Streamlit dashboard |
#
# ## 5. The dashboard
#
# The live dashboard shows a run's losses, expert load balance, memory-node evolution, DWA
# weights and memory. In JupyterLab (here, on a JupyterHub or on Binder) it is the
# **MAHIA-X dashboard** tile in the Launcher, or the link the next cell prints; it reads your
# own run store. Outside JupyterLab, `make dashboard` in a terminal at the repository root
# serves it on <http://localhost:8501>, and with an empty store starts a demo run.
# Lesson 07 records a run from a notebook and opens the same run there.

# %%
lessons.dashboard_link()

# %% [markdown]
# ## Exercise: meet the checker
#
# Every lesson ends with an exercise graded by `bugs.check(entry_id, candidate)`. It runs your
# candidate (a class or a function, the lesson says which) through the same measurement as
# the catalog's variants and answers `PASS` or `NOT YET` with the reason. Try it on the
# fabric: first the catalog's buggy fabric, then the package's clean `DynamicNeuroFabric`.
# In the lessons, the cell where you check *your own* fix calls `lessons.check(entry_id,
# candidate)` instead: the same check, with your attempt recorded (below).

# %%
from mahiax.bugs.accumulate import BuggyFabric
from mahiax.model.fabric import DynamicNeuroFabric

print(bugs.check("fabric-accumulate", BuggyFabric))
result = bugs.check("fabric-accumulate", DynamicNeuroFabric)
print(result)
assert result.holds

# %% [markdown]
# **What is recorded.** Each exercise check of your own fix records one attempt: your user
# name, the lesson, the exercise, `PASS` or `NOT YET` with the checker's short reason (such
# as `retain_graph=True`), when, and a few figures the check measured per step (graph
# nodes, memory, MaxVio: the instructor overlays the class's runs). It goes to your own run
# store; on the workshop hub also to the instructor's class page, which only the instructor
# sees. The checks above are the
# catalog's own candidates, not yours: `bugs.check` records nothing. To see your history:
# `lessons.my_attempts()` (empty until your first exercise) or the dashboard's
# **My attempts** page.

# %%
lessons.my_attempts()

# %% [markdown]
# ## Check your understanding
#
# 1. A variant runs every step without an exception. Which of the harness's measurements can
#    still show that it is broken?
#
#    <details><summary>Answer</summary>
#
#    `graph_nodes` rising step after step (graph carried across steps), `tensor_bytes` rising
#    (old tensors kept alive) and `max_grad_diff` above float64 rounding (wrong gradients).
#    The label for that case is `hides-the-error`.
#
#    </details>
#
# 2. Why does the harness train in float64 rather than float32?
#
#    <details><summary>Answer</summary>
#
#    So that "the gradients equal the clean model's" is a sharp test: the `fixed` run above
#    matches the reference to float64 rounding (its difference and the machine epsilon are
#    printed beside `GRAD_TOL`), so any real mistake stands far above it. gradcheck's finite
#    differences need float64 for the same reason: in float32 it rejected the correct block.
#
#    </details>
#
# 3. Every verdict compares against the clean model's gradients. What shows that the clean
#    model's gradients are right, independently of the lab's own code?
#
#    <details><summary>Answer</summary>
#
#    `torch.autograd.gradcheck`: it compares autograd's gradients with finite differences,
#    for the inputs and the parameters (`tests/model/test_gradients.py` does it for every component
#    and for `encode()`). The `x * x.detach()` cell shows that the check does fail on a wrong
#    gradient.
#
#    </details>
#
# 4. Why does `bugs.verdict` run the three variants each time instead of printing a stored
#    answer?
#
#    <details><summary>Answer</summary>
#
#    Because the verdict is a fact about the PyTorch you have installed: measured each time,
#    it cannot go stale. The lessons state the verdict they expect in prose, and a test fails
#    if the measurement ever disagrees.
#
#    </details>

# %% [markdown]
# ## PyTorch documentation
#
# - [Autograd mechanics](https://docs.pytorch.org/docs/stable/notes/autograd.html): how the
#   graph is recorded, "Saved tensors", "In-place correctness checks" (lessons 02 to 06).
# - [`torch.autograd.gradcheck`](https://docs.pytorch.org/docs/stable/generated/torch.autograd.gradcheck.gradcheck.html)
#   and [Gradcheck mechanics](https://docs.pytorch.org/docs/stable/notes/gradcheck.html).
# - [`torch.func.functional_call`](https://docs.pytorch.org/docs/stable/generated/torch.func.functional_call.html).

# %% [markdown]
# ## Recap
#
# - MAHIA-X = text encoder with a mixture of experts + tabular encoder + a routed fabric of
#   blocks + two memories + one head per task, all from one `encode()`.
# - `mahiax.bugs` turns each claim of the summary into three runnable variants; verdicts are
#   measured every time you ask, by one harness: graph size, live tensor bytes, gradient
#   difference from the clean float64 model, and PyTorch's own error with its step.
# - The clean model itself is checked against finite differences (gradcheck).
# - `lessons.check` grades your own fix the same way and records the attempt;
#   `lessons.my_attempts()` and the dashboard's **My attempts** page show your history.
# - Next: `01_expert_router_index`, or any lesson: each one explains what it needs.
