# Source of notebooks/01_expert_router_index.ipynb (built by notebooks/build.py).

# %% [markdown]
# # 01 · "index out of range in self" in the ExpertRouter
#
# **Goal.** Find which operations raise the summary's first error, see that the summary's fix
# answers a *different* error, and fix the cause the lab reconstructs.
#
# **Context (read cold).** MAHIA-X routes every token to its top-2 of several small
# feed-forward *experts* (a mixture of experts, the summary's `ExpertRouter`: in the lab's
# package the whole block is `mahiax.model.moe.MixtureOfExperts`, `ExpertRouter` its alias; its
# `.router` picks each token's experts and its `.experts` hold their weights). The summary,
# section 1:
#
# > **Problem**: `index out of range in self` error in ExpertRouter when accessing
# > `self.experts[idx]` where `idx` is a tensor.
# >
# > **Fix**: use `torch.unique()` to get unique expert indices; convert tensor indices to
# > Python integers using `int(u.item())`.
#
# Two different errors hide behind that one sentence. We meet each one on its own first.

# %%
import torch
from torch import nn

from mahiax import bugs, lessons
from mahiax.bugs.expert_index import DEMO_DATA_VOCAB, BuggyExpertRouter, SummaryExpertRouter
from mahiax.config import teaching
from mahiax.model.data import SyntheticMultiTask
from mahiax.model.hybrid import HybridEfficientModel

torch.manual_seed(0)

# %% [markdown]
# ## 1. Where "index out of range in self" comes from
#
# ### An embedding asked for a row it does not have
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
# ### Stacked expert weights, picked by expert id
#
# The embedding is not the only place. The clean model keeps its experts as **stacked
# weights**: one tensor of shape `(E, D, H)` per weight matrix, expert `e` at index `e`.
# Each expert is a **SwiGLU** feed-forward layer, `down(silu(x W_gate) * (x W_up))`: a gated
# variant of the usual two-layer MLP. Picking experts' weights by id from such a stack is
# naturally written as an `index_select` along dimension 0 (the clean model instead groups
# tokens by expert and indexes the stack with Python ints: section 5 shows its code).
#
# One way to get bad expert ids: take the top-k over the wrong dimension of the router's
# probabilities, which are `(tokens, experts)`.
#
# **Predict.** 16 tokens, 8 experts, ids taken from `probs.topk(2, dim=0)`: what is the
# largest id, and what does `index_select` on the `(8, D, H)` stack say about it?

# %%
model = HybridEfficientModel(teaching())
w_gate = model.text.moe.experts.w_gate  # (E, D, H) stacked SwiGLU gate weights
print("stacked weights:", tuple(w_gate.shape))
probs = torch.softmax(torch.randn(16, w_gate.shape[0]), dim=-1)  # (tokens, experts)
topk_ids = probs.topk(2, dim=0).indices
print("ids:", tuple(topk_ids.shape), "| largest id:", int(topk_ids.max()))
with lessons.attempt() as caught:
    w_gate.index_select(0, topk_ids.reshape(-1))

# %% [markdown]
# `topk(dim=0)` ranks along the *tokens*: for each expert it picks its 2 best tokens. The
# result is `(2, experts)`, and its values are token positions, from 0 to 15 (the largest
# is printed above), some of them past the last expert. `index_select` raises
# `IndexError: index out of range in self`, word for word the embedding's message. The top-k
# over the expert dimension (`dim=-1`) gives what a router needs, `(tokens, 2)` ids below 8:

# %%
caught.expect(IndexError, "index out of range in self")
assert topk_ids.shape == (2, w_gate.shape[0]) and int(topk_ids.max()) >= w_gate.shape[0]
expert_ids = probs.topk(2, dim=-1).indices  # (tokens, 2): each token's 2 best experts
print("ids over dim=-1:", tuple(expert_ids.shape), "| largest id:", int(expert_ids.max()))
assert expert_ids.shape == (16, 2) and int(expert_ids.max()) < w_gate.shape[0]

