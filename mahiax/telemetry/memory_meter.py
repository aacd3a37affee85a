"""A memory meter that reports what this process really holds, on the device it is given.

The summary's profiler printed ``torch.cuda.memory_allocated() / 2**20`` and got 0 MB on a
CPU-only machine: the CUDA caching allocator was never used, so it truthfully counts nothing,
and the zero says nothing about the model. A :class:`MemoryMeter` measures **one device,
named by its caller**: ``MemoryMeter("cpu")`` (the default) counts the bytes of every storage
held by a live CPU tensor; ``MemoryMeter("cuda")`` / ``"cuda:N"`` reads that GPU's caching
allocator. It never picks a GPU because one exists: a model trained on the CPU of a GPU
machine is measured on the CPU (the allocator would say 0 there too). Process RSS comes with
every reading. A field that does not apply is ``None``, never ``0``.

Two readings:

- :meth:`MemoryMeter.read`: totals (:class:`MemoryReading`). On a CPU this is a scan of
  every live object (tens of milliseconds): read it every few hundred steps.
- :meth:`MemoryMeter.categories`: parameters, gradients, optimizer state and memory saved
  for backward (:class:`~mahiax.telemetry.categories.MemoryCategories`), cheap enough for
  every step; with ``full=True`` on a CPU it adds the scan to fill "other" and the total.

:meth:`MemoryReading.format` writes MiB (2**20 bytes, :mod:`mahiax.units`): the summary's
"MB" was that unit too.

How CPU tensor bytes are found, and why both sources are needed:

- ``gc.get_objects()`` yields every Python tensor object (parameters, buffers, activations a
  caller still names, optimizer state).
- Tensors that autograd saved for backward often have no Python object any more
  (``y = (x * w).exp().sum(); del x`` keeps ``x`` and the ``exp`` result alive inside ``y``'s
  graph). They are reached by walking each tensor's ``grad_fn`` graph and reading the nodes'
  ``_saved_*`` attributes; retained graphs are exactly the memory that grows under the
  summary's retain-graph band-aid.

Storages are counted once: views and aliases share a storage, keyed by its data pointer and
size. Cost of the scan: it visits every object the garbage collector tracks, and a training
process holds hundreds of thousands of them (``torch.optim`` imports its compiler stack) for a
few hundred tensors; ``gc.get_objects()`` and picking the tensors out take most of it, which
is why the tensors are picked by type with C-level iterators and why recorded runs take this
reading only every ``memory_every`` steps (one scan's time: ``make bench``, row ``telemetry``).
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from itertools import compress
from typing import Any

import psutil
import torch
from torch import nn

from mahiax.telemetry.categories import (
    MemoryCategories,
    Storages,
    add_storage,
    add_tensors,
    device_filter,
    grad_fn_of,
    has_attribute,
    optimizer_tensors,
    saved_bytes,
    saved_names,
)
from mahiax.units import MIB, format_bytes

ALLOWED = "'cpu', 'cuda', 'cuda:N' or a torch.device of one of those"


def legacy_cuda_reading() -> float:
    """What the summary's profiler printed as "MB": CUDA allocator bytes / 2**20 (0.0 on a CPU
    machine)."""
    return torch.cuda.memory_allocated() / MIB


class ProcessRSS:
    """This process's resident set size, read every step: on Linux one ``pread`` of
    ``/proc/self/statm`` kept open (psutil opens and parses the file at each call, a few
    times slower), elsewhere psutil. After :meth:`close` it reads through psutil."""

    def __init__(self) -> None:
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._process: psutil.Process | None = None
        try:
            self._fd: int | None = os.open("/proc/self/statm", os.O_RDONLY)
        except OSError:
            self._fd = None

    def bytes(self) -> int:
        if self._fd is None:
            if self._process is None:
                self._process = psutil.Process()
            return int(self._process.memory_info().rss)
        return int(os.pread(self._fd, 128, 0).split()[1]) * self._page  # resident pages

    def close(self) -> None:
        """Close the file; nothing else is opened here (``__del__`` runs at interpreter
        shutdown, when importing or starting anything can fail)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()


