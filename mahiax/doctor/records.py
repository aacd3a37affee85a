"""What the doctor's watchers record while a loop runs: one dataclass per kind of event.

:class:`~mahiax.doctor.watchers.Watch` fills them in; :mod:`mahiax.doctor.analysis` turns them
into findings. They keep numbers, names, places and weak references, never the user's tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mahiax.doctor.sites import Frame, Site


@dataclass(kw_only=True)
class BackwardCall:
    """One ``backward()`` (or ``torch.autograd.backward``) call."""

    step: int
    file: str
    line: int
    retain: bool  # retain_graph=True given explicitly
    create: bool  # create_graph=True
    nodes: int  # autograd nodes reachable from the roots (AccumulateGrad nodes excluded)
    saved: int  # bytes saved for backward in that graph (parameters not counted)
    seqs: frozenset[int]  # sequence numbers of those nodes
    earliest_step: int  # the earliest step one of its nodes was built in
    repeated_forward: bool  # the model ran again on the same batch since the last backward
    leaves: frozenset[int] = frozenset()  # id() of the leaf tensors it reaches
    # the user's lines that joined a graph built before this step's last write into weights
    # with one built after it (``loss = loss + ...`` in a two-pass optimiser's second pass)
    joins: tuple[Site, ...] = ()


@dataclass(kw_only=True)
class ClipCall:
    """A clipping call that hit gradients a GradScaler still scaled."""

    step: int
    file: str
    line: int
    function: str  # "clip_grad_norm_"
    scaled: int  # how many of the clipped gradients were still scaled
    total: int  # how many gradients it clipped
    scale: float | None  # the scaler's scale
    norm: float | None  # the norm clip_grad_norm_ measured (a scaled norm)
    limit: float  # max_norm / clip_value


@dataclass(kw_only=True)
class SilentWrite:
    """A write into a saved tensor's memory that its version counter did not see."""

    step: int
    file: str
    line: int
    op: str
    shape: tuple[int, ...]
    saved_by: str  # "aten.mm at file.py:12"
    packed: Any  # weakref to the locator's record of the saved tensor
    used: bool = False  # a backward ran while that saved tensor was still held


@dataclass(kw_only=True)
class Held:
    """A tensor with a graph that outlived its step, and who holds it."""

    label: str  # "model.memory.nodes (a buffer)", "global `total` (loop.py)"
    file: str
    line: int
    first_step: int  # the step it was first seen held at
    built_step: int  # the earliest step its graph reaches
    last_step: int
    nodes: list[int] = field(default_factory=list)  # nodes of its graph, at each step seen
    saved: list[int] = field(default_factory=list)  # bytes its graph holds saved, per step
    items: int = 1  # tensors held (several for a list)
    name: str = ""  # the holder's name: the attribute, global or closure variable
    attribute: bool = False  # `name` is an attribute (`obj.name`)
    numel: int = 0  # numbers in the held tensor (1: a scalar, such as a loss)
    read: bool = False  # a later step's backward reached into its graph: carried state
    backwarded: bool = False  # some backward() walked its graph (else: never needed one)
    seen_at: int = -1  # the last step the end-of-step scan counted it at
    container: str = ""  # "tuple", "list", "dict entry 'k'", "dict entry 'k' in a list", ...


@dataclass(kw_only=True)
class Holder:
    kind: str  # "global" | "attribute" | "buffer" | "list" | "closure" | "entry"
    name: str
    owner: Any = None  # the object whose attribute it is (attribute, buffer)
    file: str = ""  # global / closure: the file that defines it
    container: str = ""  # "list" when the tensor sits in a list held under `name`
    count: int = 1
    members: Any = None  # that list or tuple (during the scan only)


@dataclass(kw_only=True)
class ModeCall:
    """A ``module.eval()`` (``train(False)``) call the loop made."""

    step: int
    order: int  # position among the watch's ordered events
    covered: frozenset[int]  # id() of the module called and every module under it
    frames: list[Frame]  # the user's calls that led to it, innermost first
    on_layer: bool = False  # called on a dropout or batch norm layer itself (a deliberate
    # freeze, as fine-tuning does), not on a model


@dataclass(kw_only=True)
class EvalForward:
    """A forward of a module whose behaviour depends on the mode (dropout, batch norm with
    running statistics) while it was in eval mode."""

    step: int
    order: int
    module: str  # "model.drop (Dropout)"
    module_id: int
    kind: str  # "dropout" | "norm"
    grad: bool  # it built a graph (autograd on, and an input or a weight of it requires grad)
    backwards: int  # backward calls of its step before it
    frames: list[Frame]
    module_ref: Any = None  # weakref to the module (is it still in eval at the backward?)
    model_training: bool = True  # the whole model was in training mode at that forward