# %% [markdown]
# Why "self"? It is the name PyTorch's operator signature gives the tensor being indexed.
# And an embedding lookup gives the same rows as an `index_select` of its weight table, and
# the same message for an id outside it:

# %%
print(torch.ops.aten.index_select.default._schema)
ids = torch.tensor([[5, 42]])  # (B=1, T=2)
rows = emb.weight.index_select(0, ids.reshape(-1)).reshape(1, 2, 8)  # (B, T, 8)
print("same rows as emb(ids):", torch.equal(emb(ids), rows))
with lessons.expect_error(IndexError, "index out of range in self"):
    emb.weight.index_select(0, torch.tensor([5, 4321]))

# %% [markdown]
# So the message names neither the module nor the index tensor. The last frames of the
# traceback say *which* lookup failed; then compare that index tensor's range with the size
# of the table it indexes (`ids.min()`, `ids.max()` against `num_embeddings` or `E`).

# %% [markdown]
# ## 2. What `experts[idx]` raises when `idx` is a tensor
#
# The summary names `self.experts[idx]`. Indexing a Python `nn.ModuleList` with a tensor of
# several expert ids is a *different* error, of a different type:

# %%
experts = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
with lessons.expect_error(TypeError, "only integer tensors of a single element"):
    experts[torch.tensor([0, 2, 1])]

# %% [markdown]
# And with a one-element tensor holding an id that is too large, the `ModuleList` raises an
# `IndexError` in its own words, not "index out of range in self":

# %%
print(experts[torch.tensor(1)])  # one element: converted to the int 1
with lessons.expect_error(IndexError, "index 5 is out of range"):
    experts[torch.tensor([5])]

# %% [markdown]
# Neither is the summary's "index out of range in self": those words come from an
# `index_select`-style lookup (an embedding, stacked weights).
#
# > **Reconstruction.** The summary does not show the original `ExpertRouter`. The lab assumes
# > `self.experts` was an `nn.ModuleList` indexed with the router's id tensor (the catalog's
# > `BuggyExpertRouter`, shown in section 4), the common layout that matches "accessing
# > `self.experts[idx]` where `idx` is a tensor".

# %% [markdown]
# ## 3. A cause that fits the report: data outside the vocabulary
#
# > **Reconstruction.** The summary gives neither the demo's vocabulary size nor the range of
# > its token ids; it only reports the error. The lab assumes the demo built its embedding for
# > a small vocabulary (here the teaching preset's 1,000 tokens; the catalog's tiny model has
# > the `vocab_size` printed below) and drew token ids from 10,000 (`DEMO_DATA_VOCAB`). This
# > is one common way to get "index out of range in self" with a correct router; the cells
# > below adopt it.
#
# **Predict.** Ids drawn from 10,000 for a 1,000-row table: roughly what share of them has no
# row?

# %%
from mahiax.bugs.harness import harness_config

config = teaching()
demo_data = SyntheticMultiTask(config.replace(vocab_size=DEMO_DATA_VOCAB))
tokens = demo_data.batch(0).tokens
share = (tokens >= config.vocab_size).float().mean().item()
print(f"DEMO_DATA_VOCAB = {DEMO_DATA_VOCAB}; teaching vocab_size = {config.vocab_size}; "
      f"tiny (catalog) vocab_size = {harness_config().vocab_size}")
print(f"largest id in the batch = {int(tokens.max())}")
print(f"{share:.0%} of the ids are outside the embedding table")

# %% [markdown]
# Most of them: the share printed above. Every one of those ids would make the embedding
# raise "index out of range in self". Why not about 90%, the share of uniform draws from
# 10,000 that a 1,000-row table lacks? Not every id is drawn at random: the synthetic tasks
# plant their key tokens, small ids below `RESERVED`, in every sample, and only the other
# ids (the filler) are drawn from the whole range. The next cell counts both.

