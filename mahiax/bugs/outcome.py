"""What one run of a catalog variant measured, and the figures that reveal hidden damage."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any

import torch


def broken_rule(rule: str, why: str) -> dict[str, str]:
    """A rule of the lesson a run broke, as ``Outcome.figures["rules_broken"]`` holds it:
    ``rule``, a short name that stays the same from run to run (what a class's attempts are
    grouped by, e.g. ``"retain_graph=True"``), and ``why``, the plain words a learner reads
    (with what was measured). A dict, so the figures stay JSON."""
    return {"rule": rule, "why": why}


@dataclass(kw_only=True)
class Outcome:
    """The measured result of running one variant of one catalog entry."""

    entry: str
    variant: str  # buggy | summary | fixed | candidate | a probe name
    steps_requested: int
    steps_run: int = 0  # steps that completed (backward and optimiser step done)
    error_type: str | None = None  # e.g. "RuntimeError"
    error_message: str | None = None  # PyTorch's own message, unedited
    error_step: int | None = None  # 0-based step at which it was raised
    graph_nodes: list[int] = field(default_factory=list)  # autograd nodes per step
    tensor_bytes: list[int] = field(default_factory=list)  # live tensor bytes after each step
    # per step: {"step", "params", "grads", "optimizer", "saved", ...} bytes on the catalog's
    # device (MemoryCategories.to_dict()), read after the step's backward
    memory_categories: list[dict[str, object]] = field(default_factory=list)
    max_grad_diff: float | None = None  # largest |grad - clean reference grad| over steps
    state_diff: float | None = None  # entry-specific state error (documented by the entry)
    figures: dict[str, object] = field(default_factory=dict)  # entry-specific measurements
    memory_every: int = 1  # steps between two tensor_bytes readings
    # steps before memory settles: the first optimiser step creates AdamW's moments (with
    # gradient accumulation that is the end of the first cycle)
    memory_warmup_steps: int = 1
    final_state: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def passed(self) -> bool:
        """True when every requested step ran without an exception."""
        return self.error_type is None

    def error_signature(self) -> tuple[str, str] | None:
        """Type and message with numbers and shapes blanked, to compare errors across runs."""
        if self.error_type is None:
            return None
        return self.error_type, normalise_message(self.error_message or "")

    # The first step is a warm-up (optimiser state, the first memory write), so growth is
    # read from the second measured step on (memory: from the end of memory_warmup_steps).

    def graph_growth(self) -> int:
        """Autograd nodes added per step after the first step (0 if flat)."""
        g = self.graph_nodes[1:]
        if len(g) < 2:
            return 0
        return max(0, (g[-1] - g[0]) // (len(g) - 1))

    def memory_growth(self) -> float:
        """Live tensor bytes added per measurement after the warm-up (least-squares slope)."""
        skip = max(1, -(-self.memory_warmup_steps // max(1, self.memory_every)))  # ceil
        ys = self.tensor_bytes[skip:]
        n = len(ys)
        if n < 3:
            return 0.0
        mx, my = (n - 1) / 2, sum(ys) / n
        num = sum((i - mx) * (y - my) for i, y in enumerate(ys))
        den = sum((i - mx) ** 2 for i in range(n))
        return num / den

    def grows(self) -> bool:
        """The graph grows at every step after the first, or memory grows > 4 KiB a step."""
        g = self.graph_nodes[1:]
        graph_up = len(g) >= 2 and all(b > a for a, b in zip(g, g[1:], strict=False))
        return graph_up or self.memory_growth() > 4096

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict, with the derived figures too."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "final_state"}
        d["passed"] = self.passed
        d["graph_growth_per_step"] = self.graph_growth()
        d["memory_growth_per_step"] = self.memory_growth()
        return d


def normalise_message(message: str) -> str:
    """First line of an error message without PyTorch's hint, numbers and shapes as '#'.

    The hint differs with anomaly mode on or off; the error itself does not.
    """
    first = message.strip().splitlines()[0] if message.strip() else ""
    first = first.split(" Hint:")[0]
    first = re.sub(r"\[[^\]]*\]", "[#]", first)
    return re.sub(r"\d+", "#", first)


def graph_nodes(root: torch.Tensor | None) -> Iterator[Any]:
    """Each distinct autograd node reachable from ``root.grad_fn``, once (depth first)."""
    if root is None or root.grad_fn is None:
        return
    seen: set[int] = set()
    stack = [root.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        stack.extend(nxt for nxt, _ in getattr(node, "next_functions", ()))


def graph_size(root: torch.Tensor | None) -> int:
    """Number of distinct autograd nodes reachable from ``root.grad_fn``.

    A graph that carries the previous steps along (state that was never detached, or a
    graph kept by ``retain_graph=True``) shows up as a count that grows every step.
    """
    return sum(1 for _ in graph_nodes(root))
