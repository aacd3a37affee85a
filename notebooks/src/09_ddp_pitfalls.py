# Source of notebooks/09_ddp_pitfalls.ipynb (built by notebooks/build.py).

# %% [markdown]
# # 09 · DistributedDataParallel: idle experts, and buffers DDP broadcasts
#
# **Goal.** Meet two problems a mixture of experts runs into under
# `DistributedDataParallel` (DDP): experts that get no tokens on a rank, and buffers that
# DDP copies from rank 0 into every rank at each forward. See where each goes wrong, the
# evidence, and the fixes, measured. About 15 minutes.
#
# **Context (read cold).** Terms used below:
#
# - **DDP** trains one copy of the model per process; each process is a **rank** (0, 1, ...)
#   and works on its own shard of the batch. The ranks form a **process group**; here, on
#   CPU, they talk through the **gloo** backend (NCCL is the usual one on GPUs).
# - An **all-reduce** adds (or averages) a tensor across all ranks and gives every rank the
#   result.
# - DDP's **reducer** is its gradient machinery: at construction it groups the parameters'
#   gradients into **buckets** and hooks every parameter; during `backward()` each hook marks
#   its gradient ready, and a bucket whose gradients are all ready is all-reduced (averaged).
#   The reducer expects every parameter to report in every backward.
# - A **mixture of experts** (MoE) layer sends each token to the `k` **experts** (small
#   feed-forward layers) its router scores highest (**top-k**); here each expert is a
#   **SwiGLU** layer, `down(silu(x W_gate) * (x W_up))`. An expert no token chose in a step
#   is **idle**.
# - A **buffer** is a tensor a module registers with `register_buffer`: part of its
#   `state_dict`, but not a parameter (no gradient; the optimiser never touches it).
#
# The summary has no DDP section: here the "summary's fix" is **the usual first fix** people
# reach for (`find_unused_parameters=True`, `broadcast_buffers=False`). Everything below
# really runs DDP with gloo on this CPU: one rank in this process, or two forked processes.
#
# PyTorch docs this lesson builds on: the
# [DDP design notes](https://docs.pytorch.org/docs/stable/notes/ddp.html#internal-design)
# (the reducer, buckets, `find_unused_parameters`) and
# [`DistributedDataParallel`](https://docs.pytorch.org/docs/stable/generated/torch.nn.parallel.DistributedDataParallel.html)
# (its `find_unused_parameters`, `broadcast_buffers` and `forward_sync_buffers` arguments).

# %%
import inspect

import plotly.graph_objects as go
import torch
from torch.nn.parallel import DistributedDataParallel

from mahiax import bugs, lessons
from mahiax.bugs import ddp
from mahiax.model.moe import SwiGLUExperts
from mahiax.training import distributed

print("torch", torch.__version__)  # what DDP does with buffers depends on it (section 3)

# %% [markdown]
# ## 1. Experts with no tokens: DDP's own error
#
# > **Reconstruction.** The summary indexes `self.experts[idx]` and its fix loops over
# > `torch.unique()` of the chosen expert ids, so an expert no token chose is never called.
# > The lab reads that as a `ModuleList` of experts with idle experts skipped, and runs that
# > layout under DDP (the summary never mentions DDP). The catalog's small MoE (3 tokens,
# > top-2, 8 experts: at most 6 experts chosen, so at least 2 idle at every step):

# %%
lessons.source(ddp.ExpertList.forward, "the lab's reading of the original expert loop")

# %% [markdown]
# **Predict.** Step 0 leaves some experts idle, so their parameters get no gradient. Where
# does DDP complain: in step 0's `backward()`, at step 1's forward, or never?

# %%
torch.manual_seed(0)
with ddp.one_process_group():  # a gloo group of one rank, in this kernel
    model = ddp.TinyMoE(ddp.ExpertList).double()
    net = DistributedDataParallel(model)
    x, y = ddp.global_tokens(0, 1)  # (3, 8) tokens and targets
    with lessons.attempt() as caught:
        for step in range(2):
            torch.nn.functional.mse_loss(net(x), y).backward()
            print(f"step {step} ran; idle experts: {ddp.idle_experts(model.last_ids)}\n")