# %%
from mahiax.tasks import RESERVED  # ids below it are the tasks' key tokens, never filler

planted = tokens < RESERVED  # (B, T)
filler = tokens[~planted]
print(f"RESERVED = {RESERVED}; planted key tokens: {planted.float().mean().item():.0%} "
      f"of the ids; in every sample: {bool(planted.any(dim=1).all())}")
uniform = (DEMO_DATA_VOCAB - config.vocab_size) / (DEMO_DATA_VOCAB - RESERVED)
print(f"filler ids outside the table: {(filler >= config.vocab_size).float().mean().item():.0%}"
      f" (expected for uniform draws from {RESERVED} to {DEMO_DATA_VOCAB - 1}: {uniform:.0%})")
assert share > 0.5 and planted.any(dim=1).all()

# %% [markdown]
# The clean model checks its inputs before the embedding, so the same batch gets a clear
# error naming the cause (this check is the lab's, in `mahiax/model/validation.py`):

# %%
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
# The next cell measures three short training runs: the original router on the demo's data,
# the summary's router on the same data, and the clean model on valid ids. Two more probe
# runs, on valid ids, find which error the summary's change actually removes.
#
# **Predict.** With the summary's router, does training on the demo's data still raise the
# `IndexError`? And which error does the summary's change remove?

# %%
v = bugs.verdict("expert-index")
lessons.verdict_report(v)

# %%
diagnosis = v.outcomes["summary"].figures["diagnosis"]
print("reported error:        ", diagnosis["reported_error"])
print("error the fix removes: ", diagnosis["error_the_fix_removes"])
lessons.outcome_table(v.outcomes)

# %% [markdown]
# **Expected verdict** on the summary's fix for `expert-index`: **wrong-diagnosis**. The
# change removes the `TypeError` of `experts[idx]` (`int(u.item())` is the cure for that
# error, as the diagnosis printed above shows), but the reported `IndexError` comes from
# token ids outside the vocabulary, and it stays: the summary's router on the demo's data
# fails at step 0 with the reported error.

# %%
summary_out = v.outcomes["summary"]
assert summary_out.error_type == "IndexError" and summary_out.error_step == 0
assert "index out of range in self" in summary_out.error_message
assert diagnosis["reported_error"] == "IndexError: index out of range in self"
assert diagnosis["error_the_fix_removes"].startswith(
    "TypeError: only integer tensors of a single element")

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
# weights, and tokens are dispatched grouped by expert, with expert ids from a top-k over the
# expert dimension (the clean code below). The `fixed` variant trains the clean model on
# valid ids: every step runs, and its gradients equal the reference's.

# %%
from IPython.display import display

from mahiax.model.moe import SwiGLUExperts, TopKRouter

display(lessons.source(TopKRouter.forward, "the clean router: top-k over the experts"),
        lessons.source(SwiGLUExperts.forward, "the clean dispatch: grouped by expert"))

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
# demo's data (ids drawn from 10,000) runs. `lessons.check("expert-index", fit_ids)` trains the
# clean model with your function applied to every batch.
#
# The attempt below returns the ids unchanged; run it and read the checker's answer, then
# fix it. (A solution is in the folded cell after it.)

