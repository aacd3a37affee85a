"""The doctor's cost: a training loop examined by ``mahiax.doctor`` against the same loop plain.

Two loops: the lab's own ``Trainer`` step (tiny preset, the MoE model) and a textbook MLP
classifier step. Each round builds both arms fresh from the same seed and runs ``steps``
steps plain, then ``steps`` steps under ``doctor.examine`` (everything included: installing
and removing the watchers, the end-of-step scans, the report); the order of the two alternates
from round to round, so machine noise hits both alike. The figure is the ratio of the median
seconds per step. No goal: the doctor is a debugging tool, run for a few steps (issue 15 asks
that its slowdown be said, not bounded).

The corpus row runs the doctor on every case of ``tests/doctor_corpus`` (training-loop bugs
users reported in public): how many buggy loops get their reported kind at the line to change,
how many fixed loops get a finding (false alarms), how many of the doctor's printed fixes,
applied as written, run clean, and the seconds one examination of 6 steps takes.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mahiax import doctor
from mahiax.config import tiny
from mahiax.training.trainer import Trainer
from tests.doctor_corpus.common import cases, expected

Setup = Callable[[], tuple[Callable[[int], object], nn.Module, torch.optim.Optimizer]]


def _trainer() -> tuple[Callable[[int], object], nn.Module, torch.optim.Optimizer]:
    trainer = Trainer(tiny())
    return (lambda i: trainer.step()), trainer.model, trainer.optimizer


def _mlp() -> tuple[Callable[[int], object], nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(64, 32), torch.randint(0, 10, (64,))

    def step(i: int) -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step, model, opt


LOOPS: dict[str, Setup] = {"Trainer step (tiny)": _trainer, "MLP classifier": _mlp}


def _plain(setup: Setup, steps: int) -> float:
    step, _, _ = setup()
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    return (time.perf_counter() - t0) / steps


def _examined(setup: Setup, steps: int) -> float:
    step, model, opt = setup()
    t0 = time.perf_counter()
    report = doctor.examine(step, steps, model=model, optimizer=opt)
    elapsed = (time.perf_counter() - t0) / steps
    if not report.ok:  # a benchmark of a loop with findings would measure something else
        raise RuntimeError(f"the benchmark's loop has findings:\n{report}")
    return elapsed


def _report(loop) -> doctor.Report:
    return doctor.examine(loop.step, 6, model=loop.model, optimizer=loop.optimizer,
                          scaler=loop.scaler)


def corpus() -> dict:
    """The doctor on the corpus of real reports: hits, false alarms, applied fixes, cost."""
    hits, alarms, applied, applied_ok, seconds = [], [], 0, 0, []
    for name, case in cases().items():
        t0 = time.perf_counter()
        report = _report(case.buggy())
        seconds.append(time.perf_counter() - t0)
        if {(f.kind, f.line) for f in report.findings} == expected(case):
            hits.append(name)
        if not _report(case.fixed()).ok:
            alarms.append(name)
        if hasattr(case, "applied"):
            applied += 1
            applied_ok += _report(case.applied()).ok
    n = len(seconds)
    return {"cases": n, "hits": len(hits), "missed": sorted(set(cases()) - set(hits)),
            "false_alarms": alarms, "applied": applied, "applied_ok": applied_ok,
            "median_s": statistics.median(seconds), "max_s": max(seconds)}


def run(rounds: int = 5, steps: int = 6) -> dict:
    """Median seconds per step, plain and examined, per loop; ``slowdown`` is their ratio."""
    arms: dict[str, dict] = {}
    for name, setup in LOOPS.items():
        plain: list[float] = []
        examined: list[float] = []
        for r in range(rounds):
            if r % 2:
                examined.append(_examined(setup, steps))
                plain.append(_plain(setup, steps))
            else:
                plain.append(_plain(setup, steps))
                examined.append(_examined(setup, steps))
        p, e = statistics.median(plain), statistics.median(examined)
        arms[name] = {"plain_ms": p * 1e3, "doctor_ms": e * 1e3, "slowdown": e / p,
                      "rounds": rounds, "steps": steps}
    return {"arms": arms, "corpus": corpus(), "met": True}


def markdown(result: dict) -> str:
    lines = ["### The doctor's cost (no goal: a debugging tool for a few steps)", "",
             "| loop | plain ms/step | under the doctor ms/step | slowdown |", "|---|---|---|---|"]
    for name, a in result["arms"].items():
        lines.append(f"| {name} | {a['plain_ms']:.1f} | {a['doctor_ms']:.1f} | "
                     f"{a['slowdown']:.1f}x |")
    any_arm = next(iter(result["arms"].values()))
    lines.append("")
    lines.append(f"Median of {any_arm['rounds']} alternated rounds of {any_arm['steps']} "
                 "steps; the doctor's time includes installing and removing its watchers and "
                 "the report.")
    c = result.get("corpus")
    if c:
        lines += ["", "### The doctor on the corpus of real reports (tests/doctor_corpus)", "",
                  "| cases | reported kind at the line | false alarms on the fixed loops | "
                  "printed fix applied as written passes | seconds per case (median, max) |",
                  "|---|---|---|---|---|",
                  f"| {c['cases']} | {c['hits']} | {len(c['false_alarms'])} | "
                  f"{c['applied_ok']} of {c['applied']} | {c['median_s']:.2f}, "
                  f"{c['max_s']:.2f} |"]
        if c["missed"] or c["false_alarms"]:
            lines.append(f"Missed: {', '.join(c['missed']) or 'none'}; false alarms: "
                         f"{', '.join(c['false_alarms']) or 'none'}.")
    return "\n".join(lines)
