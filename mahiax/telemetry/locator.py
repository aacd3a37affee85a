"""Find the in-place operation behind "modified by an inplace operation": the mutation locator.

Backward checks that every tensor autograd saved still has the version it had when saved; an
in-place write bumps the version, and backward fails. Anomaly mode (the summary's advice) then
prints where the failing node was built in the forward, i.e. where the tensor was *saved*. The
line that *mutated* it, the one to fix, can be anywhere later: further down the forward, under
``no_grad``, or in ``optimizer.step()`` while a retained graph still needs the old weights.

:func:`locate_mutations` watches both ends and names the write:

- saving: a ``saved_tensors_hooks`` pack hook notes each saved tensor's storage, version,
  shape, the aten op that saved it, the module, and the user's ``file:line``;
- writing: a ``TorchDispatchMode`` sees every aten op; for each argument the op's schema marks
  as written (``Tensor(a!)``), a storage that a live saved tensor uses is a :class:`Mutation`.

Module paths come from global forward (pre-)hooks; source lines from the Python stack, skipping
frames inside torch and this file.

It must not change what the model computes, and one detail needs care: once any pack hook is
installed, autograd stops checking versions itself (``SavedVariable::unpack`` only checks
tensors saved without hooks), so a naive hook would turn the error into silently wrong
gradients. The pack hook therefore also saves the tensor, hook-free, in a tiny autograd node of
its own (a "probe"); when unpack finds a changed version it unpacks the probe, and PyTorch
itself raises its usual error, word for word (for a tensor saved as an op's *output*, e.g.
by ``exp``, the probe must hold a detached alias to avoid a reference cycle, and the message
loses its ", which is output 0 of Exp" clause). The probe costs one extra, empty, autograd
node per saved tensor. Foreach ops (``optimizer.step()`` with ``foreach=True``) need the same care:
see :class:`_WriteWatcher`.

Cost: every aten op makes a round trip through Python, so a training step runs several
times slower under the locator (the doctor, which installs it, is timed against the plain
step by ``make bench``, row ``doctor``). A debugging tool: turn it on around the step that
fails, not for a whole run.

Limits: it relies on three private torch functions (``_get_sequence_nr`` to tell which op a
save belongs to, ``_pop/_push_saved_tensors_default_hooks`` to build probes without recursion),
fine for the exactly pinned torch of this project; saved-tensor hooks pushed *inside* the
block (activation checkpointing, ``save_on_cpu``) take precedence, so saves they handle are
not seen; writes made from other threads get no user source line.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.autograd.graph import saved_tensors_hooks
from torch.nn.modules import module as nn_module
from torch.utils._python_dispatch import TorchDispatchMode

VERSION_ERROR = "modified by an inplace operation"  # PyTorch's message, checked on re-raise

_SKIP_PREFIX = os.path.dirname(torch.__file__) + os.sep
_SKIP_EXACT = {
    os.path.abspath(__file__),
    os.path.abspath(contextlib.__file__),
    os.path.abspath(functools.__file__),
}


@dataclass(kw_only=True)
class SavedTensor:
    """A tensor autograd saved for backward, and where that happened."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    version: int  # the version backward will expect
    op: str  # aten op that saved it, e.g. "aten.mm" ("an op" when unknown)
    module: str  # "model.memory"; "" outside any module
    file: str
    line: int
    node_seq: int = -1  # sequence number of the autograd node that saved it (when it was built)

    def describe(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        return f"{dtype}{list(self.shape)}"


@dataclass(kw_only=True)
class Mutation:
    """An in-place write to the storage of a saved tensor that backward will still read."""

    op: str  # e.g. "aten.copy_", "aten.index_put_", "aten._foreach_add_"
    module: str  # module whose forward was running; "" outside any module
    file: str  # user source file and line that issued the write
    line: int
    saved: SavedTensor  # the most recently saved tensor this write invalidated
    also: int  # how many other saved tensors on the same storage it invalidated
    version_before: int
    version_after: int | None = None  # None until read back after the write
    tripped_backward: bool = False  # backward failed on the saved tensor
    weight: bool = False  # it wrote into a leaf that requires grad (a weight, under no_grad)
    node_seq: int = -1  # the autograd sequence number when it was made (nodes built later
    # have higher numbers)

    def describe(self) -> str:
        after = "?" if self.version_after is None else self.version_after
        more = f" (and {self.also} more saved on the same storage)" if self.also else ""
        text = (
            f"in-place op {self.op} {_where(self.module, self.file, self.line)} modified a "
            f"{self.saved.describe()} tensor saved by {self.saved.op} "
            f"{_where(self.saved.module, self.saved.file, self.saved.line)}{more}; "
            f"saved at version {self.saved.version}; this write made it {after}"
        )
        if self.version_after is not None and self.version_after == self.version_before:
            text += " (the write bypassed the version counter: backward will silently use it)"
        return text


def _where(module: str, file: str, line: int) -> str:
    place = f"{os.path.basename(file)}:{line}"
    return f"in {module} ({place})" if module else f"at {place}"


class _VersionProbe(torch.autograd.Function):
    """Holds one tensor in an ordinary (hook-free) SavedVariable, so PyTorch checks it."""

    @staticmethod
    def forward(ctx: Any, anchor: torch.Tensor, box: list[torch.Tensor]) -> torch.Tensor:
        ctx.save_for_backward(box[0])
        return anchor.new_empty(0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None]:
        return None, None


class _Packed:
    """What autograd stores instead of a saved tensor while the locator is on."""

    __slots__ = ("tensor", "info", "probe", "__weakref__")

    def __init__(self, tensor: torch.Tensor, info: SavedTensor, probe: torch.Tensor | None):
        self.tensor, self.info, self.probe = tensor, info, probe


class _WriteWatcher(TorchDispatchMode):
    """Forwards every aten op unchanged after letting the locator look at it."""

    def __init__(self, locator: MutationLocator):
        super().__init__()
        self.locator = locator

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if self.locator._busy:
            return func(*args, **kwargs)
        self.locator._on_op(func, args, kwargs)
        if not _op_info(func).foreach:
            return func(*args, **kwargs)
        # A foreach op has no version-bumping (ADInplaceOrView) kernel: on CPU its per-tensor
        # fallback bumps versions through inner in-place calls, which run below this mode and
        # so skip the bump. Restore it, or the locator would hide the very error it explains.
        # (CUDA's fused foreach kernels bump versions themselves; those are left alone.)
        written = [(t, t._version) for t in _written_tensors(func, args, kwargs)]
        out = func(*args, **kwargs)
        torch.autograd.graph.increment_version([t for t, v in written if t._version == v])
        return out


@dataclass(frozen=True, kw_only=True)
class _InForward:
    """A module whose forward is running. The locator keeps a stack of them to name the
    module a saved tensor was saved in, or a write happened in."""

    module_id: int  # id() of the module: its forward ends when the hook sees it again
    path: str  # "model.encoder.0", or the class's name under its parent for an unnamed one


class MutationLocator:
    """Records :class:`Mutation` s while :func:`locate_mutations` is active."""

    def __init__(self, model: nn.Module | None = None):
        self.mutations: list[Mutation] = []
        self.failed: list[SavedTensor] = []  # saved tensors backward found modified
        # id() of a saved tensor in ``failed`` -> the version its latest read found
        self.found_versions: dict[int, int] = {}
        self._names = (
            {id(m): f"model.{n}" if n else "model" for n, m in model.named_modules()}
            if model is not None else {}
        )
        self._modules: list[_InForward] = []  # the forwards running, outermost first
        self._saved: dict[int, list[weakref.ref[_Packed]]] = {}  # storage ptr -> live saves
        self._pending: dict[int, list[SavedTensor]] = {}  # node seq -> saves awaiting op name
        self._last_seq, self._last_op = -1, "an op"
        self._probe_seq, self._probe_owner = -2, -2
        self._unsettled: list[tuple[Mutation, weakref.ref[_Packed]]] = []
        self._busy = False
        self._packs = 0
        self._anchor: torch.Tensor | None = None

    # ---- report -------------------------------------------------------------------------
    def report(self) -> str:
        """Several readable lines: each mutation, and which one backward tripped on."""
        self._settle()
        lines: list[str] = []
        if self.mutations:
            n = len(self.mutations)
            lines.append(f"{n} in-place write{'s' if n > 1 else ''} hit a tensor autograd saved:")
            for i, m in enumerate(self.mutations, 1):
                lines.append(f"  {i}. {m.describe()}")
                if m.tripped_backward:
                    lines.append("     ^ backward failed on this saved tensor")
        else:
            lines.append("No in-place write to a saved tensor was seen while the locator ran.")
        for s in self.failed:
            if not any(m.saved is s for m in self.mutations):
                lines.append(
                    f"Backward found the {s.describe()} tensor saved by {s.op} "
                    f"{_where(s.module, s.file, s.line)} modified, by a write made while the "
                    "locator was not active."
                )
        if self.mutations or self.failed:
            lines.append(
                "Fix: compute a new tensor instead of writing in place (out-of-place), or do "
                "the write after backward (state updates under no_grad after the step)."
            )
        return "\n".join(lines)

    # ---- autograd side: saving ------------------------------------------------------------
    def _node_seq(self) -> int:
        """Sequence number of the newest autograd node, looking through our probes."""
        k = torch._C._autograd._get_sequence_nr() - 1
        return self._probe_owner if k == self._probe_seq else k

    def _pack(self, t: torch.Tensor) -> Any:
        owner = self._node_seq()  # autograd creates a node before saving into it
        module, file, line = self._site()
        info = SavedTensor(shape=tuple(t.shape), dtype=t.dtype, version=t._version, op="an op",
                           module=module, file=file, line=line,
                           node_seq=owner)
        if owner == self._last_seq:  # the op already ran: an output saved after the kernel
            info.op = self._last_op
        else:  # an input saved before the kernel: named when the kernel dispatches
            self._pending.setdefault(owner, []).append(info)
        is_output = t.grad_fn is not None and t.grad_fn._sequence_nr() == owner
        # An output's grad_fn owns this record: a record holding the output itself would make
        # a cycle through C++ that Python's collector cannot see, and a graph kept with
        # retain_graph=True would then live as long as the process. A detached alias (same
        # memory, same version counter) serves backward alike; PyTorch itself saves outputs
        # that way (``tensor_data()``), and autograd re-attaches the grad_fn on unpack.
        held = t.detach() if is_output else t
        packed = _Packed(held, info, self._make_probe(held, owner))
        key = _storage_key(t)
        if key is not None:
            self._saved.setdefault(key, []).append(weakref.ref(packed))
        self._packs += 1
        if self._packs % 4096 == 0:  # graphs freed by backward leave dead entries behind
            self._saved = {
                k: refs for k, refs in self._saved.items() if any(r() is not None for r in refs)
            }
        return packed

    def _make_probe(self, held: torch.Tensor, owner: int) -> torch.Tensor | None:
        # ``held``: what the record keeps (an output's detached alias: no cycle through it)
        self._busy = True  # the probe's own ops are not the user's
        torch._C._autograd._pop_saved_tensors_default_hooks()  # ours: pack only runs on top
        try:
            with torch.enable_grad():  # pack hooks run with grad off; the probe needs a node
                probe = _VersionProbe.apply(self._anchor, [held])
        except (RuntimeError, TypeError):
            probe = None  # e.g. inference tensors; _unpack then raises a copy of the message
        finally:
            torch._C._autograd._push_saved_tensors_default_hooks(self._pack, self._unpack)
            self._busy = False
        if probe is not None:
            self._probe_seq, self._probe_owner = probe.grad_fn._sequence_nr(), owner
        return probe

    def _unpack(self, packed: _Packed) -> torch.Tensor:
        t = packed.tensor
        if t._version != packed.info.version:
            self.failed.append(packed.info)
            self.found_versions[id(packed.info)] = t._version
            for m in self.mutations:
                if m.saved is packed.info:
                    m.tripped_backward = True
            if packed.probe is not None:
                _ = packed.probe.grad_fn.saved_tensors  # PyTorch raises its version error
            raise RuntimeError(
                f"one of the variables needed for gradient computation has been {VERSION_ERROR}"
                f": [{t.type()} {list(t.shape)}] is at version {t._version}; expected version "
                f"{packed.info.version} instead."
            )
        return t

    # ---- dispatch side: writing -------------------------------------------------------------
    def _on_op(self, func: Any, args: tuple, kwargs: dict) -> None:
        self._settle()
        name = _op_info(func).name
        k = self._node_seq()
        if k != self._last_seq:  # first kernel since a node was created: that node's op
            self._last_seq, self._last_op = k, name
            for info in self._pending.pop(k, ()):
                info.op = name
            self._pending.clear()  # older ones had no kernel here (custom Functions)
        if not self._saved:
            return
        for t in _written_tensors(func, args, kwargs):
            self._check_write(name, t)

    def _check_write(self, op: str, t: torch.Tensor) -> None:
        key = _storage_key(t)
        refs = self._saved.get(key) if key is not None else None
        if not refs:
            return
        live = [p for p in (r() for r in refs) if p is not None]
        if len(live) < len(refs):
            self._saved[key] = [weakref.ref(p) for p in live]
        # only writes that invalidate a save: later writes to an already stale one add nothing
        broken = [p for p in live if p.tensor._version == p.info.version]
        if not broken:
            return
        newest = broken[-1]
        module, file, line = self._site()
        m = Mutation(op=op, module=module, file=file, line=line, saved=newest.info,
                     also=len(broken) - 1,
                     version_before=newest.tensor._version, weight=t.is_leaf and t.requires_grad,
                     node_seq=torch._C._autograd._get_sequence_nr())
        self.mutations.append(m)
        self._unsettled.append((m, weakref.ref(newest)))

    def _settle(self) -> None:
        """Read versions after writes: they are bumped only once the kernel has returned."""
        for m, ref in self._unsettled:
            packed = ref()
            if packed is not None:
                m.version_after = packed.tensor._version
        self._unsettled.clear()

    # ---- where are we -------------------------------------------------------------------------
    def _site(self) -> tuple[str, str, int]:
        module = self._modules[-1].path if self._modules else ""
        frame = sys._getframe(1)
        while frame is not None:
            if not _is_internal(frame.f_code.co_filename):
                return module, frame.f_code.co_filename, frame.f_lineno
            frame = frame.f_back
        return module, "?", 0

    def _enter_module(self, module: nn.Module, args: Any) -> None:
        path = self._names.get(id(module))
        if path is None:
            parent = self._modules[-1].path if self._modules else ""
            path = f"{parent}.{type(module).__name__}" if parent else type(module).__name__
        self._modules.append(_InForward(module_id=id(module), path=path))

    def _exit_module(self, module: nn.Module, args: Any, output: Any) -> None:
        for i in range(len(self._modules) - 1, -1, -1):  # also unwinds forwards that raised
            if self._modules[i].module_id == id(module):
                del self._modules[i:]
                return


@functools.cache
def _is_internal(path: str) -> bool:
    """Frames the user did not write: torch itself, this file, contextlib/functools glue."""
    return path.startswith(_SKIP_PREFIX) or os.path.abspath(path) in _SKIP_EXACT


def _storage_key(t: torch.Tensor) -> int | None:
    try:
        storage = t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # sparse and other storage-less layouts
        return None
    return storage.data_ptr() if storage.nbytes() else None


@dataclass(frozen=True, kw_only=True)
class _OpInfo:
    name: str  # "aten.copy_"
    foreach: bool  # an aten._foreach_* op
    written: tuple[tuple[int, str, bool], ...]  # (index, name, kwarg_only) of Tensor(a!) args


@functools.cache
def _op_info(func: Any) -> _OpInfo:
    """What the locator needs from an op's schema, computed once per op overload."""
    written = tuple(
        (i, a.name, a.kwarg_only)
        for i, a in enumerate(func._schema.arguments)
        if a.alias_info is not None and a.alias_info.is_write
    )
    name = str(func.overloadpacket)
    return _OpInfo(name=name, foreach=name.startswith("aten._foreach_"), written=written)


def _written_tensors(func: Any, args: tuple, kwargs: dict) -> Iterator[torch.Tensor]:
    for i, name, kwarg_only in _op_info(func).written:
        value = args[i] if not kwarg_only and i < len(args) else kwargs.get(name)
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, list | tuple):  # foreach ops write lists of tensors
            yield from (v for v in value if isinstance(v, torch.Tensor))


