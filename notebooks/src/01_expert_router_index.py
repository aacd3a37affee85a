# Source of notebooks/01_expert_router_index.ipynb (built by notebooks/build.py).

# %% [markdown]
# # 01 · "index out of range in self" in the ExpertRouter
#
# **Goal.** Find where the summary's first error really comes from, see that the summary's
# fix answers a *different* error, and fix the real cause.
#
# **Context (read cold).** MAHIA-X routes every token to its top-2 of several small
# feed-forward *experts* (a mixture of experts, the `ExpertRouter`). The summary, section 1:
#
# > **Problem**: `index out of range in self` error in ExpertRouter when accessing
# > `self.experts[idx]` where `idx` is a tensor.
# >
# > **Fix**: use `torch.unique()` to get unique expert indices; convert tensor indices to
# > Python integers using `int(u.item())`.
#
# Two errors hide behind that one sentence. We meet each one on its own first.

# %%
import torch
from torch import nn

from mahiax import bugs, lessons
from mahiax.bugs.expert_index import DEMO_DATA_VOCAB, BuggyExpertRouter, SummaryExpertRouter
from mahiax.config import teaching
from mahiax.data import SyntheticMultiTask
from mahiax.model import HybridEfficientModel

torch.manual_seed(0)

# %% [markdown]
# ## 1. Where "index out of range in self" comes from
#
# An embedding table with 1,000 rows, asked for row 4,321. The raw traceback is worth
# reading: the error is raised inside `torch.nn.functional.embedding`, not in any router.

# %% tags=["raises-exception"]
emb = nn.Embedding(1000, 8)
emb(torch.tensor([[5, 4321]]))

# %% [markdown]
# The same, checked: the type and PyTorch's message, word for word.

# %%
with lessons.expect_error(IndexError, "index out of range in self"):
    emb(torch.tensor([[5, 4321]]))

# %% [markdown]
# ## 2. What `experts[idx]` with a tensor raises
#
# Indexing a Python `nn.ModuleList` with a tensor of several expert ids is a *different*
# error, of a different type:

# %%
experts = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
with lessons.expect_error(TypeError, "only integer tensors of a single element"):
    experts[torch.tensor([0, 2, 1])]

# %% [markdown]
# So `int(u.item())` (the summary's fix) is the cure for *this* `TypeError`, not for the
# `IndexError` the summary reported.

# %% [markdown]
# ## 3. The evidence: the demo's data did not fit its vocabulary
#
# The demo built a model with a 1,000-token vocabulary but drew token ids from 10,000.
# Count how many ids of one batch fall outside the table.

# %%
config = teaching()
demo_data = SyntheticMultiTask(config.replace(vocab_size=DEMO_DATA_VOCAB))
tokens = demo_data.batch(0).tokens
outside = (tokens >= config.vocab_size).float().mean().item()
print(f"vocab_size = {config.vocab_size}, largest id in the batch = {int(tokens.max())}")
print(f"{outside:.0%} of the ids are outside the embedding table")
assert outside > 0.5

# %% [markdown]
# The clean model checks its inputs before the embedding, so the same batch gets a clear
# error naming the cause (this check is the lab's, in `mahiax/validation.py`):

# %%
model = HybridEfficientModel(config)
with lessons.expect_error(ValueError, "vocab"):
    model.encode(demo_data.batch(0))

# %% [markdown]
# ## 4. The summary's fix, as written, and its measured verdict
#
# The catalog keeps the original router and the summary's version side by side (never in
# the clean model). Here is the summary's `combine`: unique expert ids, one `int(u.item())`
# each.

# %%
lessons.source(SummaryExpertRouter.combine, "the summary's fix")

# %% [markdown]
# And the original, for comparison:

# %%
lessons.source(BuggyExpertRouter.combine, "the original")

# %% [markdown]
# **Expected verdict** on the summary's fix for `expert-index`: **wrong-diagnosis**. The
# change removes the `TypeError` of `experts[idx]`, but the reported `IndexError` comes from
# token ids outside the vocabulary, and it stays. The next cell measures it now: three short
# training runs (the original router on the demo's data, the summary's router on the same
# data, the clean model on valid ids), plus two probe runs that find which error the
# summary's change actually removes.

# %%
v = bugs.verdict("expert-index")
lessons.verdict_report(v)

# %%
diagnosis = v.outcomes["summary"].figures["diagnosis"]
print("reported error:        ", diagnosis["reported_error"])
print("error the fix removes: ", diagnosis["error_the_fix_removes"])
lessons.outcome_table(v.outcomes)

# %% [markdown]
# Switch between the three variants: what each raised, and its autograd graph size per step
# (the buggy and summary variants fail at the first step, so they have no points).

# %%
lessons.variant_switch(v.outcomes)

# %% [markdown]
# ## 5. The right fix, and its proof
#
# The ids must lie in `[0, vocab_size)`: the tokenizer and the embedding must agree. The
# clean model also never indexes a module list with a tensor: its experts are stacked
# weights, and tokens are dispatched grouped by expert. The `fixed` variant trains the clean
# model on valid ids: every step runs, and its gradients equal the reference's.

# %%
fixed = v.outcomes["fixed"]
print(f"fixed: {fixed.steps_run} of {fixed.steps_requested} steps, "
      f"largest gradient difference {fixed.max_grad_diff:.1e}")
assert fixed.passed and fixed.max_grad_diff < 1e-9

# %% [markdown]
# ## Exercise
#
# You cannot change the demo's data source, but you can transform each batch before it
# reaches the model. Write `fit_ids(tokens, vocab_size) -> tokens` so that training on the
# demo's data (ids up to 10,000) runs. `bugs.check("expert-index", fit_ids)` trains the
# clean model with your function applied to every batch.
#
# The attempt below returns the ids unchanged; run it and read the checker's answer, then
# fix it. (A solution is in the folded cell after it.)

# %%
def fit_ids(tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    return tokens  # TODO: every id must end up in [0, vocab_size)


print(bugs.check("expert-index", fit_ids))

# %% tags=["solution"]
def fit_ids(tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Fold out-of-range ids into the table (hashing); ids already in range are unchanged."""
    return tokens % vocab_size


result = bugs.check("expert-index", fit_ids)
print(result)
assert result.holds

# %% [markdown]
# Folding ids with `%` makes training run, but different words now share a row. In a real
# project the fix is upstream: build the vocabulary from the data (or size the embedding to
# the tokenizer), and keep an input check like `mahiax.validation.check_inputs` so a mismatch
# fails at once with a clear message.
#
# ## Recap
#
# - `IndexError: index out of range in self` is the embedding's error for an id outside its
#   table. Look at the ids, not at the experts.
# - `experts[idx]` with a many-element tensor raises a `TypeError`; `int(u.item())` cures
#   that one.
# - The summary's fix is a **wrong diagnosis**: measured, the reported error is still there.
# - Right fix: data and vocabulary agree, checked before the embedding.