# %% [markdown]
# Step 0's backward returns normally: the reducer is still waiting for the idle experts'
# gradients. The **next forward** finds the previous reduction unfinished, and raises.
# Read the message: PyTorch itself suggests `find_unused_parameters=True`, which is why it
# is everybody's first fix. It lists parameter *indices* (into `model.parameters()`);
# mapped back to names (next cell), they are exactly the idle experts' weights.

# %%
caught.expect(RuntimeError, "Expected to have finished reduction in the prior iteration")
unused = ddp.unused_named_in(caught.message)
print("the parameters behind DDP's indices:", unused)
idle = ddp.idle_experts(model.last_ids)  # step 0's: step 1 raised before its forward ran
assert set(unused) == {f"experts.experts.{e}.{w}" for e in idle
                       for w in ("w_gate", "w_up", "w_down")}

# %% [markdown]
# **Evidence with two ranks** (two forked processes, each on its own tokens): each rank has
# its own idle experts, and both raise at step 1, with the first sentence of section 1's
# message: the reduction of the prior iteration, step 0's, never finished.

# %%
for r in ddp.per_rank_idle_experts(steps=2):
    row = r["steps"][0]
    print(f"rank {r['rank']}: step 0 idle experts {row['idle']}, {len(row['no_grad'])} "
          f"parameters without a gradient; step {r['error_step']}: {r['error'][0]}: "
          f"{r['error'][1].split('.')[0]}")

# %% [markdown]
# ## 2. The fixes, measured
#
# - the usual fix: `DistributedDataParallel(model, find_unused_parameters=True)`: after every
#   forward DDP walks the autograd graph from the output and marks every parameter it does
#   not reach as ready. The DDP notes warn that "traversing the autograd graph introduces
#   extra overheads", so it should be set "only ... when necessary". (We do not time it
#   here: on a tiny model and a shared 2-core machine the difference is below the noise.)
# - the right fix: stacked expert weights (`mahiax.model.moe.SwiGLUExperts`, the clean package's
#   layout): one `(E, D, H)` weight per projection (`E` experts, model width `D`, hidden
#   width `H`). An idle expert is still skipped, but its
#   slice belongs to a weight that *is* in the graph, so every parameter gets a gradient, an
#   idle expert's slice being zero. Without DDP, one step of each layout:

# %%
for layout in (ddp.ExpertList, SwiGLUExperts):
    torch.manual_seed(0)
    moe = ddp.TinyMoE(layout).double()
    torch.nn.functional.mse_loss(moe(x), y).backward()
    missing = [n for n, p in moe.named_parameters() if p.grad is None]
    print(f"{layout.__name__}: idle experts {ddp.idle_experts(moe.last_ids)}; "
          f"parameters without a gradient: {len(missing)}")
w_gate = moe.experts.w_gate.grad  # (E, D, H), stacked layout
print("stacked w_gate gradient norm per expert:",
      [round(float(w_gate[e].norm()), 3) for e in range(w_gate.shape[0])])
assert not missing  # the stacked layout: every parameter got a gradient
assert all(float(w_gate[e].norm()) == 0.0 for e in ddp.idle_experts(moe.last_ids))

# %% [markdown]
# **Predict.** Both fixes run 6 steps with idle experts at every step. Do their gradients
# match those of the same model trained without DDP?

# %%
v_unused = bugs.verdict("ddp-unused-experts")
lessons.verdict_report(v_unused)

# %%
table = lessons.outcome_table(v_unused.outcomes)[["error", "steps run", "max grad diff"]]
table["steps with idle experts"] = [
    f"{sum(1 for ids in o.figures['idle_experts'] if ids)} / {o.steps_run}"
    for o in v_unused.outcomes.values()
]
table

# %% [markdown]
# **Expected verdict** on the summary's fix for `ddp-unused-experts`: **holds**.
#
# `find_unused_parameters=True` is correct: same gradients as one process, at every step,
# with idle experts at every step. It pays a graph walk every step; stacked experts need
# none.

