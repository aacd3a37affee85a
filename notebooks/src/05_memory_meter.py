# Source of notebooks/05_memory_meter.ipynb (built by notebooks/build.py).

# %% [markdown]
# # 05 · "Memory profiling shows 0 MB": measuring real memory on CPU and GPU
#
# **Goal.** See why the summary's profiler printed 0 MB, measure what the tensors really
# hold on a CPU (including the tensors autograd saved for backward), and read the same kind
# of meter on a GPU. About 12 minutes live.
#
# **Context (read cold).** The summary, remaining issue 1 and recommendation 1:
#
# > **Memory Profiling Shows 0 MB**: This is expected behavior when running on CPU-only
# > systems. On GPU systems, actual memory usage would be reported.
#
# > **For Memory Profiling**: Run the demo on a GPU-enabled system to see actual memory
# > usage values.
#
# > **Reconstruction.** The summary does not show the demo's profiler. A reading that is
# > 0 MB on a CPU and "actual memory usage" on a GPU is what `torch.cuda.memory_allocated()`
# > does, so the lab assumes the demo printed `torch.cuda.memory_allocated() / 2**20`
# > (`mahiax.telemetry.legacy_cuda_reading`).
#
# There is no exception in this lesson: the bug is a number that looks like a measurement
# and is not one.
#
# PyTorch docs this lesson builds on:
# [CUDA semantics: memory management](https://docs.pytorch.org/docs/stable/notes/cuda.html#cuda-memory-management),
# [`torch.cuda.memory_allocated`](https://docs.pytorch.org/docs/stable/generated/torch.cuda.memory_allocated.html),
# [autograd mechanics: saved tensors](https://docs.pytorch.org/docs/stable/notes/autograd.html#saved-tensors).

# %%
import ipywidgets as widgets
import plotly.graph_objects as go
import torch

from mahiax import bugs, lessons
from mahiax.telemetry import MemoryMeter, legacy_cuda_reading
from mahiax.units import MIB  # 2**20 bytes

meter = MemoryMeter("cpu")  # this lesson's tensors live on the CPU: measure the CPU
print("GPU found:", torch.cuda.is_available(), "| meter reads:", meter.device)

# %% [markdown]
# ## 1. The 0 MB
#
# On a GPU, PyTorch does not ask the driver for memory for every tensor: its **caching
# allocator** takes large blocks from the driver, cuts them into tensors, and keeps freed
# blocks in a pool for reuse. `torch.cuda.memory_allocated()` is the bytes of that
# allocator's blocks now occupied by CUDA tensors on the current GPU. It knows nothing about
# CPU tensors.
#
# **Units.** The summary divides by `2**20`, so its "MB" is a mebibyte (MiB, 1,048,576
# bytes). The lab labels every figure it prints MiB and writes "MB" only where it quotes the
# summary.
#
# **Predict.** The next cell keeps 64 MiB of float32 in a CPU tensor. What does the
# summary's profiler, `torch.cuda.memory_allocated() / 2**20`, print?

