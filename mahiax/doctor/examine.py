"""``examine``: run a few steps of any training loop under the watchers and report."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mahiax.doctor.analysis import findings_of, loop_error
from mahiax.doctor.report import Report
from mahiax.doctor.watchers import Watch
from mahiax.errors import BadInput


def examine(step: Callable[[int], Any], steps: int = 6, model: nn.Module | None = None,
            optimizer: torch.optim.Optimizer | None = None, scaler: Any = None) -> Report:
    """Run ``step(i)`` for ``i = 0 .. steps-1`` under the lab's detectors; report what is wrong.

    ``step(i)`` is one training step of your own code: forward, backward, optimiser step,
    whatever else the loop does. ``model`` (recommended) lets the doctor name modules and check
    parameters, buffers and forwards; ``optimizer`` which tensors are trained; ``scaler`` is
    accepted for symmetry (every ``GradScaler`` is watched). An exception raised by the loop
    ends the examination and is kept in ``report.error`` with its step, explained.

    The watchers slow a step down many times, and tiny loops the most: the end-of-step scan
    of live objects is a fixed cost per step, whatever the loop's own step takes (the
    slowdown on the lab's tiny Trainer step and on a small MLP: ``make bench``, row
    ``doctor``). A few steps are enough: most findings show at step 0 or 1, growth needs 3.

    Limits: writes that never reach PyTorch's dispatcher (through ``t.numpy()``) and writes
    from other threads are not seen; a clip function is watched under its torch names and
    under names in ``step``'s own module; gradients computed with ``torch.autograd.grad``
    are not counted as backward passes. The mutation locator it uses installs
    saved-tensor hooks, and keeps PyTorch's own version check working through them (it
    re-raises PyTorch's error word for word: ``tests/telemetry/test_locator.py``).
    """
    if not callable(step):
        raise BadInput(f"step must be a function step(i) that runs one training step, got "
                       f"{type(step).__name__}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise BadInput(f"steps must be a positive integer, got {steps!r}")
    if model is not None and not isinstance(model, nn.Module):
        raise BadInput(f"model must be a torch.nn.Module or None, got {type(model).__name__}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise BadInput(f"optimizer must be a torch.optim.Optimizer or None, got "
                       f"{type(optimizer).__name__}")
    watch = Watch(model, optimizer, scaler, code=step)
    with watch.active():
        for i in range(steps):
            watch.begin_step(i)
            try:
                step(i)
            except Exception as exc:  # the point: keep it, explain it, report it
                watch.fail(exc, i)
                del exc
                break
            watch.end_step(i)
    return build_report(watch, steps)


def build_report(watch: Watch, steps: int) -> Report:
    """The report of a finished watch."""
    findings = findings_of(watch)
    return Report(findings=findings, error=loop_error(watch, findings), steps=steps,
                  steps_run=watch.steps_done,
                  model_checked=watch.model is not None)
