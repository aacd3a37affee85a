"""The end-of-step scan for graphs that outlive their step, and who holds them.

:class:`HeldScan` is the part of :class:`~mahiax.doctor.watchers.Watch` that, after each step,
finds the live tensors whose graph reaches an earlier step (or was built in this one and may
be carried into the next), and names what holds each: a global, an attribute or buffer, a
closure variable, a dict entry or a list, as far as two containers out. It reads the heap
(``gc``) and the user's source (:mod:`mahiax.doctor.sites`); it keeps numbers, names and
places, never the tensors.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Iterable
from itertools import compress
from types import FrameType
from typing import Any, NamedTuple

import torch
from torch import nn

from mahiax.doctor import sites
from mahiax.doctor.findings import in_notebook
from mahiax.doctor.records import Carrier, Held, Holder
from mahiax.doctor.sites import NO_SITE, Site, Store
from mahiax.telemetry.categories import grad_fn_of, saved_bytes
from mahiax.telemetry.locator import _Packed
from mahiax.telemetry.memory_meter import _tensor_types

MAX_CONTAINER_DEPTH = 2  # a held tensor is named through at most two containers


class OldGraph(NamedTuple):
    """A live tensor whose graph reaches a step before the one just ended. A named tuple:
    the scan leaves these pairs out of the tensor's referrers by their id(), and counts the
    one reference each pair holds to its tensor."""

    tensor: torch.Tensor
    earliest: int  # the earliest step its graph reaches


def _seq(node: Any) -> int:
    return node._sequence_nr()


def _is_leaf_node(node: Any) -> bool:
    return type(node).__name__ == "AccumulateGrad"


def graph_nodes(roots: Iterable[Any]) -> list[Any]:
    """Every autograd node reachable from the ``grad_fn`` of each tensor in ``roots``, once
    each (depth first). The list holds the nodes, so their ids stay unique while it lives."""
    stack = [grad_fn_of(r) for r in roots if isinstance(r, torch.Tensor)]
    seen: set[int] = set()
    nodes: list[Any] = []
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        nodes.append(node)
        stack.extend(n for n, _ in node.next_functions)  # a leaf's AccumulateGrad has none
    return nodes


def _attribute_of(obj: Any, value: Any) -> str | None:
    """The name of the attribute of ``obj`` (in its ``__dict__`` or ``__slots__``) that is
    ``value``, or None. Since Python 3.11 an instance keeps its attributes inline, without a
    dict, so ``gc.get_referrers`` of an attribute's value is the instance itself."""
    if isinstance(obj, type | dict | list | tuple) or type(obj).__name__ == "cell":
        return None
    try:
        names = vars(obj)
    except TypeError:
        names = None
    if isinstance(names, dict):
        key = next((k for k, v in names.items() if v is value), None)
        if isinstance(key, str):
            return key
    for klass in type(obj).__mro__:
        for slot in klass.__dict__.get("__slots__", ()):
            if isinstance(slot, str) and getattr(obj, slot, None) is value:
                return slot
    return None


