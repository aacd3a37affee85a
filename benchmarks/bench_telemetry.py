"""Telemetry overhead: the same training steps with the probes and run store on and off.

Both arms run in one process, advanced in alternating rounds (off, on, off, on, ...), so
machine noise hits both alike. The probed arm logs everything the dashboard draws, memory by
category included (parameters, gradients, optimizer state and memory saved for backward,
read after the forward by a walk of the step's autograd graph, every ``categories_every``
steps) and the full CPU memory scan every 250 steps. Goal (issues 4 and 12): at most 1.03 at
the default cadence.

The probed arm also times each category reading on its own (the graph walk, from inside the
step): its median over the median step without telemetry is what reading categories at
*every* step would add, the figure behind the default ``categories_every``.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from mahiax.config import MahiaConfig
from mahiax.store import RunReader, RunWriter
from mahiax.telemetry.probes import Cadence, TrainingProbe
from mahiax.train import Trainer


class _Arm:
    """One training run, advanced ``steps`` at a time; with a store, probes log every step."""

    def __init__(self, config: MahiaConfig, store: Path | None):
        torch.manual_seed(config.seed)
        self.trainer = Trainer(config)
        self.writer = self.probe = None
        self.readings: list[float] = []  # seconds of each memory-by-category reading
        if store is not None:
            self.writer = RunWriter("bench", config.to_dict(), path=store)
            self.probe = TrainingProbe(self.writer, Cadence(), trainer=self.trainer)
            read = self.trainer.graph_observers[-1]  # the probe's reading after the forward

            def timed(loss: torch.Tensor) -> None:
                step = self.trainer.step_num
                t0 = time.perf_counter()
                read(loss)
                if step % Cadence().memory_every and step % Cadence().categories_every == 0:
                    self.readings.append(time.perf_counter() - t0)  # full scans left out

            self.trainer.graph_observers[-1] = timed

    def advance(self, steps: int) -> list[float]:
        """Step times (s) of the next ``steps`` steps, telemetry included."""
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            rec = self.trainer.step()
            if self.probe is not None:
                self.probe.observe(self.trainer, rec)
                self.writer.heartbeat()
            times.append(time.perf_counter() - t0)
        return times

    def close(self) -> float:
        """Finish the run; returns the seconds the final flush took (part of the cost)."""
        if self.writer is None:
            return 0.0
        t0 = time.perf_counter()
        assert self.probe is not None
        self.probe.close()
        self.writer.finish("finished")
        self.writer.close()
        return time.perf_counter() - t0


def run(rounds: int = 10, steps: int = 100) -> dict:
    """Two runs of the same config, one with telemetry, advanced in alternating rounds.

    Both arms see the same machine noise round by round. The headline ratio is total time
    with telemetry over total time without: it counts the periodic snapshots (every 25 steps),
    category readings (every 10) and full memory scans (every 250) at their real frequency.
    """
    config = MahiaConfig(max_steps=rounds * steps)
    off_t: list[float] = []
    on_t: list[float] = []
    ratios: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        off, on = _Arm(config, None), _Arm(config, Path(tmp) / "bench.sqlite")
        for _ in range(rounds):
            a, b = off.advance(steps), on.advance(steps)
            off_t += a
            on_t += b
            ratios.append(sum(b) / sum(a))
        on_t[-1] += on.close()
        off.close()
        # what the probed arm wrote: the steps with memory by category, saved for backward > 0
        saved = RunReader(Path(tmp) / "bench.sqlite").scalars("bench", ["mem/saved"])
        categories_steps = int((saved["mem/saved"].dropna() > 0).sum())
    ratio = sum(on_t) / sum(off_t)
    median_off = statistics.median(off_t)
    reading = statistics.median(on.readings)
    return {
        "name": "telemetry overhead per training step (default config, default cadence)",
        "steps_per_arm": len(off_t),
        "median_step_off_ms": 1e3 * median_off,
        "median_step_on_ms": 1e3 * statistics.median(on_t),
        "round_ratios": ratios,
        "ratio": ratio,
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "median_round_ratio": statistics.median(ratios),
        "categories_every": Cadence().categories_every,
        "steps_with_categories": categories_steps,
        "categories_reading_ms": 1e3 * reading,  # median, one reading (graph walk included)
        "categories_every_step_share": reading / median_off,  # what every step would add
        "goal": "ratio <= 1.03",
        "met": ratio <= 1.03,
    }


def markdown(t: dict) -> str:
    """The result as a Markdown section for benchmarks/results/latest.md."""
    return "\n".join([
        "### Telemetry overhead",
        "",
        "| benchmark | median step, off (ms) | median step, on (ms) | on/off total time "
        "(rounds min-max) | goal | met |",
        "|---|---|---|---|---|---|",
        f"| telemetry overhead, default cadence | {t['median_step_off_ms']:.2f} | "
        f"{t['median_step_on_ms']:.2f} | {t['ratio']:.3f} ({t['ratio_min']:.3f}-"
        f"{t['ratio_max']:.3f}) | <= 1.03 | {'yes' if t['met'] else 'NO'} |",
        "",
        f"Memory by category is read every {t['categories_every']} steps "
        f"({t['steps_with_categories']} readings): one reading (a walk of the step's autograd "
        f"graph) takes {t['categories_reading_ms']:.2f} ms, "
        f"{100 * t['categories_every_step_share']:.1f}% of a step without telemetry; that "
        f"is what reading at every step (`Cadence(categories_every=1)`) would add.",
    ])


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
