"""Memory per learner on the workshop hub: what one more learner costs the machine.

The measurement is the hub's end-to-end test (``tests/test_hub_e2e.py``), run as it is: a
real JupyterHub on 127.0.0.1 with three learners who sign in through headless Chromium, run
lesson 00, record a 3-step run and open the dashboard tile. After each learner's session the
test reads, with psutil, the RSS, PSS and USS of that learner's processes by kind (Jupyter
server, kernel, dashboard) and writes them to ``test-artifacts/hub/memory-per-learner.json``;
this benchmark runs the test and summarises that file (median over the three learners). PSS
splits the pages learners share (torch's libraries) among them: it is what each extra learner
adds. It needs root (learners are system users) and Debian's chromium; without them the row
says why and measures nothing. No goal: the figure sizes a machine for a class.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "test-artifacts" / "hub" / "memory-per-learner.json"
KINDS = ("server", "kernel", "dashboard")


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "not root: the hub's learners are system users"
    if shutil.which("chromium") is None and not Path("/usr/bin/chromium").exists():
        return "no chromium: learners sign in through the browser"
    return None


def run() -> dict:
    """Run the hub e2e test once and summarise the memory it measured per learner."""
    reason = _skip_reason()
    if reason is not None:
        return {"name": "memory per learner on the hub", "skipped": reason, "met": True}
    RESULT.unlink(missing_ok=True)
    test = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:xdist", "-q", "-p", "no:cacheprovider",
         "tests/test_hub_e2e.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    if test.returncode != 0 or not RESULT.exists():
        tail = (test.stdout + test.stderr)[-1500:]
        return {"name": "memory per learner on the hub", "skipped": f"the hub test did not "
                f"pass (exit {test.returncode}): {tail}", "met": False}
    learners = json.loads(RESULT.read_text())["learners"]
    kinds: dict[str, dict[str, float]] = {}
    for kind in KINDS:
        rows = [m[kind] for m in learners.values() if kind in m]
        kinds[kind] = {key: statistics.median(r[key] for r in rows)
                       for key in ("rss_mib", "pss_mib", "uss_mib")}
    totals = {key: sum(k[key] for k in kinds.values()) for key in ("rss_mib", "pss_mib",
                                                                     "uss_mib")}
    return {"name": "memory per learner on the hub", "learners": len(learners),
            "kinds": kinds, "per_learner": totals, "met": True}


def markdown(r: dict) -> str:
    """The result as a Markdown section for benchmarks/results/latest.md."""
    lines = ["### Memory per learner on the hub", ""]
    if "skipped" in r:
        return "\n".join([*lines, f"Not measured: {r['skipped']}"])
    lines += [
        f"`tests/test_hub_e2e.py` run as it is: {r['learners']} learners sign in through "
        "headless Chromium, run lesson 00, record a 3-step run and open the dashboard tile; "
        "psutil reads each learner's processes afterwards (median over the learners, MiB). "
        "PSS counts shared pages once across learners: it is what one more learner adds.",
        "",
        "| process | RSS | PSS | USS |",
        "|---|---|---|---|",
    ]
    for kind, m in r["kinds"].items():
        lines.append(f"| {kind} | {m['rss_mib']:.0f} | {m['pss_mib']:.0f} | "
                     f"{m['uss_mib']:.0f} |")
    t = r["per_learner"]
    lines.append(f"| **one learner** | **{t['rss_mib']:.0f}** | **{t['pss_mib']:.0f}** | "
                 f"**{t['uss_mib']:.0f}** |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(run()))
