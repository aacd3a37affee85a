"""Lesson 10's second exercise: a loop that validates every other step.

A small classifier with dropout trains on one batch a step and, every ``VALIDATE_EVERY``
steps, measures its accuracy with the lab's :func:`evaluate` helper, which (like most
validation functions) switches the model to eval mode and leaves it there. The learner's
``train_step(r, i)`` (``r``: a :class:`Run`) has the two bugs users report most often
(issue threads of PyTorch users): it never resets the gradients, and after the first
validation it trains in eval mode, dropout off.

:func:`check` runs the candidate under the doctor, then compares its weights with the right
loop from the same start and the same random numbers (the gradients reset before each
backward, the model back in train mode after each validation) and checks that the
validation still ran. It rejects the bug and the band-aids lesson 10 warns against: putting
the model in train mode once before the loop (the validation switches it back), resetting the
gradients once at the start (they add up from step 1), resetting them between backward and
step (no update changes the weights), and dropping the validation (quiet, but nothing is measured).
``check(train_step, record=True)`` also records the attempt, as :mod:`mahiax.doctor.exercise`
does, under the exercise name :data:`EXERCISE`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mahiax.doctor.examine import examine
from mahiax.doctor.exercise import Result, max_gap, not_quiet, recorded, unmoved

WIDTH, HIDDEN, CLASSES, BATCH = 8, 16, 3, 32
STEPS = 6
VALIDATE_EVERY = 2  # the accuracy is measured after steps 1, 3, 5
TOLERANCE = 1e-6  # float32, same operations in the same order: equal up to rounding
EXERCISE = "doctor-eval-loop"  # what a recorded attempt names this exercise


@dataclass(kw_only=True)
class Run:
    """One training run: the model (with dropout), its optimiser, the data, the accuracies
    measured so far."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    seed: int
    accuracy: list[float] = field(default_factory=list)

    def batch(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Training batch ``i``: inputs (BATCH, WIDTH), labels (BATCH,)."""
        g = torch.Generator().manual_seed(self.seed * 1000 + i)
        x = torch.randn(BATCH, WIDTH, generator=g)
        return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()


def evaluate(r: Run) -> float:
    """Accuracy on a held-out batch, in eval mode (dropout off) and without a graph. Like
    most validation helpers, it leaves the model in eval mode."""
    r.model.eval()
    g = torch.Generator().manual_seed(10_000 + r.seed)
    x = torch.randn(4 * BATCH, WIDTH, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    with torch.no_grad():
        return float((r.model(x).argmax(1) == y).float().mean())


def make_run(seed: int = 0) -> Run:
    """A fresh run: the same weights for every call with the same seed."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(WIDTH, HIDDEN), nn.ReLU(), nn.Dropout(0.3),
                              nn.Linear(HIDDEN, CLASSES))
    return Run(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), seed=seed)


def buggy_step(r: Run, i: int) -> None:
    """The learner's loop: no gradient reset; validation every other step."""
    x, y = r.batch(i)
    loss = F.cross_entropy(r.model(x), y)
    loss.backward()
    r.optimizer.step()
    if i % VALIDATE_EVERY == VALIDATE_EVERY - 1:
        r.accuracy.append(evaluate(r))


def fixed_step(r: Run, i: int) -> None:
    """Gradients reset before each backward; train mode back after each validation."""
    x, y = r.batch(i)
    loss = F.cross_entropy(r.model(x), y)
    r.optimizer.zero_grad()
    loss.backward()
    r.optimizer.step()
    if i % VALIDATE_EVERY == VALIDATE_EVERY - 1:
        r.accuracy.append(evaluate(r))
        r.model.train()


def train_once_step(r: Run, i: int) -> None:
    """Band-aid: train mode set once, at the first step; the validation switches it off."""
    if i == 0:
        r.model.train()
    x, y = r.batch(i)
    loss = F.cross_entropy(r.model(x), y)
    r.optimizer.zero_grad()
    loss.backward()
    r.optimizer.step()
    if i % VALIDATE_EVERY == VALIDATE_EVERY - 1:
        r.accuracy.append(evaluate(r))


