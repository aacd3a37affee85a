"""Lesson 10's exercise: fix a learner's streaming loop until the doctor is quiet.

A small GRU reads BATCH parallel streams of text chunk by chunk and carries its hidden state
from one chunk to the next, so it can remember across chunk boundaries. The learner writes
``train_step(s, i)`` (``s``: a :class:`Stream` holding the model, optimiser, data and the
carried ``s.hidden``); :func:`check` runs it under the doctor and then compares what it
learned with truncated backpropagation through time (the right fix: carry the hidden
state's values, cut its graph with ``detach()``).

It rejects the bug (the hidden state keeps its graph: backward fails on step 1), and both
band-aids lesson 10 warns against: ``retain_graph=True`` (the graph grows every step, and the
optimiser soon changes weights an old graph saved) and resetting the hidden state every chunk
(the doctor is quiet, but the model no longer remembers across chunks: it learns something
else).

``check(train_step, record=True)`` (the lesson's exercise cell) also records the attempt, as
:func:`mahiax.lessons.check` does for the catalog's exercises, under the exercise name
:data:`EXERCISE`: in the learner's run store and, on a hub, sent to the class service
(:func:`mahiax.classroom.class_view.record_learner_check`).
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
from mahiax.doctor.report import Report

VOCAB, EMB, HID, SEQ, BATCH = 24, 12, 16, 12, 4  # characters, widths, chunk length, streams
STEPS = 6
TOLERANCE = 1e-6  # float32, same operations in the same order: equal up to rounding
EXERCISE = "doctor-hidden-state"  # what a recorded attempt names this exercise


class CharGRU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, EMB)
        self.rnn = nn.GRU(EMB, HID, batch_first=True)
        self.head = nn.Linear(HID, VOCAB)

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None):
        out, h = self.rnn(self.embed(x), h)  # (BATCH, SEQ, HID), (1, BATCH, HID)
        return self.head(out), h  # (BATCH, SEQ, VOCAB)


@dataclass(kw_only=True)
class Stream:
    """Everything one training run keeps: model, optimiser, the text, the carried state."""

    model: CharGRU
    optimizer: torch.optim.Optimizer
    text: torch.Tensor  # (BATCH, N) token ids: BATCH parallel streams
    hidden: torch.Tensor | None = None  # (1, BATCH, HID): the GRU state after the last chunk

    def batch(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Chunk ``i``: inputs (BATCH, SEQ) and next-character targets (BATCH, SEQ)."""
        x = self.text[:, i * SEQ:(i + 1) * SEQ]
        y = self.text[:, i * SEQ + 1:(i + 1) * SEQ + 1]
        return x, y


