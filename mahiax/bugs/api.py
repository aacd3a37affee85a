"""The catalog's entry points (``bugs.run``, ``bugs.verdict``, ``bugs.check``,
``bugs.locate``), read through :mod:`mahiax.bugs`, which loads this module (and torch) on
first use."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from mahiax.bugs.catalog import get
from mahiax.bugs.harness import on_device, watching_mutations
from mahiax.bugs.outcome import Outcome
from mahiax.bugs.variants import VARIANTS
from mahiax.bugs.verdicts import Verdict, decide, judge_candidate, reasons


def _device(device: str | None) -> contextlib.AbstractContextManager:
    """``on_device(device)``, or the device already in force when ``device`` is None."""
    return contextlib.nullcontext() if device is None else on_device(device)


def run(entry_id: str, variant: str, steps: int | None = None,
        device: str | None = None) -> Outcome:
    """Run one variant (``buggy`` | ``summary`` | ``fixed``) of an entry and measure it
    (on the CPU unless ``device`` names another, e.g. ``"cuda"``)."""
    with _device(device):
        return get(entry_id).run(variant, steps)


def verdict(entry_id: str, steps: int | None = None, device: str | None = None) -> Verdict:
    """Run the buggy, summary and fixed variants, and judge the summary's fix.

    ``device``: where the variants train (the CPU unless given); an entry whose runs need
    one kind of device (the DDP entries use gloo on the CPU) refuses another, saying why.
    """
    entry = get(entry_id)
    with _device(device):
        outs = {v: entry.run(v, steps) for v in VARIANTS}
    label, reason = decide(outs["buggy"], outs["summary"])
    if entry.compare is not None:
        reason = f"{reason}. {entry.compare(outs)}".rstrip(". ") + "."
    return Verdict(label=label, reason=reason, outcomes=outs)


@dataclass(kw_only=True)
class CheckResult:
    """Whether a learner's candidate holds, in plain words, with what was measured."""

    entry: str
    holds: bool
    message: str
    outcome: Outcome
    # why it does not hold, in short stable names (:func:`~mahiax.bugs.verdicts.reasons`)
    reasons: list[str]

    def __str__(self) -> str:
        mark = "PASS" if self.holds else "NOT YET"
        return f"[{mark}] {self.entry}: {self.message}"


def check(entry_id: str, candidate: object, steps: int | None = None,
          device: str | None = None) -> CheckResult:
    """Run a learner's class or function through the entry's measurement and judge it.

    What a candidate is depends on the entry (``get(entry_id).candidate_kind`` says, e.g. a
    subclass of ``TinyMemory`` or a loop function). A wrong kind of candidate gets a
    ``TypeError`` saying what is expected. The candidate runs in exactly the setting of the
    entry's variants (same carried state, steps and optimiser cadence); loop functions are
    also counted: one forward and one backward pass a step, no graph kept after it.
    ``get(entry_id).candidates()`` gives the entry's own variants and the band-aids the
    lessons warn against, as candidates.
    """
    entry = get(entry_id)
    with _device(device):
        out = entry.run("candidate", steps, candidate)
    holds, message = judge_candidate(out)
    return CheckResult(entry=entry_id, holds=holds, message=message, outcome=out,
                       reasons=[] if holds else reasons(out))


def locate(entry_id: str, variant: str = "buggy", steps: int | None = None):
    """Run a variant under the mutation locator: ``(outcome, mutations)``.

    The mutations that backward actually tripped on come first; each names the in-place op,
    the module and the source ``file:line`` that wrote into a tensor autograd had saved.
    """
    with watching_mutations() as locators:
        out = get(entry_id).run(variant, steps)
    muts = [m for loc in locators for m in loc.mutations]
    return out, sorted(muts, key=lambda m: not m.tripped_backward)
