# Source of notebooks/09_ddp_pitfalls.ipynb (built by notebooks/build.py).

# %% [markdown]
# # 09 · DistributedDataParallel: idle experts, and buffers DDP broadcasts
#
# **Goal.** Meet the two errors-or-silences a mixture of experts runs into under
# `DistributedDataParallel` (DDP): experts that get no tokens on a rank (parameters DDP waits
# for), and buffers that DDP copies from rank 0 into every rank at each forward. See where
# each happens, the evidence, and the fixes, measured.
#
# **Context (read cold).** DDP runs one process per rank, each on its own shard of the batch,
# and averages the gradients with an all-reduce during `backward()`. The summary has no DDP
# section: here the "summary's fix" is **the usual first fix** people reach for
# (`find_unused_parameters=True`, `broadcast_buffers=False`). Everything below really runs DDP
# with the gloo backend on this CPU: one rank in this process, or two forked processes.

# %%
import plotly.graph_objects as go
import torch
from torch.nn.parallel import DistributedDataParallel

from mahiax import bugs, lessons
from mahiax.bugs import ddp

# %% [markdown]
# ## 1. Experts with no tokens: DDP's own error
#
# The original MAHIA-X kept its experts in a `ModuleList` and skipped an expert no token
# chose. The catalog's small MoE (3 tokens, top-2, 8 experts: at least 2 experts idle at
# every step) does the same:

# %%
lessons.source(ddp.ExpertList.forward, "the original loop over experts")

# %% [markdown]
# Under DDP the first step runs; the error comes at the **next** forward, because the
# previous backward never delivered the idle experts' gradients:

# %%
with ddp.one_process_group():  # a gloo group of one rank, in this kernel
    model = ddp.TinyMoE(ddp.ExpertList).double()
    net = DistributedDataParallel(model)
    x, y = ddp.global_tokens(0, 1)  # (3, 8) tokens and targets
    with lessons.expect_error(RuntimeError, "Expected to have finished reduction"):
        for step in range(2):
            torch.nn.functional.mse_loss(net(x), y).backward()
            print(f"step {step} ran; idle experts: {ddp.idle_experts(model.last_ids)}\n")

# %% [markdown]
# **Evidence.** DDP lists parameter *indices*; mapped back to names they are exactly the
# idle experts' weights. With two ranks (two forked processes, each on its own tokens) each
# rank has its own idle experts, and both raise at step 1: step 0's gradients were never
# averaged.

# %%
unused = bugs.run("ddp-unused-experts", "buggy")  # the catalog's run of the same loop
print("parameters DDP names:", ddp.unused_named_in(unused.error_message))
for r in ddp.per_rank_idle_experts(steps=2):
    row = r["steps"][0]
    print(f"rank {r['rank']}: step 0 idle experts {row['idle']}, {len(row['no_grad'])} "
          f"parameters without a gradient; step {r['error_step']}: {r['error'][0]}")

# %% [markdown]
# ## 2. The fixes, measured
#
# - the usual fix: `DistributedDataParallel(model, find_unused_parameters=True)`: after every
#   forward DDP walks the autograd graph to find the parameters that will get no gradient and
#   marks them ready (a cost every step);
# - the right fix: stacked expert weights (`mahiax.moe.SwiGLUExperts`, the clean package's
#   layout): the whole `(E, D, H)` weight is in every step's graph, an idle expert's gradient
#   is a zero slice, and nothing needs finding.
#
# **Expected verdict** on the summary's fix for `ddp-unused-experts`: **holds**.

# %%
v_unused = bugs.verdict("ddp-unused-experts")
lessons.verdict_report(v_unused)