@contextlib.contextmanager
def locate_mutations(model: nn.Module | None = None) -> Iterator[MutationLocator]:
    """Record in-place writes to saved tensors inside the block; explain version errors.

    Pass the model to get module paths like ``model.memory`` (otherwise class names). If a
    RuntimeError containing PyTorch's "modified by an inplace operation" leaves the block, it
    is re-raised with the locator's report appended (``from`` the original). Every hook and
    mode is removed on exit, also when the block raises.
    """
    loc = MutationLocator(model)
    loc._anchor = torch.empty(0, requires_grad=True)
    try:
        with contextlib.ExitStack() as stack:
            stack.callback(nn_module.register_module_forward_pre_hook(loc._enter_module).remove)
            stack.callback(
                nn_module.register_module_forward_hook(loc._exit_module, always_call=True).remove
            )
            stack.enter_context(saved_tensors_hooks(loc._pack, loc._unpack))
            stack.enter_context(_WriteWatcher(loc))
            yield loc
    except RuntimeError as err:
        if VERSION_ERROR not in str(err):
            raise
        raise RuntimeError(f"{err}\n\nMutation locator:\n{loc.report()}") from err
    finally:
        loc._settle()
        loc._modules.clear()
        loc._pending.clear()


# ---- what anomaly mode says, for comparison --------------------------------------------------
_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


