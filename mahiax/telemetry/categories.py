"""Memory by category: parameters, gradients, optimizer state, memory saved for backward.

Each category is the bytes of the distinct storages its tensors use on one device. A storage
is counted once, in the first category that reaches it, in this order: parameters,
gradients, optimizer state, saved for backward. A view and its base share one storage (key:
data pointer and size), and an ``mm`` that saved a weight holds the parameter's own storage,
so it adds nothing to "saved".

Why the autograd graph is walked and not hooked: ``torch.autograd.graph.saved_tensors_hooks``
would see every saved tensor as it is packed, but PyTorch skips its in-place version check
for tensors saved through those hooks, so an accounting built on them would silence the very
"modified by an inplace operation" errors this lab teaches. Reading the nodes' ``_saved_*``
attributes only unpacks what autograd already holds: the version check stays on (a tensor
modified since it was saved raises when read, and is skipped here).

Cost: the attribute names of each node type are learned once and only the tensor-valued ones
are read after that; a storage key is three C calls. What remains is PyTorch's own work, one
Python object per step of the walk: reaching the nodes (PyTorch builds a Python object for each
node through ``next_functions``, and the graph was just written, so it is read from cold
caches), reading the saved tensors (a new Python tensor each), their storage keys, then the
gradients and optimizer state. Python-level tuning does not move it: skipping the
``AccumulateGrad`` nodes, looking at each saved tensor once by ``id`` and an inlined gradient
loop were timed against this code and came out the same. That is why training runs read the
categories every ``categories_every`` steps, not at every step (one reading's time and its
share of a step: ``make bench``, row ``telemetry``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from mahiax.metric_keys import MEMORY_FIELDS

# storage key (data pointer, bytes) -> bytes; one per distinct storage
Storages = dict[tuple[int, int], int]

CATEGORY_KEYS = ("params", "grads", "optimizer", "saved", "other")  # stacking order


@dataclass(kw_only=True)
class MemoryCategories:
    """One device's memory split by what holds it. Bytes; ``None`` where not measured."""

    device: str  # "cpu" or "cuda:0"
    label: str  # "CPU", "CPU, no GPU found" or "GPU <name>"
    params: int  # distinct parameter storages on the device
    grads: int  # their gradients
    optimizer: int  # optimizer state tensors (Adam's moments, step counters on the device)
    saved: int  # tensors the given graph saved for backward, not counted above
    other: int | None = None  # CPU: the rest of the live tensors (full scan only);
    #                           CUDA: allocated minus the categories above
    total: int | None = None  # CPU: live tensor bytes (full scan only); CUDA: memory_allocated
    reserved: int | None = None  # CUDA: memory_reserved (the caching allocator's pool)
    peak: int | None = None  # CUDA: max_memory_allocated; CPU: largest total seen (full only)

    @property
    def known(self) -> int:
        """Bytes of the four named categories."""
        return self.params + self.grads + self.optimizer + self.saved

    def as_metrics(self) -> dict[str, float]:
        """Store keys ``mem/params`` ... ``mem/peak``; figures not measured are left out."""
        out: dict[str, float] = {}
        for name, key in MEMORY_FIELDS.items():
            value = getattr(self, name)
            if value is not None:
                out[key] = float(value)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        return asdict(self)


def device_filter(device: torch.device):
    """A predicate ``tensor -> bool``: does it live on ``device``? (Cheap: one or two C calls.)"""
    if device.type == "cpu":
        return lambda t: t.is_cpu
    index = device.index

    def on_gpu(t: torch.Tensor) -> bool:
        return t.is_cuda and t.get_device() == index

    return on_gpu


def add_storage(t: torch.Tensor, storages: Storages) -> int:
    """Count ``t``'s storage into ``storages`` if new; returns the bytes added (0 if seen)."""
    try:
        s = t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # sparse and other storage-less layouts
        return 0
    n = s.nbytes()
    if not n:
        return 0
    key = (s.data_ptr(), n)
    if key in storages:
        return 0
    storages[key] = n
    return n


def add_tensors(tensors: Iterable[Any], on_device, storages: Storages) -> int:
    """Bytes of the new storages among ``tensors`` (non-tensors and other devices skipped)."""
    added = 0
    for t in tensors:
        if isinstance(t, torch.Tensor) and on_device(t):
            added += add_storage(t, storages)
    return added


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every tensor in the optimizer's per-parameter state (moments, step counters, ...)."""
    found: list[torch.Tensor] = []
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                found.append(value)
            elif isinstance(value, list | tuple):
                found.extend(v for v in value if isinstance(v, torch.Tensor))
    return found


# ---- the autograd graph ------------------------------------------------------------------