def make_stream(seed: int = 0) -> Stream:
    """A fresh run: the same weights and text for every call with the same seed."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(0, VOCAB, (BATCH, SEQ * (STEPS + 2) + 1), generator=g)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = CharGRU()
    return Stream(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=3e-3), text=text)


def loss_of(s: Stream, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))


def buggy_step(s: Stream, i: int) -> None:
    """The learner's first loop: the hidden state keeps this chunk's graph."""
    x, y = s.batch(i)
    logits, s.hidden = s.model(x, s.hidden)
    loss = loss_of(s, logits, y)
    s.optimizer.zero_grad()
    loss.backward()
    s.optimizer.step()


def retain_graph_step(s: Stream, i: int) -> None:
    """Band-aid: retain_graph=True silences 'backward through the graph a second time'."""
    x, y = s.batch(i)
    logits, s.hidden = s.model(x, s.hidden)
    loss = loss_of(s, logits, y)
    s.optimizer.zero_grad()
    loss.backward(retain_graph=True)
    s.optimizer.step()


def reset_step(s: Stream, i: int) -> None:
    """Band-aid: start every chunk from a zero state; no graph carried, no memory either."""
    x, y = s.batch(i)
    logits, _ = s.model(x, None)
    loss = loss_of(s, logits, y)
    s.optimizer.zero_grad()
    loss.backward()
    s.optimizer.step()


def fixed_step(s: Stream, i: int) -> None:
    """Truncated backpropagation through time: carry the values, cut the graph."""
    x, y = s.batch(i)
    logits, hidden = s.model(x, s.hidden)
    s.hidden = hidden.detach()
    loss = loss_of(s, logits, y)
    s.optimizer.zero_grad()
    loss.backward()
    s.optimizer.step()


def candidates() -> dict[str, Callable[[Stream, int], None]]:
    """The bug, the band-aids lesson 10 warns against, and the fix, as candidates."""
    return {
        "buggy": buggy_step,
        "band-aid: retain_graph=True": retain_graph_step,
        "band-aid: reset the hidden state every chunk": reset_step,
        "fixed": fixed_step,
    }


@dataclass(kw_only=True)
class Result:
    holds: bool
    message: str
    report: Report
    # why it does not hold, in short names that stay the same from run to run (what a
    # recorded attempt keeps): the kinds of the doctor's findings, then what was measured
    # ("raises RuntimeError", "weights unmoved", ...); empty when it holds
    reasons: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return f"[{'PASS' if self.holds else 'NOT YET'}] {self.message}"


def not_quiet(report: Report) -> Result:
    """NOT YET for a candidate the doctor found something in: the first finding, or the
    error, with where."""
    first = report.findings[0] if report.findings else None
    said = (f"{first.kind} at {first.where}" if first is not None
            else f"{report.error.type} at step {report.error.step}")
    reasons = list(dict.fromkeys(report.kinds()))  # each kind once, in the report's order
    if report.error is not None:
        reasons.append(f"raises {report.error.type}")
    return Result(holds=False, report=report, reasons=reasons,
                  message=f"the doctor is not quiet yet: {said} (print(result.report))")


def recorded(exercise: str, result: Result, store: str | Path | None) -> Result:
    """``result``, once the attempt it answers is recorded as :func:`mahiax.lessons.check`
    records one: in the learner's run store and, on a hub, sent to the class service. A
    store that cannot be written, or a class service that does not take it, costs a warning
    (at the learner's cell), never the answer."""
    from mahiax.classroom.class_view import record_learner_check

    record_learner_check(exercise, passed=result.holds, reasons=result.reasons,
                         message=result.message, store=store, stacklevel=3)
    return result


def max_gap(a: nn.Module, b: nn.Module) -> float:
    """The largest absolute difference between two models' parameters, in order."""
    return max(float((p - q).detach().abs().max())
               for p, q in zip(a.parameters(), b.parameters(), strict=True))


def unmoved(steps: int, what: str) -> str:
    """What a checker says of a run whose weights are exactly where they started."""
    return (f"The weights are exactly where they started after {steps} {what}: no optimiser "
            "step changed them (a zero_grad() between backward() and step() leaves step() no "
            "gradient to apply, for one).")


def _what_differs(s: Stream) -> tuple[str, str]:
    """What the run measurably did otherwise than truncated backpropagation through time,
    or, when nothing singles one out, the two things that reference does: (its short name,
    the words)."""
    if s.hidden is None:
        return "hidden state not carried", (
            "s.hidden is None after the last chunk: the hidden state must carry its values "
            "to the next chunk; detach it, do not drop it.")
    if max_gap(s.model, make_stream().model) == 0.0:
        return "weights unmoved", unmoved(STEPS, "chunks")
    return "wrong weights", (
        "The reference starts each chunk from the previous chunk's hidden state (values "
        "carried, graph cut) and applies each chunk's gradient once: zero_grad(), "
        "backward(), step().")


def check(train_step: Callable[[Stream, int], None], *, record: bool = False,
          store: str | Path | None = None) -> Result:
    """Run ``train_step(s, i)`` for STEPS chunks under the doctor, then compare what it learned
    with truncated backpropagation through time from the same start. ``record``: also record
    the attempt in the learner's run store (``store``: by default the one this kernel
    writes), as the lesson's exercise cell does."""
    result = _check(train_step)
    return recorded(EXERCISE, result, store) if record else result


def _check(train_step: Callable[[Stream, int], None]) -> Result:
    if not callable(train_step):
        raise TypeError("a candidate is a function train_step(s, i) for one chunk")
    s = make_stream()
    # a partial, not a lambda: the doctor reads the learner's own file for the line to change
    report = examine(functools.partial(train_step, s), STEPS, model=s.model,
                     optimizer=s.optimizer)
    if not report.ok:
        return not_quiet(report)
    ref = make_stream()
    for i in range(STEPS):
        fixed_step(ref, i)
    diff = max_gap(s.model, ref.model)
    if s.hidden is None or diff > TOLERANCE:
        reason, why = _what_differs(s)
        return Result(holds=False, reasons=[reason], message=(
            "the doctor is quiet, but the model did not learn what it should: the weights "
            f"differ from truncated backpropagation by up to {diff:.3g}. " + why
        ), report=report)
    return Result(holds=True,
                  message=f"the doctor is quiet over {STEPS} chunks and the weights match "
                        "truncated backpropagation through time", report=report)