# %%
big = torch.zeros(64 * MIB // 4)  # 64 MiB of float32, on the CPU
print(f"the summary's profiler: {legacy_cuda_reading():.1f} MB")
print(f"the tensor alone:       {big.nbytes / MIB:.1f} MiB")

# %% [markdown]
# 0 MB on a machine without a GPU, truthfully: no CUDA tensor exists. The zero says nothing
# about the model. (On a GPU machine it is whatever CUDA tensors this process holds: still
# nothing of `big`, which is on the CPU.)

# %%
if not torch.cuda.is_available():
    assert legacy_cuda_reading() == 0.0

# %% [markdown]
# ## 2. A meter that measures CPU memory too
#
# `mahiax.telemetry.MemoryMeter(device)` measures the device it is given. For `"cpu"` it
# counts the bytes of every **storage** (the memory block behind a tensor; views share
# their base's storage, and each storage is counted once) held by a live tensor, and it
# reports the process **RSS** (resident set size: the pages of this process in physical
# RAM, which include the Python interpreter and the libraries, torch among them, not only
# tensors). A figure that does not apply is `None`, never 0.

# %%
before = meter.read()
print(before.format())
del big
after = meter.read()
print(after.format())
freed = (before.tensor_bytes - after.tensor_bytes) / MIB
print(f"freed by `del big`: {freed:.1f} MiB")
print("a CPU reading's allocator figures:", after.allocated, after.reserved)
assert 63 < freed < 65
assert after.rss > after.tensor_bytes  # RSS holds far more than the tensors
assert after.allocated is None and after.reserved is None  # no allocator figure on a CPU

# %% [markdown]
# ## 3. The memory you cannot see: tensors saved by autograd
#
# A forward **saves** some tensors for the backward (autograd's *saved tensors*), often
# tensors no Python variable names any more.
#
# **Predict.** `w` holds 4 MiB. After `y = (w * 2).exp().sum()`, how many MiB beyond `w` does
# `y`'s graph hold? And after `del y`?

# %%
w = torch.randn(MIB, requires_grad=True)  # (1048576,) float32
print(f"w: {w.nbytes / MIB:.1f} MiB")
base = meter.read().tensor_bytes
y = (w * 2).exp().sum()
with_graph = meter.read().tensor_bytes
exp_node = y.grad_fn.next_functions[0][0]
mul_node = exp_node.next_functions[0][0]
print(type(exp_node).__name__, "saved:", tuple(exp_node._saved_result.shape))
print(type(mul_node).__name__, "saved: other =", mul_node._saved_other,
      "| self =", mul_node._saved_self)
del y, exp_node, mul_node
without_graph = meter.read().tensor_bytes
print(f"y's graph holds {(with_graph - base) / MIB:.1f} MiB; after `del y`: "
      f"{(without_graph - base) / MIB:.1f} MiB")

# %% [markdown]
# One `w`'s worth (the figure printed above), then nothing. `exp` saved its result (the
# derivative of `exp` is `exp`). The multiplication saves each input only where a gradient
# needs it: the gradient for `w` is 2 times the incoming one, so it saved `other` (the 2)
# and not `self`, which is `w` (`None` above). And no node saved `w * 2`, the
# multiplication's output and `exp`'s input, so it was freed once `exp` had run. The meter
# found the saved result by walking `y`'s graph (`grad_fn`, `next_functions`) and reading
# each node's `_saved_*` tensors. Deleting the last reference to the graph freed it.

# %%
assert 4 * MIB <= with_graph - base < 5 * MIB  # exp's output only
assert without_graph - base < MIB

# %% [markdown]
# Try it: pick how many MiB of tensors to keep alive and compare the two readings.

# %%
size = widgets.IntSlider(value=16, min=0, max=128, step=16, description="keep MiB",
                         continuous_update=False)
shown = widgets.HTML()
kept: list[torch.Tensor] = []


def compare(change=None) -> None:
    kept.clear()
    if size.value:
        kept.append(torch.zeros(size.value * MIB // 4))
    r = meter.read()
    shown.value = (
        f"the summary's profiler: <b>{legacy_cuda_reading():.1f} MB</b> &nbsp;|&nbsp; "
        f"MemoryMeter: <b>{r.format()}</b>"
    )


size.observe(compare, names="value")
compare()
widgets.VBox([size, shown])

# %% [markdown]
# ### Memory by category
#
# A total says how much; a training loop also needs to know *what*. `meter.categories(model,
# optimizer, graph=loss, full=True)` splits the CPU's live tensor bytes into parameters,
# gradients, optimizer state, tensors **saved for backward** by `loss`'s graph (the walk
# above), and everything else. Here, the tiny MAHIA-X model after one training step and a
# second forward (so its graph is alive):
#
# **Predict.** Which category is largest right after the forward: parameters, or what the
# graph saved for backward?

# %%
from mahiax.config import tiny  # noqa: E402
from mahiax.model.data import SyntheticMultiTask  # noqa: E402
from mahiax.model.hybrid import HybridEfficientModel  # noqa: E402

torch.manual_seed(0)
cfg = tiny()
model = HybridEfficientModel(cfg)
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
data = SyntheticMultiTask(cfg)
for step in range(2):
    losses, _ = model.losses(data.batch(step))  # (K,) task losses of one encode()
    loss = losses.sum()
    if step == 0:  # one full step: gradients and AdamW's state exist afterwards
        loss.backward()
        opt.step()
cats = meter.categories(model, opt, graph=loss, full=True)
print({k: f"{getattr(cats, k) / MIB:.3f} MiB"
       for k in ("params", "grads", "optimizer", "saved", "other", "total")})
print(f"saved for backward / parameters: {cats.saved / cats.params:.1f}")

# %% [markdown]
# What this forward saved for backward outweighs the parameters (the ratio printed above).
# "Saved for backward" is this
# forward's activations, freed by the next backward; under `retain_graph=True` with carried
# state it grows step after step (lesson 04 charts it). "Other" is every live tensor outside
# the four named categories: here mostly this lesson's earlier tensors (`w`, the slider's).

# %%
parts = cats.params + cats.grads + cats.optimizer + cats.saved + cats.other
print(f"the categories add up to {parts / MIB:.3f} MiB of {cats.total / MIB:.3f} MiB")
no_state = [n for n, p in model.named_parameters() if p not in opt.state]
print("parameters AdamW holds no state for (no gradient in the first step):", no_state)
earlier = w.nbytes + sum(t.nbytes for t in kept)  # section 3's w, the slider's tensor
print(f"other: {cats.other / MIB:.3f} MiB, of which w and the slider's tensor "
      f"{earlier / MIB:.3f} MiB")
assert abs(parts - cats.total) <= 0.05 * cats.total  # the categories add up to the total
assert cats.saved > cats.params
assert cats.params < cats.optimizer <= 2 * cats.params + 4096
assert no_state and all(p.grad is None for n, p in model.named_parameters() if n in no_state)
assert earlier <= cats.other and earlier > cats.other / 2

# %% [markdown]
# The categories add up to the live total. AdamW keeps two moment tensors (and a step
# counter) for each parameter it has updated, so optimizer state is close to twice the
# parameters, a little less here: the parameters printed above got no gradient in the first
# step, so AdamW has no state for them yet. On a GPU the same call reads the allocator:
# "other" is then `memory_allocated` minus the named categories. Training runs log these
# categories (`mem/*`) and the dashboard's Memory page stacks them over steps.

# %% [markdown]
# ## 4. The summary's advice, measured
#
# The catalog trains the tiny model on the CPU (as the demo that printed 0 MB ran) and,
# after every step, reads memory three ways: with the summary's profiler (`buggy`), with
# the same profiler after following the advice (`summary`), and with the meter (`fixed`).
# The damage is the relative error against the live tensor bytes.
#
# **Predict.** Which of the three readings follows the live tensor bytes during training?

# %%
v_mem = bugs.verdict("memory-zero-cpu")
lessons.verdict_report(v_mem)

# %% [markdown]
# **Expected verdict** on the summary's fix for `memory-zero-cpu`: **no-effect**. Advice
# to use other hardware changes no code, and changes nothing on the machine where the
# problem is, which has no GPU: the reading stays 0 while the tensors hold mebibytes. Only
# the meter (`fixed`) follows the live tensor bytes: every live tensor of this process,
# this lesson's earlier ones included.

# %%
fig = go.Figure()
for name, out in v_mem.outcomes.items():
    color = lessons.VARIANT_COLORS[name]
    fig.add_trace(go.Scatter(y=out.figures["reported_mb"], mode="lines+markers",
                             name=f"{name}: reported", line={"color": color}))
fixed = v_mem.outcomes["fixed"]
fig.add_trace(go.Scatter(y=fixed.figures["tensor_mb"], mode="lines", name="live tensor MiB",
                         line={"dash": "dot", "color": "black"}))
fig.update_layout(title=f"memory read during training ({fixed.figures['device']})",
                  xaxis_title="step", yaxis_title="MiB", height=340)
fig

# %%
damage = {name: out.state_diff for name, out in v_mem.outcomes.items()}
if not torch.cuda.is_available():  # on a GPU the summary's profiler reads the allocator
    assert damage["buggy"] == damage["summary"] == 1.0 and damage["fixed"] < 0.05
lessons.outcome_table(v_mem.outcomes)[["error", "damage"]]

# %% [markdown]
# ## 5. On a GPU
#
# `MemoryMeter("cuda")` reads the caching allocator of the current GPU: **allocated**
# (bytes occupied by CUDA tensors, `torch.cuda.memory_allocated`), **reserved** (allocated
# plus the freed blocks the allocator keeps in its pool, `torch.cuda.memory_reserved`) and
# the **peak** of allocated (`torch.cuda.max_memory_allocated`). On a GPU the summary's
# profiler is a real figure, but only for tensors that were moved to the GPU: a model left
# on the CPU still reads 0. The cell below runs the GPU reading when a GPU is present, and
# says so when not.

# %%
if torch.cuda.is_available():
    gpu = MemoryMeter("cuda")
    print(f"the summary's profiler, this lesson's tensors on the CPU: "
          f"{legacy_cuda_reading():.1f} MB")
    x = torch.zeros(64 * MIB // 4, device="cuda")  # 64 MiB on the GPU
    print(gpu.read().format())
    print(f"the summary's profiler, 64 MiB on the GPU: {legacy_cuda_reading():.1f} MB")
    del x
else:
    print("No GPU here; the CPU meter reads:", meter.read().format())

# %% [markdown]
# ## Exercise
#
# Write a reader `() -> MiB` that reports the memory held by live tensors during the
# catalog's training, which runs on this machine's CPU. `lessons.check("memory-zero-cpu",
# reader)` calls it after every step and compares it with the live tensor bytes (within 5%).
# The attempt below is the summary's profiler.

# %%
def my_reader() -> float:
    return torch.cuda.memory_allocated() / 2**20  # TODO


print(lessons.check("memory-zero-cpu", my_reader))

# %% tags=["solution"]
def my_reader() -> float:
    """Live CPU tensor bytes: the catalog's model trains on the CPU, on any machine."""
    return MemoryMeter("cpu").read().tensor_bytes / MIB


result = bugs.check("memory-zero-cpu", my_reader)
print(result)
assert result.holds

# %% [markdown]
# Your attempts so far, oldest first (also on the dashboard's **My attempts** page):

# %%
lessons.my_attempts()

# %% [markdown]
# ## Check your understanding
#
# 1. Why is `torch.cuda.memory_allocated()` 0 on a CPU-only machine, and what does that 0
#    tell you about the model's memory?
#
#    <details><summary>Answer</summary>
#
#    It counts bytes of the CUDA caching allocator occupied by CUDA tensors. On a CPU-only
#    machine no CUDA tensor exists, so it is 0 whatever the model holds. The 0 tells you
#    nothing about the model (section 1).
#
#    </details>
#
# 2. After `del big` the meter printed a process RSS of hundreds of MiB while the tensors
#    held next to nothing. Why is RSS not a measure of tensor memory?
#
#    <details><summary>Answer</summary>
#
#    RSS is every page of the process in physical RAM: the interpreter, imported libraries
#    (torch itself), Python objects and allocator caches, as well as tensors. It is useful
#    for "is the process growing?", not for "what do my tensors hold?".
#
#    </details>
#
# 3. In `y = (w * 2).exp().sum()`, which tensor does `y`'s graph keep alive, and why not
#    `w * 2`?
#
#    <details><summary>Answer</summary>
#
#    `exp` saves its result (its derivative is its result). The multiplication saves an
#    input only where a gradient needs it: the gradient for `w` needs only the 2, so it
#    saved `other` (the 2) and not `self` (that is `w`). No node saves `w * 2`, the
#    multiplication's output and `exp`'s input, so it is freed once `exp` has run. The
#    graph keeps the 4 MiB `exp` result until the last reference to `y` goes (section 3).
#
#    </details>
#
# 4. On a GPU, what is the difference between *allocated* and *reserved*, and which one
#    does `nvidia-smi` come closer to?
#
#    <details><summary>Answer</summary>
#
#    **Reserved.** Allocated: bytes occupied by live CUDA tensors. Reserved: everything the
#    caching allocator holds from the driver, including freed blocks kept for reuse. As the
#    CUDA memory-management notes (linked above) say, `nvidia-smi` still shows the pool's
#    unused blocks as used, so it stays high after tensors are freed.
#
#    </details>
#
# 5. Would "run the demo on a GPU" have shown the model's memory?
#
#    <details><summary>Answer</summary>
#
#    Only if the demo also moved the model and its data to the GPU: the CUDA allocator
#    counts CUDA tensors only. On the CPU machine where the 0 was seen, the advice changes
#    nothing (**no-effect**, measured in section 4).
#
#    </details>

# %% [markdown]
# ## Recap
#
# - `torch.cuda.memory_allocated()` measures the CUDA caching allocator only: 0 on a CPU
#   machine, whatever the model holds.
# - "Run it on a GPU" has **no effect** where the problem is (measured).
# - A meter measures the device it is given: `MemoryMeter("cpu")` counts live tensor
#   storages and the tensors autograd saved for backward, plus the process RSS;
#   `MemoryMeter("cuda")` reads the allocator (allocated, reserved, peak). The dashboard and
#   the run store use it (lesson 07).