# %%
def fit_ids(tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    return tokens  # TODO: every id must end up in [0, vocab_size)


print(lessons.check("expert-index", fit_ids))

# %% tags=["solution"]
def fit_ids(tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Fold out-of-range ids into the table (hashing); ids already in range are unchanged."""
    return tokens % vocab_size


result = bugs.check("expert-index", fit_ids)
print(result)
assert result.holds

# %% [markdown]
# The checker measures two things: training runs with the clean model's gradients, and in
# every batch it trains on, every id that was already valid reaches the model unchanged (it
# compares your output with the input at the valid ids). A mapping that silences the error
# by destroying the data, such as sending every id to 0, gets `NOT YET`:

# %%
band_aid = bugs.check("expert-index", lambda tokens, vocab_size: torch.zeros_like(tokens))
print(band_aid)
assert not band_aid.holds

# %% [markdown]
# Clamping every id to the last row keeps the valid ids as they were, so it passes too:

# %%
clamped = bugs.check("expert-index", lambda tokens, vocab_size: tokens.clamp(max=vocab_size - 1))
print(clamped)
assert clamped.holds

# %% [markdown]
# Folding ids with `%` or clamping them passes, but different words now share a row: the
# checker cannot judge what a mapping does to the ids that were out of range. In a real project the
# fix is upstream: build the vocabulary from the data (or size the embedding to the
# tokenizer), and keep an input check like `mahiax.model.validation.check_inputs` so a mismatch
# fails at once with a clear message.

# %% [markdown]
# Your attempts so far, oldest first (also on the dashboard's **My attempts** page):

# %%
lessons.my_attempts()

# %% [markdown]
# ## Check your understanding
#
# 1. `IndexError: index out of range in self`: which two lookups in this lesson raised it,
#    and what does "self" refer to?
#
#    <details><summary>Answer</summary>
#
#    `nn.Embedding` with a token id ≥ `num_embeddings`, and `index_select` on the stacked
#    expert weights with an expert id ≥ `E`. "self" is the name of the indexed tensor in
#    `aten::index_select`'s signature; an embedding lookup returns the same rows as an
#    `index_select` of its weight table, and fails with the same words.
#
#    </details>
#
# 2. What does `self.experts[idx]` raise when `self.experts` is an `nn.ModuleList` and `idx`
#    is a tensor of several ids? With a one-element tensor holding 5, for 3 experts?
#
#    <details><summary>Answer</summary>
#
#    A `TypeError` ("only integer tensors of a single element can be converted to an
#    index"); with `tensor([5])`, the `ModuleList`'s own `IndexError: index 5 is out of
#    range`. Neither is the reported message.
#
#    </details>
#
# 3. Why is the summary's fix judged `wrong-diagnosis` rather than `no-effect`?
#
#    <details><summary>Answer</summary>
#
#    It does have an effect: on valid ids, the original router raises the `TypeError` and the
#    summary's runs. But that is not the error the summary reported; on the demo's data the
#    `IndexError` is still raised.
#
#    </details>
#
# 4. You meet "index out of range in self" in your own MoE. What do you check first?
#
#    <details><summary>Answer</summary>
#
#    The traceback's last frames, to see which lookup failed (an embedding, an
#    `index_select` on stacked weights, ...). Then the range of that index tensor against the
#    table size: token ids against `vocab_size`, expert ids against `num_experts` (a top-k
#    over the wrong dimension gives ids up to the number of tokens).
#
#    </details>

# %% [markdown]
# ## PyTorch documentation
#
# - [`torch.nn.Embedding`](https://docs.pytorch.org/docs/stable/generated/torch.nn.Embedding.html):
#   valid ids are `0 .. num_embeddings - 1`.
# - [`torch.index_select`](https://docs.pytorch.org/docs/stable/generated/torch.index_select.html).
# - [`torch.topk`](https://docs.pytorch.org/docs/stable/generated/torch.topk.html): the `dim`
#   argument.
# - [`torch.nn.ModuleList`](https://docs.pytorch.org/docs/stable/generated/torch.nn.ModuleList.html).

# %% [markdown]
# ## Recap
#
# - `IndexError: index out of range in self` is the error of `index_select` and of an
#   embedding for an index outside the indexed tensor: a token id outside the embedding's
#   table, or an expert id outside `[0, E)` picking from stacked expert weights. The
#   traceback says which lookup; the index tensor's range says why.
# - `experts[idx]` with a many-element tensor raises a `TypeError`; `int(u.item())` cures
#   that one.
# - The summary's fix is a **wrong diagnosis**: measured, the reported error is still there.
# - Right fix (for the cause the lab reconstructs): data and vocabulary agree, checked before
#   the embedding.