@dataclass(kw_only=True)
class AnomalyReport:
    """Anomaly mode's forward traceback for a failing backward, and the error itself."""

    text: str  # "Error detected in XBackward0. Traceback of forward call that caused ..."
    error: BaseException | None
    warnings: list[str] = field(default_factory=list)  # every warning text, for reference

    def frames(self) -> list[tuple[str, int]]:
        """(file, line) of each frame in the forward traceback, outermost first."""
        return [(f, int(n)) for f, n in _FRAME.findall(self.text)]


def anomaly_says(fn: Callable[[], object]) -> AnomalyReport:
    """Run ``fn`` under ``set_detect_anomaly(True)``; return its traceback text and the error.

    Anomaly mode reports through a UserWarning, "Error detected in XBackward0. Traceback of
    forward call that caused the error: ...": the forward line where the failing node saved
    its tensors, which for an in-place error is not the line that changed them.
    """
    error: BaseException | None = None
    with warnings.catch_warnings(record=True) as caught, torch.autograd.set_detect_anomaly(True):
        warnings.simplefilter("always")
        try:
            fn()
        except Exception as exc:  # the point is to show it, not to handle it
            error = exc
    texts = [str(w.message) for w in caught]
    markers = ("Error detected in", "Traceback of forward call", "Previous calculation")
    anomaly = "\n".join(t for t in texts if any(m in t for m in markers))
    return AnomalyReport(text=anomaly, error=error, warnings=texts)
