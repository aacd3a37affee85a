"""How long the store commands take to answer: ``mahiax runs list``, ``runs show NAME`` and
``runs export NAME``, each a fresh process, as a user types them.

They only read the store, so they must not pay for torch
(``tests/telemetry/test_recording_cadence.py`` checks that none imports it); this row
measures what they do cost, beside a bare interpreter and ``import torch`` in the same
rounds. Each round runs every command once, in a rotated order; medians and min-max over
rounds.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mahiax import metric_keys as mk
from mahiax.config import tiny
from mahiax.store import RunWriter

GOAL_S = 1.0  # "well under a second": list and show, median, on a quiet machine
RUNS, STEPS = 20, 200


def _store(path: Path) -> None:
    """``RUNS`` finished runs of ``STEPS`` steps, a handful of scalars each."""
    for r in range(RUNS):
        with RunWriter(f"run-{r:02d}", tiny().to_dict(), path=path) as w:
            for s in range(STEPS):
                w.log({mk.LOSS: 1.0 / (s + 1), mk.GRAD_NORM: 0.5, mk.MEM_RSS: 1e8}, s)


def run(rounds: int = 7) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "s.sqlite"
        _store(store)
        py = [sys.executable]
        commands = {
            "python (nothing)": [*py, "-c", "pass"],
            "import torch": [*py, "-c", "import torch"],
            "runs list": [*py, "-m", "mahiax", "runs", "list", "--store", str(store)],
            "runs show": [*py, "-m", "mahiax", "runs", "show", "run-07", "--store", str(store)],
            "runs export": [*py, "-m", "mahiax", "runs", "export", "run-07", "--store",
                            str(store), "--out", str(Path(tmp) / "r.csv")],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        names = list(commands)
        for i in range(rounds):
            for name in names[i % len(names):] + names[:i % len(names)]:
                t0 = time.perf_counter()
                subprocess.run(commands[name], check=True, capture_output=True, timeout=120)
                times[name].append(time.perf_counter() - t0)
    rows = {name: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t)}
            for name, t in times.items()}
    met = all(rows[n]["median_s"] < GOAL_S for n in ("runs list", "runs show"))
    return {"name": "store commands", "rounds": rounds, "runs": RUNS, "steps": STEPS,
            "commands": rows, "met": met}


def markdown(r: dict) -> str:
    """The result as a Markdown section for benchmarks/results/latest.md."""
    lines = ["### Store commands", "",
             f"Each command a fresh process on a store of {r['runs']} runs of {r['steps']:,} "
             f"steps ({r['rounds']} rounds, order rotated; wall time). None imports torch.",
             "", "| command | median (s) | min-max (s) | goal | met |", "|---|---|---|---|---|"]
    for name, c in r["commands"].items():
        judged = name in ("runs list", "runs show")
        goal = f"< {GOAL_S:.0f} s" if judged else ""
        met = ("yes" if c["median_s"] < GOAL_S else "NO") if judged else ""
        lines.append(f"| `{name}` | {c['median_s']:.2f} | {c['min_s']:.2f}-{c['max_s']:.2f} "
                     f"| {goal} | {met} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(run()))