def zero_once_step(r: Run, i: int) -> None:
    """Band-aid: gradients reset once, at the first step."""
    if i == 0:
        r.optimizer.zero_grad()
    x, y = r.batch(i)
    r.model.train()
    loss = F.cross_entropy(r.model(x), y)
    loss.backward()
    r.optimizer.step()
    if i % VALIDATE_EVERY == VALIDATE_EVERY - 1:
        r.accuracy.append(evaluate(r))


def zero_before_step(r: Run, i: int) -> None:
    """Band-aid: the reset between backward and step: no step changes the weights."""
    x, y = r.batch(i)
    r.model.train()
    loss = F.cross_entropy(r.model(x), y)
    loss.backward()
    r.optimizer.zero_grad()
    r.optimizer.step()
    if i % VALIDATE_EVERY == VALIDATE_EVERY - 1:
        r.accuracy.append(evaluate(r))


def no_validation_step(r: Run, i: int) -> None:
    """Band-aid: the validation dropped; quiet, but nothing is measured."""
    x, y = r.batch(i)
    loss = F.cross_entropy(r.model(x), y)
    r.optimizer.zero_grad()
    loss.backward()
    r.optimizer.step()


def candidates() -> dict[str, Callable[[Run, int], None]]:
    """The bug, the band-aids lesson 10 warns against, and the fix, as candidates."""
    return {
        "buggy": buggy_step,
        "band-aid: model.train() once before the loop": train_once_step,
        "band-aid: zero_grad() once at the start": zero_once_step,
        "band-aid: zero_grad() between backward and step": zero_before_step,
        "band-aid: drop the validation": no_validation_step,
        "fixed": fixed_step,
    }


def _train(train_step: Callable[[Run, int], None], doctor: bool):
    """A fresh run trained with ``train_step`` for STEPS steps from seeded random numbers
    (dropout's masks), under the doctor or not; returns the run and the report."""
    r = make_run()
    with torch.random.fork_rng():
        torch.manual_seed(1)
        if doctor:
            # a partial, not a lambda: the doctor reads the learner's own file for the line
            report = examine(functools.partial(train_step, r), STEPS, model=r.model,
                             optimizer=r.optimizer)
            return r, report
        for i in range(STEPS):
            train_step(r, i)
    return r, None


def check(train_step: Callable[[Run, int], None], *, record: bool = False,
          store: str | Path | None = None) -> Result:
    """Run ``train_step(r, i)`` for STEPS steps under the doctor, then compare its weights
    with the right loop from the same start and random numbers, and its validations.
    ``record``: also record the attempt in the learner's run store (``store``: by default
    the one this kernel writes), as the lesson's exercise cell does."""
    result = _check(train_step)
    return recorded(EXERCISE, result, store) if record else result


def _check(train_step: Callable[[Run, int], None]) -> Result:
    if not callable(train_step):
        raise TypeError("a candidate is a function train_step(r, i) for one step")
    r, report = _train(train_step, doctor=True)
    if not report.ok:
        return not_quiet(report)
    want = STEPS // VALIDATE_EVERY
    if len(r.accuracy) != want:
        return Result(holds=False, reasons=["validation dropped"],
                      message=f"the doctor is quiet, but the loop measured the accuracy "
                             f"{len(r.accuracy)} times, not {want}: keep the validation",
                      report=report)
    ref, _ = _train(fixed_step, doctor=False)
    diff = max_gap(r.model, ref.model)
    if diff > TOLERANCE:
        still = max_gap(r.model, make_run().model) == 0.0
        why = (unmoved(STEPS, "steps") if still else
               "Each update must use this step's gradient only, computed in training mode.")
        return Result(holds=False, reasons=["weights unmoved" if still else "wrong weights"],
                      message=(
            "the doctor is quiet, but the model did not learn what it should: its weights "
            f"differ from the right loop's by up to {diff:.3g}. {why}"), report=report)
    return Result(holds=True,
                  message=f"the doctor is quiet over {STEPS} steps, the accuracy was measured "
                        f"{want} times and the weights match the right loop", report=report)
