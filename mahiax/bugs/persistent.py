"""Remaining issue 2: the "persistent in-place operation error", and what finds it.

The summary's loop kept ``retain_graph=True`` and state that carried the graph from step to
step. Step t+1's backward then runs through step t's graph, which saved parameters that
``optimizer.step()`` has since updated in place: an in-place error with no in-place
operation in sight. The summary recommends anomaly mode, which prints the forward line that
*saved* the tensor (a Linear deep in the model); the operation that *mutated* it was the
optimiser step. :func:`mahiax.debug.locate_mutations` names that one.
"""

from __future__ import annotations

import re
import warnings

from mahiax.bugs.catalog import BugEntry, register
from mahiax.bugs.harness import (
    StepContext,
    clean_loop,
    swap_class,
    train_variant,
    watching_mutations,
)
from mahiax.bugs.loops import backward_per_loss
from mahiax.bugs.outcome import Outcome
from mahiax.bugs.stateful import BuggyGraphMemory

_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


def _summary_era_loop(ctx: StepContext) -> None:
    """retain_graph=True on every backward, an optimiser step every step."""
    backward_per_loss(retain=True)(ctx)


def _install_carried_state(model) -> None:
    swap_class(model.graph_memory, BuggyGraphMemory)


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
            install=_install_carried_state, anomaly=anomaly, reference=False,
        )
    text = "\n".join(str(w.message) for w in caught if "Traceback of forward" in str(w.message))
    return out, text


def _runner(variant: str, steps: int, candidate: object = None) -> Outcome:
    if variant == "buggy":
        return _run_scenario(variant, steps, anomaly=False)[0]
    if variant == "fixed":
        return train_variant("persistent-inplace", variant, steps, loop=clean_loop)
    if variant == "candidate":
        if not callable(candidate):
            raise TypeError("a candidate for 'persistent-inplace' is a loop function loop(ctx)")
        return train_variant("persistent-inplace", variant, steps, loop=candidate)
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
            f"(found by mahiax.debug.locate_mutations): the error is still there and anomaly "
            f"mode names the wrong line"
        ),
    }
    return out


register(BugEntry(
    id="persistent-inplace",
    section="remaining 2",
    component="whole model",
    title="The persistent in-place error, and anomaly mode",
    pattern="loss.backward(retain_graph=True) with state carried across steps; "
            "optimizer.step() between",
    summary_fix="torch.autograd.set_detect_anomaly(True) to find the in-place operation",
    right_fix="find the mutation with mahiax.debug.locate_mutations; then detach carried "
              "state and drop retain_graph",
    explanation=(
        "The error says a saved tensor changed. Anomaly mode shows where that tensor was "
        "saved, in the forward, not what changed it. Here the change is optimizer.step() "
        "updating a weight that a retained graph from the previous step still needs. A "
        "locator that watches in-place ops on saved storages names it; removing the carried "
        "graph (detach, one backward) removes the error."
    ),
    runner=_runner,
    steps=3,
    candidate_kind="a loop function loop(ctx)",
))
