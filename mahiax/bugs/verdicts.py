"""Verdicts on the summary's fixes, derived from measured outcomes (never stored text).

- ``holds``: the summary's variant runs every step, gradients equal the clean reference,
  nothing grows.
- ``same-error``: it raises the buggy variant's error, at the same step or later.
- ``worse``: it fails earlier than the bug, or with a new error, without running first.
- ``no-effect``: it runs exactly like the buggy variant: the same measured damage.
- ``hides-the-error``: no exception (or one only much later), but the graph or memory grows
  every step, or the gradients are wrong.
- ``wrong-diagnosis``: the buggy error is still there, and what the change does fix (measured
  by a probe) is a different problem from the one that was reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mahiax.bugs.outcome import Outcome

VERDICTS = ("holds", "same-error", "worse", "no-effect", "hides-the-error", "wrong-diagnosis")
GRAD_TOL = 1e-6  # float64: a correct fix agrees to ~1e-12; a wrong gradient is far off


@dataclass(kw_only=True)
class Verdict:
    """A verdict with the one sentence of why, and the outcomes it was read from."""

    label: str
    reason: str
    outcomes: dict[str, Outcome]

    def to_dict(self) -> dict[str, object]:
        return {
            "verdict": self.label,
            "reason": self.reason,
            "outcomes": {k: v.to_dict() for k, v in self.outcomes.items()},
        }


def _where(o: Outcome) -> str:
    return f"{o.error_type} at step {o.error_step}"


def _damage(o: Outcome) -> float:
    return o.state_diff if o.state_diff is not None else 0.0


def damage_words(o: Outcome) -> str:
    """How far off the measured damage is, in words: "is off by X" for an error, or the level
    and its limit for an entry whose damage is a level (``figures["damage_is_level"]``)."""
    if o.figures.get("damage_is_level"):
        return (f"is {_damage(o):.3g} (at most {float(o.figures.get('damage_tol', GRAD_TOL)):.3g} "
                f"counts as fixed)")
    return f"is off by {_damage(o):.3g}"


def _damaged(o: Outcome) -> bool:
    """The entry's measured damage is above the entry's tolerance (default GRAD_TOL)."""
    return _damage(o) > float(o.figures.get("damage_tol", GRAD_TOL))


def same_damage(a: Outcome, b: Outcome) -> bool:
    """Both ran, and the entry's measured damage is the same (and non-zero)."""
    return _damaged(a) and math.isclose(_damage(a), _damage(b), rel_tol=1e-6, abs_tol=1e-9)


def decide(buggy: Outcome, summary: Outcome) -> tuple[str, str]:
    """The verdict label and its reason, from the buggy and summary outcomes."""
    diagnosis = summary.figures.get("diagnosis")  # set by entries that measure one
    if not summary.passed:
        same = summary.error_signature() == buggy.error_signature()
        if same and diagnosis is not None and not diagnosis.get("correct", True):
            return "wrong-diagnosis", str(diagnosis["why"])
        if same:
            if buggy.error_step is not None and summary.error_step < buggy.error_step:
                return "worse", (
                    f"the same error comes earlier: {_where(summary)} instead of "
                    f"{_where(buggy)}"
                )
            return "same-error", f"it raises the bug's own error again ({_where(summary)})"
        if summary.steps_run > 0 and summary.grows():
            return "hides-the-error", (
                f"the original error is gone, but the graph grew by "
                f"{summary.graph_growth()} nodes a step for {summary.steps_run} steps, then "
                f"{_where(summary)}: {first_line(summary.error_message)}"
            )
        if buggy.passed or (
            buggy.error_step is not None and summary.error_step <= buggy.error_step
        ):
            return "worse", (
                f"it fails sooner, with a new error: {_where(summary)} "
                f"({first_line(summary.error_message)})"
                + ("" if buggy.passed else f"; the bug itself failed at step {buggy.error_step}")
            )
        return "worse", f"it trades the bug's error for another: {_where(summary)}"
    # the summary's variant ran every step
    if diagnosis is not None and not diagnosis.get("correct", True):
        return "wrong-diagnosis", str(diagnosis["why"])
    if buggy.passed and same_damage(buggy, summary):
        return "no-effect", (
            f"it runs exactly like the bug, with the same measured damage "
            f"({summary.figures.get('damage', 'state error')} = {_damage(summary):.3g})"
        )
    if summary.grows():
        return "hides-the-error", (
            f"no exception, but the graph grows by {summary.graph_growth()} nodes and memory "
            f"by {summary.memory_growth() / 1024:.1f} KiB every step"
        )
    if summary.max_grad_diff is not None and summary.max_grad_diff > GRAD_TOL:
        return "hides-the-error", (
            f"no exception, but the gradients differ from the clean reference by up to "
            f"{summary.max_grad_diff:.3g}"
        )
    if _damaged(summary):
        return "hides-the-error", (
            f"no exception, but {summary.figures.get('damage', 'the state')} "
            f"{damage_words(summary)}"
        )
    if summary.max_grad_diff is None and "damage" in summary.figures:
        return "holds", _holds_by_damage(summary)
    return "holds", (
        f"{summary.steps_run} steps ran, gradients match the clean reference"
        + (f" (max diff {summary.max_grad_diff:.1e})" if summary.max_grad_diff is not None else "")
        + " and nothing grows"
    )