@dataclass(kw_only=True)
class GradsKept:
    """A backward that adds to gradients an optimiser step already applied."""

    step: int
    file: str  # the backward's line
    line: int
    params: int  # parameter tensors whose gradient was stale
    applied_at: int  # the step whose optimizer.step() applied it
    ids: frozenset[int] = frozenset()


@dataclass(kw_only=True)
class ProbabilityLoss:
    """Probabilities fed to a loss that takes logits (or log-probabilities)."""

    step: int
    loss: str  # "cross_entropy"
    file: str  # the loss's line
    line: int
    origin: str  # "softmax" | "sigmoid" | "values" (rows >= 0 summing to 1)
    origin_file: str = ""  # the line that applied the softmax or sigmoid
    origin_line: int = 0
    origin_module: str = ""  # the module whose forward applied it ("model.4"), if any


@dataclass(kw_only=True, frozen=True)
class Cut:
    """Where a tensor lost its path to the parameters: an op whose inputs required grad and
    whose output does not (``argmax``, ``.detach()``, ``.data``, anything under ``no_grad``)."""

    file: str
    line: int
    op: str  # "argmax", "data", "detach", "linear"
    grad_off: bool  # autograd was off (no_grad / inference_mode) when it ran


@dataclass(kw_only=True)
class LossCut:
    """A backward whose loss was computed from a cut tensor and reaches no parameter."""

    step: int
    file: str  # the backward's line
    line: int
    cut: Cut
    leaf: bool  # the loss is a leaf made to require grad (the band-aid that silences the error)


@dataclass(kw_only=True, frozen=True)
class GradReset:
    """A ``zero_grad()`` call of the loop (an optimiser's or a module's): which gradients it
    reset, from which line. Kept to name the reset that runs too rarely."""

    step: int
    file: str
    line: int
    ids: frozenset[int]  # id() of the parameters whose gradients it reset


@dataclass(kw_only=True, frozen=True)
class LoopEvent:
    """An optimiser step or a gradient reset, placed among the backward calls: backward calls
    with one between them were kept apart on purpose (two optimisers, a two-pass optimiser)."""

    backwards: int  # how many backward calls had run before it
    kind: str  # "step" | "zero_grad"
    file: str
    line: int
    step: int


@dataclass(kw_only=True, frozen=True)
class Raised:
    """The exception the examined loop raised, as caught (the analysis explains it as a
    :class:`~mahiax.doctor.findings.LoopError`)."""

    type_name: str  # "RuntimeError"
    message: str
    step: int
    file: str  # the user's line that raised ("" when someone else caught it first)
    line: int


@dataclass(kw_only=True, frozen=True)
class Built:
    """The user's line that gave a tensor its current ``grad_fn``, kept per tensor to name
    where a held graph was made."""

    site: Site
    seq: int  # that grad_fn's autograd sequence number: a new grad_fn is another build


@dataclass(kw_only=True, frozen=True)
class Carrier:
    """A graph built in a step and still held at its end, by what and where: if a later
    step's backward reaches into it, its holder becomes a :class:`Held` record."""

    label: str  # the holder, as :class:`Held` names it
    file: str  # the line that stores it
    line: int
    step: int  # the step that built it
    name: str  # the holder's name: the attribute, global or closure variable
    attribute: bool  # ``name`` is an attribute (``obj.name``)
    numel: int  # numbers in the held tensor
    container: str  # as in :class:`Held`


@dataclass(kw_only=True, frozen=True)
class SquashSite:
    """Where a softmax or sigmoid was applied: named when a loss that takes logits is fed its
    output."""

    file: str
    line: int
    module: str  # the module whose forward applied it ("model.4"), "" outside any


@dataclass(kw_only=True, frozen=True)
class AppliedGrad:
    """The gradient an optimiser step applied to a parameter: a later backward that adds to
    that same gradient (same tensor, same version) adds to what was already applied."""

    param: Any  # weakref to the parameter
    grad: Any  # weakref to its ``.grad`` after the step
    version: int  # that gradient's version counter after the step
    step: int  # the step that applied it


@dataclass(kw_only=True, frozen=True)
class StaleAdd:
    """The last backward that added to a gradient an optimiser step had already applied,
    until a reset or a step clears it."""

    file: str  # the backward's line
    line: int
    backward: int  # its index in the watch's list of backward calls
    applied_at: int  # the step whose optimiser step applied the gradient


@dataclass(kw_only=True, frozen=True)
class SeenForward:
    """A module's forward of one input tensor in this step: the same input forwarded again
    after a backward means one forward per loss."""

    tensor: Any  # weakref to the input
    backwards: int  # backward calls of the step before that forward
    versions: tuple[int, ...]  # the module's parameters' versions then: changed weights
    # (sharpness-aware minimisation perturbs them) make it another computation