@dataclass(kw_only=True)
class MemoryReading:
    """One measurement. All sizes in bytes; ``None`` where a figure does not apply."""

    device: str  # "cpu" or "cuda:0"
    label: str  # human text: "CPU, no GPU found", "CPU" or "GPU <name>"
    rss: int  # resident set size of this process (psutil)
    tensor_bytes: int | None = None  # CPU: storage bytes held by live tensors and graphs
    allocated: int | None = None  # CUDA: torch.cuda.memory_allocated
    reserved: int | None = None  # CUDA: torch.cuda.memory_reserved (caching allocator)
    peak: int | None = None  # CUDA: max_memory_allocated; CPU: max tensor_bytes seen

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        """One line, e.g. ``CPU, no GPU found: tensors 12.3 MiB, process RSS 410.2 MiB``."""
        if self.device.startswith("cuda"):
            parts = [
                f"allocated {format_bytes(self.allocated)}",
                f"reserved {format_bytes(self.reserved)}",
                f"peak {format_bytes(self.peak)}",
            ]
        else:
            parts = [f"tensors {format_bytes(self.tensor_bytes)}"]
        parts.append(f"process RSS {format_bytes(self.rss)}")
        return f"{self.label}: " + ", ".join(parts)



def meter_device(device: str | torch.device) -> torch.device:
    """The device a meter measures: ``cpu`` or ``cuda:N`` (``cuda`` is the current GPU).

    Raises ValueError naming what is allowed for anything else, and for a GPU this machine
    does not have.
    """
    if isinstance(device, str):
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise ValueError(
                f"MemoryMeter device {device!r} is not a device; use {ALLOWED}"
            ) from None
    elif isinstance(device, torch.device):
        dev = device
    else:
        raise ValueError(
            f"MemoryMeter device must be {ALLOWED}, not {type(device).__name__} {device!r}"
        )
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise ValueError(f"MemoryMeter measures {ALLOWED}; {str(dev)!r} is not one of those")
    if not torch.cuda.is_available():
        raise ValueError(
            f"MemoryMeter device {str(dev)!r}: no CUDA GPU is available here; measure 'cpu'"
        )
    index = torch.cuda.current_device() if dev.index is None else dev.index
    count = torch.cuda.device_count()
    if not 0 <= index < count:
        raise ValueError(
            f"MemoryMeter device {str(dev)!r}: this machine has {count} GPU(s), "
            f"cuda:0..cuda:{count - 1}"
        )
    return torch.device("cuda", index)


