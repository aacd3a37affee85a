"""The watchers: what the doctor records while a loop runs, step by step.

:class:`Watch` installs, for the duration of an examination only (everything is removed in a
``finally``, also when the loop raises):

- the lab's mutation locator (:func:`mahiax.telemetry.locator.locate_mutations`): in-place writes
  into tensors a live graph saved, and writes that bypassed the version counter. The locator keeps
  PyTorch's own version check working: it re-raises PyTorch's error word for word;
- a ``TorchFunctionMode`` that notes the user's line that built each tensor with a
  ``grad_fn`` (to name where a carried graph was made) and sees ``x.data = y`` (a swap of a
  tensor's storage that no version counter and no dispatch mode sees);
- wrappers of ``torch.Tensor.backward``, ``torch.autograd.backward``,
  ``torch.nn.utils.clip_grad_norm_`` / ``clip_grad_value_`` and ``GradScaler.scale`` /
  ``unscale_`` / ``step``: who called them, from which line, over which graph;
- wrappers of ``Optimizer.zero_grad`` / ``Module.zero_grad`` (which gradients are reset, from
  which line), ``Module.train`` (who put which modules in eval mode) and the losses that take
  logits (``cross_entropy``, ``nll_loss``, ``binary_cross_entropy_with_logits``: what their
  input was made by); the optimiser step hooks (which weights and gradients a step wrote);
- ``register_post_accumulate_grad_hook`` on the model's parameters (which ones ever get a
  gradient) and forward pre-hooks on its modules (the same batch forwarded again after a
  backward: one forward per loss; dropout or batch norm run in eval mode);
- at the end of every step, a scan of the live tensors for graphs that outlive their step
  (:class:`~mahiax.doctor.holders.HeldScan`), and of the model's buffers and state for
  tensors that require grad.

What is recorded is in :mod:`mahiax.doctor.records`; :mod:`mahiax.doctor.analysis` turns it
into findings.

Nodes are told apart by their autograd sequence number, which grows with every node created
on the thread: a node numbered below the step's first number was built in an earlier step.
The watch keeps numbers and weak references only, never the user's tensors, so it does not
change what lives and what is freed.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import traceback
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

from mahiax.doctor import sites
from mahiax.doctor.findings import place
from mahiax.doctor.holders import HeldScan, _is_leaf_node, _seq, graph_nodes
from mahiax.doctor.records import (
    AppliedGrad,
    BackwardCall,
    Built,
    Carrier,
    ClipCall,
    Cut,
    EvalForward,
    GradReset,
    GradsKept,
    Held,
    LoopEvent,
    LossCut,
    ModeCall,
    ProbabilityLoss,
    Raised,
    SeenForward,
    SilentWrite,
    SquashSite,
    StaleAdd,
)
from mahiax.doctor.sites import NO_SITE, Site
from mahiax.telemetry import locator as debug
from mahiax.telemetry.categories import grad_fn_of, saved_bytes
from mahiax.telemetry.locator import MutationLocator, _storage_key, locate_mutations

_DATA_DESCRIPTOR = torch._C.TensorBase.__dict__["data"]  # ``x.data = y`` calls its __set__

# The locator names the innermost frame outside torch and its own file; the doctor's watchers
# sit in that stack too (the function mode's frame), so they join its list of frames to skip.
debug._SKIP_EXACT.update(sites.MACHINERY)
debug._is_internal.cache_clear()


# losses that take logits (or log-probabilities): name -> what their input must not be
_LOGIT_LOSSES = {"cross_entropy": "softmax", "nll_loss": "softmax",
                 "binary_cross_entropy_with_logits": "sigmoid"}
# autograd nodes that pass values through unchanged in meaning (views, copies, casts)
_PASS_THROUGH = ("View", "Reshape", "Unsafe", "Squeeze", "Unsqueeze", "Transpose", "Permute",
                 "Clone", "ToCopy", "Expand", "AsStrided", "Contiguous", "Flatten", "T")
# calls that make a tensor requiring grad from numbers (no graph behind it)
_LEAF_MAKERS = ("tensor", "as_tensor", "requires_grad_", "full", "ones", "zeros")
MAX_EVAL_FORWARDS = 4  # eval-mode forwards kept per step (a validation loop runs many)


def _mode_kind(m: nn.Module) -> str | None:
    """``dropout`` or ``norm`` for a module whose forward differs between train and eval
    mode; None for one that computes the same either way."""
    if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
        return "dropout"
    if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
        return "norm"
    return None


def _origin_node(t: torch.Tensor) -> Any:
    """The autograd node that made ``t``'s values, looking through views, copies and casts."""
    node = grad_fn_of(t)
    while node is not None and type(node).__name__.startswith(_PASS_THROUGH):
        nxt = [n for n, _ in node.next_functions if n is not None]
        node = nxt[0] if len(nxt) == 1 else None
    return node