class HeldScan:
    """The held-graph scan of a :class:`~mahiax.doctor.watchers.Watch` (a mixin: it reads the
    watch's steps, model, records and ignore list)."""

    def _scan_held(self, step: int) -> None:
        """Find live tensors whose graph reaches an earlier step, and who holds them; note
        who holds this step's graphs, in case the next step builds on them.

        A tensor that only the mutation locator's records of saved tensors hold is part of a
        graph, not held by the user: it is skipped by counting references (cheap), before
        asking the garbage collector who refers to the rest (``gc.get_referrers`` walks the
        whole heap, tens of milliseconds each).
        """
        old, fresh = self._carried(step)
        self._carriers.clear()
        if not old and not fresh:
            return
        in_packs: dict[int, int] = {}
        for refs in (self.loc._saved.values() if self.loc is not None else ()):
            for r in refs:
                p = r()
                for held in (p.tensor, p.probe) if p is not None else ():
                    in_packs[id(held)] = in_packs.get(id(held), 0) + 1
        # at most 16 of each, newest first; a tensor only the locator's records hold is skipped
        # references: getrefcount's argument, the loop variable, the pair in `old` / the
        # entry in `fresh`
        held_old = [OldGraph(t, earliest) for t, earliest in old
                    if sys.getrefcount(t) - 3 - in_packs.get(id(t), 0) > 0][:16]
        held_fresh = [t for t in fresh if sys.getrefcount(t) - 3 - in_packs.get(id(t), 0) > 0][:16]
        pairs = {id(pair) for pair in old} | {id(pair) for pair in held_old}
        referrers = self._referrers_of_each([t for t, _ in held_old] + held_fresh)
        exclude = {id(old), id(fresh), id(held_old), id(held_fresh), id(referrers)} | pairs
        for t, earliest in held_old:
            holder = self._holder(t, referrers[id(t)], exclude)
            if holder is not None:
                self._record_held(holder, t, earliest, step)
        for t in held_fresh:
            holder = self._holder(t, referrers[id(t)], exclude)
            if holder is not None:
                file, line = self._store_line(holder, t)
                self._carriers[_seq(t.grad_fn)] = Carrier(
                    label=self._holder_label(holder), file=file, line=line, step=step,
                    name=holder.name, attribute=holder.kind in ("attribute", "buffer"),
                    numel=t.numel(), container=holder.container)
        held_old.clear()
        held_fresh.clear()
        referrers.clear()
        old.clear()
        fresh.clear()

    def _carried(self, step: int) -> tuple[list[OldGraph], list[torch.Tensor]]:
        """Live tensors with a graph, newest first: those whose graph reaches a step before
        ``step`` (each with the earliest step it reaches), and those built in ``step``."""
        start = self.step_seqs[step] if step < len(self.step_seqs) else self.step_seqs[-1]
        old: list[OldGraph] = []
        fresh: list[torch.Tensor] = []
        memo: dict[int, int] = {}  # node id -> lowest sequence number reachable
        keep: list[Any] = []  # nodes seen: keeps their ids unique during the scan
        objects = gc.get_objects()
        # the tensors among them, picked by C-level iterators as the memory meter does
        tensors = list(compress(objects, map(_tensor_types().__contains__, map(type, objects))))
        del objects
        for obj in tensors:
            node = grad_fn_of(obj)
            if node is None or _is_leaf_node(node) or _seq(node) < self.examine_seq:
                continue
            low = self._lowest(node, memo, keep)
            if self.examine_seq <= low < start:
                earliest = max(k for k, s in enumerate(self.step_seqs) if s <= low)
                old.append(OldGraph(obj, earliest))
            elif low >= start:
                fresh.append(obj)
        old.sort(key=lambda pair: -_seq(pair.tensor.grad_fn))
        fresh.sort(key=lambda t: -_seq(t.grad_fn))
        return old, fresh

    def _lowest(self, first: Any, memo: dict[int, int], keep: list[Any]) -> int:
        """The lowest sequence number of a node reachable from ``first`` (memoised)."""
        if id(first) in memo:
            return memo[id(first)]
        order: list[Any] = []
        stack = [first]
        pending: set[int] = set()
        while stack:
            node = stack.pop()
            if node is None or id(node) in memo or id(node) in pending or _is_leaf_node(node):
                continue
            pending.add(id(node))
            keep.append(node)
            order.append(node)
            stack.extend(n for n, _ in node.next_functions)
        # the graph is a DAG built in sequence order: children have lower numbers, so visiting
        # in increasing sequence order settles every child before its parents
        for node in sorted(order, key=_seq):
            low = _seq(node)
            for child, _ in node.next_functions:
                if child is not None and not _is_leaf_node(child) and id(child) in memo:
                    low = min(low, memo[id(child)])
            memo[id(node)] = low
        return memo.get(id(first), _seq(first))

    @staticmethod
    def _referrers_of_each(tensors: list[torch.Tensor]) -> dict[int, list[Any]]:
        """The objects that refer directly to each of ``tensors`` (by id), in one walk of the
        heap: ``gc.get_referrers`` takes tens of milliseconds a call in a full kernel, so all
        the candidates of a scan share one call, and each referrer is filed under the
        candidates among its own referents (cheap)."""
        if not tensors:
            return {}
        wanted = {id(t) for t in tensors}
        found: dict[int, list[Any]] = {id(t): [] for t in tensors}
        refs = gc.get_referrers(*tensors)
        for r in refs:
            if r is tensors or isinstance(r, tuple) and len(r) == len(tensors) and all(
                    a is b for a, b in zip(r, tensors, strict=True)):
                continue  # the caller's list and the call's own argument tuple
            for i in {id(x) for x in gc.get_referents(r)} & wanted:
                found[i].append(r)
        refs.clear()
        return found

    def _holder(self, t: torch.Tensor, refs: list[Any], exclude: set[int]) -> Holder | None:
        """Who holds ``t``, given the objects that refer to it directly."""
        for r in refs:
            if id(r) in exclude or isinstance(r, _Packed | FrameType):
                continue
            h = self._name_reference(r, t, exclude, depth=0)
            if h is not None:
                return h
        return None

    def _name_reference(self, r: Any, t: Any, exclude: set[int], depth: int) -> Holder | None:
        """Name what ``r``, a referrer of ``t``, is: a global, an attribute or buffer of an
        object, a closure variable, or (one level) a list or tuple held by one of those."""
        if isinstance(r, dict):
            key = next((k for k, v in r.items() if v is t), None)
            if not isinstance(key, str):
                return None
            if "__builtins__" in r and "__name__" in r:
                return Holder(kind="global", name=key, file=r.get("__file__") or "")
            for m in self.model.modules() if self.model is not None else ():
                # the model's own modules, named without walking the heap
                if m.__dict__ is r or m._buffers is r:
                    return None if isinstance(m, self.ignore_types) else \
                        Holder(kind="attribute" if m.__dict__ is r else "buffer", name=key, owner=m)
            owners = gc.get_referrers(r)
            for o in owners:
                if id(o) in exclude or o is owners:
                    continue
                if getattr(o, "__dict__", None) is r:
                    return None if isinstance(o, self.ignore_types) else \
                        Holder(kind="attribute", name=key, owner=o)
                if isinstance(o, dict) and o.get("_buffers") is r:  # a module's buffers
                    module = next((m for m in gc.get_referrers(o)
                                   if isinstance(m, nn.Module) and m.__dict__ is o), None)
                    if module is not None and not isinstance(module, self.ignore_types):
                        return Holder(kind="buffer", name=key, owner=module)
            if depth < MAX_CONTAINER_DEPTH:  # a plain dict: named by what holds it
                for o in owners:
                    if id(o) in exclude or o is owners or isinstance(o, FrameType) \
                            or getattr(o, "__dict__", None) is r:
                        continue
                    h = self._name_reference(o, r, exclude | {id(owners)}, depth + 1)
                    if h is not None:
                        return self._contained(h, r, f"dict entry '{key}'")
            return None
        if isinstance(r, list | tuple) and depth < MAX_CONTAINER_DEPTH:
            if isinstance(r, tuple) and r and all(type(c).__name__ == "cell" for c in r):
                return None
            outer = gc.get_referrers(r)
            for rr in outer:
                if id(rr) in exclude or rr is outer or isinstance(rr, FrameType):
                    continue
                h = self._name_reference(rr, r, exclude | {id(outer)}, depth + 1)
                if h is not None:
                    return self._contained(h, r, type(r).__name__)
            return None
        attr = _attribute_of(r, t)
        if attr is not None:  # 3.11+: an object's inline attribute values refer directly
            return None if isinstance(r, self.ignore_types) else \
                Holder(kind="attribute", name=attr, owner=r)
        if type(r).__name__ == "cell":
            for closure in gc.get_referrers(r):
                if not isinstance(closure, tuple):
                    continue
                for fn in gc.get_referrers(closure):
                    if getattr(fn, "__closure__", None) is closure:
                        name = fn.__code__.co_freevars[closure.index(r)]
                        return Holder(kind="closure", name=name, owner=fn,
                                      file=fn.__code__.co_filename)
        return None

    @staticmethod
    def _contained(h: Holder, container: Any, what: str) -> Holder:
        """``h``, the holder of ``container``, as the holder of a tensor inside it: the
        container named from the tensor outwards ("dict entry 'loss' in a list")."""
        h.container = what + (f" in a {h.container}" if h.container else "")
        values = list(container.values()) if isinstance(container, dict) else list(container)
        tensors = [v for v in values if isinstance(v, torch.Tensor)
                   and grad_fn_of(v) is not None]
        if tensors:
            h.members = tensors
            h.count = len(tensors)
        return h

    def _holder_label(self, h: Holder) -> str:
        if h.kind == "global":
            source = "" if not h.file else " (this notebook)" if in_notebook(h.file) else \
                f" ({os.path.basename(h.file)})"
            label = f"global `{h.name}`{source}"
        elif h.kind == "closure":
            label = f"`{h.name}` (a variable of {h.owner.__qualname__})"
        else:
            kind = " (a buffer)" if h.kind == "buffer" else ""
            label = f"{self._label(h.owner)}.{h.name}{kind}"
        return f"a {h.container} in {label}" if h.container else label

    def _record_held(self, h: Holder, t: torch.Tensor, earliest: int, step: int) -> None:
        """Note what ``h`` holds at the end of ``step``: for a list, all its graphs together
        (nodes and saved bytes counted once each)."""
        label = self._holder_label(h)
        record = self.held.get(label)
        if record is not None and record.seen_at == step:  # another tensor of that holder
            record.built_step = min(record.built_step, earliest)
            h.members = None
            return
        held = [v for v in h.members if isinstance(v, torch.Tensor) and
                grad_fn_of(v) is not None] if h.members is not None else [t]
        h.members = None
        nodes: set[int] = set()
        storages: dict = {}
        params = frozenset(
            id(p) for p in (self.model.parameters() if self.model is not None else ()))
        saved = 0
        for v in held:
            nodes |= self._nodes(v)
            saved += saved_bytes(v, v.device, storages, params)
        walked = set().union(*(b.seqs for b in self.backwards))
        backwarded = any(_seq(grad_fn_of(v)) in walked for v in held)
        nodes_n = len(nodes)
        if record is None:
            file, line = self._store_line(h, t)
            record = self.held[label] = Held(label=label, file=file, line=line, first_step=step,
                                             built_step=earliest, last_step=step,
                                             name=h.name, attribute=h.kind in (
                                                 "attribute", "buffer"), numel=t.numel(),
                                             container=h.container)
        record.built_step = min(record.built_step, earliest)
        record.seen_at = step
        record.last_step = step
        record.nodes.append(nodes_n)
        record.saved.append(saved)
        record.items = h.count
        record.backwarded = record.backwarded or backwarded

    def _nodes(self, t: torch.Tensor) -> set[int]:
        alive = graph_nodes([t])
        return {id(node) for node in alive}

    def _store_line(self, h: Holder, t: torch.Tensor) -> Site:
        """The user's line that stores the held tensor (or, failing that, that built it)."""
        known = self.built.get(t)
        built = known.site if known is not None else None
        candidates: list[Store] = []
        if h.kind in ("attribute", "buffer"):
            candidates += sites.class_stores(type(h.owner), h.name)
            for f in self.code_files:
                candidates += [Store(f, n, s) for n, s in sites.storing_lines(f, h.name, True)]
        elif h.kind in ("global", "closure"):
            # a notebook's globals have no __file__: search the step function's own cell
            for f in [h.file] if h.file else sorted(self.code_files):
                candidates += [Store(f, n, s) for n, s in sites.storing_lines(f, h.name, False)]
        if built is not None and h.kind != "entry" and sites.stores_at(
                *built, h.name, h.kind in ("attribute", "buffer")):
            # the line that built it also stores it
            candidates.append(Store(built.file, built.line, setup=False))
        if h.kind == "global":  # not a function's own variable that has the same name
            candidates = [c for c in candidates if sites.binds_global(c.file, c.line, h.name)]
            if built is not None and not sites.binds_global(*built, h.name):
                built = None
        picked = sites.pick_store(candidates, built)
        return picked if picked is not None else NO_SITE

