"""Training step: the summary's retain_graph path against ``encode()`` + one backward.

Three arms train the same model (the default config, float32, same seed, same batches), each
with its own model and optimiser:

- ``summary: K forwards``: the summary's path as issue 7 states it: one forward per task loss,
  each loss backpropagated with ``backward(retain_graph=True)``;
- ``summary: 1 forward, K backwards``: the summary's band-aid after its own ``encode()``
  refactor: one forward, then ``backward(retain_graph=True)`` per loss (the catalog's loop);
- ``one backward``: ``encode()`` once, one backward of the weighted sum (the catalog's clean
  loop, the one ``mahiax.training.trainer.Trainer`` runs).

Every step then ends the same way (``StepContext.finish``: the AdamW step, then
``mahiax.training.objective.finish_step``'s state commit and loss-weighting update; no LR schedule,
no clipping: equal in all arms, so left out). The batch is made before the clock
starts.

Time: the arms advance in alternating blocks of steps (A, B, C, A, B, C, ...), so machine noise
hits them alike; the ratio to the one-backward arm is taken block by block.

Memory: live CPU tensor bytes (``MemoryMeter``: every storage held by a Python tensor or saved
by an autograd graph, counted once), read after ``gc.collect()`` at every block boundary. Only
one arm runs between two readings, so the difference is that arm's own growth; its first
block (optimiser state, first memory writes) is left out.

On the clean model, ``retain_graph=True`` keeps each step's graph only until the step's
tensors are dropped, so it costs time, not growth. The growth the summary saw needs state that
carries the graph from step to step, the reason it reached for ``retain_graph`` at all. The
last measurement runs exactly that (the catalog's ``retain-graph`` / summary loop: the
original's graph-carrying memory, ``retain_graph=True``, an optimiser step every 4
micro-batches) for up to as many steps and records its growth per step and where it fails.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable

import torch

from mahiax.bugs.harness import StepContext, clean_loop, swap_class
from mahiax.bugs.loops import ACCUMULATE, accumulating, backward_per_loss
from mahiax.bugs.outcome import graph_size
from mahiax.bugs.stateful import BuggyGraphMemory
from mahiax.config import MahiaConfig, teaching
from mahiax.telemetry import MemoryMeter
from mahiax.training.trainer import Trainer
from mahiax.units import format_bytes

Loop = Callable[[StepContext], None]

SUMMARY_FORWARDS = "summary: K forwards, K backward(retain_graph=True)"
SUMMARY_ENCODE = "summary: 1 forward, K backward(retain_graph=True)"
ONE_BACKWARD = "one backward: encode() + backward() of the weighted sum"
SPEEDUP_GOAL = 2.0  # issue 7: one backward at least 2x faster than the summary's path


def summary_forwards(ctx: StepContext) -> None:
    """The summary's path: a whole forward per task loss, each ``backward(retain_graph=True)``.

    The weights are fixed for the step (as the weighting's ``combine`` does), so the gradients
    add up to those of one backward of the weighted sum.
    """
    ctx.zero_grad()
    for k in range(len(ctx.config.tasks)):
        losses, enc = ctx.model.losses(ctx.batch)  # (K,) a whole forward each time
        ctx.weights = ctx.weighting.weights().detach().clone()  # (K,)
        term = ctx.weights.to(losses)[k] * losses[k]
        if k == 0:  # the router's aux losses ride on the first term
            term = term + enc.router_loss(ctx.config)
        term.backward(retain_graph=True)  # the summary's band-aid
        ctx.total, ctx.losses = term, losses


LOOPS: dict[str, Loop] = {
    SUMMARY_FORWARDS: summary_forwards,
    SUMMARY_ENCODE: backward_per_loss(retain=True),
    ONE_BACKWARD: clean_loop,
}


class TrainArm:
    """One training run with one loop function, advanced a block of steps at a time."""

    def __init__(self, config: MahiaConfig, loop: Loop):
        self.trainer = Trainer(config)  # seeds the weights: every arm starts identical
        self.loop = loop
        self.step_num = 0
        self.graph_nodes = 0  # autograd nodes of the last step's loss

    def step(self, measure_graph: bool = False) -> float:
        """One training step; returns its seconds (batch made before the clock starts)."""
        t = self.trainer
        batch = t.data.batch(self.step_num)
        ctx = StepContext(model=t.model, weighting=t.weighting, optimizer=t.optimizer, batch=batch,
                          step=self.step_num, config=t.config)
        t0 = time.perf_counter()
        t.model.train()
        self.loop(ctx)
        ctx.finish()  # the optimiser step, commit and weighting update, as the trainer does
        seconds = time.perf_counter() - t0
        if measure_graph:
            self.graph_nodes = graph_size(ctx.total)
        self.step_num += 1
        return seconds

    def gradients(self) -> dict[str, torch.Tensor]:
        """The gradients the last step applied (for the equivalence check)."""
        return {n: p.grad.detach().clone() for n, p in self.trainer.model.named_parameters()
                if p.grad is not None}


def live_bytes(meter: MemoryMeter) -> int:
    """Live CPU tensor bytes after a garbage collection (cycles awaiting collection excluded)."""
    gc.collect()
    return meter.read().tensor_bytes or 0


def slope(ys: list[float]) -> float:
    """Least-squares slope of ``ys`` against 0, 1, 2, ... (0.0 with fewer than 2 points)."""
    n = len(ys)
    if n < 2:
        return 0.0
    mx, my = (n - 1) / 2, sum(ys) / n
    return sum((i - mx) * (y - my) for i, y in enumerate(ys)) / sum(
        (i - mx) ** 2 for i in range(n))


def interleaved_training(config: MahiaConfig, steps: int, block: int) -> dict:
    """The three arms for ``steps`` steps each, in alternating blocks; time and growth."""
    meter = MemoryMeter("cpu")
    arms = {name: TrainArm(config, loop) for name, loop in LOOPS.items()}
    times: dict[str, list[list[float]]] = {n: [] for n in arms}
    growth: dict[str, list[int]] = {n: [] for n in arms}  # bytes added per block
    before = live_bytes(meter)
    for _ in range(steps // block):
        for name, arm in arms.items():
            times[name].append([arm.step(measure_graph=(i == block - 1)) for i in range(block)])
            after = live_bytes(meter)
            growth[name].append(after - before)
            before = after
    base = [sum(b) for b in times[ONE_BACKWARD]]
    result: dict = {}
    for name, arm in arms.items():
        flat = [1e3 * s for b in times[name] for s in b]
        later = growth[name][1:]  # the first block allocates optimiser state: left out
        result[name] = {
            "steps": len(flat),
            "median_step_ms": statistics.median(flat),
            "min_step_ms": min(flat),
            "max_step_ms": max(flat),
            "graph_nodes": arm.graph_nodes,
            "bytes_growth_per_step": sum(later) / (block * len(later)) if later else 0.0,
            "bytes_growth_first_block": growth[name][0],
        }
        if name != ONE_BACKWARD:
            ratios = [sum(b) / a for b, a in zip(times[name], base, strict=True)]
            result[name]["over_one_backward"] = {
                "median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
            }
    return result


def band_aid_with_carried_state(config: MahiaConfig, max_steps: int) -> dict:
    """The catalog's retain-graph / summary loop on the default model, until it fails.

    Each step's live tensor bytes and autograd graph size are read after the step.
    """
    meter = MemoryMeter("cpu")
    arm = TrainArm(config, accumulating(backward_per_loss(retain=True), ACCUMULATE))
    swap_class(arm.trainer.model.graph_memory, BuggyGraphMemory)
    step_ms: list[float] = []
    nodes: list[int] = []
    tensor_bytes: list[int] = []
    error = None
    for _ in range(max_steps):
        try:
            step_ms.append(1e3 * arm.step(measure_graph=True))
        except RuntimeError as e:  # the in-place error the summary called "persistent"
            error = {"step": arm.step_num, "type": type(e).__name__,
                     "message": str(e).strip().splitlines()[0][:200]}
            break
        nodes.append(arm.graph_nodes)
        tensor_bytes.append(live_bytes(meter))
    del arm
    gc.collect()
    return {
        "name": "summary's band-aid where it was needed (carried graph, retain_graph=True, "
                f"optimiser step every {ACCUMULATE} micro-batches)",
        "steps_run": len(step_ms),
        "step_ms": step_ms,
        "graph_nodes": nodes,
        "tensor_bytes": tensor_bytes,
        # step 0 is the warm-up (optimiser state, first memory write): growth from step 1 on
        "bytes_growth_per_step": slope(tensor_bytes[1:]),
        "graph_nodes_growth_per_step": slope(nodes[1:]),
        "error": error,
    }


def run(steps: int = 300, block: int = 25, config: MahiaConfig | None = None) -> dict:
    """Issue 7's training-step comparison; ``met``: one backward >= 2x faster than the
    summary's K-forward path, and its live tensor bytes do not grow from step to step."""
    config = config or teaching()
    arms = interleaved_training(config, steps, block)
    carried = band_aid_with_carried_state(config, steps)
    one = arms[ONE_BACKWARD]
    speedup = arms[SUMMARY_FORWARDS]["over_one_backward"]["median"]
    goals = {
        "summary K forwards / one backward": {
            "value": speedup, "goal": f">= {SPEEDUP_GOAL}", "met": speedup >= SPEEDUP_GOAL},
        "one backward: bytes growth per step": {
            "value": one["bytes_growth_per_step"], "goal": "0",
            "met": one["bytes_growth_per_step"] <= 0},
    }
    return {
        "name": "training step, default config",
        "threads": torch.get_num_threads(),
        "steps_per_arm": steps,
        "block": block,
        "arms": arms,
        "carried_state": carried,
        "goals": goals,
        "met": all(g["met"] for g in goals.values()),
    }


def markdown(r: dict) -> str:
    """The result as a Markdown section for benchmarks/results/latest.md."""
    lines = [
        "### Training step: the summary's retain_graph path vs encode() + one backward",
        "",
        f"Default config, float32, {r['threads']} threads, {r['steps_per_arm']} steps per arm "
        f"in alternating blocks of {r['block']}; ratios paired block by block (median, "
        "min-max). Growth: live CPU tensor bytes (MemoryMeter) per step, first block left out.",
        "",
        "| arm | median step ms (min-max) | / one backward (min-max) | graph nodes | "
        "growth per step |",
        "|---|---|---|---|---|",
    ]
    for name, a in r["arms"].items():
        over = a.get("over_one_backward")
        ratio = "-" if over is None else (
            f"{over['median']:.2f} ({over['min']:.2f}-{over['max']:.2f})")
        lines.append(
            f"| {name} | {a['median_step_ms']:.1f} ({a['min_step_ms']:.1f}-"
            f"{a['max_step_ms']:.1f}) | {ratio} | {a['graph_nodes']} | "
            f"{a['bytes_growth_per_step']:.0f} B |")
    c = r["carried_state"]
    err = c["error"]
    ended = (f"then `{err['type']}` at step {err['step']}: {err['message']}" if err
             else "no error")
    lines += [
        "",
        f"{c['name']}: ran {c['steps_run']} steps of {r['steps_per_arm']}; live tensor bytes "
        f"grew {format_bytes(c['bytes_growth_per_step'])} per step and the graph "
        f"{c['graph_nodes_growth_per_step']:.0f} nodes per step (step times "
        + ", ".join(f"{t:.0f}" for t in c["step_ms"]) + f" ms), {ended}",
        "",
        "| goal | measured | target | met |",
        "|---|---|---|---|",
    ]
    for g, v in r["goals"].items():
        lines.append(f"| {g} | {v['value']:.2f} | {v['goal']} | {'yes' if v['met'] else 'NO'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