# %%
for name in ("summary", "fixed"):
    o = v_unused.outcomes[name]
    print(f"{name}: error {o.error_type}; {o.steps_run} steps; max grad diff {o.max_grad_diff}")
    assert o.error_type is None and o.steps_run == 6 and o.max_grad_diff < 1e-12
    assert all(o.figures["idle_experts"])  # idle experts at every step

# %% [markdown]
# ## 3. Buffers DDP broadcasts
#
# A memory whose nodes are a **buffer** (a miniature `GraphDiffusionMemory`): read by
# attention in the forward, moved after each step toward the mean of the tokens each node
# attracted. With DDP's default `broadcast_buffers=True`, at the start of **every forward**
# DDP copies rank 0's buffers into every other rank's, in place. In-place writes normally
# bump the tensor's **version counter** (`tensor._version`; backward compares it with the
# value it saved, lesson 02), so two forwards before one backward used to raise "modified by
# an inplace operation": reported in 2019
# ([pytorch/pytorch#22095](https://github.com/pytorch/pytorch/issues/22095)) and again for
# torch 2.6 and later ([#175024](https://github.com/pytorch/pytorch/issues/175024)). **This
# behaviour depends on the torch version.**
#
# **Predict.** On the torch printed at the top, the buggy variant runs two micro-batch
# forwards, then one backward, on two ranks. Error or not?

# %%
v_buf = bugs.verdict("ddp-broadcast-buffers")
buggy = v_buf.outcomes["buggy"]
print(f"torch {torch.__version__}: error: {buggy.error_type}; steps run {buggy.steps_run}; "
      f"forwards per step {buggy.figures['forwards_per_step']}")
print("version-counter bumps by DDP's forwards, per rank:",
      buggy.figures["version_bumps_by_forward"])

# %% [markdown]
# On torch 2.13 (what this lab pins) we measured **no error and no bump**: DDP's buffer sync
# runs inside `torch.autograd._unsafe_preserve_version_counter`, which puts the version back
# after the copy (the change proposed in
# [#175851](https://github.com/pytorch/pytorch/pull/175851)). The installed DDP's own code:

# %%
lessons.source(DistributedDataParallel._sync_buffers, "DDP's buffer sync, in this torch")

# %%
wrapped = "_unsafe_preserve_version_counter" in inspect.getsource(
    DistributedDataParallel._sync_buffers)
print("this torch's buffer sync preserves the version counter:", wrapped)
if wrapped:  # then two forwards before one backward raise nothing, and nothing is bumped
    assert buggy.error_type is None and set(buggy.figures["version_bumps_by_forward"]) == {0}

# %% [markdown]
# On a torch whose `_sync_buffers` lacks that wrapper, the issues above report the in-place
# error instead (we measured only the torch printed here).
#
# **Predict.** The chart below plots, for each rank and each step, the largest change
# DDP's forward made to that rank's nodes. Which bars are zero: rank 0's, rank 1's, at
# which steps?

# %%
fig = go.Figure()
for rank, changed in enumerate(buggy.figures["overwritten_by_forward"]):
    fig.add_trace(go.Bar(x=list(range(len(changed))), y=changed, name=f"rank {rank}"))
fig.update_layout(title="max |nodes after DDP's forward - nodes before| (broadcast_buffers=True)",
                  xaxis_title="step", yaxis_title="largest change", barmode="group", height=320)
fig

# %% [markdown]
# The wrapper hides the copy from the version counter; it does not stop it. Rank 0's bars
# are zero: its nodes are the source, never touched. Rank 1's are zero at step 0 (the
# ranks start equal) and large from step 1 on: its own update is thrown away and replaced
# by rank 0's. The memory learns from rank 0's shard only, so its nodes are off from the
# update one process would make on the whole batch (the `damage` column below).

# %%
rank0, rank1 = buggy.figures["overwritten_by_forward"]
print("rank 0:", [round(v, 2) for v in rank0], "| rank 1:", [round(v, 2) for v in rank1])
assert max(rank0) == 0 and rank1[0] == 0 and min(rank1[1:]) > 0

# %% [markdown]
# The usual fix is `broadcast_buffers=False`: no more copying. In torch 2.13 that argument is
# deprecated in favour of `forward_sync_buffers`, and DDP says so (the warning the catalog
# caught when it built the `summary` variant):

