"""Summary section 1: "index out of range in self" in the ExpertRouter.

(The summary's ``ExpertRouter`` is the whole MoE block, :class:`mahiax.model.moe.MixtureOfExperts`;
its router alone is ``.router``.)

Two different errors hide behind the summary's one:

- ``IndexError: index out of range in self`` is what ``nn.Embedding`` / ``index_select``
  raise for an id outside the table, from the token embedding or from any lookup by id (an
  ``index_select`` over stacked expert weights raises the same words). The summary does not
  say where its ids came from; the lab's reconstruction is a demo with a small vocabulary
  fed ids drawn from 10,000 (lesson 01 marks it as such).
- ``self.experts[idx]`` with a many-element tensor ``idx`` raises ``TypeError: only integer
  tensors of a single element can be converted to an index``. That is the error the
  summary's fix (``torch.unique`` + ``int(u.item())``) actually removes.

So the fix answers a different error and the reported one stays. The right fix is at the
data: ids must lie in ``[0, vocab_size)`` (``mahiax.model.validation`` says so before the embedding)
and the vocabulary must cover the data.
"""

from __future__ import annotations

import torch
from torch import nn

from mahiax.bugs.catalog import BugEntry
from mahiax.bugs.harness import harness_config, swap_class, train_variant
from mahiax.bugs.outcome import Outcome
from mahiax.model.data import Batch
from mahiax.model.moe import MixtureOfExperts, MoEOutput, load_balancing_loss, router_z_loss

DEMO_DATA_VOCAB = 10_000  # the demo drew token ids from this range


class _Expert(nn.Module):
    """One expert as its own module, a view on the stacked weights (the original's layout)."""

    def __init__(self, moe: MixtureOfExperts, e: int):
        super().__init__()
        self._moe = [moe]  # a list, so the parent is not registered as a child (no cycle)
        self.e = e

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ex = self._moe[0].experts
        h = torch.nn.functional.silu(x @ ex.w_gate[self.e]) * (x @ ex.w_up[self.e])
        return h @ ex.w_down[self.e]


class _OriginalRouter(MixtureOfExperts):
    """Shared by the original and the summary's router: experts as a ModuleList."""

    def expert_list(self) -> nn.ModuleList:
        if "_expert_list" not in self.__dict__:
            self.__dict__["_expert_list"] = nn.ModuleList(
                _Expert(self, e) for e in range(self.num_experts)
            )
        return self.__dict__["_expert_list"]

    def forward(self, x: torch.Tensor) -> MoEOutput:
        flat = x.reshape(-1, x.shape[-1])  # (N, D)
        r = self.router(flat)
        y = self.combine(flat, r.ids, r.weights)
        aux = load_balancing_loss(r.probs, r.ids, self.num_experts)
        return MoEOutput(hidden=y.reshape(x.shape), aux_loss=aux, z_loss=router_z_loss(r.logits),
                         router=r)


