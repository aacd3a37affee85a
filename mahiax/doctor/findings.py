"""The doctor's fixed vocabulary: what each kind of finding means, its fix, its lesson.

A :class:`Finding` is one thing wrong with a training loop, pointed at the user's own source
line; :class:`LoopError` is an exception the loop raised, kept with its step and explained.
The kinds are fixed (``KINDS``): tests, the CLI's ``--json`` and lesson 10 rely on them.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field

_CELL_FILE = re.compile(r"ipykernel_\d+[/\\]\d+\.py$")  # where Jupyter compiles cells


def in_notebook(file: str) -> bool:
    """Is ``file`` the temporary file a Jupyter kernel compiled a cell into?"""
    return bool(_CELL_FILE.search(file))


def place(file: str, line: int) -> str:
    """``loop.py:12``; ``this cell, line 12`` in a notebook; ``?`` when unknown."""
    if not file:
        return "?"
    if in_notebook(file):
        return f"this cell, line {line}"
    return f"{os.path.basename(file)}:{line}"


@dataclass(frozen=True, kw_only=True)
class Kind:
    """One kind of finding: a title a learner reads, the usual fix, the lesson that teaches it."""

    name: str
    title: str
    fix: str
    lesson: str  # notebook stem, e.g. "02_inplace_accumulation"
    checked: str = ""  # what a clean report says of this kind: what was seen not to happen
    needs_model: bool = False  # the check needs the model (its parameters, modules, hooks)


_KINDS = (
    Kind(name="inplace-on-saved", title="an in-place write to a tensor autograd saved",
         fix="compute a new tensor instead (out-of-place: `y = x + d`, `torch.cat`, "
         "`torch.where`), or make the write after backward() and optimizer.step()",
         lesson="02_inplace_accumulation",
         checked="no in-place write into a tensor a graph saved"),
    Kind(name="step-before-backward",
         title="weights updated between a forward and a backward of the same step that needs the "
         "old ones",
         fix="run the forward again after the step, so the later backward walks the new weights; "
         "or move the step after every backward that walks these weights, keeping that "
         "backward out of their gradients (`backward(inputs=...)`)",
         lesson="06_finding_the_mutation",
         checked="no optimiser step between a forward and a backward that needs the old weights"),
    Kind(name="silent-write", title="a write that bypassed the version counter into a saved tensor",
         fix="never write through `.data` (or swap a tensor's `.data`); update state after "
         "backward under `torch.no_grad()`, or build a new tensor", lesson="03a_memories",
         checked="no write behind the version counter"),
    Kind(name="graph-carried-across-steps", title="a tensor with a graph that outlives its step",
         fix="keep numbers, not graphs: store `x.detach()` (state carried to the next step), "
         "`loss.item()` (logs and running totals)", lesson="03a_memories",
         checked="no graph kept across steps"),
    Kind(name="growing-graph", title="the graph behind backward grows every step",
         fix="find what each step adds to the graph and cut it: `detach()` carried state at the "
         "start of a step; bound buffers that grow", lesson="05_memory_meter",
         checked="no graph growing step by step"),
    Kind(name="backward-per-loss", title="several backward passes over one forward",
         fix="add the losses up and call backward() once on the sum (the gradients are the same, "
         "one pass instead of several)", lesson="04_retain_graph_and_encode",
         checked="one backward per graph"),
    Kind(name="retain-graph", title="retain_graph=True where nothing uses the kept graph",
         fix="drop `retain_graph=True`: it only keeps the graph's memory alive",
         lesson="04_retain_graph_and_encode",
         checked="no retain_graph=True kept for nothing"),
    Kind(name="clip-before-unscale",
         title="gradients clipped while a GradScaler still scales them",
         fix="call `scaler.unscale_(optimizer)` before `clip_grad_norm_`",
         lesson="08_amp_and_clipping",
         checked="no clipping of scaled gradients"),
    Kind(name="unused-parameters", title="parameters that never receive a gradient",
         fix="if they should train, take the `detach()` (or `.data`, `.item()`) off the path "
         "from them to the loss, or use them in the forward; if they should not, freeze them "
         "(`requires_grad_(False)`) or remove them; under DDP, `find_unused_parameters=True` "
         "only as a last resort",
         lesson="09_ddp_pitfalls",
         checked="gradients reach every parameter", needs_model=True),
    Kind(name="eval-mode-training", title="training while the model is in eval mode",
         fix="put the model back in training mode after evaluating: `model.train()` at the end of "
         "the function that called `model.eval()`, or at the start of every training step",
         lesson="10_your_own_loop",
         checked="dropout and batch norm in training mode when training", needs_model=True),
    Kind(name="grads-not-zeroed",
         title="gradients that an optimiser step already applied are added to "
         "again",
         fix="call `optimizer.zero_grad()` once per optimiser step, before the backward of the "
         "next one; to accumulate over k micro-batches on purpose, step and zero every k-th "
         "backward", lesson="10_your_own_loop",
         checked="gradients reset between optimiser steps"),
    Kind(name="probabilities-into-loss", title="probabilities fed to a loss that takes logits",
         fix="give the loss the logits (the output before the softmax or sigmoid): it applies "
         "log_softmax (cross_entropy) or a sigmoid (BCEWithLogits) itself; apply the softmax "
         "or sigmoid only where you need probabilities (predictions, metrics)",
         lesson="10_your_own_loop",
         checked="logits, not probabilities, into cross_entropy, nll_loss and BCEWithLogits"),
    Kind(name="loss-cut-from-graph", title="a loss with no path back to the parameters",
         fix="compute the loss from tensors that keep their graph: no `argmax`, `.item()`, "
         "`.data`, `.detach()` or `no_grad` between the parameters and the loss (a "
         "non-differentiable choice such as argmax needs a differentiable loss on the scores "
         "instead); and never `requires_grad_(True)` or `torch.tensor(..., requires_grad=True)` "
         "on a loss: that only hides PyTorch's error", lesson="10_your_own_loop",
         checked="every loss connected to the parameters", needs_model=True),
    Kind(name="optimizer-misses-parameters",
         title="parameters the backward trains that no optimiser "
         "holds", fix="build the optimiser after the last change to the model (or give it the new "
         "parameters: `optimizer.add_param_group({'params': ...})`); to give a parameter a "
         "new value, write into it (`with torch.no_grad(): p.copy_(value)`) instead of "
         "replacing it", lesson="10_your_own_loop",
         checked="every trained parameter in an optimiser", needs_model=True),
    Kind(name="unregistered-parameter",
         title="a weight the backward trains that no parameter list holds",
         fix="make it an `nn.Parameter` (a tensor) or keep modules in `nn.ModuleList` / "
         "`nn.ModuleDict`, so model.parameters() and the optimiser see it",
         lesson="10_your_own_loop",
         checked="every trained weight registered with the model", needs_model=True),
    Kind(name="buffer-requires-grad", title="a buffer or state tensor that requires grad",
         fix="create state without `requires_grad` (a buffer is not trained); if it should be "
         "trained, make it an `nn.Parameter`", lesson="03a_memories",
         checked="no state requiring grad", needs_model=True),
)

KINDS: dict[str, Kind] = {k.name: k for k in _KINDS}


@dataclass(kw_only=True)
class Finding:
    """One thing wrong with the loop, at the line of the user's code to change."""

    kind: str  # one of KINDS
    file: str  # the user's source file ("" if unknown)
    line: int  # the line to change (0 if unknown)
    message: str  # what happened, the evidence in numbers, the fix, the lesson
    step: int | None = None  # the step it was first seen at
    # what the rule measured, by name (e.g. ``writer``: "optimizer" or "code"): what other
    # rules and the loop's error read, never the message's words
    evidence: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown finding kind {self.kind!r}; allowed: {', '.join(KINDS)}")

    @property
    def where(self) -> str:
        """``file.py:12`` (``this cell, line 12`` in a notebook), ``?`` when unknown."""
        return place(self.file, self.line)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(kw_only=True)
class LoopError:
    """An exception the examined loop raised: kept, with its step and an explanation."""

    type: str  # "RuntimeError"
    message: str  # the exception's own text (PyTorch's message, word for word)
    step: int
    file: str  # the user's line that raised it (innermost frame outside torch)
    line: int
    explanation: str  # what the doctor makes of it ("" when it has nothing to add)

    def to_dict(self) -> dict:
        return asdict(self)


def compose(kind: str, what: str, evidence: str, fix: str | None = None,
            lesson: str | None = None) -> str:
    """A finding's message: what happened, the numbers, the fix (the kind's usual one unless
    ``fix`` is given), the lesson (the kind's unless ``lesson`` is given: one case of a kind
    can be another lesson's subject)."""
    k = KINDS[kind]
    return f"{what} {evidence} Fix: {fix or k.fix}. Lesson: {lesson or k.lesson}."