# node type -> the attributes that hold saved tensors (learned from the first node read)
_SAVED_NAMES: dict[type, tuple[str, ...]] = {}
# node type -> every ``_saved_*`` attribute (and ``saved_tensors``) it has
_CANDIDATES: dict[type, list[str]] = {}


def saved_names(node: Any) -> tuple[str, ...]:
    """The attributes of ``node``'s type through which it holds tensors saved for backward.

    Built-in nodes expose ``_saved_<name>`` (tensors, optional tensors, tensor lists, but
    also sizes, strides and scalars); a custom ``autograd.Function`` exposes
    ``saved_tensors``. Names whose value is not tensor-like are dropped, so later nodes of
    the type read only what matters. A name that could not be read (the graph was freed, or
    the tensor modified in place) is kept, and the type is learned again next time.
    """
    kind = type(node)
    names = _SAVED_NAMES.get(kind)
    if names is not None:
        return names
    candidates = _CANDIDATES.get(kind)
    if candidates is None:  # dir() builds and sorts every name: once per type
        candidates = [a for a in dir(node) if a.startswith("_saved_")]
        if has_attribute(node, "saved_tensors"):
            candidates.append("saved_tensors")
        _CANDIDATES[kind] = candidates
    keep, settled = [], True
    for name in candidates:
        try:
            value = getattr(node, name)
        except RuntimeError:  # freed or modified since saved: type unknown, keep it
            keep.append(name)
            settled = False
            continue
        if _tensor_like(value):
            keep.append(name)
    names = tuple(keep)
    if settled:
        _SAVED_NAMES[kind] = names
    return names


def _tensor_like(value: Any) -> bool:
    """A tensor, an absent optional tensor, or a (possibly empty) sequence of tensors."""
    if value is None or isinstance(value, torch.Tensor):
        return True
    if isinstance(value, list | tuple):
        return all(isinstance(v, torch.Tensor) or v is None for v in value)
    return False


def has_attribute(node: Any, name: str) -> bool:
    """``hasattr`` for autograd nodes: reading ``saved_tensors`` raises a RuntimeError (not an
    AttributeError) when a saved tensor was freed or modified in place since it was saved, as
    in a graph kept alive by a caught in-place error; the attribute exists all the same."""
    try:
        return hasattr(node, name)
    except RuntimeError:
        return True


def grad_fn_of(t: torch.Tensor) -> Any:
    """``t.grad_fn``, or None where reading it raises: a view from a multi-output op (unbind,
    split) whose base was changed in place refuses it ("Output 0 of Unbind is a view ...").
    A meter must read the memory of a broken program too, not crash it."""
    try:
        return t.grad_fn
    except RuntimeError:
        return None


def saved_bytes(
    root: torch.Tensor | None,
    device: torch.device,
    storages: Storages,
    counted: frozenset[int] = frozenset(),
) -> int:
    """Bytes of the new storages on ``device`` that the graph behind ``root`` holds saved for
    backward.

    Walks every node reachable from ``root.grad_fn`` once. After a backward without
    ``retain_graph`` the saved tensors are freed (reading one raises) and count 0; a graph
    kept by a backward told to retain it, or older graphs reached through state never
    detached, still hold theirs and count them. ``counted`` holds the ``id`` of tensors
    whose storages are already in ``storages`` (the parameters): a saved tensor that is one
    of them, or a view of one (a linear layer saves ``weight.t()``), is skipped without
    reading its storage. The loop is written out, without a helper call per tensor: it runs
    every training step.
    """
    if root is None:
        return 0
    first = grad_fn_of(root)
    if first is None:
        return 0
    cpu, index = device.type == "cpu", device.index
    names_of = _SAVED_NAMES
    visited: set[int] = set()
    alive: list[Any] = []  # the nodes seen: a live wrapper keeps its id unique meanwhile
    found: list[torch.Tensor] = []
    stack: list[tuple[Any, int]] = [(first, 0)]  # next_functions entries: (node, input nr)
    while stack:
        node = stack.pop()[0]
        if node is None:
            continue
        key = id(node)
        if key in visited:
            continue
        visited.add(key)
        alive.append(node)
        names = names_of.get(type(node))
        if names is None:
            names = saved_names(node)
        for name in names:
            try:
                value = getattr(node, name)
            except RuntimeError:  # freed by a backward, or modified in place since saved
                continue
            if isinstance(value, torch.Tensor):
                found.append(value)
            elif value is not None:
                found.extend(v for v in value if isinstance(v, torch.Tensor))
        stack.extend(node.next_functions)
    added = 0
    for t in found:
        if id(t) in counted or id(t._base) in counted:
            continue
        if not (t.is_cpu if cpu else t.is_cuda and t.get_device() == index):
            continue
        try:
            s = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # sparse and other storage-less layouts
            continue
        n = s.nbytes()
        k = (s.data_ptr(), n)
        if n and k not in storages:
            storages[k] = n
            added += n
    return added