class MemoryMeter:
    """Reads memory for one device: ``"cpu"`` (the default), ``"cuda"`` or ``"cuda:N"``.

    Give it the device the measured tensors live on (the trainer's device, the catalog's):
    a CPU run on a GPU machine reads the CPU, a CUDA run reads the allocator.
    """

    def __init__(self, device: str | torch.device = "cpu"):
        self.device = meter_device(device)
        self._on_device = device_filter(self.device)
        self._rss = ProcessRSS()
        self._cpu_peak: int | None = None  # largest CPU total seen (reads and full scans)
        # Parameters and optimizer state keep their storages from step to step (updates are
        # in place), so their lists and storages are kept here and looked up again on every
        # full reading, when other modules are given, or when the optimizer state changes.
        # (A parameter given a new storage by ``p.data = ...`` is seen at the next of those.)
        self._modules: tuple[nn.Module, ...] = ()
        self._params: list[torch.Tensor] = []
        self._param_storages: Storages = {}
        self._param_ids: frozenset[int] = frozenset()
        self._opt_seen: _OptimizerSeen | None = None
        self._opt_storages: Storages = {}

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def label(self) -> str:
        """``GPU <name>``, ``CPU``, or ``CPU, no GPU found`` (so a CPU reading is never taken
        for a GPU's)."""
        if self.is_cuda:
            return f"GPU {torch.cuda.get_device_name(self.device)}"
        return "CPU" if torch.cuda.is_available() else "CPU, no GPU found"

    # -- totals ----------------------------------------------------------------------------

    def read(self) -> MemoryReading:
        """Totals: the allocator's figures on a GPU, live tensor bytes on a CPU (a scan)."""
        rss = self._rss.bytes()
        if self.is_cuda:
            return MemoryReading(
                device=str(self.device),
                label=self.label,
                rss=rss,
                allocated=torch.cuda.memory_allocated(self.device),
                reserved=torch.cuda.memory_reserved(self.device),
                peak=torch.cuda.max_memory_allocated(self.device),
            )
        held = cpu_tensor_bytes()
        self._cpu_peak = max(self._cpu_peak or 0, held)
        return MemoryReading(
            device="cpu", label=self.label, rss=rss, tensor_bytes=held, peak=self._cpu_peak
        )

    # -- by category -----------------------------------------------------------------------

    def categories(
        self,
        model: nn.Module | Iterable[nn.Module],
        optimizer: torch.optim.Optimizer | None = None,
        graph: torch.Tensor | None = None,
        full: bool = False,
    ) -> MemoryCategories:
        """What holds this device's memory now: parameters, gradients, optimizer state, and
        the tensors ``graph`` (a loss) saved for backward.

        ``model`` is a module or several (the model and its loss weighting). Read the graph
        after the forward and before the backward frees it to see the step's activations;
        read it after a backward to see what stays retained (a graph kept on purpose, or older
        graphs reached through state that was never detached). On a GPU the allocator gives
        "other" (allocated minus the four categories), reserved and peak every time; on a CPU
        "other" and the total need ``full=True``, a scan of every live object (its time:
        ``make bench``, row ``telemetry``).
        """
        on = self._on_device
        params = self._parameters(model, refresh=full)
        storages: Storages = dict(self._param_storages)
        n_params = sum(storages.values())
        n_grads = add_tensors([p.grad for p in params], on, storages)
        n_opt = 0
        if optimizer is not None:
            opt = self._optimizer_storages(optimizer, refresh=full)
            n_opt = sum(n for key, n in opt.items() if key not in storages)
            storages.update(opt)
        n_saved = saved_bytes(graph, self.device, storages, self._param_ids)
        cats = MemoryCategories(
            device=str(self.device), label=self.label, params=n_params, grads=n_grads,
            optimizer=n_opt, saved=n_saved,
        )
        if self.is_cuda:
            cats.total = torch.cuda.memory_allocated(self.device)
            cats.other = cats.total - cats.known
            cats.reserved = torch.cuda.memory_reserved(self.device)
            cats.peak = torch.cuda.max_memory_allocated(self.device)
        elif full:
            live = live_storages()
            cats.other = sum(n for key, n in live.items() if key not in storages)
            cats.total = cats.known + cats.other
            self._cpu_peak = max(self._cpu_peak or 0, cats.total)
            cats.peak = self._cpu_peak
        return cats

    def _parameters(self, model: nn.Module | Iterable[nn.Module],
                    refresh: bool) -> list[torch.Tensor]:
        """The distinct parameters of ``model``; their storages go to ``_param_storages``."""
        modules = (model,) if isinstance(model, nn.Module) else tuple(model)
        for m in modules:
            if not isinstance(m, nn.Module):
                raise TypeError(
                    "MemoryMeter.categories takes an nn.Module or an iterable of them, "
                    f"not {type(m).__name__}"
                )
        same = len(modules) == len(self._modules) and all(
            a is b for a, b in zip(modules, self._modules, strict=True)
        )
        if refresh or not same:
            seen: dict[int, torch.Tensor] = {}
            for m in modules:
                for p in m.parameters():
                    seen.setdefault(id(p), p)
            self._modules, self._params = modules, list(seen.values())
            self._param_storages = {}
            add_tensors(self._params, self._on_device, self._param_storages)
            self._param_ids = frozenset(id(p) for p in self._params)
        return self._params

    def _optimizer_storages(self, optimizer: torch.optim.Optimizer, refresh: bool) -> Storages:
        """Storages of the optimizer's state tensors, looked up again when the state dict is
        replaced (``load_state_dict``) or gains entries (parameters getting state); the
        optimizers update their state tensors in place."""
        seen = self._opt_seen
        if refresh or seen is None or seen.optimizer is not optimizer \
                or seen.state is not optimizer.state or seen.entries != len(optimizer.state):
            self._opt_seen = _OptimizerSeen(optimizer=optimizer, state=optimizer.state,
                                            entries=len(optimizer.state))
            self._opt_storages = {}
            add_tensors(optimizer_tensors(optimizer), self._on_device, self._opt_storages)
        return self._opt_storages


