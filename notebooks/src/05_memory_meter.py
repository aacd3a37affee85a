# Source of notebooks/05_memory_meter.ipynb (built by notebooks/build.py).

# %% [markdown]
# # 05 · "Memory profiling shows 0 MB": measuring real memory on CPU and GPU
#
# **Goal.** See why the summary's profiler printed 0 MB, measure what the tensors really
# hold on a CPU (including the tensors autograd saved), and read the same meter on a GPU.
#
# **Context (read cold).** The demo printed its memory use with
# `torch.cuda.memory_allocated() / 2**20`. The summary, remaining issue 1:
#
# > **Memory Profiling Shows 0 MB**: This is expected behavior when running on CPU-only
# > systems. On GPU systems, actual memory usage would be reported.
# > *Recommendation*: Run the demo on a GPU-enabled system to see actual memory usage values.
#
# There is no exception in this lesson: the bug is a number that looks like a measurement
# and is not one.

# %%
import ipywidgets as widgets
import plotly.graph_objects as go
import torch

from mahiax import bugs, lessons
from mahiax.telemetry import MemoryMeter, legacy_cuda_reading

MB = 2**20
meter = MemoryMeter()
print("GPU found:", torch.cuda.is_available(), "| meter reads:", meter.device)

# %% [markdown]
# ## 1. The 0 MB
#
# `torch.cuda.memory_allocated()` counts the bytes of the CUDA caching allocator. On a
# machine without a GPU nothing was ever allocated there, so it truthfully reports 0, however
# much the model holds. Allocate 64 MB of tensors and ask again:

# %%
big = torch.zeros(64 * MB // 4)  # 64 MB of float32, on the CPU
print(f"the summary's profiler: {legacy_cuda_reading():.1f} MB")
print(f"the tensor alone:       {big.nbytes / MB:.1f} MB")
if not torch.cuda.is_available():
    assert legacy_cuda_reading() == 0.0

# %% [markdown]
# ## 2. A meter that measures CPU memory too
#
# `mahiax.telemetry.MemoryMeter` reads the CUDA allocator on a GPU. On a CPU it counts the
# bytes of every storage held by a live tensor (each storage once, views included), plus the
# process RSS. A figure that does not apply is `None`, never 0.

# %%
before = meter.read()
print(before.format())
del big
after = meter.read()
print(after.format())
freed = (before.tensor_bytes - after.tensor_bytes) / MB
print(f"freed by `del big`: {freed:.1f} MB")
assert 63 < freed < 65

# %% [markdown]
# ## 3. The memory you cannot see: tensors saved by autograd
#
# A forward saves tensors for the backward, often tensors no Python variable names any
# more. Here `exp` saves its 4 MB output inside `y`'s graph; the meter walks the graph and
# counts it. Deleting `y` frees the graph and its saved tensors.

# %%
w = torch.randn(MB, requires_grad=True)  # 4 MB
base = meter.read().tensor_bytes
y = (w * 2).exp().sum()  # exp's 4 MB output lives on, inside y's graph
with_graph = meter.read().tensor_bytes
del y
without_graph = meter.read().tensor_bytes
print(f"y's graph holds {(with_graph - base) / MB:.1f} MB; after `del y`: "
      f"{(without_graph - base) / MB:.1f} MB")
assert with_graph - base >= 4 * MB and without_graph - base < MB

# %% [markdown]
# Try it: pick how many MB of tensors to keep alive and compare the two readings.

# %%
size = widgets.IntSlider(value=16, min=0, max=128, step=16, description="keep MB",
                         continuous_update=False)
shown = widgets.HTML()
kept: list[torch.Tensor] = []


def compare(change=None) -> None:
    kept.clear()
    if size.value:
        kept.append(torch.zeros(size.value * MB // 4))
    r = meter.read()
    shown.value = (
        f"the summary's profiler: <b>{legacy_cuda_reading():.1f} MB</b> &nbsp;|&nbsp; "
        f"MemoryMeter: <b>{r.format()}</b>"
    )


size.observe(compare, names="value")
compare()
widgets.VBox([size, shown])

# %% [markdown]
# ## 4. The summary's advice, measured
#
# The catalog trains the tiny model and, after every step, reads memory two ways: with the
# summary's profiler (`buggy`), with the same profiler after following the advice on the
# same machine (`summary`: the advice changes no code), and with the meter (`fixed`). The
# damage is the relative error against the live tensor bytes.
#
# **Expected verdict** on the summary's fix for `memory-zero-cpu`: **no-effect** (on a CPU
# machine; on a GPU the CUDA reading is a real figure, but the problem was reported on a CPU).

# %%
v_mem = bugs.verdict("memory-zero-cpu")
lessons.verdict_report(v_mem)

# %%
fig = go.Figure()
for name, out in v_mem.outcomes.items():
    color = lessons.VARIANT_COLORS[name]
    fig.add_trace(go.Scatter(y=out.figures["reported_mb"], mode="lines+markers",
                             name=f"{name}: reported", line={"color": color}))
fixed = v_mem.outcomes["fixed"]
fig.add_trace(go.Scatter(y=fixed.figures["tensor_mb"], mode="lines", name="live tensor MB",
                         line={"dash": "dot", "color": "black"}))
fig.update_layout(title=f"memory read during training ({fixed.figures['device']})",
                  xaxis_title="step", yaxis_title="MB", height=340)
fig

# %%
lessons.outcome_table(v_mem.outcomes)[["error", "damage"]]

# %% [markdown]
# ## 5. On a GPU
#
# On a GPU the same `MemoryMeter()` picks `cuda:0` and reads the allocator: allocated,
# reserved (the caching allocator's pool) and the peak. The cell below runs that reading when
# a GPU is present, and says so when not.

# %%
if torch.cuda.is_available():
    gpu = MemoryMeter("cuda")
    x = torch.zeros(64 * MB // 4, device="cuda")
    print(gpu.read().format())
    print(f"the summary's profiler: {legacy_cuda_reading():.1f} MB (a real figure on a GPU)")
    del x
else:
    print("No GPU here: MemoryMeter() reads the CPU:", meter.read().format())

# %% [markdown]
# ## Exercise
#
# Write a reader `() -> megabytes` that reports the memory held by live tensors during
# training, on this machine. `bugs.check("memory-zero-cpu", reader)` calls it after every
# step and compares it with the live tensor bytes (within 5%). The attempt below is the
# summary's profiler.

# %%
def my_reader() -> float:
    return torch.cuda.memory_allocated() / MB  # TODO


print(bugs.check("memory-zero-cpu", my_reader))

# %% tags=["solution"]
def my_reader() -> float:
    """Allocator bytes on a GPU, live tensor bytes on a CPU."""
    r = MemoryMeter().read()
    return (r.allocated if r.allocated is not None else r.tensor_bytes) / MB


result = bugs.check("memory-zero-cpu", my_reader)
print(result)
assert result.holds

# %% [markdown]
# ## Recap
#
# - `torch.cuda.memory_allocated()` measures the CUDA allocator only: 0 on a CPU machine,
#   whatever the model holds.
# - "Run it on a GPU" has **no effect** where the problem is (measured).
# - `MemoryMeter` counts live tensor storages and the tensors autograd saved on a CPU, and
#   reads the allocator on a GPU; the dashboard and the run store use it (lesson 07).