class _Sites(TorchFunctionMode):
    """Notes the user's line that built each tensor with a grad_fn; sees ``x.data = y``."""

    def __init__(self, watch: Watch):
        super().__init__()
        self.watch = watch

    def __torch_function__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if self.watch._blind:
            return func(*args, **kwargs)
        if getattr(func, "__self__", None) is _DATA_DESCRIPTOR:
            if func.__name__ == "__set__":
                self.watch._on_set_data(args[0])
            else:  # `x.data`: a later write through it bypasses x's version counter
                self.watch.data_sites.add(sites.user_site())
        out = func(*args, **kwargs)
        outs = [t for t in ((out,) if isinstance(out, torch.Tensor) else
                            out if isinstance(out, tuple | list) else ())
                if isinstance(t, torch.Tensor)]
        for t in outs:
            self.watch._note_built(t)
        if outs:
            self.watch._note_cut(func, args, kwargs, outs)
            if getattr(func, "__name__", "") in _LEAF_MAKERS:
                self.watch._note_new_leaf(func, outs)
        name = getattr(func, "__name__", "")
        if name in ("softmax", "sigmoid") and isinstance(out, torch.Tensor) \
                and out.grad_fn is not None:
            loc = self.watch.loc
            module = loc._modules[-1].path if loc is not None and loc._modules else ""
            file, line = sites.user_site()
            self.watch.squash_sites[_seq(out.grad_fn)] = SquashSite(file=file, line=line,
                                                                    module=module)
        return out