# %%
for message in v_buf.outcomes["summary"].figures["ddp_warnings"]:
    print(message)
assert any("`broadcast_buffers` is deprecated" in m
           for m in v_buf.outcomes["summary"].figures["ddp_warnings"])

# %% [markdown]
# Read the warning to the end: the two switches are not the same. Its replacement,
# `forward_sync_buffers=False`, still syncs the buffers once, when DDP is constructed; only
# the runtime copies are off (at every forward, and after uneven-input joins). `broadcast_buffers=False` skips both: the two differ
# where the ranks' buffers differ at construction (the warning's example: rank-local
# buffers).
#
# The right fix keeps the per-forward copy off (`forward_sync_buffers=False`) **and**
# all-reduces the update's statistics, so every rank applies the same update. The fix below
# reduces both statistics with one call of the package's `sum_over_ranks`:

# %%
lessons.source(ddp.all_reduce_statistics, "the right fix")

# %% [markdown]
# The clean model trains the same way. Its memories, layer importance and expert counts
# never communicate: each training forward *stages* sums over this rank's samples (a sum
# adds up over ranks, a mean does not), and the trainer, after the optimiser step, sums all
# of them over the ranks, together with the task losses, in **one** flat all-reduce, then
# calls `commit()`, which builds every buffer's update from the global sums. One collective
# call a step besides DDP's gradients (`tests/training/test_distributed.py` counts them on two ranks),
# and a model that runs alone under any process group (none of its forwards waits for
# another rank):

# %%
lessons.source(distributed.sum_over_ranks, "one all-reduce for every statistic")

# %% [markdown]
# **Predict.** With the copying off and nothing else, do the two ranks' nodes stay equal? Do
# the averaged gradients still match one process on the whole batch?

# %%
lessons.verdict_report(v_buf)

# %%
buf_table = lessons.outcome_table(v_buf.outcomes)[["error", "max grad diff", "damage"]]
buf_table["rank spread"] = [o.figures["rank_spread"] for o in v_buf.outcomes.values()]
buf_table

# %% [markdown]
# **Expected verdict** on the summary's fix for `ddp-broadcast-buffers`: **hides-the-error**.
#
# `rank spread` is the largest difference between rank 1's nodes and rank 0's right after a
# step's update. In `buggy` the ranks differ there too, but the next forward copies rank 0's
# nodes over rank 1's, so both ranks compute their gradients against the same nodes (the
# gradients match; the nodes are wrong). The yardstick, one process on the whole batch,
# starts every step from the nodes that step's forward read on rank 0, so `max grad diff`
# judges the gradients given those nodes; whether the nodes themselves are right is the
# `damage` column. With the copying off, the difference reaches the
# forward: each rank computes its gradients against its own nodes, and the averaged gradients
# no longer match one process. Only the all-reduced statistics keep both right.

# %%
b, su, f = (v_buf.outcomes[v] for v in ("buggy", "summary", "fixed"))
assert b.figures["rank_spread"] > 0 and b.max_grad_diff < 1e-12  # same nodes in the forward
assert su.figures["rank_spread"] > 0 and su.max_grad_diff > 1e-3  # each rank its own nodes
assert f.figures["rank_spread"] == 0 and f.state_diff < 1e-12 and f.max_grad_diff < 1e-12

# %% [markdown]
# ## Exercise
#
# Write `sync(sums, counts)`: it gets this rank's per-node token sums `(S, D)` and counts
# `(S,)` and returns the statistics every rank should use. `lessons.check` runs it on two ranks
# with the broadcast off and compares with one process on the whole batch. (Hint:
# `torch.distributed.all_reduce` sums in place, on every rank.)

# %%
def sync(sums: torch.Tensor, counts: torch.Tensor):
    return sums, counts  # TODO: every rank keeps its own


print(lessons.check("ddp-broadcast-buffers", sync))

# %% tags=["solution"]
def sync(sums: torch.Tensor, counts: torch.Tensor):
    """Add every rank's statistics: the same update everywhere, equal to one process's."""
    sums, counts = sums.clone(), counts.clone()
    torch.distributed.all_reduce(sums)
    torch.distributed.all_reduce(counts)
    return sums, counts