class BuggyExpertRouter(_OriginalRouter):
    """The original: ``self.experts[idx]`` with a tensor ``idx`` of expert ids."""

    def combine(self, flat: torch.Tensor, ids: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(flat)
        for k in range(ids.shape[1]):
            idx = ids[:, k]  # (N,) one expert id per token
            out = out + w[:, k : k + 1].to(flat) * self.expert_list()[idx](flat)  # BUG
        return out


class SummaryExpertRouter(_OriginalRouter):
    """The summary's fix: ``torch.unique`` over the ids and ``int(u.item())`` per expert."""

    def combine(self, flat: torch.Tensor, ids: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(flat)
        for u in torch.unique(ids):
            e = int(u.item())
            rows, slot = (ids == u).nonzero(as_tuple=True)
            contrib = torch.zeros_like(flat)
            contrib[rows] = w[rows, slot].unsqueeze(-1).to(flat) * self.expert_list()[e](flat[rows])
            out = out + contrib
        return out


def _run(
    variant: str, steps: int, router_cls: type | None, demo_data: bool,
    prepare=None,
) -> Outcome:
    """Train with ``router_cls`` and either the demo's data (ids up to 10,000) or valid ids."""
    config = harness_config()
    data_config = config.replace(vocab_size=DEMO_DATA_VOCAB) if demo_data else None

    def install(model):
        model.validate_inputs = False  # the original had no input checks
        if router_cls is not None:
            swap_class(model.text.moe, router_cls)

    def fix_batch(b: Batch) -> Batch:  # a learner's data-side fix, applied to every batch
        return Batch(tokens=prepare(b.tokens, config.vocab_size), tabular=b.tabular,
                     targets=b.targets)

    return train_variant(
        "expert-index", variant, steps, install, data_config=data_config,
        prepare=fix_batch if prepare is not None else None,
    )


def ids_as_given(tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """The ids the model got in the buggy and the summary's runs: unchanged (the summary
    changed the router, not the data)."""
    return tokens


def fold_ids(tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Every id folded into ``[0, vocab_size)`` (hashing; ids in range stay)."""
    return tokens % vocab_size


def every_id_to_zero(tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """A band-aid: no id is out of range any more, and no id means anything either."""
    return torch.zeros_like(tokens)


def zero_a_batch_with_a_bad_id(tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """A wrong fix: a batch holding any id out of range becomes all zeros, a batch without
    one passes unchanged (so every valid id survives a probe of valid ids only)."""
    return tokens if int(tokens.max()) < vocab_size else torch.zeros_like(tokens)


class ValidIdsWatch:
    """Applies a learner's fix ``fix(tokens, vocab_size)`` to the batches training feeds and
    counts, over all of them, the valid ids (``0 <= id < vocab_size``) it changed: a data fix
    may only touch the ids the model cannot take. ``share`` is that count over the valid ids
    seen (an output of another shape changes every valid id of its batch)."""

    def __init__(self, fix):
        self.fix = fix
        self.valid = 0
        self.changed = 0

    def __call__(self, tokens: torch.Tensor, vocab_size: int) -> torch.Tensor:
        seen = self.fix(tokens.clone(), vocab_size)  # a clone: an in-place fix keeps `tokens`
        valid = (tokens >= 0) & (tokens < vocab_size)  # (B, T)
        self.valid += int(valid.sum())
        if isinstance(seen, torch.Tensor) and seen.shape == tokens.shape:
            self.changed += int((seen[valid] != tokens[valid]).sum())
        else:
            self.changed += int(valid.sum())
        return seen

    @property
    def share(self) -> float:
        return self.changed / self.valid if self.valid else 0.0


def _runner(variant: str, steps: int, candidate: object = None) -> Outcome:
    if variant == "buggy":
        return _run(variant, steps, BuggyExpertRouter, demo_data=True)
    if variant == "fixed":
        return _run(variant, steps, None, demo_data=False)
    if variant == "candidate":
        if not callable(candidate):
            raise TypeError(
                "a candidate for 'expert-index' is a function (tokens, vocab_size) -> tokens "
                "applied to every batch before the model"
            )
        watch = ValidIdsWatch(candidate)  # applies the candidate, counts what it changed
        out = _run(variant, steps, None, demo_data=True, prepare=watch)
        out.state_diff = watch.share
        out.figures["damage"] = (
            "the share of the valid token ids in the training batches that it changed "
            "(they must reach the model as they were)"
        )
        out.figures["damage_tol"] = 0.0
        return out
    # the summary's fix, on the demo's data; then measure which error it really answers
    out = _run(variant, steps, SummaryExpertRouter, demo_data=True)
    reported = _run("buggy", 1, BuggyExpertRouter, demo_data=True)
    on_valid_ids = _run("buggy-valid-ids", 1, BuggyExpertRouter, demo_data=False)
    fixed_by_summary = _run("summary-valid-ids", 1, SummaryExpertRouter, demo_data=False)
    answers = on_valid_ids.error_signature() if fixed_by_summary.passed else None
    correct = answers is not None and answers == reported.error_signature()
    out.figures["diagnosis"] = {
        "correct": correct,
        "reported_error": f"{reported.error_type}: {reported.error_message}",
        "error_the_fix_removes": (
            f"{on_valid_ids.error_type}: {on_valid_ids.error_message}" if answers else None
        ),
        "why": (
            f"the summary's change removes {on_valid_ids.error_type} "
            f"('{on_valid_ids.error_message}', what experts[idx] with a tensor raises), but "
            f"the reported {reported.error_type} ('{reported.error_message}') comes from token "
            f"ids >= vocab_size reaching the embedding, and it is still raised"
        ) if not correct else "the change removes the reported error",
    }
    return out


EXPERT_INDEX = BugEntry(
    id="expert-index",
    section="1",
    lessons=("01_expert_router_index",),
    component="ExpertRouter / token embedding",
    title="Index out of range in ExpertRouter",
    pattern="expert_out = self.experts[idx](x)  # idx: a tensor of expert ids\n"
            "# ...and (the lab's reconstruction) token ids drawn from 10000 for a vocabulary "
            "of 1000",
    summary_fix="for u in torch.unique(idx): expert = self.experts[int(u.item())]",
    right_fix="keep token ids in [0, vocab_size) (validate before the embedding); dispatch "
              "tokens grouped by expert with stacked weights",
    explanation=(
        "'index out of range in self' is the error of an embedding or index_select for an id "
        "outside its table; in the lab's reconstruction the demo drew ids from 10,000 for a "
        "smaller vocabulary. experts[idx] with a tensor "
        "raises a different error (TypeError), and that is the one the summary's unique + "
        "int(u.item()) removes; the out-of-range ids stay, and so does the error."
    ),
    runner=_runner,
    steps=3,
    devices=("cpu",),
    device_note=(
        "on CUDA an id out of range is caught by an assert inside the GPU kernel: the error "
        "arrives asynchronously as 'CUDA error: device-side assert triggered' and leaves the "
        "process's CUDA context unusable (measured by make gpu-check on an H100), so the "
        "catalog measures this entry on the CPU, where PyTorch checks the ids and raises "
        "'index out of range in self'; on a GPU, run with CUDA_LAUNCH_BLOCKING=1 or on the "
        "CPU to read the reported error"
    ),
    candidate_kind="a function (tokens, vocab_size) -> tokens applied to each batch",
    candidates=lambda: {
        "buggy": ids_as_given, "summary": ids_as_given, "fixed": fold_ids,
        "band-aid: every id to 0": every_id_to_zero,
        "wrong: zero a batch with any bad id": zero_a_batch_with_a_bad_id,
    },
)