# %%
table = lessons.outcome_table(v_unused.outcomes)[["error", "steps run", "max grad diff"]]
table["ms per step (median)"] = [
    sorted(o.figures["ms_per_step"])[len(o.figures["ms_per_step"]) // 2]
    if o.figures["ms_per_step"] else None
    for o in v_unused.outcomes.values()
]
table

# %% [markdown]
# Both run with idle experts at every step and give the gradients of the same model without
# DDP. `find_unused_parameters=True` is correct; its graph walk is a per-step cost (tiny here,
# noticeable on a large model), and stacked experts make it unnecessary.
#
# ## 3. Buffers DDP broadcasts
#
# A memory whose nodes are a **buffer** (a miniature `GraphDiffusionMemory`): read by
# attention in the forward, moved after each step toward the mean of the tokens each node
# attracted. With DDP's default `broadcast_buffers=True`, at the start of **every forward**
# DDP copies rank 0's buffers into every other rank's, in place. Older PyTorch bumped the
# version counter there, and two forwards before one backward raised "modified by an inplace
# operation ... is at version N" (pytorch/pytorch#22095). What does torch 2.13 do? The buggy
# variant runs two micro-batch forwards, then one backward, on two ranks:

# %%
v_buf = bugs.verdict("ddp-broadcast-buffers")
buggy = v_buf.outcomes["buggy"]
print(f"error: {buggy.error_type}; steps run {buggy.steps_run}; "
      f"forwards per step {buggy.figures['forwards_per_step']}")
print("version-counter bumps by DDP's forwards, per rank:",
      buggy.figures["version_bumps_by_forward"])
assert buggy.passed and buggy.figures["version_bumps_by_forward"] == [0, 0]

# %% [markdown]
# **No error**: torch 2.13 wraps the broadcast in `_unsafe_preserve_version_counter`, so the
# buffer's `_version` does not move. The damage is silent. How much did the forward change
# each rank's nodes (the largest value DDP wrote over the rank's own)?

# %%
fig = go.Figure()
for rank, changed in enumerate(buggy.figures["overwritten_by_forward"]):
    fig.add_trace(go.Bar(x=list(range(len(changed))), y=changed, name=f"rank {rank}"))
fig.update_layout(title="max |nodes after DDP's forward - nodes before| (broadcast_buffers=True)",
                  xaxis_title="step", yaxis_title="largest change", barmode="group", height=320)
fig

# %% [markdown]
# Rank 0's nodes are never touched; from step 1 on, rank 1's own update is thrown away and
# replaced by rank 0's. The memory learns from rank 0's shard only: its nodes are off from
# the update one process would make on the whole batch (the `damage` column).
#
# The usual fix, `broadcast_buffers=False` (deprecated in 2.13 for `forward_sync_buffers`,
# DDP warns), stops the copying, and the ranks drift apart: rank 1 computes its gradients
# against different nodes. The right fix keeps the broadcast off **and** all-reduces the
# update's statistics, so every rank applies the same update (what `mahiax.distributed` does
# for the clean model's memories):

# %%
lessons.source(ddp.all_reduce_statistics, "the right fix")

# %% [markdown]
# **Expected verdict** on the summary's fix for `ddp-broadcast-buffers`: **hides-the-error**.

# %%
lessons.verdict_report(v_buf)

# %%
buf_table = lessons.outcome_table(v_buf.outcomes)[["error", "max grad diff", "damage"]]
buf_table["rank spread"] = [o.figures["rank_spread"] for o in v_buf.outcomes.values()]
buf_table

# %% [markdown]
# ## Exercise
#
# Write `sync(sums, counts)`: it gets this rank's per-node token sums `(S, D)` and counts
# `(S,)` and returns the statistics every rank should use. `bugs.check` runs it on two ranks
# with the broadcast off and compares with one process on the whole batch. (Hint:
# `torch.distributed.all_reduce` sums in place, on every rank.)

# %%
def sync(sums: torch.Tensor, counts: torch.Tensor):
    return sums, counts  # TODO: every rank keeps its own


print(bugs.check("ddp-broadcast-buffers", sync))

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
# ## Recap
#
# - An expert skipped for having no tokens leaves parameters DDP waits for: the **next**
#   forward raises "Expected to have finished reduction in the prior iteration", and the error
#   lists the idle experts' parameters. `find_unused_parameters=True` **holds** (measured), at
#   a graph walk per step; stacked expert weights need none.
# - DDP's default buffer broadcast writes rank 0's buffers over every rank's at each forward.
#   In torch 2.13 it keeps the version counter, so nothing raises: rank 1's updates vanish.
#   `broadcast_buffers=False` alone **hides the error** (ranks drift, gradients disagree);
#   all-reduce the statistics, then update the same way everywhere.
# - The clean model trains on several processes with
#   `torchrun --nproc-per-node 2 -m mahiax train ...` (gloo on CPU, NCCL on GPU).
