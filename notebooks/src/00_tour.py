# Source of notebooks/00_tour.ipynb (built by notebooks/build.py; edit here, then rebuild).

# %% [markdown]
# # 00 · A tour of the MAHIA-X Lab
#
# **Goal.** In ten minutes: what the model is, what the user's bug-fix summary claims, how
# the lab turns each claim into something you can run, and where everything lives. Every
# other lesson starts from here, but each one also stands on its own.
#
# **How the lessons work.** Each lesson takes one section of the summary and tells one bug's
# story: the symptom, PyTorch's exact error where it happens, the evidence (version counters,
# graph sizes, memory), the summary's fix *as written* and what it really does (measured when
# you run the cell, never a stored answer), the right fix and its proof, an exercise that
# `mahiax.bugs.check` grades, and a recap. Run the cells top to bottom (*Run → Run All
# Cells*); the whole notebook takes a few seconds on a laptop CPU.

# %%
import plotly.express as px
import torch

from mahiax import bugs, lessons
from mahiax.config import teaching
from mahiax.data import SyntheticMultiTask
from mahiax.model import HybridEfficientModel

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
assert enc.features.shape == (config.batch_size, config.d_model)

# %% [markdown]
# ## 3. The bug catalog: every claim, runnable
#
# `mahiax.bugs` holds one entry per claim of the summary (plus one for mixed precision). Each
# entry has three variants you can run: `buggy` (the original pattern), `summary` (the fix
# exactly as the summary states it) and `fixed` (the right fix). Running a variant trains a
# tiny float64 model for a few steps and measures what happens: PyTorch's own error and its
# step, the autograd graph size and live tensor memory per step, and how far the gradients are
# from the clean model's. Pick an entry to read its record; the last line says which lesson
# tells its story.

# %%
import ipywidgets as widgets

LESSON = {
    "expert-index": "01_expert_router_index",
    "fabric-accumulate": "02_inplace_accumulation",
    "layer-router-accumulate": "02_inplace_accumulation",
    "graph-memory-update": "03_stateful_buffers",
    "controller-importance": "03_stateful_buffers (and 07_train_and_watch)",
    "tiny-memory-write": "03_stateful_buffers",
    "dwa-weights": "03_stateful_buffers",
    "retain-graph": "04_retain_graph_and_encode",
    "encode-multi-loss": "04_retain_graph_and_encode",
    "memory-zero-cpu": "05_memory_meter",
    "persistent-inplace": "06_finding_the_mutation",
    "amp-clip-before-unscale": "08_amp_and_clipping",
    "ddp-unused-experts": "09_ddp_pitfalls",
    "ddp-broadcast-buffers": "09_ddp_pitfalls",
}
assert set(LESSON) == {e.id for e in bugs.entries()}, "every catalog entry has a lesson"

picker = widgets.Dropdown(options=[e.id for e in bugs.entries()], description="entry")
card = widgets.HTML()


def show_entry(change=None):
    entry = bugs.get(picker.value)
    card.value = (
        f"<b>{entry.title}</b> (summary section {entry.section}, {entry.component})<br>"
        f"<code>{entry.pattern.splitlines()[0]}</code><br>"
        f"the summary's fix: <code>{entry.summary_fix}</code><br>"
        f"the right fix: {entry.right_fix}<br><i>lesson: {LESSON[entry.id]}</i>"
    )


picker.observe(show_entry, names="value")
show_entry()
widgets.VBox([picker, card])

# %% [markdown]
# Running a variant is one call. This is the summary's `TinyMemory` bug: the measured
# outcome carries PyTorch's error word for word, with the step it happened at.

# %%
out = bugs.run("tiny-memory-write", "buggy")
print(out.error_type, "at step", out.error_step)
print(out.error_message.splitlines()[0])
assert out.error_type == "RuntimeError" and "modified by an inplace operation" in out.error_message

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
# | `mahiax/debug.py` | the mutation locator (lesson 06) |
# | `mahiax/telemetry/` | `MemoryMeter` (lesson 05) and the probes that feed the run store |
# | `mahiax/store/` | the run store: SQLite, read with pandas (lesson 07) |
# | `notebooks/` | these lessons; their sources are `notebooks/src/*.py` |
# | `dashboard/` | the live Streamlit dashboard |
#
# ## 5. The dashboard
#
# In a terminal at the repository root: `make dashboard` (or `.venv/bin/streamlit run
# dashboard`), then open <http://localhost:8501>. With no run recorded yet it starts a
# 300-step demo run and shows it live: losses, expert load balance, memory-node evolution, DWA
# weights and memory. Lesson 07 records a run from a notebook and opens the same run there.

# %% [markdown]
# ## Exercise: meet the checker
#
# Every lesson ends with an exercise graded by `bugs.check(entry_id, candidate)`. It runs your
# candidate (a class or a function, the lesson says which) through the same measurement as
# the catalog's variants and answers `PASS` or `NOT YET` with the reason. Try it on the
# fabric: first the catalog's buggy fabric, then the package's clean `DynamicNeuroFabric`.

# %%
from mahiax.bugs.accumulate import BuggyFabric
from mahiax.fabric import DynamicNeuroFabric

print(bugs.check("fabric-accumulate", BuggyFabric))
result = bugs.check("fabric-accumulate", DynamicNeuroFabric)
print(result)
assert result.holds

# %% [markdown]
# ## Recap
#
# - MAHIA-X = text encoder with a mixture of experts + tabular encoder + a routed fabric of
#   blocks + two memories + one head per task, all from one `encode()`.
# - `mahiax.bugs` turns each claim of the summary into three runnable variants; verdicts are
#   measured every time you ask.
# - `bugs.check` grades your own fix the same way.
# - Next: `01_expert_router_index`, or any lesson: each one explains what it needs.