result = bugs.check("ddp-broadcast-buffers", sync)
print(result)
assert result.holds

# %% [markdown]
# Averaging instead of summing both (each divided by the number of ranks) is just as right:
# the update reads the statistics only as `sums / counts`, the mean of a node's tokens, and
# `counts > 0`, and dividing both by the same number changes neither. The checker passes it
# too:

# %% tags=["solution"]
def sync_averaged(sums: torch.Tensor, counts: torch.Tensor):
    """The ranks' mean statistics: the same sums / counts as the summed ones."""
    sums, counts = sums.clone(), counts.clone()  # (S, D), (S,)
    torch.distributed.all_reduce(sums)
    torch.distributed.all_reduce(counts)
    world = torch.distributed.get_world_size()
    return sums / world, counts / world


result = bugs.check("ddp-broadcast-buffers", sync_averaged)
print(result)
assert result.holds

# %% [markdown]
# Your attempts so far, oldest first (also on the dashboard's **My attempts** page):

# %%
lessons.my_attempts()

# %% [markdown]
# ## Check your understanding
#
# 1. Why does the error about idle experts appear at step 1's forward and not in step 0's
#    backward?
#
#    <details><summary>Answer</summary>
#
#    The reducer all-reduces a bucket only when every gradient in it is ready. The idle
#    experts' hooks never fire, so step 0's backward ends with the reduction unfinished and
#    nothing raised; the next forward checks that the previous reduction finished, and
#    raises there.
#
#    </details>
#
# 2. Stacked expert weights still skip an idle expert in the forward. Why does DDP not
#    complain?
#
#    <details><summary>Answer</summary>
#
#    DDP waits for *parameters*, not experts. With stacked weights an expert is a slice of
#    one `(E, D, H)` parameter that the busy experts use, so that parameter gets a gradient
#    every step; the idle expert's slice of it is zero (section 2).
#
#    </details>
#
# 3. With `broadcast_buffers=True` on torch 2.13, two forwards before one backward raise
#    nothing. Does that mean the buffers are right?
#
#    <details><summary>Answer</summary>
#
#    No. DDP still copies rank 0's buffer over rank 1's before every forward; torch 2.13 only
#    hides that copy from the version counter. Rank 1's own updates are thrown away and the
#    memory learns from rank 0's shard alone (the `damage` column). On torch versions
#    without that wrapper, the issues report the in-place error instead.
#
#    </details>
#
# 4. Why is `broadcast_buffers=False` alone not enough?
#
#    <details><summary>Answer</summary>
#
#    Each rank then updates its buffer from its own tokens, so the ranks' buffers drift
#    apart (`rank spread`), each rank's forward reads different nodes, and the averaged
#    gradients differ from one process on the whole batch. All-reducing the statistics
#    before the update keeps every rank's buffer identical and equal to one process's.
#
#    </details>

# %% [markdown]
# ## Recap
#
# - An expert skipped for having no tokens leaves parameters DDP's reducer waits for: the
#   **next** forward raises "Expected to have finished reduction in the prior iteration",
#   listing the idle experts' parameters. `find_unused_parameters=True` **holds** (measured),
#   at a graph walk per step; stacked expert weights need none.
# - DDP's default buffer sync writes rank 0's buffers over every rank's at each forward.
#   Whether that raises depends on the torch version: on 2.13 it keeps the version counter,
#   so nothing raises and rank 1's updates silently vanish.
# - `broadcast_buffers=False` (deprecated in 2.13 for `forward_sync_buffers`) alone **hides
#   the error**: ranks drift and gradients disagree. Its replacement,
#   `forward_sync_buffers=False`, still syncs the buffers once at construction (DDP's
#   warning says so); only the per-forward copy is off. All-reduce the statistics, then
#   update the same way everywhere.
# - The clean model trains on several processes with
#   `torchrun --nproc-per-node 2 -m mahiax train ...` (gloo on CPU, NCCL on GPU); see the
#   [DDP notes](https://docs.pytorch.org/docs/stable/notes/ddp.html).
