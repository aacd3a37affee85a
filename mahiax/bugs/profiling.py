"""Remaining issue 1: "Memory profiling shows 0 MB" on a CPU-only machine.

``torch.cuda.memory_allocated()`` counts the CUDA caching allocator's bytes. On a machine
without a GPU it is 0 however many tensors are alive, so a profiler built on it reports
0 MB while the model trains. The summary called that expected and said to use a GPU; the
lab's :class:`~mahiax.telemetry.MemoryMeter` reports what tensors really hold on either.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mahiax.bugs.catalog import BugEntry
from mahiax.bugs.harness import StepContext, current_device, train_variant
from mahiax.bugs.outcome import Outcome
from mahiax.telemetry import MemoryMeter
from mahiax.telemetry import legacy_cuda_reading as summary_profiler_mb
from mahiax.units import MIB


def meter_mb(device: str | torch.device | None = None) -> float:
    """What the lab's meter reads on ``device`` (the device the catalog trains on unless
    told: the CPU, or the one ``bugs.on_device`` set): allocator bytes on a GPU, live tensor
    bytes on a CPU. Measuring the device the tensors are on is the fix; reading a GPU because
    one exists would repeat the summary's 0 MB."""
    r = MemoryMeter(device if device is not None else current_device()).read()
    return (r.allocated if r.allocated is not None else r.tensor_bytes) / MIB


def process_rss_mb() -> float:
    """A band-aid (lesson 05): the process RSS, every page the process has in RAM (the
    interpreter, libraries, allocator caches), read as if it were tensor memory."""
    return MemoryMeter().read().rss / MIB


def _run(variant: str, steps: int, candidate: object = None) -> Outcome:
    readers: dict[str, Callable[[], float]] = {
        "buggy": summary_profiler_mb,
        "summary": summary_profiler_mb,  # the advice: same code, "run it on a GPU"
        "fixed": meter_mb,
    }
    if variant == "candidate":
        if not callable(candidate):
            raise TypeError(
                "a candidate for 'memory-zero-cpu' is a function () -> MiB (bytes / 2**20)"
            )
        reader = candidate
    else:
        reader = readers[variant]
    reported: list[float] = []

    def on_step(ctx: StepContext, out: Outcome) -> None:
        reported.append(float(reader()))

    out = train_variant("memory-zero-cpu", variant, steps, on_step=on_step)
    true_mb = [b / MIB for b in out.tensor_bytes]
    out.figures["reported_mb"] = reported
    out.figures["tensor_mb"] = true_mb
    out.figures["device"] = MemoryMeter(current_device()).label  # "CPU", "GPU <name>", ...
    if true_mb and reported:
        # relative error of the last reading against the live tensor bytes
        out.state_diff = abs(reported[-1] - true_mb[-1]) / max(true_mb[-1], 1e-9)
    out.figures["damage"] = (
        "relative error of the reported MB (the summary's mem_mb: bytes / 2**20, i.e. MiB) "
        "vs live tensor MiB"
    )
    out.figures["damage_tol"] = 0.05  # the two readings are taken moments apart
    return out


MEMORY_ZERO_CPU = BugEntry(
    id="memory-zero-cpu",
    section="remaining 1",
    lessons=("05_memory_meter",),
    component="memory profiler",
    title="Memory profiling shows 0 MB",
    pattern="mem_mb = torch.cuda.memory_allocated() / 2**20",
    summary_fix="'expected on CPU-only systems': run the demo on a GPU",
    right_fix="a meter that reads the CUDA allocator on a GPU and live tensor bytes + RSS on CPU",
    explanation=(
        "torch.cuda.memory_allocated() only counts CUDA memory: on a CPU it reads 0 while "
        "the tensors hold megabytes. The summary's advice changes nothing on the machine "
        "where the problem is; a real meter measures CPU memory too."
    ),
    runner=_run,
    steps=3,
    device_note=(
        "on a CUDA device the summary's profiler reads the allocator that really holds the "
        "tensors, so there its reading is right and the verdict is holds: the 0 MB bug "
        "exists only where the tensors live on the CPU, the case the summary dismissed"
    ),
    candidate_kind="a function () -> MiB (bytes / 2**20) read during training",
    candidates=lambda: {
        "buggy": summary_profiler_mb, "summary": summary_profiler_mb, "fixed": meter_mb,
        "band-aid: the process RSS": process_rss_mb,
    },
)