@dataclass(frozen=True, kw_only=True)
class _OptimizerSeen:
    """The optimizer whose state storages :class:`MemoryMeter` holds, as it was then: its
    state dict (``load_state_dict`` replaces it) and how many entries it had (parameters
    gain state at their first step)."""

    optimizer: torch.optim.Optimizer
    state: Any  # the optimizer's ``state`` mapping, compared by identity
    entries: int


# ---- the CPU scan --------------------------------------------------------------------------


def cpu_tensor_bytes() -> int:
    """Bytes of the distinct CPU storages held by Python tensors and by their autograd graphs."""
    return sum(live_storages().values())


def live_storages() -> Storages:
    """Every distinct CPU storage held by a live Python tensor or by the autograd graphs they
    lead to (saved tensors, and leaves only a graph still holds)."""
    storages: Storages = {}
    nodes: dict[int, Any] = {}  # id -> node; holding the node keeps its id unique meanwhile
    stack: list[Any] = []
    kinds = _tensor_types()
    objects = gc.get_objects()
    # the tensors among them, filtered by C-level iterators (faster than a list comprehension:
    # no Python-level step per object, and there are hundreds of thousands of objects)
    tensors = list(compress(objects, map(kinds.__contains__, map(type, objects))))
    del objects
    for t in tensors:
        if t.is_cpu:  # also skips meta tensors
            add_storage(t, storages)
        grad_fn = grad_fn_of(t)
        if grad_fn is not None:
            stack.append(grad_fn)
    leaf_types: dict[type, bool] = {}
    while stack:
        node = stack.pop()
        if id(node) in nodes:
            continue
        nodes[id(node)] = node
        names = saved_names(node)
        kind = type(node)
        if kind not in leaf_types:  # AccumulateGrad holds its leaf as `variable`
            leaf_types[kind] = has_attribute(node, "variable")
        if leaf_types[kind]:
            names = (*names, "variable")
        for name in names:
            try:
                value = getattr(node, name)
            except RuntimeError:  # freed, or modified in place since it was saved
                continue
            values = value if isinstance(value, list | tuple) else (value,)
            for v in values:
                if isinstance(v, torch.Tensor) and v.is_cpu:
                    add_storage(v, storages)
        stack.extend(fn for fn, _ in node.next_functions if fn is not None)
    return storages


def _tensor_types() -> set[type]:
    """torch.Tensor and its subclasses: a set lookup per object is cheaper than ``isinstance``,
    which walks the type's bases.

    (isinstance would also trigger deprecation warnings on lazy module attributes.)
    """
    kinds, todo = set(), [torch.Tensor]
    while todo:
        kind = todo.pop()
        if kind not in kinds:
            kinds.add(kind)
            todo.extend(kind.__subclasses__())
    return kinds
