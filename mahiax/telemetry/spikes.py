"""Spike capture: one CUDA memory snapshot of the step where memory jumped.

A total that jumps says *that* memory grew, not *what* allocated it. PyTorch's caching
allocator can record every allocation and free with its Python stack
(``torch.cuda.memory._record_memory_history``) and save them with the allocator's state
(``torch.cuda.memory._dump_snapshot``): a ``.pickle`` that https://pytorch.org/memory_viz
draws as a timeline of live tensors, each with the stack that allocated it (docs:
https://docs.pytorch.org/docs/stable/torch_cuda_memory.html).

:class:`SpikeCapture` records that history into a ring buffer of ``max_entries`` events
from the first step on, and after each step compares the allocator's ``memory_allocated``
and ``max_memory_allocated`` with the step before. The first time either rose by more than
``threshold`` bytes in one step, it saves the snapshot: the events leading up to the step,
the jump and the rest of that step, and then stops recording (one window per run). The
first ``warmup_steps`` steps are not judged: optimizer state and the first gradients appear
there in every run.

Cost: the PyTorch docs put Python stack collection at ~2 µs per allocation; the recording
stops once the snapshot is saved. On a CPU there is no allocator history: capture is off
and :attr:`SpikeCapture.status` says so.

Where it is written down: the probe logs the jump as the scalar ``mem/spike`` at the spike
step and the snapshot's path in the run store under :data:`SPIKE_SNAPSHOT_KEY` (a snapshot
row holding the path's UTF-8 bytes, relative to the store's directory when inside it);
:func:`spike_snapshots` reads them back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mahiax import metric_keys
from mahiax.telemetry.memory_meter import meter_device
from mahiax.units import format_bytes

SPIKE_KEY = metric_keys.MEM_SPIKE  # scalar at the spike step: the jump, bytes
SPIKE_SNAPSHOT_KEY = metric_keys.MEM_SPIKE_SNAPSHOT  # snapshot at the spike step: its path
VIEWER = "https://pytorch.org/memory_viz"

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Spike:
    """A step whose memory jumped, and where its snapshot was saved."""

    step: int
    jump: int  # bytes: the larger rise, in allocated or in peak, since the step before
    allocated: int  # torch.cuda.memory_allocated after the step
    peak: int  # torch.cuda.max_memory_allocated after the step
    path: Path  # the snapshot (.pickle), for pytorch.org/memory_viz


class SpikeCapture:
    """Saves one CUDA memory snapshot around the first step whose memory jumps past
    ``threshold`` bytes; on a CPU, or without a threshold or a directory, it does nothing and
    says why in :attr:`status`."""

    def __init__(
        self,
        device: str | torch.device,
        threshold: int | None,
        directory: str | Path | None,
        *,
        max_entries: int = 100_000,
        warmup_steps: int = 2,
    ):
        self.device = meter_device(device)
        self.threshold = threshold
        self.directory = Path(directory) if directory is not None else None
        self.max_entries, self.warmup_steps = max_entries, warmup_steps
        self.spike: Spike | None = None
        self.recording = False
        self._last: tuple[int, int] | None = None  # (allocated, peak) after the step before
        self._steps_seen = 0
        if self.device.type != "cuda":
            self.status = (
                "spike capture is off: it saves the CUDA caching allocator's history, and this "
                "run is measured on the CPU, which keeps none; no memory snapshot is written"
            )
        elif threshold is None:
            self.status = "spike capture is off: no threshold was set"
        elif self.directory is None:
            self.status = "spike capture is off: there is no directory to save a snapshot in"
        else:
            self.status = (
                f"spike capture armed on {self.device}: the first step whose allocated or peak "
                f"memory rises by more than {format_bytes(threshold)} saves one snapshot "
                f"under {self.directory}"
            )
        log.info(self.status)

    @property
    def enabled(self) -> bool:
        """True while a snapshot may still be taken (CUDA, threshold and directory set)."""
        return (self.device.type == "cuda" and self.threshold is not None
                and self.directory is not None and self.spike is None)

    def start(self) -> None:
        """Begin recording the allocator's history (a ring buffer); a no-op when off."""
        if not self.enabled or self.recording:
            return
        torch.cuda.memory._record_memory_history(
            enabled="all", context="all", stacks="python", max_entries=self.max_entries
        )
        self.recording = True

    def stop(self) -> None:
        """Stop recording if this capture started it (the end of a run, or after the save)."""
        if self.recording:
            torch.cuda.memory._record_memory_history(enabled=None)
            self.recording = False

    def after_step(self, step: int) -> Spike | None:
        """Call once after each step: saves the snapshot and returns the :class:`Spike` if
        this step's memory jumped past the threshold; None otherwise (and always on a CPU)."""
        if not self.enabled:
            return None
        self.start()
        allocated = torch.cuda.memory_allocated(self.device)
        peak = torch.cuda.max_memory_allocated(self.device)
        before, self._last = self._last, (allocated, peak)
        self._steps_seen += 1
        if before is None or self._steps_seen <= self.warmup_steps:
            return None
        allocated_before, peak_before = before
        jump = max(allocated - allocated_before, peak - peak_before)
        assert self.threshold is not None and self.directory is not None  # enabled
        if jump <= self.threshold:
            return None
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"spike-step{step}.pickle"
        torch.cuda.memory._dump_snapshot(str(path))
        self.stop()
        self.spike = Spike(step=step, jump=jump, allocated=allocated, peak=peak, path=path)
        self.status = (
            f"step {step}: memory rose {format_bytes(jump)}; snapshot saved to {path} "
            f"(open it at {VIEWER})"
        )
        log.warning(self.status)
        return self.spike


def encode_path(path: Path, store_dir: Path | None) -> torch.Tensor:
    """A path as the uint8 tensor the store keeps: relative to ``store_dir`` when inside it."""
    if store_dir is not None:
        try:
            path = path.resolve().relative_to(store_dir.resolve())
        except ValueError:
            pass
    return torch.tensor(list(str(path).encode("utf-8")), dtype=torch.uint8)


def spike_snapshots(reader, name: str) -> dict[int, Path]:
    """The memory snapshots saved for run ``name``: ``{spike step: path of the .pickle}``.

    ``reader`` is a :class:`mahiax.store.RunReader`; relative paths are resolved against its
    store's directory. Empty when the run had no spike (or ran on a CPU).
    """
    base = Path(reader.path).parent
    found = {}
    for step, arr in reader.snapshots(name, SPIKE_SNAPSHOT_KEY).items():
        p = Path(bytes(np.asarray(arr, dtype=np.uint8)).decode("utf-8"))
        found[int(step)] = p if p.is_absolute() else base / p
    return found
