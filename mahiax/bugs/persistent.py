"""Remaining issue 2: the "persistent in-place operation error", and what finds it.

The summary's loop kept ``retain_graph=True`` and state that carried the graph from step to
step. Step t+1's backward then runs through step t's graph, which saved parameters that
``optimizer.step()`` has since updated in place: an in-place error with no in-place
operation in sight. The summary recommends anomaly mode, which prints the forward line that
*saved* the tensor (a Linear deep in the model); the operation that *mutated* it was the
optimiser step. :func:`mahiax.telemetry.locator.locate_mutations` names that one.
"""

from __future__ import annotations

import re
import warnings

from mahiax.bugs.catalog import BugEntry
from mahiax.bugs.harness import StepContext, clean_loop, train_variant, watching_mutations
from mahiax.bugs.loops import (
    after_detach,
    backward_per_loss,
    detached_loop,
    install_carried_state,
    loop_candidate,
    train_counted,
)
from mahiax.bugs.outcome import Outcome

_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


def _summary_era_loop(ctx: StepContext) -> None:
    """retain_graph=True on every backward, an optimiser step every step."""
    backward_per_loss(retain=True)(ctx)


def anomaly_site(text: str) -> str | None:
    """Innermost frame of anomaly mode's forward traceback outside torch itself."""
    frames = [
        (f, int(n)) for f, n in _FRAME.findall(text)
        if "/torch/" not in f and "site-packages" not in f
    ]
    if not frames:
        return None
    f, n = frames[-1]
    return f"{_short(f)}:{n}"


def _short(path: str) -> str:
    return path.split("/mahiax/", 1)[-1] if "/mahiax/" in path else path


def _run_scenario(variant: str, steps: int, anomaly: bool) -> tuple[Outcome, str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = train_variant(
            "persistent-inplace", variant, steps, loop=_summary_era_loop,
            install=install_carried_state, anomaly=anomaly, reference=False,
        )
    text = "\n".join(str(w.message) for w in caught if "Traceback of forward" in str(w.message))
    return out, text


def _runner(variant: str, steps: int, candidate: object = None) -> Outcome:
    if variant == "buggy":
        out, _ = _run_scenario(variant, steps, anomaly=False)
        return out
    if variant in ("fixed", "candidate"):  # the scenario's model and cadence, counted
        loop = (
            detached_loop if variant == "fixed"
            else loop_candidate("persistent-inplace", candidate)
        )
        return train_counted(
            "persistent-inplace", variant, steps, loop, install=install_carried_state
        )
    # the summary's recommendation: the same run under anomaly mode; then ask the locator
    out, text = _run_scenario(variant, steps, anomaly=True)
    said = anomaly_site(text)
    with watching_mutations() as locators:
        _run_scenario("locator", steps, anomaly=False)
    muts = [m for loc in locators for m in loc.mutations]
    muts = [m for m in muts if m.tripped_backward] or muts  # the write backward tripped on
    mutated_at = f"{_short(muts[0].file)}:{muts[0].line}" if muts else None
    out.figures["anomaly_points_to"] = said
    out.figures["mutation_at"] = mutated_at
    out.figures["mutating_op"] = muts[0].op if muts else None
    out.figures["diagnosis"] = {
        "correct": said is not None and said == mutated_at,
        "why": (
            f"anomaly mode points at {said} (the forward line that saved the tensor), but the "
            f"tensor was changed by {out.figures['mutating_op']} at {mutated_at} "
            f"(found by mahiax.telemetry.locator.locate_mutations): the error is still there "
            f"and anomaly mode names the wrong line"
        ),
    }
    return out


PERSISTENT_INPLACE = BugEntry(
    id="persistent-inplace",
    section="remaining 2",
    lessons=("06_finding_the_mutation",),
    component="whole model",
    title="The persistent in-place error, and anomaly mode",
    pattern="loss.backward(retain_graph=True) with state carried across steps; "
            "optimizer.step() between",
    summary_fix="torch.autograd.set_detect_anomaly(True) to find the in-place operation",
    right_fix="find the mutation with mahiax.telemetry.locator.locate_mutations; then detach "
              "carried state and drop retain_graph",
    explanation=(
        "The error says a saved tensor changed. Anomaly mode shows where that tensor was "
        "saved, in the forward, not what changed it. Here the change is optimizer.step() "
        "updating a weight that a retained graph from the previous step still needs. A "
        "locator that watches in-place ops on saved storages names it; removing the carried "
        "graph (detach, one backward) removes the error."
    ),
    runner=_runner,
    steps=3,
    candidate_kind=(
        "a loop function loop(ctx) (as for 'retain-graph'), run with the original's graph "
        "memory, whose nodes carry the graph across steps (call ctx.detach_state() first), "
        "and an optimiser step every step"
    ),
    candidates=lambda: {
        "buggy": _summary_era_loop,
        "summary": _summary_era_loop,  # anomaly mode changes what is printed, not the loop
        "fixed": detached_loop,
        "band-aid: retain_graph=True, carried state detached": after_detach(
            backward_per_loss(retain=True)
        ),
        "band-aid: one backward of the sum, carried state kept": clean_loop,
    },
)
