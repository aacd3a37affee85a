"""The doctor on the catalog's own variants: a check that it finds the lab's bugs.

The catalog's harness (:func:`mahiax.bugs.harness.train_variant`) owns its training loop, so
there is no ``step(i)`` to hand to :func:`~mahiax.doctor.examine`. Two of its extension
points give the same view: the context every run is wrapped in (it receives the model: the
watchers are installed there) and the observer called after every step (the step
boundary). The harness catches the variant's error itself; the doctor keeps its type,
message and step. The harness's own per-step record (``StepContext``) holds this step's
loss for the clean reference; it is not the variant's code, so it is not named as a holder.
The reference's own forward and backward (:meth:`~mahiax.bugs.harness.Reference.grads`) are
not the variant's either: the watch looks away while they run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from mahiax.doctor.examine import build_report
from mahiax.doctor.report import Report
from mahiax.doctor.watchers import Watch


def examine_entry(entry_id: str, variant: str = "buggy", steps: int | None = None,
                  candidate: object = None) -> Report:
    """Run a catalog variant (``buggy`` | ``summary`` | ``fixed``), or with ``variant=
    "candidate"`` one of ``bugs.get(entry_id).candidates()`` (a band-aid, a learner's
    class), under the doctor."""
    from mahiax import bugs
    from mahiax.bugs import harness

    entry = bugs.get(entry_id)
    n = entry.steps if steps is None else steps
    watches: list[Watch] = []

    @contextlib.contextmanager
    def around(model) -> Iterator[object]:
        # the harness's clean reference takes a forward and backward of its own each step:
        # not the variant's loop, so not counted among its backward passes
        w = Watch(model, ignore_types=(harness.StepContext,),
                  unwatched=((harness.Reference, "grads"),))
        watches.append(w)
        with w.active():
            w.begin_step(0)
            try:
                yield w.loc
            finally:
                w.finish_unfinished()

    def observe(row: dict) -> None:
        w = watches[-1]
        w.end_step(row["step"])
        if row["step"] + 1 < n:
            w.begin_step(row["step"] + 1)

    token = harness._AMBIENT.set(around)
    try:
        with harness.observing(observe):
            out = entry.run(variant, n, candidate)
    finally:
        harness._AMBIENT.reset(token)
    if not watches:
        raise ValueError(f"{entry_id!r} trains no model through the harness")
    w = watches[-1]
    if out.error_type is not None:
        w.fail_recorded(out.error_type, out.error_message or "", out.error_step or 0)
    return build_report(w, out.steps_requested)