def _holds_by_damage(o: Outcome) -> str:
    """Why a run that compares no gradients holds: its steps ran and its damage is in bounds."""
    grows = ", nothing grows" if (o.graph_nodes or o.tensor_bytes) else ""
    return (f"{o.steps_run} steps ran{grows} and {o.figures['damage']} is {_damage(o):.3g} "
            f"(at most {float(o.figures.get('damage_tol', GRAD_TOL)):.3g} counts as fixed)")


def first_line(message: str | None) -> str:
    """The first line of an error message, for one-sentence reasons."""
    return (message or "").strip().splitlines()[0] if message else ""


def judge_candidate(out: Outcome) -> tuple[bool, str]:
    """Does a learner's candidate hold? The answer in plain words.

    First the rules the lesson teaches that the run counted (``figures["rules_broken"]``,
    e.g. one backward pass a step), then what was measured: an error, growth, wrong
    gradients or damaged state.
    """
    broken = [b["why"] for b in out.figures.get("rules_broken") or []]
    problem = _measured_problem(out)
    if broken:
        return False, "; ".join(broken) + (f" (and {problem})" if problem else "")
    if problem:
        return False, problem
    if out.max_grad_diff is None and "damage" in out.figures:
        return True, f"it holds: {_holds_by_damage(out)}"
    counted = "; one forward and one backward a step" if "rules_broken" in out.figures else ""
    return True, (
        f"it holds: {out.steps_run} steps ran, gradients match the clean reference and "
        f"nothing grows{counted}"
    )


def reasons(out: Outcome) -> list[str]:
    """Why a candidate does not hold, in short names that stay the same from run to run (the
    rules it broke, then what was measured: ``"raises RuntimeError"``, ``"graph grows"``,
    ``"memory grows"``, ``"wrong gradients"``, ``"state damaged"``); empty when it holds.
    :func:`judge_candidate` says the same in plain words; a class's attempts are grouped by
    these."""
    names = [b["rule"] for b in out.figures.get("rules_broken") or []]
    if not out.passed:
        names.append(f"raises {out.error_type}")
    elif out.grows():
        names.append("graph grows" if out.graph_growth() else "memory grows")
    elif out.max_grad_diff is not None and out.max_grad_diff > GRAD_TOL:
        names.append("wrong gradients")
    elif _damaged(out):
        names.append("state damaged")
    return names


def _measured_problem(out: Outcome) -> str | None:
    """What the measurements say is wrong with a run, or None."""
    if not out.passed:
        return (
            f"it raised {out.error_type} at step {out.error_step}: "
            f"{first_line(out.error_message)}"
        )
    if out.grows():
        growth = (
            f"the autograd graph grows by {out.graph_growth()} nodes" if out.graph_growth()
            else f"live tensor memory grows by {out.memory_growth() / 1024:.1f} KiB"
        )
        return (
            f"it runs, but {growth} every step: something keeps the previous steps' graph "
            f"alive (detach the state you keep)"
        )
    if out.max_grad_diff is not None and out.max_grad_diff > GRAD_TOL:
        return (
            f"it runs, but its gradients differ from the clean reference by up to "
            f"{out.max_grad_diff:.3g}"
        )
    if _damaged(out):
        detail = out.figures.get("damage_detail")  # what is wrong, where an entry says it
        return (
            f"it runs, but {out.figures.get('damage', 'the state it keeps')} "
            f"{damage_words(out)}" + (f". {detail}" if detail else "")
        )
    return None
