"""What every corpus case shares: the loop it hands the doctor, seeded data, and the markers
that say which line the doctor must name."""

from __future__ import annotations

import importlib
import itertools
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
_MARK = re.compile(r"#\s*doctor\[([\w-]+)\]:\s*([\w-]+)\s*$")

# where a case keeps the state its bug is about (``STATE``), and the architectures (``ARCH``)
STATES = ("attribute", "dict", "list", "closure", "global", "plain-object", "local", "none")
ARCHS = ("mlp", "cnn", "gan", "rnn", "lstm", "actor-critic", "amp", "multi-task", "ema",
         "teacher-student", "transformer", "sam", "other")


@dataclass(kw_only=True)
class Loop:
    """One training loop as the doctor takes it: ``step(i)`` runs step ``i``."""

    step: Callable[[int], object]
    model: nn.Module | None
    optimizer: torch.optim.Optimizer | None
    scaler: object = None


def data(i: int, batch: int = 16, width: int = 8, classes: int = 3
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch ``i``: inputs ``(batch, width)`` and class labels ``(batch,)``, seeded by ``i``."""
    g = torch.Generator().manual_seed(i)
    return torch.randn(batch, width, generator=g), torch.randint(0, classes, (batch,),
                                                                 generator=g)


def expected(module: ModuleType, loop: str = "buggy") -> set[tuple[str, int]]:
    """``{(kind, line)}`` marked ``# doctor[<loop>]: <kind>`` in the case's file."""
    found = set()
    for number, text in enumerate(Path(module.__file__).read_text().splitlines(), 1):
        m = _MARK.search(text)
        if m and m.group(1) == loop:
            found.add((m.group(2), number))
    return found


def cases() -> dict[str, ModuleType]:
    """Every case module of the corpus, by name."""
    names = sorted(p.stem for p in HERE.glob("*.py") if p.stem not in ("__init__", "common"))
    return {n: importlib.import_module(f"tests.doctor_corpus.{n}") for n in names}


def run(loop: Loop, steps: int = 6) -> BaseException | None:
    """Run ``steps`` steps of ``loop`` without the doctor; the exception it raised, or None."""
    try:
        for i in range(steps):
            loop.step(i)
    except Exception as exc:  # the point: a buggy loop's own error is what it shows
        return exc
    return None


def graph_nodes(t: object) -> int:
    """How many autograd nodes ``t`` keeps alive (0 for a number or a tensor without a graph)."""
    if not isinstance(t, torch.Tensor) or t.grad_fn is None:
        return 0
    seen, todo = set(), [t.grad_fn]
    while todo:
        fn = todo.pop()
        if fn is not None and fn not in seen:
            seen.add(fn)
            todo.extend(f for f, _ in fn.next_functions)
    return len(seen)


class StaleGradWatch:
    """At every step of ``optimizer``, whether some parameter's ``.grad`` still holds a
    backward contribution that an earlier step already applied (a gradient never zeroed)."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.held: dict[int, set[int]] = {id(p): set() for p in self.params}
        self.applied: dict[int, set[int]] = {id(p): set() for p in self.params}
        self.stale_steps = 0
        self._ids = itertools.count()
        for p in self.params:
            p.register_hook(self._on_grad(p))
        optimizer.register_step_pre_hook(self._before_step)
        optimizer.register_step_post_hook(self._after_step)

    def _on_grad(self, p: torch.Tensor):
        def hook(grad: torch.Tensor) -> None:  # runs before the grad is added into p.grad
            if p.grad is None or not p.grad.any():
                self.held[id(p)] = set()
            self.held[id(p)].add(next(self._ids))

        return hook

    def _before_step(self, optimizer: object, args: object, kwargs: object) -> None:
        if any(self.held[id(p)] & self.applied[id(p)] for p in self.params):
            self.stale_steps += 1

    def _after_step(self, optimizer: object, args: object, kwargs: object) -> None:
        for p in self.params:
            self.applied[id(p)] = set(self.held[id(p)])


@dataclass(kw_only=True)
class WatchedLoop(Loop):
    """A loop whose optimiser a :class:`StaleGradWatch` watches."""

    watch: StaleGradWatch
