"""A training-like process for the store tests: writes steps fast until done or killed.

Every step is logged in three calls (two halves of the scalars, then a vector) and every
10th step also a snapshot, so that a flush that split a step would show up as missing keys.
Values are a pure function of (step, key), so a reader can check each one exactly.
Prints ``ready <pid>`` once the run exists and its first step is committed.

    python tests/store/store_writer_child.py STORE NAME --steps 2000 --keys 20
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from pathlib import Path

import numpy as np

# Import mahiax.store without running mahiax/__init__.py, which imports torch: seconds of
# start-up per child process, and the store needs only numpy and psutil.
_PKG = Path(__file__).resolve().parents[2] / "mahiax"
if "mahiax" not in sys.modules:
    _stub = types.ModuleType("mahiax")
    _stub.__path__ = [str(_PKG)]
    sys.modules["mahiax"] = _stub

from mahiax.store import RunWriter  # noqa: E402


def scalar(step: int, i: int) -> float:
    return step + i / 100


def vector(step: int) -> list[float]:
    return [float(step), step * 0.5, -float(step)]


def snapshot(step: int) -> np.ndarray:
    return (np.arange(12, dtype=np.float32).reshape(3, 4) + step).astype(np.float32)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("store")
    p.add_argument("name")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--keys", type=int, default=20)
    p.add_argument("--sleep", type=float, default=0.0, help="seconds to sleep per step")
    p.add_argument("--flush-every", type=float, default=0.05)
    p.add_argument("--resume", action="store_true")
    a = p.parse_args()
    half = a.keys // 2
    with RunWriter(a.name, {"steps": a.steps, "keys": a.keys}, path=a.store, resume=a.resume,
                   flush_every_s=a.flush_every, heartbeat_s=0.2) as w:
        for step in range(w.resume_step, a.steps):
            w.log({f"k{i:02d}": scalar(step, i) for i in range(half)}, step)
            w.log({f"k{i:02d}": scalar(step, i) for i in range(half, a.keys)}, step)
            w.log_vector("vec", vector(step), step)
            if step % 10 == 0:
                w.log_tensor("snap", snapshot(step), step)
            w.heartbeat()
            if step == w.resume_step:
                w.flush()
                print(f"ready {w.last_step}", flush=True)
            if a.sleep:
                time.sleep(a.sleep)


if __name__ == "__main__":
    main()