class Watch(HeldScan):
    """Everything recorded while one loop runs; :meth:`active` installs the watchers."""

    def __init__(self, model: nn.Module | None = None,
                 optimizer: torch.optim.Optimizer | None = None,
                 scaler: Any = None, code: Callable | None = None,
                 ignore_types: tuple[type, ...] = (),
                 unwatched: tuple[tuple[Any, str], ...] = ()):
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        self.ignore_types = ignore_types
        # (owner, method name): calls that are not the loop's, run without being recorded
        # (the catalog harness's clean reference model takes its own backward each step)
        self.unwatched = unwatched
        self._blind = 0  # > 0 while an unwatched call runs
        self.names: dict[int, str] = {}
        if model is not None:
            self.names = {id(m): f"model.{n}" if n else "model"
                          for n, m in model.named_modules()}
        self.step_code: Any = None  # the user's step function
        self.code_files: set[str] = set()  # files of the user's step code
        self.code_globals: dict | None = None  # its module's globals (a notebook's too)
        if code is not None:
            target = code
            while isinstance(target, functools.partial):  # the function the user wrote
                target = target.func
            target = getattr(target, "__func__", target)
            file = getattr(getattr(target, "__code__", None), "co_filename", None)
            if file:
                self.code_files.add(file)
            self.code_globals = getattr(target, "__globals__", None)
            self.step_code = target
        self.step = -1
        self.steps_done = 0
        self.examine_seq = 0  # first sequence number of the examination
        self.step_seqs: list[int] = []  # first sequence number of each step
        self.backwards: list[BackwardCall] = []
        self.clips: list[ClipCall] = []
        self.silent: list[SilentWrite] = []
        self.held: dict[str, Held] = {}
        self.grad_counts: dict[int, int] = {}
        self.state_requiring_grad: dict[str, tuple[Any, str]] = {}  # label -> (owner, attr)
        self.tripped: dict[int, int] = {}  # id() of a mutation a backward tripped on -> the
        # index in ``backwards`` of the first backward that tripped on it
        self.tripped_versions: dict[int, int] = {}  # the same id() -> the version that
        # backward found the saved tensor at (later writes may have bumped it again)
        self.optimizer_writes: dict[int, int] = {}  # id() of a mutation by optimizer.step() ->
        # the step it was made in
        self._optimizer_mark = 0
        self.scaled_optimizers: set[type] = set()  # optimisers a GradScaler unscaled/stepped
        self.mode_calls: list[ModeCall] = []
        self.eval_forwards: list[EvalForward] = []
        self.trained_in_eval: list[EvalForward] = []  # one per module and step
        self._order = 0  # counts ordered events (mode calls, eval-mode forwards)
        self._in_train_call = 0
        self.optimizers: dict[int, Any] = {}  # id -> weakref of every optimiser that stepped
        self._applied: dict[int, AppliedGrad] = {}  # id(p) -> the gradient a step applied
        self.kept: list[GradsKept] = []
        # id(p) -> the last backward that added to its gradient already applied; cleared by a
        # reset or a step
        self._stale: dict[int, StaleAdd] = {}
        self.resets: list[GradReset] = []
        # softmax/sigmoid node -> the user's line and the module whose forward applied it
        self.squash_sites: dict[int, SquashSite] = {}
        self.node_sites: dict[int, Site] = {}  # autograd node -> the user's line
        self.step_sites: dict[int, Site] = {}  # id(optimizer) -> its step() line
        self.scale_site: Site = NO_SITE  # the user's scaler.scale(...) line
        self.scaler_step_site: Site = NO_SITE  # the user's scaler.step(...) line
        self.unscale_site: Site = NO_SITE  # the user's scaler.unscale_(...) line
        self.cut_from: WeakIdKeyDictionary = WeakIdKeyDictionary()  # tensor -> Cut
        self.reached: set[int] = set()  # id() of every leaf a backward reached
        self.stray: dict[int, Any] = {}  # id -> weakref: parameters reached, not the model's
        self._model_params = {id(p) for p in model.parameters()} if model is not None \
            else set()
        self.loss_cuts: list[LossCut] = []
        self.probability_losses: list[ProbabilityLoss] = []
        # optimiser steps and gradient resets, in order with the backward calls
        self.events: list[LoopEvent] = []
        self.error_info: Raised | None = None
        self.loc: MutationLocator | None = None
        self.built: WeakIdKeyDictionary = WeakIdKeyDictionary()  # tensor -> Built
        self._scaled_roots: WeakIdKeyDictionary = WeakIdKeyDictionary()  # tensor -> scaler
        self._scaled_params: set[int] = set()  # id(p) whose .grad a scaler still scales
        self._scaler_ref: Any = None
        self._mutations_seen = 0
        self.data_sites: set[Site] = set()  # lines that read some tensor's .data
        # this step's graphs held at its end, by grad_fn sequence number; a later backward
        # that reaches one of them names its holder
        self._carriers: dict[int, Carrier] = {}
        self._in_backward = 0
        # (id(module), the input's data_ptr, shape, dtype, version) -> that forward
        self._forward_seen: dict[tuple, SeenForward] = {}
        self._backwards_this_step = 0
        self._repeat = False
        self._busy = False
        self._in_scaler_step = 0  # > 0 while GradScaler.step runs (it calls unscale_ itself)

    # ---- lifetime ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def active(self) -> Iterator[Watch]:
        """Install every watcher; remove them all on exit, whatever happens inside."""
        with contextlib.ExitStack() as stack:
            self.loc = stack.enter_context(locate_mutations(self.model))
            self._patch(stack)
            self._hook_model(stack)
            stack.enter_context(_Sites(self))
            self.examine_seq = torch._C._autograd._get_sequence_nr()
            yield self

    def _note_built(self, t: torch.Tensor) -> None:
        """Note the user's line that gave ``t`` its current grad_fn. An op that returns its
        input unchanged (``x.to(x.dtype)``) keeps the line that built it."""
        node = grad_fn_of(t)
        if node is None or _is_leaf_node(node):
            return
        seq = _seq(node)
        known = self.built.get(t)
        if known is None or known.seq != seq:
            site = sites.user_site()
            self.built[t] = Built(site=site, seq=seq)
            self.node_sites[seq] = site

    def begin_step(self, i: int) -> None:
        self.step = i
        self.step_seqs.append(torch._C._autograd._get_sequence_nr())
        self._forward_seen.clear()
        self._backwards_this_step = 0
        self._repeat = False

    def end_step(self, i: int) -> None:
        self._collect_silent()
        self.steps_done = i + 1
        self._scan_state(i)
        self._scan_held(i)

    def fail(self, exc: BaseException, i: int) -> None:
        """Keep what the loop raised (type, message, step, the user's line), then forget the
        exception's frames, so the step's locals do not look held, and scan."""
        file, line = sites.traceback_site(exc.__traceback__)
        self.error_info = Raised(type_name=type(exc).__name__, message=str(exc), step=i,
                                 file=file, line=line)
        traceback.clear_frames(exc.__traceback__)
        exc.__traceback__ = None
        self._after_failure(i)

    def fail_recorded(self, type_name: str, message: str, i: int) -> None:
        """Keep an error someone else caught and already scanned after (the catalog's
        harness: see :meth:`finish_unfinished`)."""
        self.error_info = Raised(type_name=type_name, message=message, step=i, file="",
                                 line=0)

    def finish_unfinished(self) -> None:
        """A step began and never ended (the loop raised): scan after it, while the model
        and what holds its graphs still live."""
        if len(self.step_seqs) > self.steps_done:
            self._after_failure(len(self.step_seqs) - 1)

    def _after_failure(self, i: int) -> None:
        gc.collect()
        self._collect_silent()
        self._scan_state(i)
        self._scan_held(i)

    # ---- patches ------------------------------------------------------------------------------
    def _patch(self, stack: contextlib.ExitStack) -> None:
        def patch(owner: Any, name: str, make: Callable[[Any], Any]) -> None:
            original = getattr(owner, name)
            setattr(owner, name, make(original))
            stack.callback(setattr, owner, name, original)

        watch = self

        def tensor_backward(original):
            def backward(self, gradient=None, retain_graph=None, create_graph=False,
                         inputs=None):
                if watch._blind:
                    return original(self, gradient, retain_graph, create_graph, inputs)
                outer = not watch._in_backward  # not the torch-function re-dispatch
                if outer:
                    watch._before_backward([self], retain_graph, create_graph)
                # counted after _before_backward: its walk of the saved tensors (saved_bytes)
                # reads stale ones too, and those reads are not the backward's
                seen = watch._failed_count()
                watch._in_backward += 1
                try:
                    return original(self, gradient, retain_graph, create_graph, inputs)
                finally:
                    watch._in_backward -= 1
                    if outer:
                        watch._note_tripped(seen)
            return backward

        def autograd_backward(original):
            def backward(tensors, *args, **kwargs):
                if watch._blind:
                    return original(tensors, *args, **kwargs)
                outer = not watch._in_backward
                if outer:
                    roots = [tensors] if isinstance(tensors, torch.Tensor) else list(tensors)
                    retain = kwargs.get("retain_graph", args[1] if len(args) > 1 else None)
                    create = kwargs.get("create_graph", args[2] if len(args) > 2 else False)
                    watch._before_backward(roots, retain, create)
                seen = watch._failed_count()  # after the doctor's own reads (see above)
                watch._in_backward += 1
                try:
                    return original(tensors, *args, **kwargs)
                finally:
                    watch._in_backward -= 1
                    if outer:
                        watch._note_tripped(seen)
            return backward

        patch(torch.Tensor, "backward", tensor_backward)
        patch(torch.autograd, "backward", autograd_backward)
        from torch.nn.utils import clip_grad

        for fn_name in ("clip_grad_norm_", "clip_grad_value_"):
            original = getattr(torch.nn.utils, fn_name)
            wrapped = self._clip_wrapper(original, fn_name)
            for owner in (torch.nn.utils, clip_grad):
                if getattr(owner, fn_name, None) is original:
                    setattr(owner, fn_name, wrapped)
                    stack.callback(setattr, owner, fn_name, original)
            names = self.code_globals if self.code_globals is not None else {}
            for key, value in list(names.items()):  # `from torch.nn.utils import clip_...`
                if value is original:
                    names[key] = wrapped
                    stack.callback(names.__setitem__, key, original)
        from torch.optim import optimizer as optim_module

        stack.callback(optim_module.register_optimizer_step_pre_hook(self._step_pre).remove)
        stack.callback(optim_module.register_optimizer_step_post_hook(self._step_post).remove)
        patch(torch.optim.Optimizer, "zero_grad", self._zero_grad_wrapper)
        patch(nn.Module, "zero_grad", self._zero_grad_wrapper)
        patch(nn.Module, "train", self._train_wrapper)
        functional = torch.nn.functional
        for fn_name in _LOGIT_LOSSES:
            original = getattr(functional, fn_name)
            wrapped = self._loss_wrapper(original, fn_name)
            patch(functional, fn_name, lambda _, w=wrapped: w)
            names = self.code_globals if self.code_globals is not None else {}
            for key, value in list(names.items()):  # `from torch.nn.functional import ...`
                if value is original:
                    names[key] = wrapped
                    stack.callback(names.__setitem__, key, original)
        scaler_cls = torch.amp.GradScaler
        patch(scaler_cls, "scale", self._scale_wrapper)
        patch(scaler_cls, "unscale_", self._unscale_wrapper)
        patch(scaler_cls, "step", self._unscale_wrapper)
        for owner, name in self.unwatched:
            patch(owner, name, self._blind_wrapper)

    def _blind_wrapper(self, original: Callable) -> Callable:
        """``original``, run with every watcher looking away: not the loop's own call."""
        watch = self

        @functools.wraps(original)
        def unwatched(*args, **kwargs):
            watch._blind += 1
            try:
                return original(*args, **kwargs)
            finally:
                watch._blind -= 1
        return unwatched

    def _step_pre(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._blind:
            return
        self._optimizer_mark = len(self.loc.mutations) if self.loc is not None else 0
        self._note_stale_step(optimizer)
        self.step_sites.setdefault(id(optimizer), sites.user_site())
        file, line = sites.user_site()
        self.events.append(LoopEvent(backwards=len(self.backwards), kind="step", file=file,
                                     line=line, step=self.step))

    def _zero_grad_wrapper(self, original: Callable) -> Callable:
        watch = self

        def zero_grad(owner, *args, **kwargs):
            if watch._blind:
                return original(owner, *args, **kwargs)
            file, line = sites.user_site()
            watch.events.append(LoopEvent(backwards=len(watch.backwards), kind="zero_grad",
                                          file=file, line=line, step=watch.step))
            params = owner.parameters() if isinstance(owner, nn.Module) else \
                (p for g in owner.param_groups for p in g["params"])
            ids = frozenset(id(p) for p in params)
            watch.resets.append(GradReset(step=watch.step, file=file, line=line, ids=ids))
            for pid in ids & watch._stale.keys():
                del watch._stale[pid]
            return original(owner, *args, **kwargs)
        return zero_grad

    def _train_wrapper(self, original: Callable) -> Callable:
        watch = self

        def train(module, mode=True):
            if watch._blind:
                return original(module, mode)
            outer = not watch._in_train_call
            watch._in_train_call += 1
            try:
                if outer and not mode:
                    watch._order += 1
                    watch.mode_calls.append(ModeCall(
                        step=watch.step, order=watch._order,
                        covered=frozenset(id(m) for m in module.modules()),
                        frames=sites.user_frames(),
                        on_layer=_mode_kind(module) is not None))
                return original(module, mode)
            finally:
                watch._in_train_call -= 1
        return train

    def _loss_wrapper(self, original: Callable, name: str) -> Callable:
        watch = self
        squash = _LOGIT_LOSSES[name]

        def loss(input, *args, **kwargs):
            if isinstance(input, torch.Tensor) and torch.is_grad_enabled() and not watch._blind:
                watch._check_loss_input(name, squash, input)
            return original(input, *args, **kwargs)
        return loss

    def _check_loss_input(self, name: str, squash: str, x: torch.Tensor) -> None:
        """Probabilities where the loss takes logits: by the op that made them, or (for the
        class losses) by their values: every row >= 0 and summing to 1."""
        node = _origin_node(x)
        origin = ""
        if node is not None and type(node).__name__.lower().startswith(squash):
            origin = squash
        elif squash == "softmax" and x.dim() >= 2 and x.is_floating_point():
            with torch.no_grad():
                v = x.detach()
                if bool((v >= 0).all()) and bool(
                        torch.allclose(v.sum(1), torch.ones((), dtype=v.dtype), atol=1e-4)):
                    origin = "values"
        if not origin:
            return
        file, line = sites.user_site()
        at = self.squash_sites.get(_seq(node)) if node is not None else None
        self.probability_losses.append(ProbabilityLoss(
            step=self.step, loss=name, file=file, line=line, origin=origin,
            origin_file=at.file if at else "", origin_line=at.line if at else 0,
            origin_module=at.module if at else ""))

    def separated(self, earlier: int, later: int) -> bool:
        """Whether an optimiser step or a gradient reset ran between the backward calls at
        indexes ``earlier`` and ``later`` of :attr:`backwards`: passes kept apart on purpose
        (two optimisers, a two-pass optimiser), not one loss split in several."""
        return any(earlier < e.backwards <= later for e in self.events)

    def _step_post(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        """Note the writes into saved tensors that an optimiser's step made (the weights),
        and the gradients it applied (a later backward must not add to them)."""
        if self._blind:
            return
        self.optimizers[id(optimizer)] = weakref.ref(optimizer)
        for group in optimizer.param_groups:
            for p in group["params"]:
                self._stale.pop(id(p), None)
                if p.grad is not None:
                    self._applied[id(p)] = AppliedGrad(
                        param=weakref.ref(p), grad=weakref.ref(p.grad),
                        version=p.grad._version, step=self.step)
        if self.loc is not None:
            for m in self.loc.mutations[self._optimizer_mark:]:
                self.optimizer_writes.setdefault(id(m), self.step)

    def _failed_count(self) -> int:
        return len(self.loc.failed) if self.loc is not None else 0

    def _note_tripped(self, since: int) -> None:
        """Keep the mutations whose saved tensor was found changed while a backward ran. The
        locator also notes stale reads by anything else (a meter, a graph walk after the
        optimiser step); only a backward's reads mean backward tripped on the write."""
        loc = self.loc
        if loc is None:
            return
        stale = {id(info) for info in loc.failed[since:]}
        for m in loc.mutations:
            if id(m.saved) in stale and id(m) not in self.tripped:
                self.tripped[id(m)] = len(self.backwards) - 1
                found = loc.found_versions.get(id(m.saved))
                if found is not None:
                    self.tripped_versions[id(m)] = found

    def step_of_seq(self, seq: int) -> int:
        """The step in which the autograd node numbered ``seq`` was built (-1: before the
        examination)."""
        if seq < self.examine_seq:
            return -1
        return max((k for k, s in enumerate(self.step_seqs) if s <= seq), default=-1)

    def _hook_model(self, stack: contextlib.ExitStack) -> None:
        if self.model is None:
            return
        for p in self.model.parameters():
            if p.requires_grad:
                self.grad_counts.setdefault(id(p), 0)
                handle = p.register_post_accumulate_grad_hook(self._on_grad)
                stack.callback(handle.remove)
        owned = {_storage_key(t) for t in
                 list(self.model.parameters()) + list(self.model.buffers())}
        for m in self.model.modules():
            handle = m.register_forward_pre_hook(self._forward_pre(owned))
            stack.callback(handle.remove)

    def _on_grad(self, p: torch.Tensor) -> None:
        self.grad_counts[id(p)] = self.grad_counts.get(id(p), 0) + 1

    def _forward_pre(self, owned: set) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            if not module.training and (kind := _mode_kind(module)) is not None:
                self._note_eval_forward(module, kind, self._trains_through(module, args))
            t = next((a for a in args if isinstance(a, torch.Tensor)), None)
            if t is None or t.requires_grad or t.is_inference() or _storage_key(t) in owned:
                return  # (inference tensors keep no version counter)
            key = (id(module), t.data_ptr(), tuple(t.shape), t.dtype, t._version)
            seen = self._forward_seen.get(key)
            # the parameters' versions: a forward of the same batch with weights changed in
            # between (sharpness-aware minimisation perturbs them) is another computation
            versions = tuple(p._version for p in module.parameters())
            if (seen is not None and seen.tensor() is t
                    and seen.backwards < self._backwards_this_step and seen.versions == versions):
                self._repeat = True
            elif seen is None or seen.tensor() is not t or seen.versions != versions:
                self._forward_seen[key] = SeenForward(tensor=weakref.ref(t),
                                                      backwards=self._backwards_this_step,
                                                      versions=versions)
        return hook

    @staticmethod
    def _trains_through(module: nn.Module, args: tuple) -> bool:
        """Whether this forward of ``module`` builds a graph: a frozen feature extractor (no
        input and no weight of it requires grad) runs in eval mode on purpose."""
        return torch.is_grad_enabled() and (
            any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)
            or any(p.requires_grad for p in module.parameters(recurse=False)))

    def _note_eval_forward(self, module: nn.Module, kind: str, trains: bool) -> None:
        if sum(1 for e in self.eval_forwards if e.step == self.step) >= MAX_EVAL_FORWARDS:
            return
        self._order += 1
        self.eval_forwards.append(EvalForward(
            step=self.step, order=self._order,
            module=f"{self._label(module)} ({type(module).__name__})", module_id=id(module),
            kind=kind, grad=trains, backwards=self._backwards_this_step,
            frames=sites.user_frames(), module_ref=weakref.ref(module),
            model_training=self.model.training if self.model is not None else True))

    def _joins(self, nodes: list[Any]) -> tuple[Site, ...]:
        """The user's lines (of ``nodes``, a backward's graph) that built a node after this
        step's last write into weights from a node built before it, in this step."""
        if self.loc is None or not self.step_seqs:
            return ()
        start = self.step_seqs[-1]
        writes = [m.node_seq for m in self.loc.mutations if m.weight and m.node_seq >= start]
        if not writes:
            return ()
        cut = max(writes)
        found = []
        for node in nodes:
            if _is_leaf_node(node) or _seq(node) < cut:
                continue
            if any(c is not None and not _is_leaf_node(c) and start <= _seq(c) < cut
                   for c, _ in node.next_functions):
                site = self.node_sites.get(_seq(node))
                if site is not None and site not in found:
                    found.append(site)
        return tuple(found)

    def _note_cut(self, func: Any, args: tuple, kwargs: dict, outs: list) -> None:
        """Follow where tensors lose their path to the parameters: an output that does not
        require grad, made from an input that did (a new cut) or from a cut tensor (the same
        cut, carried along)."""
        if any(t.requires_grad for t in outs):
            return
        inputs = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        inputs += [b for a in (*args, *kwargs.values()) if isinstance(a, list | tuple)
                   for b in a if isinstance(b, torch.Tensor)]
        cut = next((self.cut_from[a] for a in inputs if a in self.cut_from), None)
        if cut is None:
            if not any(a.requires_grad for a in inputs):
                return
            grad_off = not torch.is_grad_enabled()
            file, line = sites.user_site()
            if grad_off:
                frames = sites.user_frames()
                file, line = sites.grad_off_site(frames) or (file, line)
            name = getattr(func, "__name__", "an op")
            cut = Cut(file=file, line=line, grad_off=grad_off,
                      op="data" if name == "__get__" else name)
        for t in outs:
            self.cut_from[t] = cut

    def _note_new_leaf(self, func: Any, outs: list) -> None:
        """A tensor the user's code made that requires grad with no graph behind it (not a
        parameter): a loss re-made this way (``torch.tensor(loss.item(), requires_grad=True)``)
        reaches no parameter."""
        for t in outs:
            if t.requires_grad and t.grad_fn is None and t not in self.cut_from \
                    and not isinstance(t, nn.Parameter):
                file, line = sites.user_site()
                self.cut_from[t] = Cut(file=file, line=line, grad_off=False,
                                       op=getattr(func, "__name__", "an op"))

    def _check_modes_and_grads(self, file: str, line: int, leaves: set[int]) -> None:
        """Before a backward: did this step's forward run a mode-dependent module in eval
        mode (still in eval now, so it was not a separate evaluation)? Will this backward add
        to gradients an optimiser step already applied?"""
        seen = {e.module_id for e in self.trained_in_eval if e.step == self.step}
        for e in self.eval_forwards:
            module = e.module_ref() if e.module_ref is not None else None
            if (e.step == self.step and e.grad and e.backwards == self._backwards_this_step
                    and module is not None and not module.training
                    and e.module_id not in seen):
                self.trained_in_eval.append(e)
                seen.add(e.module_id)
        for pid in leaves & self._applied.keys():
            applied = self._applied[pid]
            stale = StaleAdd(file=file, line=line, backward=len(self.backwards),
                             applied_at=applied.step)
            if pid in self._stale:  # adds more: the step's last such backward is named
                self._stale[pid] = stale
                continue
            p = applied.param()
            if p is not None and p.grad is not None and p.grad is applied.grad() \
                    and p.grad._version == applied.version:
                self._stale[pid] = stale

    def _note_stale_step(self, optimizer: Any) -> None:
        """Before an optimiser steps: which of its gradients hold contributions that an
        earlier step already applied (a backward added to them and nothing reset them)."""
        stale = {}
        for group in optimizer.param_groups:
            for p in group["params"]:
                mark = self._stale.get(id(p))
                applied = self._applied.get(id(p))
                if mark is not None and applied is not None and p.grad is applied.grad():
                    stale[id(p)] = mark
        if stale and not any(k.step == self.step for k in self.kept):
            last = max(stale.values(), key=lambda m: m.backward)  # the last backward
            self.kept.append(GradsKept(step=self.step, file=last.file, line=last.line,
                                       params=len(stale), applied_at=last.applied_at,
                                       ids=frozenset(stale)))

    # ---- backward ----------------------------------------------------------------------------
    def _before_backward(self, roots: list[torch.Tensor], retain: Any, create: Any) -> None:
        file, line = sites.user_site()
        self._collect_silent()
        seqs: set[int] = set()
        leaves: set[int] = set()
        alive = graph_nodes(roots)
        alive_leaves: list[Any] = []
        for node in alive:
            if _is_leaf_node(node):
                leaves.add(id(node.variable))
                alive_leaves.append(node)
            else:
                seqs.add(_seq(node))
        joins = self._joins(alive)
        del alive
        params = [] if self.model is None else list(self.model.parameters())
        counted = frozenset(id(p) for p in params)
        storages: dict = {}
        saved = 0
        for r in roots:
            if isinstance(r, torch.Tensor):
                saved += saved_bytes(r, r.device, storages, counted)
        earliest = self.step
        low = min(seqs) if seqs else None
        if low is not None and low < self.step_seqs[-1]:
            earliest = max(k for k, s in enumerate(self.step_seqs) if s <= low) \
                if low >= self.examine_seq else -1
        if earliest < self.step:
            for seq in seqs & self._carriers.keys():
                c = self._carriers[seq]
                record = self.held.get(c.label)
                if record is None:
                    record = self.held[c.label] = Held(label=c.label, file=c.file, line=c.line,
                                                       first_step=c.step, built_step=c.step,
                                                       last_step=c.step,
                                                       name=c.name, attribute=c.attribute,
                                                       numel=c.numel, container=c.container)
                record.read = True
                record.last_step = self.step
                record.nodes.append(len(seqs))
                record.saved.append(saved)
        self._check_modes_and_grads(file, line, leaves)
        self.reached |= leaves
        if self.model is not None:
            for node in alive_leaves:  # trained leaves the model does not list
                v = node.variable
                if isinstance(v, nn.Parameter) and id(v) not in self._model_params:
                    self.stray[id(v)] = weakref.ref(v)
        if not leaves & self._model_params:  # the model's parameters, listed once at start
            for r in roots:
                cut = self.cut_from.get(r) if isinstance(r, torch.Tensor) else None
                if cut is not None:
                    self.loss_cuts.append(LossCut(step=self.step, file=file, line=line,
                                                  cut=cut, leaf=r.grad_fn is None
                                                  and r.requires_grad))
                    break
        self.backwards.append(BackwardCall(
            step=self.step, file=file, line=line, retain=retain is True, create=bool(create),
            nodes=len(seqs), saved=saved, seqs=frozenset(seqs), earliest_step=earliest,
            repeated_forward=self._repeat, leaves=frozenset(leaves), joins=joins,
        ))
        self._repeat = False
        self._backwards_this_step += 1
        if any(isinstance(r, torch.Tensor) and r in self._scaled_roots for r in roots):
            self._scaled_params |= leaves
        for s in self.silent:  # a backward runs while the silently changed tensor is held
            if not s.used and s.packed() is not None:
                s.used = True

    # ---- clipping and the scaler ----------------------------------------------------------
    def _clip_wrapper(self, original: Callable, name: str) -> Callable:
        watch = self

        def clip(parameters, *args, **kwargs):
            if watch._blind:
                return original(parameters, *args, **kwargs)
            params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
            file, line = sites.user_site()
            hit = [p for p in params if id(p) in watch._scaled_params and p.grad is not None]
            out = original(params, *args, **kwargs)
            limit = args[0] if args else kwargs.get("max_norm", kwargs.get("clip_value", 0.0))
            if hit:
                scaler = watch._scaler_ref() if watch._scaler_ref is not None else None
                scale = float(scaler.get_scale()) if scaler is not None else None
                norm = float(out) if isinstance(out, torch.Tensor) else None
                watch.clips.append(ClipCall(step=watch.step, file=file, line=line, function=name,
                                            scaled=len(hit), total=len(params), scale=scale,
                                            norm=norm, limit=float(limit)))
            return out
        return clip

    def _scale_wrapper(self, original: Callable) -> Callable:
        watch = self

        def scale(scaler, outputs):
            if not watch.scale_site.file:
                watch.scale_site = sites.user_site()
            out = original(scaler, outputs)
            if scaler.is_enabled():
                watch._scaler_ref = weakref.ref(scaler)
                for t in (out if isinstance(out, list | tuple) else [out]):
                    if isinstance(t, torch.Tensor):
                        watch._scaled_roots[t] = True
            return out
        return scale

    def _unscale_wrapper(self, original: Callable) -> Callable:
        watch = self

        def unscale(scaler, optimizer, *args, **kwargs):
            watch.scaled_optimizers.add(type(optimizer))
            if original.__name__ == "step" and not watch.scaler_step_site.file:
                watch.scaler_step_site = sites.user_site()
            # scaler.step() calls unscale_ itself when the loop did not: that is no unscale_
            # line of the loop's own
            if original.__name__ == "unscale_" and not watch.unscale_site.file \
                    and not watch._in_scaler_step:
                watch.unscale_site = sites.user_site()
            stepping = original.__name__ == "step"
            watch._in_scaler_step += stepping
            try:
                out = original(scaler, optimizer, *args, **kwargs)
            finally:
                watch._in_scaler_step -= stepping
            for group in optimizer.param_groups:
                for p in group["params"]:
                    watch._scaled_params.discard(id(p))
            return out
        return unscale

    # ---- silent writes ------------------------------------------------------------------------
    def _on_set_data(self, t: torch.Tensor) -> None:
        """``t.data = y`` swaps the memory of ``t``: a tensor a live graph saved then reads y."""
        loc = self.loc
        key = _storage_key(t)
        refs = loc._saved.get(key) if loc is not None and key is not None else None
        live = [p for p in (r() for r in refs or ()) if p is not None]
        if not live:
            return
        file, line = sites.user_site()
        info = live[-1].info
        self.silent.append(SilentWrite(
            step=self.step, file=file, line=line, op="x.data = ...", shape=tuple(t.shape),
            saved_by=f"{info.op} at {place(info.file, info.line)}", packed=weakref.ref(live[-1]),
        ))

    def _collect_silent(self) -> None:
        """Turn the locator's writes that left the version unchanged into silent writes."""
        loc = self.loc
        if loc is None:
            return
        loc._settle()
        new = loc.mutations[self._mutations_seen:]
        self._mutations_seen = len(loc.mutations)
        for m in new:
            if m.version_after is None or m.version_after != m.version_before:
                continue
            if (m.file, m.line) not in self.data_sites:
                continue  # not through .data: torch's own kernels (a GRU's gates) do this
            packed = None
            for refs in loc._saved.values():
                for r in refs:
                    p = r()
                    if p is not None and p.info is m.saved:
                        packed = r
            self.silent.append(SilentWrite(
                step=self.step, file=m.file, line=m.line, op=m.op, shape=m.saved.shape,
                saved_by=f"{m.saved.op} at {place(m.saved.file, m.saved.line)}",
                packed=packed or (lambda: None),
            ))

    # ---- end of step scans -------------------------------------------------------------------
    def _label(self, obj: Any) -> str:
        name = self.names.get(id(obj))
        return name if name is not None else type(obj).__name__

    def _scan_state(self, step: int) -> None:
        """Buffers and plain tensor attributes of the model that are leaves requiring grad."""
        if self.model is None:
            return
        params = {id(p) for p in self.model.parameters()}
        if self.optimizer is not None:
            params |= {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        for m in self.model.modules():
            for attr, value in list(vars(m).items()) + list(m._buffers.items()):
                if not isinstance(value, torch.Tensor) or isinstance(value, nn.Parameter):
                    continue
                if value.requires_grad and value.is_leaf and id(value) not in params:
                    kind = "a buffer" if attr in m._buffers else "a tensor attribute"
                    label = f"{self._label(m)}.{attr} ({kind})"
                    self.state_requiring_grad.setdefault(label, (m, attr))
