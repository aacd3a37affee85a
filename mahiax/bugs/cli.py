"""``python -m mahiax bugs list | run ID --variant V | verdict ID`` (``--json`` for machines)."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from mahiax.errors import BadInput
from mahiax.units import MIB

if TYPE_CHECKING:
    from mahiax.bugs.outcome import Outcome


def describe(out: Outcome) -> str:
    """A person's view of one outcome: the error as PyTorch wrote it, or what ran."""
    lines = []
    if out.passed:
        lines.append(f"passed: {out.steps_run} of {out.steps_requested} steps ran")
    else:
        lines.append(
            f"{out.error_type} at step {out.error_step} "
            f"({out.steps_run} of {out.steps_requested} steps ran):"
        )
        lines.extend("    " + ln for ln in (out.error_message or "").splitlines())
    if out.graph_nodes:
        lines.append(f"  autograd nodes per step: {out.graph_nodes}")
    if out.tensor_bytes:
        mib = ", ".join(f"{b / MIB:.2f}" for b in out.tensor_bytes)
        lines.append(f"  live tensor MiB: {mib}")
    if out.max_grad_diff is not None:
        lines.append(f"  largest gradient difference from the clean reference: "
                     f"{out.max_grad_diff:.3g}")
    if out.state_diff is not None:
        lines.append(f"  {out.figures.get('damage', 'state error')}: {out.state_diff:.3g}")
    return "\n".join(lines)


def run_command(args: argparse.Namespace) -> int:
    from mahiax.bugs import entries, get, verdict  # torch: loaded once a command runs

    if args.bugs_command == "list":
        items = [
            {"id": e.id, "section": e.section, "component": e.component, "title": e.title}
            for e in entries()
        ]
        if args.json:
            print(json.dumps(items, indent=2))
        else:
            for it in items:
                print(f"{it['id']:<26} §{it['section']:<12} {it['component']:<28} {it['title']}")
        return 0
    entry = get(args.id)
    if args.steps is not None and args.steps < 1:
        raise BadInput(f"--steps must be a positive integer, got {args.steps}")
    if args.bugs_command == "run":
        out = entry.run(args.variant, args.steps)
        if args.json:
            print(json.dumps(out.to_dict(), indent=2, default=str))
        else:
            print(f"{entry.id} / {args.variant}   ({entry.component}, summary section "
                  f"{entry.section})")
            print(describe(out))
        return 0
    result = verdict(entry.id, args.steps)
    if args.json:
        print(json.dumps({"id": entry.id, **result.to_dict()}, indent=2, default=str))
        return 0
    print(f"{entry.id}: the summary's fix -> {result.label}")
    print(f"  why: {result.reason}")
    print(f"  the bug:     {entry.pattern.splitlines()[0]}")
    print(f"  summary fix: {entry.summary_fix}")
    print(f"  right fix:   {entry.right_fix}")
    for name, out in result.outcomes.items():
        print(f"\n[{name}] " + describe(out))
    return 0
